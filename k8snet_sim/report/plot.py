"""Pictures: the topology (networkx + matplotlib) with a trace's request and reply paths.

Layout is deterministic, in tiers from the outside in: outside hosts → routers → LAN segments →
nodes (with their cni0 bridge) → pods.

Example
-------
>>> TIERS["host"], TIERS["pod"]
(0, 4)
"""

from __future__ import annotations

import io
import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import networkx as nx
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from k8snet_sim.analysis.trace import TraceResult
    from k8snet_sim.sim.recorder import Hop
    from k8snet_sim.sim.world import World

TIERS = {"host": 0, "lb": 1, "router": 1, "segment": 2, "node": 3, "pod": 4}
STYLE = {
    "host": ("s", "#9ecae1"),
    "lb": ("h", "#fdd0a2"),
    "router": ("D", "#c7e9c0"),
    "segment": ("_", "#636363"),
    "bridge": ("_", "#969696"),
    "node": ("s", "#fdae6b"),
    "pod": ("o", "#dadaeb"),
}
REQUEST_COLOR = "#d62728"
REPLY_COLOR = "#1f77b4"


def layout(world: World) -> dict[str, tuple[float, float]]:
    """Tiered positions; pods sit under their node, bridges next to their node."""
    graph = world.graph
    tiers: dict[int, list[str]] = {}
    for name, data in sorted(graph.nodes(data=True)):
        kind = data.get("kind", "host")
        if kind == "segment" and data.get("segment_kind") == "bridge":
            continue
        if kind == "pod":
            continue
        tiers.setdefault(TIERS.get(kind, 0), []).append(name)
    pos: dict[str, tuple[float, float]] = {}
    for tier, names in tiers.items():
        for i, name in enumerate(names):
            pos[name] = ((i + 1) / (len(names) + 1) * 10, -tier * 2.0)
    nodes = tiers.get(3, [])
    for node in nodes:
        nx_, ny = pos[node]
        pods = sorted(
            n
            for n, d in graph.nodes(data=True)
            if d.get("kind") == "pod"
            and world.namespaces[n].labels.get("node") == node.split("/", 1)[1]
        )
        width = 10 / (len(nodes) + 1) * 0.8
        for j, pod in enumerate(pods):
            offset = (j - (len(pods) - 1) / 2) * (width / max(len(pods), 1))
            pos[pod] = (nx_ + offset, ny - 2.0 - (j % 2) * 0.5)
        pos[f"segment/cni0@{node.split('/', 1)[1]}"] = (nx_, ny - 1.0)
    return pos


def _edges(hops: list[Hop]) -> list[tuple[str, str]]:
    """Consecutive namespaces a packet crossed, connection by connection (a proxy's second
    connection starts a new path instead of being joined to the first)."""
    by_conn: dict[int, list[str]] = {}
    for h in sorted(hops, key=lambda h: h.t):
        if not h.packet:  # a proxy's own note, not a packet hop
            continue
        path = by_conn.setdefault(h.conn_id, [])
        if not path or path[-1] != h.node:
            path.append(h.node)
    return [edge for path in by_conn.values() for edge in itertools.pairwise(path)]


def draw_topology(
    world: World, result: TraceResult | None = None, *, ax: Any = None, title: str | None = None
) -> Any:
    """Draw the world; with ``result``, the request path in red and the reply path in blue."""
    graph = world.graph
    pos = layout(world)
    if ax is None:
        _, ax = plt.subplots(figsize=(11, 7))
    plain = nx.Graph((u, v) for u, v, d in graph.edges(data=True) if d.get("kind") != "vxlan")
    nx.draw_networkx_edges(plain, pos, ax=ax, edge_color="#bdbdbd", width=1.2)
    vx = [(u, v) for u, v, d in graph.edges(data=True) if d.get("kind") == "vxlan"]
    if vx:
        nx.draw_networkx_edges(
            graph,
            pos,
            edgelist=vx,
            ax=ax,
            edge_color="#bcbddc",
            style="dashed",
            width=0.8,
            connectionstyle="arc3,rad=0.2",
            arrows=True,
            arrowstyle="-",
        )
    for name, data in graph.nodes(data=True):
        kind = data.get("kind", "host")
        if kind == "segment" and data.get("segment_kind") == "bridge":
            kind = "bridge"
        marker, color = STYLE.get(kind, ("o", "#cccccc"))
        size = 1400 if kind == "node" else 900 if kind in ("host", "router", "lb") else 500
        if kind in ("segment", "bridge"):
            size = 2500 if kind == "segment" else 900
        nx.draw_networkx_nodes(
            graph,
            pos,
            nodelist=[name],
            node_shape=marker,
            node_color=color,
            node_size=size,
            ax=ax,
            edgecolors="#444444" if kind not in ("segment", "bridge") else None,
            linewidths=1.0,
        )
        label = name.split("/", 1)[1] if "/" in name else name
        if kind == "pod":
            label = label.split("/", 1)[-1]
        ax.annotate(
            label,
            pos[name],
            xytext=(0, -18 if kind != "segment" else 8),
            textcoords="offset points",
            ha="center",
            fontsize=8,
        )
    if result is not None:
        # Same curvature sign for both: a reversed edge then bends to the other side, so the
        # reply path does not hide the request path. A hairpin (a pod reaching itself through
        # its node) sends request and reply along the same edges in the same direction: the
        # reply's wider arc keeps the two apart there too.
        paths = ((result.hops, REQUEST_COLOR, 0.15), (result.reply_hops, REPLY_COLOR, 0.3))
        for hops, color, rad in paths:
            edges = _edges(hops)
            if edges:
                nx.draw_networkx_edges(
                    nx.DiGraph(edges),
                    pos,
                    edgelist=edges,
                    ax=ax,
                    edge_color=color,
                    width=2.5,
                    arrows=True,
                    arrowsize=18,
                    connectionstyle=f"arc3,rad={rad}",
                    node_size=900,
                )
        title = title or f"{result.source} → {result.target}: {result.disposition}"
        ax.plot([], [], color=REQUEST_COLOR, lw=2.5, label="request")
        ax.plot([], [], color=REPLY_COLOR, lw=2.5, label="reply")
        ax.legend(loc="upper right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    ax.set_axis_off()
    return ax


def save_topology(world: World, path: str | Path, result: TraceResult | None = None) -> Path:
    """Write the picture to ``path`` atomically (temp file, then rename)."""
    from k8snet_sim.report.files import atomic_write_bytes

    # A bare Figure renders without pyplot or a GUI backend (and leaves pyplot's state alone).
    fig = Figure(figsize=(11, 7))
    ax = fig.add_subplot()
    draw_topology(world, result, ax=ax)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", dpi=110)
    return atomic_write_bytes(path, buf.getvalue())
