"""Across nodes, per target: which sources and which NodePort columns of a reachability
matrix may take their answer from another node's (the planning half of
:mod:`~k8snet_sim.analysis.reach_nodes`, which proves nodes interchangeable).

Example
-------
>>> from k8snet_sim.api import load
>>> from k8snet_sim.analysis.targets import resolve_target
>>> sim = load("scenarios/ingress.yaml")
>>> nodes_interchangeable_for(sim.world, resolve_target(sim.world, "http://shop.example/cart"))
False
"""

from __future__ import annotations

from typing import Any

from k8snet_sim.analysis.reach_model import Source, TargetColumn
from k8snet_sim.analysis.reach_nodes import NodeSymmetry
from k8snet_sim.analysis.targets import Target


def nodes_interchangeable_for(world: Any, target: Target) -> bool:
    """Whether sources on different nodes may share answers for ``target`` at all: not when
    the path itself picks among nodes (an Ingress controller, a cloud load balancer device
    spreading over every node's NodePort)."""
    if target.kind == "http":
        return False
    return not any(
        ns.kind == "lb" and target.ip in ns.local_addresses for ns in world.namespaces.values()
    )


def mirror_column(
    symmetry: NodeSymmetry,
    column: TargetColumn,
    t: int,
    addresses: set[int],
    pods_at: dict[int, str],
    across: list[tuple[str, int] | None],
    mirrors: dict[Any, tuple[int, str]],
    members: list[Source],
) -> tuple[int, str, str, dict[int, int]] | None:
    """A NodePort on node Y mirrors the same Service's NodePort on an earlier node X when X
    and Y are interchangeable with respect to the nodes the Service involves: swapping X and
    Y maps the world onto itself and one target onto the other, so the cell of a member on
    Y is the cell of its counterpart on X (same shape as seen from its node) with X and Y
    swapped, and every other member's is its own cell for X's NodePort, likewise swapped.
    Returns (X's column, X, Y, member -> counterpart) or None (compute the column)."""
    target = column.target
    y = target.node
    if (
        not symmetry.enabled
        or target.kind != "nodeport"
        or y is None
        or y not in symmetry.nodes
        or target.service is None
    ):
        return None
    involved = symmetry.involved(addresses - {target.ip}, pods_at)
    if y in involved:
        return None
    key = (target.service.key, target.port, target.proto, symmetry.node_class(y, involved))
    first = mirrors.setdefault(key, (t, y))
    if first[0] == t:
        return None
    t0, x = first
    places: dict[tuple[str, int], int] = {}
    for m, place in enumerate(across):
        if place is not None and place[0] in (x, y):
            places.setdefault(place, m)
    sigma: dict[int, int] = {}
    for m, place in enumerate(across):
        if place is None or place[0] not in (x, y):
            continue
        other = places.get((y if place[0] == x else x, place[1]))
        if other is None or members[other].kind != members[m].kind:
            return None  # no counterpart on the other node: compute this column
        sigma[m] = other
    return t0, x, y, sigma


def node_places(
    world: Any, members: list[Source], symmetry: NodeSymmetry | None, numbering: dict[Any, int]
) -> list[tuple[str, int] | None]:
    """Per member: (its node, the number of its shape as seen from that node), when it sends
    from a node's namespace or a pod's; None for outside hosts and routers."""
    out: list[tuple[str, int] | None] = []
    for src in members:
        ns = world.namespaces[src.ns]
        node = ns.labels.get("node")
        if symmetry is None or not symmetry.enabled or node not in symmetry.nodes:
            out.append(None)
            continue
        shape = symmetry.pod_class(src.ns) if ns.kind == "pod" else ("node-ns", src.kind)
        out.append((node, numbering.setdefault(shape, len(numbering))))
    return out
