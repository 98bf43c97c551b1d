"""Exposing Services from outside: NodePort policies, LoadBalancer providers, Ingress, affinity."""

from __future__ import annotations

from pathlib import Path

import pytest

from k8snet_sim import load, trace
from k8snet_sim.analysis.check import check
from k8snet_sim.api import simulate
from k8snet_sim.errors import UnknownEndpoint
from k8snet_sim.scenario.loader import load_scenario

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"


def _sim(name: str, *overrides: str, seed: int = 1):
    return load(SCENARIOS / name, seed=seed, overrides=overrides)


def _by_pod(result) -> dict[str, dict]:
    return {r["pod"]: r for r in result.possible_endpoints}


@pytest.mark.parametrize(
    ("target", "reachable", "seen", "disposition"),
    [
        # eTP Cluster: any node forwards; the second hop is SNATed to the node.
        ("nodeport/node1/default/web-cluster:80", "all", {"10.244.0.1"}, "DELIVERED"),
        ("nodeport/node2/default/web-cluster:80", "all", {"192.168.10.12"}, "DELIVERED"),
        # eTP Local: client address kept on the node with endpoints, dropped elsewhere.
        ("nodeport/node1/default/web-local:80", "all", {"172.16.0.50"}, "DELIVERED"),
        ("nodeport/node3/default/web-local:80", "none", set(), "DROPPED"),
    ],
)
def test_nodeport_policies_from_outside(target, reachable, seen, disposition) -> None:
    result = trace(_sim("nodeport-policies.yaml"), "host/laptop", target)
    rows = result.possible_endpoints
    ok = [r for r in rows if r["reachable"]]
    verdict = "all" if len(ok) == len(rows) else "none" if not ok else "partial"
    assert verdict == reachable
    assert {r["sourceSeenByBackend"] for r in ok} == seen
    assert {r["disposition"] for r in rows} == {disposition}
    assert result.service is not None and result.service["nodePort"] in (30080, 30081)
    assert result.service["targetPort"] == "http"


def test_nodeport_local_drop_names_the_rule() -> None:
    result = trace(
        _sim("nodeport-policies.yaml"), "host/laptop", "nodeport/node2/default/web-local:80"
    )
    assert result.disposition == "DROPPED"
    assert "node/node2" in result.reason and "has no local endpoints" in " ".join(
        r for h in result.hops for r in h.rules
    )


def test_metallb_elected_node_answers_and_pending_is_explained() -> None:
    sim = _sim("loadbalancer-metallb.yaml")
    status = sim.world.info["loadBalancers"]["default/web-lb"][0]
    assert status["provider"] == "metallb-l2" and status["announcedBy"] in ("node1", "node2")
    result = trace(sim, "host/laptop", "loadbalancer/default/web-lb:80")
    assert result.reachable
    assert result.hops[2].node == f"node/{status['announcedBy']}"
    state = sim.world.info["state"]
    pending = state.service("default", "second-lb")
    assert pending.load_balancer_ips == () and "exhausted" in pending.load_balancer_pending
    with pytest.raises(UnknownEndpoint, match="second-lb"):
        trace(sim, "host/laptop", "loadbalancer/default/second-lb:8080")


def test_source_ranges_allow_and_deny() -> None:
    sim = _sim("loadbalancer-metallb.yaml")
    allowed = trace(sim, "host/laptop", "loadbalancer/default/web-lb:80")
    denied = trace(sim, "host/partner", "loadbalancer/default/web-lb:80")
    assert allowed.reachable and not denied.reachable
    assert denied.disposition == "DROPPED"
    assert "traffic not accepted by KUBE-FW" in denied.reason


