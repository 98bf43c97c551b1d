"""Namespaces without netfilter (pods, hosts, routers) deliver, send and forward packets without
building an skb when nothing is recorded (``datapath._receive_plain`` and the first branch of
``datapath.local_out``). Whatever happens must be what the full path, taken while a trace
records, gives: the same outcome at the same simulated time, the same CPU charged, the same
ICMP error from the same address when the next hop does not answer."""

from __future__ import annotations

from typing import Any

import pytest

from k8snet_sim.net.addr import ip
from k8snet_sim.net.packet import TCP
from k8snet_sim.sim import datapath
from k8snet_sim.sim.clients import RequestClient, connect
from k8snet_sim.sim.recorder import Recorder
from k8snet_sim.sim.simulation import Simulation
from k8snet_sim.sim.sockets import Message
from k8snet_sim.sim.world import World
from tests.worlds import office_world


def _plain_world() -> World:
    """laptop — router — server, with no netfilter hook anywhere. Nobody owns 10.0.0.77 or
    172.16.0.77."""
    w = office_world(netfilter=False)
    assert all(ns.stack.empty for ns in w.namespaces.values())
    return w


def _request(dst: str, *, recorded: bool) -> tuple[Any, Simulation]:
    sim = Simulation(_plain_world(), seed=1)
    if recorded:
        sim.recorder = Recorder(everything=True)
    client = RequestClient(sim, Message("request", 100))
    connect(sim, "host/laptop", ip(dst), 80, TCP, client)
    sim.run(until=sim.env.now + 1.0)
    return client.outcome, sim


def _cpu(sim: Simulation) -> dict[str, float]:
    return {name: st.cpu_busy_s for name, st in sorted(sim._states.items())}


@pytest.mark.parametrize(
    ("dst", "status", "detail"),
    [
        ("10.0.0.20", "ok", ""),
        # The router finds no neighbour: ICMP host unreachable from its address on the
        # interface the packet came in on (a forwarded packet).
        ("10.0.0.77", "unreachable", "icmp 3/1 from 172.16.0.1"),
        # The laptop finds no neighbour on its own link: its socket is told (a sent packet).
        ("172.16.0.77", "unreachable", "unreachable: no ARP reply for 172.16.0.77 on office"),
    ],
)
def test_the_plain_path_gives_what_the_full_path_gives(dst: str, status: str, detail: str) -> None:
    plain, plain_sim = _request(dst, recorded=False)
    full, full_sim = _request(dst, recorded=True)
    assert plain.status == full.status
    assert status in plain.status
    assert detail in plain.detail
    assert plain.detail == full.detail
    assert (plain.connected_at, plain.finished_at) == (full.connected_at, full.finished_at)
    assert _cpu(plain_sim) == _cpu(full_sim)
    counters = {n: st.counters for n, st in plain_sim._states.items()}
    assert counters == {n: st.counters for n, st in full_sim._states.items()}


def test_no_skb_is_built_on_the_plain_path(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[str] = []
    original = datapath.Skb

    def counting(pkt: Any, ctx: Any, *args: Any, **kwargs: Any) -> Any:
        built.append(ctx.hook.value)
        return original(pkt, ctx, *args, **kwargs)

    monkeypatch.setattr(datapath, "Skb", counting)
    outcome, _ = _request("10.0.0.20", recorded=False)
    assert outcome.status == "ok"
    assert built == []
    # The router's missing neighbour needs the skb it did not build: built then, once per
    # packet that could not leave.
    outcome, _ = _request("10.0.0.77", recorded=False)
    assert "icmp 3/1" in outcome.detail
    assert built == ["PREROUTING"]
