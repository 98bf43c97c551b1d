"""userspace mode, table-driven: portals catch every Service address, kube-proxy opens the
second connection from the node, round-robin (with ClientIP affinity when asked)."""

from __future__ import annotations

from pathlib import Path

import pytest

from k8snet_sim import load, trace

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"


def _sim(name: str, *overrides: str, seed: int = 1):
    return load(SCENARIOS / name, seed=seed, mode="userspace", overrides=overrides)


@pytest.mark.parametrize(
    ("scenario", "source", "target", "seen"),
    [
        # pod → ClusterIP: REDIRECTed on the pod's node; the backend sees that node
        (
            "two-node-host-gw.yaml",
            "pod/default/client-0",
            "service/default/web:80",
            {"10.244.0.1", "192.168.10.11"},
        ),
        # node → ClusterIP: the host portal DNATs to the node's own proxy port
        (
            "two-node-host-gw.yaml",
            "node/node2",
            "service/default/web:80",
            {"10.244.1.1", "192.168.10.12"},
        ),
        # outside → NodePort on a node without backends: still proxied by that node
        (
            "nodeport-policies.yaml",
            "host/laptop",
            "nodeport/node2/default/web-cluster:80",
            {"192.168.10.12"},
        ),
        # outside → MetalLB LoadBalancer IP: the elected node's portal catches it
        (
            "loadbalancer-metallb.yaml",
            "host/laptop",
            "loadbalancer/default/web-lb:80",
            {"10.244.0.1", "10.244.1.1", "192.168.10.11", "192.168.10.12"},
        ),
        # the founding lesson: an outside host through the bastion route
        (
            "external-clusterip.yaml",
            "host/office",
            "service/default/web:80",
            {"10.244.0.1", "192.168.10.10"},
        ),
    ],
)
def test_every_frontend_is_proxied_from_the_node(scenario, source, target, seen) -> None:
    result = trace(_sim(scenario), source, target)
    rows = result.possible_endpoints
    assert rows and all(r["reachable"] for r in rows)
    assert {r["sourceSeenByBackend"] for r in rows} <= seen
    assert len(result.connections) == 2
    assert any(h.label == "proxy" for h in result.hops)


def test_round_robin_alternates_and_affinity_sticks() -> None:
    sim = _sim("session-affinity.yaml")
    plain = [
        trace(sim, "pod/default/client-0", "service/default/web:80", explore_all=False).endpoint[
            "pod"
        ]
        for _ in range(4)
    ]
    assert plain[0] != plain[1] and plain[:2] == plain[2:]
    sticky = {
        trace(sim, "pod/default/client-0", "service/default/sticky:80", explore_all=False).endpoint[
            "pod"
        ]
        for _ in range(4)
    }
    assert len(sticky) == 1
    sim.advance(61)  # past timeoutSeconds: 60
    after = [
        trace(sim, "pod/default/client-0", "service/default/sticky:80", explore_all=False).endpoint[
            "pod"
        ]
        for _ in range(2)
    ]
    assert after[0] != after[1] or after[0] not in sticky


def test_no_endpoints_closes_the_accepted_connection() -> None:
    sim = _sim("ingress.yaml")
    result = trace(sim, "pod/shop/front-0", "service/shop/status:80")
    assert not result.reachable and result.disposition == "REJECTED"
    assert "has no endpoints" in result.reason


def test_rules_show_portals_and_proxy_ports() -> None:
    sim = _sim("two-node-host-gw.yaml")
    rules = sim.world.info["rules"]["node1"]
    assert "-j REDIRECT --to-ports 40000" in rules["iptables"]
    assert "-j DNAT --to-destination 192.168.10.11:40000" in rules["iptables"]
    assert "default/web:http" in rules["proxy-ports"] and "40000" in rules["proxy-ports"]
