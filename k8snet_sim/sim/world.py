"""The static world a simulation runs in: namespaces, L2 segments, listeners, VXLAN tunnels.

Built once from a scenario (:mod:`k8snet_sim.sim.build`), shared by every fork of a
simulation. Nothing here changes while packets move.

Example
-------
>>> w = World()
>>> w.add_namespace(Namespace("host/a", kind="host")).name
'host/a'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from k8snet_sim.net.link import Segment
from k8snet_sim.sim.costs import CostModel
from k8snet_sim.sim.namespace import Namespace
from k8snet_sim.sim.sockets import Listener


@dataclass
class Vxlan:
    """A node's VXLAN device (flannel.1): next-hop VTEP address → underlay address of that node."""

    iface: str
    local_underlay: int
    fdb: dict[int, int] = field(default_factory=dict)


class World:
    def __init__(self) -> None:
        self.namespaces: dict[str, Namespace] = {}
        self.segments: dict[str, Segment] = {}
        self.listeners: dict[str, list[Listener]] = {}
        self.vxlans: dict[str, Vxlan] = {}
        self.costs = CostModel()
        self.graph: nx.Graph = nx.Graph()
        self.info: dict[str, Any] = {}  # scenario, cluster build, proxier outputs, …

    def add_namespace(self, ns: Namespace) -> Namespace:
        if ns.name in self.namespaces:
            raise ValueError(f"duplicate namespace {ns.name}")
        self.namespaces[ns.name] = ns
        self.graph.add_node(ns.name, kind=ns.kind)
        return ns

    def add_segment(self, segment: Segment) -> Segment:
        self.segments[segment.name] = segment
        self.graph.add_node(f"segment/{segment.name}", kind="segment", segment_kind=segment.kind)
        return segment

    def connect(self, ns: Namespace, iface: str, segment: str) -> None:
        """Attach ``ns``'s interface to a segment (already configured on the interface)."""
        interface = ns.interfaces[iface]
        interface.segment = segment
        seg = self.segments[segment]
        seg.attach(ns.name, iface, [a for a, _ in interface.addresses])
        self.graph.add_edge(ns.name, f"segment/{segment}", iface=iface)

    def listen(self, ns: str, listener: Listener) -> None:
        self.listeners.setdefault(ns, []).append(listener)

    def vxlan_iface(self, ns: str) -> str | None:
        v = self.vxlans.get(ns)
        return v.iface if v else None

    def namespace_owning(self, address: int) -> Namespace | None:
        """The namespace that has ``address`` configured (first match, loopback excluded)."""
        for ns in self.namespaces.values():
            if address in ns.local_addresses and ns.kind != "lb":
                return ns
        return None
