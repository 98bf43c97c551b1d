"""A deterministic scheduler: which node each pod runs on.

Pods are placed one by one in manifest order. ``spec.nodeName`` binds a pod directly (as in
Kubernetes it bypasses the scheduler, so a cordoned node is fine; an unknown node is an
error). Otherwise a node *fits* when it carries every ``nodeSelector`` label (each node has the
implicit label ``kubernetes.io/hostname=<name>``) and is schedulable — ``schedulable: false``
acts like the ``node.kubernetes.io/unschedulable`` taint, tolerated by a toleration with
``operator: Exists`` and no key, or keyed on that taint or the control-plane role. Among the
fitting nodes the one with the fewest pods so far wins; ties go to the earlier node.

Example
-------
>>> nodes = [NodeInfo("master", schedulable=False), NodeInfo("node1"), NodeInfo("node2")]
>>> pods = [PodRequest("default/web-0"), PodRequest("default/web-1"), PodRequest("default/web-2")]
>>> [p.node for p in schedule(pods, nodes)]
['node1', 'node2', 'node1']
>>> schedule([PodRequest("default/x", node_selector={"disk": "ssd"})], nodes)[0].error
'0/3 nodes are available: 1 node(s) were unschedulable, 2 node(s) did not match the nodeSelector'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

HOSTNAME_LABEL = "kubernetes.io/hostname"
UNSCHEDULABLE_TAINTS = frozenset(
    {
        "node.kubernetes.io/unschedulable",
        "node-role.kubernetes.io/control-plane",
        "node-role.kubernetes.io/master",
    }
)


@dataclass(frozen=True)
class NodeInfo:
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    schedulable: bool = True

    def has(self, selector: dict[str, str]) -> bool:
        labels = {HOSTNAME_LABEL: self.name, **self.labels}
        return all(labels.get(k) == v for k, v in selector.items())


@dataclass(frozen=True)
class PodRequest:
    pod: str  # "namespace/name"
    node_name: str | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerates_unschedulable: bool = False


@dataclass(frozen=True)
class Placement:
    pod: str
    node: str | None  # None: could not be placed, see error
    error: str | None = None


def fits(request: PodRequest, node: NodeInfo) -> bool:
    """Whether the scheduler may put ``request`` on ``node`` (``nodeName`` aside)."""
    return (node.schedulable or request.tolerates_unschedulable) and node.has(request.node_selector)


def schedule(requests: Sequence[PodRequest], nodes: Sequence[NodeInfo]) -> list[Placement]:
    """Place every pod; the order of ``requests`` and ``nodes`` decides ties."""
    load = {n.name: 0 for n in nodes}
    out: list[Placement] = []
    for request in requests:
        if request.node_name is not None:
            if request.node_name not in load:
                out.append(Placement(request.pod, None, f"unknown node {request.node_name!r}"))
                continue
            load[request.node_name] += 1
            out.append(Placement(request.pod, request.node_name))
            continue
        candidates = [n for n in nodes if fits(request, n)]
        if not candidates:
            out.append(Placement(request.pod, None, _why_not(request, nodes)))
            continue
        best = min(candidates, key=lambda n: load[n.name])  # min keeps the first of equals
        load[best.name] += 1
        out.append(Placement(request.pod, best.name))
    return out


def _why_not(request: PodRequest, nodes: Sequence[NodeInfo]) -> str:
    """The scheduler's FailedScheduling summary: why each node was rejected."""
    unschedulable = sum(1 for n in nodes if not (n.schedulable or request.tolerates_unschedulable))
    mismatch = sum(
        1
        for n in nodes
        if (n.schedulable or request.tolerates_unschedulable) and not n.has(request.node_selector)
    )
    reasons = []
    if unschedulable:
        reasons.append(f"{unschedulable} node(s) were unschedulable")
    if mismatch:
        reasons.append(f"{mismatch} node(s) did not match the nodeSelector")
    return f"0/{len(nodes)} nodes are available: " + ", ".join(reasons)
