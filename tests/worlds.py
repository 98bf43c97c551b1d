"""Small hand-built worlds for datapath tests (no scenario file, no kube-proxy)."""

from __future__ import annotations

from collections.abc import Callable

from k8snet_sim.net.addr import Cidr, ip
from k8snet_sim.net.link import Interface, Segment
from k8snet_sim.net.routing import Route
from k8snet_sim.netfilter.context import ACCEPTED, Hook, HookResult
from k8snet_sim.netfilter.hooks import PRI_NAT_DST, PRI_NAT_SRC, Skb
from k8snet_sim.netfilter.nat import install_conntrack
from k8snet_sim.sim.apps import PodServer
from k8snet_sim.sim.clients import RequestClient, connect
from k8snet_sim.sim.namespace import Namespace
from k8snet_sim.sim.recorder import Recorder
from k8snet_sim.sim.simulation import Simulation
from k8snet_sim.sim.sockets import Listener, Message
from k8snet_sim.sim.world import World

NatFn = Callable[[Skb], HookResult]


def host(
    world: World,
    name: str,
    address: str,
    prefix: int,
    segment: str,
    gateway: str | None,
    *,
    forward: bool = False,
    kind: str = "host",
) -> Namespace:
    ns = world.add_namespace(Namespace(name, kind=kind, ip_forward=forward))
    ns.add_interface(Interface("eth0", [(ip(address), prefix)]))
    world.connect(ns, "eth0", segment)
    if gateway:
        ns.routes.add(Route(Cidr.parse("0.0.0.0/0"), dev="eth0", via=ip(gateway)))
    return ns


def office_world(
    *,
    router_routes: bool = True,
    dnat_at_router: NatFn | None = None,
    snat_at_router: NatFn | None = None,
    netfilter: bool = True,
) -> World:
    """laptop (172.16.0.50) — router (172.16.0.1 | 10.0.0.1) — server (10.0.0.20:80),
    plus server2 (10.0.0.21:80) on the same LAN. ``netfilter=False``: no namespace has a
    hook (no conntrack, no NAT)."""
    assert netfilter or not (dnat_at_router or snat_at_router), "NAT needs netfilter"
    w = World()
    w.add_segment(Segment("office"))
    w.add_segment(Segment("lan"))
    host(w, "host/laptop", "172.16.0.50", 24, "office", "172.16.0.1")
    r = w.add_namespace(Namespace("router/core", kind="router", ip_forward=True))
    r.add_interface(Interface("eth0", [(ip("172.16.0.1"), 24)]))
    r.add_interface(Interface("eth1", [(ip("10.0.0.1"), 24)]))
    w.connect(r, "eth0", "office")
    w.connect(r, "eth1", "lan")
    host(w, "host/server", "10.0.0.20", 24, "lan", "10.0.0.1" if router_routes else None)
    host(w, "host/server2", "10.0.0.21", 24, "lan", "10.0.0.1")
    nat = {}
    if dnat_at_router:
        nat[Hook.PREROUTING] = (PRI_NAT_DST, "test nat", dnat_at_router)
    if snat_at_router:
        nat[Hook.POSTROUTING] = (PRI_NAT_SRC, "test nat", snat_at_router)
    if netfilter:
        install_conntrack(r.stack, nat)
        for name in ("host/laptop", "host/server", "host/server2"):
            install_conntrack(w.namespaces[name].stack)
    w.listen("host/server", Listener(6, 80, PodServer("server"), name="server:80", pod="t/server"))
    w.listen(
        "host/server2", Listener(6, 80, PodServer("server2"), name="server2:80", pod="t/server2")
    )
    w.listen("host/server", Listener(17, 53, PodServer("server"), name="server:53", pod="t/server"))
    return w


def exchange(
    sim: Simulation, src: str, dst: str, port: int, proto: int = 6
) -> tuple[RequestClient, Recorder]:
    """Run one request/response from ``src`` to ``dst:port``; returns the client and the log."""
    sim.recorder = Recorder(everything=True)
    client = RequestClient(sim, Message("request", 100))
    connect(sim, src, ip(dst), port, proto, client)
    sim.run(until=client.done)
    sim.run(until=sim.env.now + 0.01)
    return client, sim.recorder


def accept(_skb: Skb) -> HookResult:
    return ACCEPTED
