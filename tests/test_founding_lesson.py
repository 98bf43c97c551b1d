"""The founding lesson: an outside host reaching a ClusterIP through a node, in each mode."""

from __future__ import annotations

from pathlib import Path

import pytest

from k8snet_sim import load, trace
from k8snet_sim.analysis.check import check
from k8snet_sim.analysis.compare import compare_modes
from k8snet_sim.api import simulate
from k8snet_sim.scenario.loader import load_scenario

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "external-clusterip.yaml"
DETECTOR = "cluster.kubeProxy.clusterCIDR=10.244.0.0/16"


def _verdicts(result) -> dict[str, str]:
    return {r["pod"]: r["disposition"] for r in result.possible_endpoints}


def test_iptables_without_detector_is_partial_and_says_why() -> None:
    result = trace(load(SCENARIO, seed=5), "host/office", "service/default/web:80")
    assert _verdicts(result) == {
        "default/web-master": "DELIVERED",
        "default/web-0": "REPLY_LOST",
        "default/web-1": "REPLY_LOST",
    }
    lost = [r for r in result.possible_endpoints if r["disposition"] == "REPLY_LOST"]
    for row in lost:
        assert "node/master, where the DNAT happened" in row["reason"]
        assert "expected a reply from 10.96.0.2:80" in row["reason"]
        assert row["sourceSeenByBackend"] == "172.16.0.50"  # not masqueraded


def test_reply_path_bypasses_the_dnat_node() -> None:
    # Find a seed whose sampled connection lands on a remote backend.
    for seed in range(10):
        result = trace(load(SCENARIO, seed=seed), "host/office", "service/default/web:80")
        if result.disposition == "REPLY_LOST":
            break
    else:
        pytest.fail("no seed sampled a remote backend")
    assert "node/master" in [h.node for h in result.hops]
    reply_nodes = [h.node for h in result.reply_hops]
    assert "node/master" not in reply_nodes
    assert reply_nodes[-1] == "host/office"
    assert result.reply_hops[-1].verdict == "stray"


def test_userspace_reaches_every_backend_from_the_node() -> None:
    result = trace(load(SCENARIO, mode="userspace"), "host/office", "service/default/web:80")
    assert set(_verdicts(result).values()) == {"DELIVERED"}
    seen = {r["pod"]: r["sourceSeenByBackend"] for r in result.possible_endpoints}
    assert seen == {
        "default/web-master": "10.244.0.1",
        "default/web-0": "192.168.10.10",
        "default/web-1": "192.168.10.10",
    }
    assert len(result.connections) == 2  # client → proxy socket, node → backend


def test_detector_masquerades_off_cluster_sources() -> None:
    result = trace(load(SCENARIO, overrides=[DETECTOR]), "host/office", "service/default/web:80")
    assert set(_verdicts(result).values()) == {"DELIVERED"}
    assert {r["sourceSeenByBackend"] for r in result.possible_endpoints} == {
        "10.244.0.1",
        "192.168.10.10",
    }


@pytest.mark.parametrize(
    ("mode", "overrides"),
    [("userspace", []), ("iptables", []), ("iptables", [DETECTOR])],
)
def test_expectations_hold(mode: str, overrides: list[str]) -> None:
    scenario = load_scenario(SCENARIO, mode=mode, overrides=overrides)
    result = check(simulate(scenario, seed=3), scenario)
    assert result.passed, result.summary()
    assert sum(r.applies for r in result.results) == 2


def test_compare_tells_the_story() -> None:
    cmp = compare_modes(
        SCENARIO, "host/office", "service/default/web:80", modes=["userspace", "iptables"]
    )
    rows = {r.mode: r for r in cmp.rows}
    assert rows["userspace"].reachable == "all" and rows["userspace"].connections == 2
    assert rows["iptables"].reachable == "partial" and rows["iptables"].connections == 1
    assert rows["iptables"].rules_walked > rows["userspace"].rules_walked
    # Which endpoint works is the lesson: only the one on the node that did the DNAT.
    assert rows["iptables"].failing == ["default/web-0", "default/web-1"]
    assert rows["userspace"].failing == []
    html = cmp._repr_html_()
    assert "default/web-0 (0.33) ✗" in html and "REPLY_LOST" in html


def test_check_defaults_to_the_scenario_of_the_simulation_and_renders_html() -> None:
    sim = load(SCENARIO, seed=3)
    result = check(sim)
    assert result.summary() == check(sim, sim.world.info["scenario"]).summary()
    html = result._repr_html_()
    assert "2/2 expectations hold" in html and html.count("✓") == 2 and html.count("–") == 2
