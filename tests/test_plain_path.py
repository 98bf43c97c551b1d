"""Namespaces without netfilter (pods, hosts, routers) deliver, send and forward packets without
building an skb when nothing is recorded (``datapath._receive_plain`` and the first branch of
``datapath.local_out``). Whatever happens must be what the full path, taken while a trace
records, gives: the same outcome at the same simulated time, the same CPU charged, the same
ICMP error from the same address when a packet goes no further."""

from __future__ import annotations

from typing import Any

import pytest

from k8snet_sim.net.addr import Cidr, ip
from k8snet_sim.net.link import Interface
from k8snet_sim.net.packet import TCP, UDP
from k8snet_sim.net.routing import Route
from k8snet_sim.sim import datapath
from k8snet_sim.sim.clients import RequestClient, connect
from k8snet_sim.sim.recorder import Recorder
from k8snet_sim.sim.simulation import Simulation
from k8snet_sim.sim.sockets import Message
from k8snet_sim.sim.world import World
from tests.worlds import office_world


def _plain_world() -> World:
    """laptop — router — server, with no netfilter hook anywhere. Nobody owns 10.0.0.77 or
    172.16.0.77; the router sends 10.9.0.0/16 to server2, which sends it back (a loop), and
    10.6.0.0/16 out of an interface on no segment."""
    w = office_world(netfilter=False)
    router = w.namespaces["router/core"]
    router.add_interface(Interface("eth2", [(ip("10.5.0.1"), 24)]))  # unplugged
    router.routes.add(Route(Cidr.parse("10.9.0.0/16"), dev="eth1", via=ip("10.0.0.21")))
    router.routes.add(Route(Cidr.parse("10.6.0.0/16"), dev="eth2", via=ip("10.5.0.9")))
    w.namespaces["host/server2"].ip_forward = True
    assert all(ns.stack.empty for ns in w.namespaces.values())
    return w


def _request(
    dst: str, port: int = 80, proto: int = TCP, *, recorded: bool = False
) -> tuple[Any, Simulation]:
    sim = Simulation(_plain_world(), seed=1)
    if recorded:
        sim.recorder = Recorder(everything=True)
    client = RequestClient(sim, Message("request", 100))
    connect(sim, "host/laptop", ip(dst), port, proto, client)
    sim.run(until=sim.env.now + 5.0)
    return client.outcome, sim


CASES = [
    # (destination, port, protocol, expected status, a piece of the expected detail)
    ("10.0.0.20", 80, TCP, "ok", ""),
    ("10.0.0.20", 53, UDP, "ok", ""),
    ("10.0.0.20", 81, TCP, "reset", ""),  # RST from the server
    ("10.0.0.20", 54, UDP, "unreachable", "icmp 3/3 from 10.0.0.20"),  # port unreachable
    # The router finds no neighbour: host unreachable from its address on the interface the
    # packet came in on (a forwarded packet).
    ("10.0.0.77", 80, TCP, "unreachable", "icmp 3/1 from 172.16.0.1"),
    ("10.0.0.77", 53, UDP, "unreachable", "icmp 3/1 from 172.16.0.1"),
    # The laptop finds no neighbour on its own link: its socket is told (a sent packet).
    ("172.16.0.77", 80, TCP, "unreachable", "no ARP reply for 172.16.0.77 on office"),
    ("10.9.1.1", 80, TCP, "unreachable", "icmp 11/0"),  # the loop runs the TTL out
    ("192.168.5.5", 80, TCP, "unreachable", "icmp 3/0 from 172.16.0.1"),  # no route
    ("10.6.0.5", 80, TCP, "unreachable", "icmp 3/1 from 172.16.0.1"),  # unplugged
    ("10.0.0.1", 80, TCP, "reset", ""),  # the router itself: nothing listens
]


@pytest.mark.parametrize(("dst", "port", "proto", "status", "detail"), CASES)
def test_the_plain_path_gives_what_the_full_path_gives(
    dst: str, port: int, proto: int, status: str, detail: str
) -> None:
    plain, plain_sim = _request(dst, port, proto)
    full, full_sim = _request(dst, port, proto, recorded=True)
    assert (plain.status, plain.detail) == (full.status, full.detail)
    assert status in plain.status and detail in plain.detail
    assert (plain.connected_at, plain.finished_at) == (full.connected_at, full.finished_at)
    cpu = {name: st.cpu_busy_s for name, st in sorted(plain_sim._states.items())}
    assert cpu == {name: st.cpu_busy_s for name, st in sorted(full_sim._states.items())}
    counters = {name: st.counters for name, st in plain_sim._states.items()}
    assert counters == {name: st.counters for name, st in full_sim._states.items()}


def test_no_skb_is_built_on_the_plain_path(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[str] = []
    original = datapath.Skb

    def counting(pkt: Any, ctx: Any, *args: Any, **kwargs: Any) -> Any:
        built.append(ctx.hook.value)
        return original(pkt, ctx, *args, **kwargs)

    monkeypatch.setattr(datapath, "Skb", counting)
    outcome, _ = _request("10.0.0.20")
    assert outcome.status == "ok"
    assert built == []
    # The router's missing neighbour needs the skb it did not build: built then, once per
    # packet that could not leave.
    outcome, _ = _request("10.0.0.77")
    assert "icmp 3/1" in outcome.detail
    assert built == ["PREROUTING"]


def test_a_recorder_attached_in_flight_sees_no_empty_hop() -> None:
    """The skb built late for a packet that cannot leave records no hop of its own: the
    failure is one hop, as when the skb was built on arrival."""
    sim = Simulation(_plain_world(), seed=1)
    client = RequestClient(sim, Message("request", 100))
    connect(sim, "host/laptop", ip("10.0.0.77"), 80, TCP, client)
    while sim.peek_state("router/core") is None or not sim.state("router/core").cpu_busy_s:
        sim.env.step()  # until the router has charged for the SYN, not yet queued it
    sim.recorder = Recorder(everything=True)
    sim.run(until=sim.env.now + 5.0)
    assert "icmp 3/1" in client.outcome.detail
    hops = [hop for hop in sim.recorder.hops if hop.node == "router/core"]
    assert hops and all(hop.verdict for hop in hops)
