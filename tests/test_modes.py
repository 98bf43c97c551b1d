"""Every bundled scenario's expectations, in every kube-proxy mode, and the foundation traces.

Expectations that differ between modes say so with `when:` — e.g. userspace mode has no traffic
policies, IPVS falls back to every endpoint for a Local policy without local endpoints.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from k8snet_sim import load, trace
from k8snet_sim.analysis.check import check
from k8snet_sim.api import simulate
from k8snet_sim.scenario.loader import load_scenario

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
MODES = ("userspace", "iptables", "ipvs", "nftables")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.yaml")), ids=lambda p: p.stem)
def test_bundled_expectations_hold_in_every_mode(path: Path, mode: str) -> None:
    scenario = load_scenario(path, mode=mode)
    result = check(simulate(scenario, seed=1), scenario)
    failures = [
        f"{r.description or r.target}: {r.failures}"
        for r in result.results
        if r.applies and not r.passed
    ]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(
    ("scenario", "source", "target", "path"),
    [
        # same node: the client's packet crosses the bridge through node1's netfilter
        (
            "two-node-host-gw.yaml",
            "pod/default/client-0",
            "pod/default/web-0:8080",
            ["pod/default/client-0", "node/node1", "pod/default/web-0"],
        ),
        # across nodes, host-gw: routed by node1 to node2's address
        (
            "two-node-host-gw.yaml",
            "pod/default/client-0",
            "pod/default/web-1:8080",
            ["pod/default/client-0", "node/node1", "node/node2", "pod/default/web-1"],
        ),
        # across nodes, vxlan: the same namespaces, the LAN sees UDP 8472
        (
            "two-node-vxlan.yaml",
            "pod/default/client-0",
            "pod/default/web-1:8080",
            ["pod/default/client-0", "node/node1", "node/node2", "pod/default/web-1"],
        ),
        # outside host through the router
        (
            "two-node-host-gw.yaml",
            "host/laptop",
            "pod/default/web-1:8080",
            ["host/laptop", "router/core", "node/node2", "pod/default/web-1"],
        ),
    ],
)
def test_foundation_paths(scenario: str, source: str, target: str, path: list[str]) -> None:
    result = trace(load(SCENARIOS / scenario, seed=1), source, target)
    assert result.reachable
    seen = []
    for hop in result.hops:
        if not seen or seen[-1] != hop.node:
            seen.append(hop.node)
    assert seen == path
    times = [h.t for h in result.hops]
    assert times == sorted(times)
    if "vxlan" in scenario:
        assert any(":8472" in h.packet and "⟨" in h.packet for h in result.hops)


def test_foundation_failures_name_the_place() -> None:
    broken = trace(
        load(SCENARIOS / "broken-return-route.yaml"), "host/laptop", "pod/default/web-1:8080"
    )
    assert broken.disposition == "NO_ROUTE" and "router/core" in broken.reason
    closed = trace(
        load(SCENARIOS / "two-node-host-gw.yaml"), "pod/default/client-0", "pod/default/web-0:9999"
    )
    assert closed.disposition == "NO_LISTENER"
    assert closed.reply_hops[0].label == "RST"
