"""Topology pictures: the request path and the reply path stay apart, even on a hairpin."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch

from k8snet_sim import load
from k8snet_sim.report.plot import REPLY_COLOR, REQUEST_COLOR, draw_topology

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "lesson-02-clusterip.yaml"


def _hop(t: float, node: str) -> SimpleNamespace:
    return SimpleNamespace(t=t, node=node, packet="TCP", conn_id=1)


def test_a_hairpin_draws_request_and_reply_on_different_arcs() -> None:
    sim = load(SCENARIO)
    there_and_back = ["pod/default/web-0", "node/node1", "pod/default/web-0"]
    result = SimpleNamespace(
        hops=[_hop(i, n) for i, n in enumerate(there_and_back)],
        reply_hops=[_hop(10 + i, n) for i, n in enumerate(there_and_back)],
        source="pod/default/web-0",
        target="service/default/web:80",
        disposition="DELIVERED",
    )
    ax = Figure().add_subplot()
    draw_topology(sim.world, result, ax=ax)  # type: ignore[arg-type]
    arcs: dict[str, list[object]] = {REQUEST_COLOR: [], REPLY_COLOR: []}
    for patch in ax.patches:
        if isinstance(patch, FancyArrowPatch):
            color = to_hex(patch.get_edgecolor())
            if color in arcs:
                arcs[color].append(patch.get_connectionstyle().rad)
    assert len(arcs[REQUEST_COLOR]) == 2 and len(arcs[REPLY_COLOR]) == 2
    assert set(arcs[REQUEST_COLOR]).isdisjoint(arcs[REPLY_COLOR])