def test_cloud_lb_health_checks_pick_nodes() -> None:
    sim = _sim("loadbalancer-cloud.yaml")
    lbs = sim.world.info["loadBalancers"]
    local = lbs["default/web-local"][0]
    cluster = lbs["default/web-cluster"][0]
    assert local["healthyNodes"] == ["node1"]
    assert local["probes"] == {"node1": "200", "node2": "503", "node3": "503"}
    assert cluster["healthyNodes"] == ["node1", "node2", "node3"]
    result = trace(sim, "host/customer", "loadbalancer/default/web-local:80")
    assert all(r["reachable"] for r in result.possible_endpoints)
    assert result.hops[2].node == "lb/default/web-local"
    assert result.hops[3].node == "node/node1"


def test_cloud_lb_without_provider_stays_pending() -> None:
    scenario = load_scenario(
        SCENARIOS / "loadbalancer-cloud.yaml", overrides=["loadBalancer=null", "expect=[]"]
    )
    sim = simulate(scenario)
    svc = sim.world.info["state"].service("default", "web-local")
    assert svc.load_balancer_pending and "provider" in svc.load_balancer_pending


@pytest.mark.parametrize(
    ("url", "pods", "status"),
    [
        ("http://shop.example/", {"shop/front-0", "shop/front-1"}, 200),  # Prefix /
        ("http://shop.example/cart", {"shop/cart-0"}, 200),  # Prefix /cart, exact length
        ("http://shop.example/cart/7", {"shop/cart-0"}, 200),  # Prefix, longer path
        ("http://shop.example/cartoons", {"shop/front-0", "shop/front-1"}, 200),  # not /cart
        ("http://api.example/v1/orders", {"shop/orders-0"}, 200),  # Exact
        ("http://api.example/v1/orders/1", set(), 404),  # Exact does not match longer
        ("http://api.example/status/x", set(), 503),  # ImplementationSpecific, no endpoints
        ("http://nobody.example/", set(), 404),  # no host, no default backend
        ("http://api.example/v1/orders?id=7", {"shop/orders-0"}, 200),  # the query is not path
        ("http://shop.example/cart?x=1#top", {"shop/cart-0"}, 200),  # nor is the fragment
    ],
)
def test_ingress_matching(url, pods, status) -> None:
    result = trace(_sim("ingress.yaml"), "host/laptop", url)
    assert result.http_status == status
    assert {r["pod"] for r in result.possible_endpoints if r["pod"]} == pods
    assert result.reachable == (status == 200)
    assert any(h.label == "proxy" for h in result.hops)


def test_ingress_default_backend() -> None:
    sim = _sim(
        "ingress.yaml",
        "manifests[1].spec.defaultBackend={service: {name: fallback, port: {number: 80}}}",
    )
    result = trace(sim, "host/laptop", "http://nobody.example/")
    assert result.reachable and result.endpoint["pod"] == "shop/fallback-0"


def test_ingress_via_service_upstream_goes_through_kube_proxy() -> None:
    sim = _sim("ingress.yaml", "ingressControllers[0].upstream=service")
    result = trace(sim, "host/laptop", "http://shop.example/cart")
    assert result.reachable
    assert any("DNAT" in rw for h in result.hops for rw in h.rewrites if h.node.startswith("node/"))


def test_affinity_holds_within_timeout_and_releases_after() -> None:
    sim = _sim("session-affinity.yaml", seed=2)
    first = trace(sim, "pod/default/client-0", "service/default/sticky:80")
    assert len(first.possible_endpoints) == 2
    sim.advance(30)
    held = trace(sim, "pod/default/client-0", "service/default/sticky:80")
    assert [r["pod"] for r in held.possible_endpoints] == [first.endpoint["pod"]]
    sim.advance(61)
    released = trace(sim, "pod/default/client-0", "service/default/sticky:80")
    assert len(released.possible_endpoints) == 2


@pytest.mark.parametrize(
    "name",
    [
        "nodeport-policies.yaml",
        "loadbalancer-metallb.yaml",
        "loadbalancer-cloud.yaml",
        "ingress.yaml",
        "session-affinity.yaml",
    ],
)
def test_bundled_expectations_hold(name: str) -> None:
    scenario = load_scenario(SCENARIOS / name)
    assert check(simulate(scenario, seed=1), scenario).passed
