"""What the packet engine remembers between packets, and when it forgets: the route cache of a
routing table, the neighbours an interface resolved (ARP claims change them), the wiring
of an interface. Each cache must give what a fresh lookup gives."""

from __future__ import annotations

from typing import Any

import pytest

from k8snet_sim.net.addr import Cidr, ip
from k8snet_sim.net.link import Interface, Segment
from k8snet_sim.net.packet import UDP, Packet
from k8snet_sim.net.routing import Route, RoutingTable
from k8snet_sim.sim import datapath
from k8snet_sim.sim.simulation import Simulation
from k8snet_sim.sim.world import World
from tests.worlds import host


def test_route_cache_follows_added_and_removed_routes() -> None:
    table = RoutingTable()
    table.add(Route(Cidr.parse("0.0.0.0/0"), dev="eth0", via=ip("192.168.10.1")))
    dst = ip("10.96.0.10")
    assert str(table.lookup(dst)) == "default via 192.168.10.1 dev eth0"
    table.add(Route(Cidr.parse("10.96.0.0/16"), dev="eth1", via=ip("192.168.20.1")))
    assert str(table.lookup(dst)) == "10.96.0.0/16 via 192.168.20.1 dev eth1"
    table.remove(Cidr.parse("10.96.0.0/16"))
    assert str(table.lookup(dst)) == "default via 192.168.10.1 dev eth0"
    table.remove(Cidr.parse("0.0.0.0/0"))
    assert table.lookup(dst) is None


def _lan() -> World:
    world = World()
    world.add_segment(Segment("lan"))
    host(world, "host/client", "172.16.0.50", 24, "lan", None)
    host(world, "host/a", "172.16.0.10", 24, "lan", None)
    host(world, "host/b", "172.16.0.11", 24, "lan", None)
    return world


def _receivers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    original = datapath.receive

    def spy(sim: Simulation, ns: Any, iface: str, pkt: Packet, skb: Any = None) -> None:
        seen.append(ns.name)
        original(sim, ns, iface, pkt, skb)

    monkeypatch.setattr(datapath, "receive", spy)
    return seen


def _send(sim: Simulation, dst: str) -> None:
    sim.send("host/client", Packet(src=ip("172.16.0.50"), dst=ip(dst), proto=UDP, dport=53))
    sim.run()


@pytest.mark.parametrize("claims", [["host/a", "host/b"], ["host/b", "host/a", "host/b"]])
def test_arp_claims_made_while_running_move_the_next_packets(
    monkeypatch: pytest.MonkeyPatch, claims: list[str]
) -> None:
    world = _lan()
    seen = _receivers(monkeypatch)
    sim = Simulation(world, seed=1)
    vip = "172.16.0.99"
    for owner in claims:  # MetalLB's speaker moves: the same simulation, a new answer
        world.segments["lan"].claim(ip(vip), owner, "eth0")
        _send(sim, vip)
    assert seen == claims


def test_an_unanswered_next_hop_is_asked_again_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    world = _lan()
    seen = _receivers(monkeypatch)
    sim = Simulation(world, seed=1)
    _send(sim, "172.16.0.77")  # nobody answers: host unreachable, nothing received
    world.segments["lan"].claim(ip("172.16.0.77"), "host/b", "eth0")
    _send(sim, "172.16.0.77")
    assert seen == ["host/b"]
    assert sim.state("host/client").counters.get("no-route") == 1


def test_queues_appear_in_the_order_links_are_first_used() -> None:
    """Metrics list egress links in creation order: a link whose first packet found no
    neighbour gets no queue, as before the per-interface cache."""
    world = _lan()
    sim = Simulation(world, seed=1)
    _send(sim, "172.16.0.77")
    assert list(sim.tx_queues) == []
    _send(sim, "172.16.0.11")  # b answers with ICMP port unreachable
    assert list(sim.tx_queues) == [("host/client", "eth0"), ("host/b", "eth0")]


def test_an_unplugged_interface_reports_no_neighbour() -> None:
    world = _lan()
    client = world.namespaces["host/client"]
    client.add_interface(Interface("eth9", [(ip("10.9.9.9"), 24)]))  # on no segment
    sim = Simulation(world, seed=1)
    _send(sim, "10.9.9.1")
    assert sim.state("host/client").counters.get("no-route") == 1
