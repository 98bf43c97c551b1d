"""A network namespace: the static configuration of one host of the simulated world.

Every node, pod, router, outside host and cloud load balancer is a :class:`Namespace` with
interfaces, a routing table, an ``ip_forward`` switch and a netfilter hook stack. What changes
while the simulation runs (conntrack, xt_recent lists, sockets, queues) lives in
:class:`NsState`, owned by the :class:`~k8snet_sim.sim.simulation.Simulation`, so a simulation can
be forked cheaply for "what if this branch was taken" exploration.

Example
-------
>>> from k8snet_sim.net.addr import ip
>>> from k8snet_sim.net.link import Interface
>>> ns = Namespace("host/laptop", kind="host")
>>> ns.add_interface(Interface("eth0", [(ip("172.16.0.50"), 24)], segment="office"))
>>> ns.is_local(ip("172.16.0.50")), ns.is_local(ip("127.0.0.1")), ns.is_local(ip("172.16.0.1"))
(True, True, False)
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from k8snet_sim.net.addr import Cidr, ip
from k8snet_sim.net.link import Interface
from k8snet_sim.net.routing import Route, RoutingTable
from k8snet_sim.netfilter.conntrack import ConntrackTable
from k8snet_sim.netfilter.context import NetfilterState
from k8snet_sim.netfilter.hooks import NetfilterStack

LOOPBACK_NET = Cidr.parse("127.0.0.0/8")


class Namespace:
    """Static configuration of one network namespace."""

    def __init__(
        self,
        name: str,
        *,
        kind: str,
        ip_forward: bool = False,
        cpu_owner: str | None = None,
        cores: int = 2,
    ) -> None:
        self.name = name
        self.kind = kind  # "node" | "pod" | "router" | "host" | "lb"
        self.ip_forward = ip_forward
        self.interfaces: dict[str, Interface] = {}
        self.routes = RoutingTable()
        self.stack = NetfilterStack()
        self.local_addresses: set[int] = set()
        self.cpu_owner = cpu_owner or name  # pods burn their node's CPU
        self.cores = cores
        self.conntrack_max = 262144
        self.martian_check = True  # drop packets arriving with one of our own source addresses
        self.labels: dict[str, Any] = {}  # e.g. {"node": "node1", "pod": "default/web-0"}
        self.add_interface(Interface("lo", [(ip("127.0.0.1"), 8)], kind="loopback"))

    def add_interface(self, iface: Interface) -> None:
        self.interfaces[iface.name] = iface
        for address, prefix in iface.addresses:
            self.local_addresses.add(address)
            if iface.kind in ("ether", "bridge") and prefix < 32:
                # The kernel adds the connected route for every address with a prefix.
                net = Cidr(address & Cidr(0, prefix).mask, prefix)
                self.routes.add(Route(net, dev=iface.name, src=address, origin="kernel"))

    def add_address(self, iface_name: str, address: int, prefix: int = 32) -> None:
        """Add an address to an existing interface (``ip addr add``), e.g. a VIP on kube-ipvs0."""
        self.interfaces[iface_name].addresses.append((address, prefix))
        self.local_addresses.add(address)

    def is_local(self, address: int) -> bool:
        """``-m addrtype --dst-type LOCAL``: one of our addresses, or loopback."""
        return address in self.local_addresses or (address >> 24) == 127

    def iface_address(self, iface: str, toward: int | None) -> int | None:
        """The source address the kernel uses on ``iface`` toward ``toward`` (MASQUERADE)."""
        interface = self.interfaces.get(iface)
        return interface.address_toward(toward) if interface else None

    def source_for(self, route: Route, dst: int) -> int | None:
        """Source address selection for locally generated packets."""
        if route.src is not None:
            return route.src
        if (dst >> 24) == 127:
            return ip("127.0.0.1")
        return self.iface_address(route.dev, route.via if route.via is not None else dst)

    def iface_on_link(self, address: int) -> str | None:
        """The interface whose connected prefix contains ``address`` (where a gateway must be)."""
        for iface in self.interfaces.values():
            if iface.kind not in ("ether", "bridge"):
                continue
            for a, p in iface.addresses:
                if p < 32 and Cidr(a & Cidr(0, p).mask, p).contains(address):
                    return iface.name
        return None

    def primary_address(self) -> int | None:
        for iface in self.interfaces.values():
            if iface.kind != "loopback" and iface.primary is not None:
                return iface.primary
        return None

    def describe(self) -> str:
        lines = [f"{self.name} ({self.kind}{', forwarding' if self.ip_forward else ''})"]
        lines += [f"  {i.describe()}" for i in self.interfaces.values()]
        lines += [f"  route {r}" for r in self.routes.routes()]
        return "\n".join(lines)


@dataclass
class NsState:
    """What changes in a namespace while the simulation runs."""

    conntrack: ConntrackTable
    nf: NetfilterState = field(default_factory=NetfilterState)
    sockets: Any = None  # sim.sockets.SocketTable (set by the simulation)
    tx_free_at: dict[str, float] = field(default_factory=dict)  # egress queue per interface
    tx_backlog: dict[str, deque[float]] = field(default_factory=dict)
    cpu_free_at: list[float] = field(default_factory=list)  # per core, a heap (cpu owners only)
    cpu_busy_s: float = 0.0
    counters: dict[str, int] = field(default_factory=dict)  # drops etc., by reason class
    apps: dict[str, Any] = field(default_factory=dict)  # state of stateful services (rr index…)
