"""The per-hop datapath on hand-built worlds: routing, conntrack NAT, Linux failure answers."""

from __future__ import annotations

import pytest

from k8snet_sim.net.addr import ip
from k8snet_sim.netfilter.context import ACCEPTED, HookResult
from k8snet_sim.netfilter.hooks import Skb
from k8snet_sim.sim.simulation import Simulation

from .worlds import exchange, office_world


def test_routed_exchange_completes_with_hops_in_order() -> None:
    sim = Simulation(office_world(), seed=1)
    client, rec = exchange(sim, "host/laptop", "10.0.0.20", 80)
    assert client.outcome.ok
    syn = [h.node for h in rec.hops if h.label == "SYN"]
    assert syn == ["host/laptop", "router/core", "host/server"]
    synack = [h.node for h in rec.hops if h.label == "SYN-ACK"]
    assert synack == ["host/server", "router/core", "host/laptop"]
    times = [h.t for h in rec.hops if h.label == "SYN"]
    assert times == sorted(times) and times[-1] > 100e-6  # two LAN crossings of 50 µs


@pytest.mark.parametrize(
    ("dst", "port", "proto", "status"),
    [
        ("10.0.0.20", 81, 6, "reset"),  # closed TCP port: RST
        ("10.0.0.20", 54, 17, "unreachable"),  # closed UDP port: ICMP port unreachable
        ("10.9.9.9", 80, 6, "unreachable"),  # router has no route: ICMP net unreachable
        ("10.0.0.99", 80, 6, "unreachable"),  # no ARP answer on the LAN: host unreachable
    ],
)
def test_failures_answered_like_linux(dst: str, port: int, proto: int, status: str) -> None:
    sim = Simulation(office_world(), seed=1)
    client, _ = exchange(sim, "host/laptop", dst, port, proto)
    assert client.outcome.status == status


def test_udp_request_response() -> None:
    sim = Simulation(office_world(), seed=1)
    client, _ = exchange(sim, "host/laptop", "10.0.0.20", 53, 17)
    assert client.outcome.ok


def _dnat_to(target: str, port: int):
    def run(skb: Skb) -> HookResult:
        if skb.pkt.dst == ip("172.16.0.1") and skb.pkt.dport == 8080:
            assert skb.ctx.nat is not None
            skb.ctx.nat.dnat(ip(target), port)
        return ACCEPTED

    return run


def test_dnat_reply_is_un_natted_by_conntrack() -> None:
    sim = Simulation(office_world(dnat_at_router=_dnat_to("10.0.0.20", 80)), seed=1)
    client, rec = exchange(sim, "host/laptop", "172.16.0.1", 8080)
    assert client.outcome.ok
    back = next(h for h in rec.hops if h.label == "SYN-ACK" and h.node == "router/core")
    assert back.packet.startswith("TCP 172.16.0.1:8080 > 172.16.0.50")
    assert any("un-DNAT" in r for r in back.rewrites)


def test_asymmetric_reply_is_not_recognised() -> None:
    """The server's reply bypasses the DNAT box (its default route points elsewhere): the
    client sees a SYN-ACK from an address it never contacted, resets it, and never connects."""
    world = office_world(dnat_at_router=_dnat_to("10.0.0.20", 80))
    from k8snet_sim.net.addr import Cidr
    from k8snet_sim.net.link import Interface
    from k8snet_sim.net.routing import Route

    # Give the server a second leg straight onto the office LAN, and route the office there.
    server = world.namespaces["host/server"]
    server.add_interface(Interface("eth1", [(ip("172.16.0.20"), 24)]))
    world.connect(server, "eth1", "office")
    server.routes.add(Route(Cidr.parse("172.16.0.0/24"), dev="eth1", src=ip("172.16.0.20")))
    sim = Simulation(world, seed=1)
    client, rec = exchange(sim, "host/laptop", "172.16.0.1", 8080)
    assert client.outcome.status == "timeout"
    stray = [h for h in rec.hops if h.node == "host/laptop" and h.verdict == "stray"]
    assert stray and "10.0.0.20:80" in stray[0].packet_in


def test_masquerade_picks_outgoing_address_and_reply_is_un_snatted() -> None:
    def masq(skb: Skb) -> HookResult:
        if skb.ctx.out_iface == "eth1":
            assert skb.ctx.nat is not None
            skb.ctx.nat.masquerade()
        return ACCEPTED

    sim = Simulation(office_world(snat_at_router=masq), seed=1)
    client, _ = exchange(sim, "host/laptop", "10.0.0.20", 80)
    assert client.outcome.ok
    assert client.outcome.response is not None
    assert client.outcome.response.data["peer"].startswith("10.0.0.1:")


def test_forwarding_disabled_drops() -> None:
    world = office_world()
    world.namespaces["router/core"].ip_forward = False
    sim = Simulation(world, seed=1)
    _, rec = exchange(sim, "host/laptop", "10.0.0.20", 80)
    drops = [h for h in rec.hops if h.verdict == "drop"]
    assert drops and "ip_forward=0" in drops[0].action


def test_fork_is_independent() -> None:
    sim = Simulation(office_world(dnat_at_router=_dnat_to("10.0.0.20", 80)), seed=1)
    exchange(sim, "host/laptop", "172.16.0.1", 8080)
    before = len(sim.state("router/core").conntrack)
    child = sim.fork()
    exchange(child, "host/laptop", "172.16.0.1", 8080)
    assert len(child.state("router/core").conntrack) == before + 1
    assert len(sim.state("router/core").conntrack) == before
