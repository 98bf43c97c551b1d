"""Conformance extra: our iptables proxier against upstream kube-proxy's expected rules.

Rebuilds, as ClusterStates, the Services of four upstream ``proxier_test.go`` fixtures (K28)
and compares :func:`restore_input` with each fixture after upstream's ``sortIPTablesRules``
normalisation, applied to both sides. The fixtures live outside the repository
(``../shared/reference/kube-proxy``); without them this module is skipped.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cmp_to_key
from pathlib import Path

import pytest

from k8snet_sim.cluster.model import (
    ClusterState,
    Endpoint,
    KubeProxyConfig,
    Node,
    Service,
    ServicePort,
)
from k8snet_sim.proxy.iptables import node_rules, restore_input

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "kube-proxy"
pytestmark = pytest.mark.skipif(
    not REFERENCE.is_dir(), reason=f"upstream reference fixtures not found at {REFERENCE}"
)

# The upstream test environment (proxier_test.go header).
NODE = "test-hostname"
NODE_IP = "192.168.0.2"


def fixture(name: str) -> str:
    return (REFERENCE / "fixtures" / name).read_text()


def state_of(*services: tuple[Service, tuple[Endpoint, ...]]) -> ClusterState:
    return ClusterState(
        service_cidr="172.30.0.0/16",
        pod_cidr="10.0.0.0/8",
        node_port_range=(30000, 32767),
        nodes=(Node(NODE, NODE_IP, "10.0.0.0/24", "nodes"),),
        pods=(),
        services=tuple(svc for svc, _ in services),
        endpoints={(svc.key, svc.ports[0].name): eps for svc, eps in services},
        kube_proxy=KubeProxyConfig(cluster_cidr="10.0.0.0/8", masquerade_bit=14),
    )


def p80(node_port: int = 0) -> tuple[ServicePort, ...]:
    return (ServicePort(name="p80", protocol="TCP", port=80, target_port=80, node_port=node_port),)


def ep(ip: str, node: str | None) -> Endpoint:
    return Endpoint(ip=ip, port=80, node_name=node)


def overall_state() -> ClusterState:
    return state_of(
        (Service("ns1", "svc1", "ClusterIP", "172.30.0.41", p80()), (ep("10.180.0.1", "host1"),)),
        (
            Service(
                "ns2",
                "svc2",
                "LoadBalancer",
                "172.30.0.42",
                p80(3001),
                external_ips=("192.168.99.22",),
                load_balancer_ips=("1.2.3.4",),
                external_traffic_policy="Local",
                health_check_node_port=30000,
            ),
            (ep("10.180.0.2", None),),  # no nodeName: not local
        ),
        (Service("ns3", "svc3", "NodePort", "172.30.0.43", p80(3003)), (ep("10.180.0.3", "h"),)),
        (
            # type NodePort without a nodePort number: no KUBE-NODEPORTS rule
            Service(
                "ns4", "svc4", "NodePort", "172.30.0.44", p80(), external_ips=("192.168.99.33",)
            ),
            (ep("10.180.0.4", NODE), ep("10.180.0.5", NODE)),
        ),
        (
            Service(
                "ns5",
                "svc5",
                "LoadBalancer",
                "172.30.0.45",
                p80(3002),
                load_balancer_ips=("5.6.7.8",),
                load_balancer_source_ranges=(" 203.0.113.0/25",),
                health_check_node_port=30000,  # ignored: eTP=Cluster
            ),
            (ep("10.180.0.3", "h"),),
        ),
        (Service("ns6", "svc6", "ClusterIP", "172.30.0.46", p80()), ()),
    )


def loadbalancer_state() -> ClusterState:
    svc = Service(
        "ns1",
        "svc1",
        "LoadBalancer",
        "172.30.0.41",
        p80(3001),
        load_balancer_ips=("1.2.3.4", "5.6.7.8"),
        load_balancer_source_ranges=("192.168.0.0/24", "203.0.113.0/25"),
    )
    return state_of((svc, (ep("10.180.0.1", "host1"),)))


def onlylocal_lb_state() -> ClusterState:
    svc = Service(
        "ns1",
        "svc1",
        "LoadBalancer",
        "172.30.0.41",
        p80(3001),
        load_balancer_ips=("1.2.3.4",),
        external_traffic_policy="Local",
        health_check_node_port=30000,
        session_affinity="ClientIP",
        session_affinity_timeout=10800,
    )
    return state_of((svc, (ep("10.180.0.1", "host1"), ep("10.180.2.1", NODE))))


# --- upstream's sortIPTablesRules, re-expressed ------------------------------------------------

_COMMENT = re.compile(r'--comment ("[^"]*"|\S+)')


def _comment(rule: str) -> str | None:
    m = _COMMENT.search(rule)
    return m.group(1).strip('"') if m else None


def _service_name(comment: str) -> str:
    cut = min((i for i in (comment.find(" "), comment.find(":")) if i != -1), default=-1)
    return comment if cut == -1 else comment[:cut]


def _by_service(a: str, b: str) -> int:
    ca, cb = _comment(a), _comment(b)
    if ca is None or cb is None:
        return 0
    na, nb = _service_name(ca), _service_name(cb)
    return -1 if na < nb else (1 if nb < na else 0)


def _last_rule_last(a: str, b: str) -> int:
    def is_last(rule: str) -> bool:
        return "must be the last rule" in (_comment(rule) or "")

    if is_last(a):
        return 1
    if is_last(b):
        return -1
    return _by_service(a, b)


def _chain_key(name: str) -> tuple[int, str]:
    rank = {"KUBE-NODEPORTS": 0, "KUBE-SERVICES": 1}.get(name)
    if rank is None:
        rank = 2 if name.startswith("KUBE-") else 3
    return (rank, name)


def sort_iptables_rules(text: str) -> str:
    """Tables by name; KUBE-NODEPORTS, KUBE-SERVICES, other KUBE-*, others; KUBE-NODEPORTS and
    KUBE-SERVICES rules stably sorted by service name (nat's "must be the last rule" last);
    every other chain keeps its rule order."""
    tables: dict[str, tuple[list[str], dict[str, list[str]]]] = {}
    current = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            current = line[1:]
            tables[current] = ([], {})
        elif line.startswith(":"):
            name = line[1:].split()[0]
            tables[current][0].append(name)
            tables[current][1].setdefault(name, [])
        else:
            chain = line.split()[1]
            tables[current][1].setdefault(chain, []).append(line)
    out: list[str] = []
    for tname in sorted(tables):
        chains, rules = tables[tname]
        for name in ("KUBE-NODEPORTS", "KUBE-SERVICES"):
            if name in rules:
                cmp = _last_rule_last if (tname, name) == ("nat", "KUBE-SERVICES") else _by_service
                rules[name] = sorted(rules[name], key=cmp_to_key(cmp))
        ordered = sorted(chains, key=_chain_key)
        out.append(f"*{tname}")
        out += [f":{c} - [0:0]" for c in ordered]
        for c in ordered:
            out += rules[c]
        out.append("COMMIT")
    return "\n".join(out) + "\n"


# --- the comparisons -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture_name", "build"),
    [
        ("overall.rules", overall_state),
        ("loadbalancer.rules", loadbalancer_state),
        ("onlylocal-lb.rules", onlylocal_lb_state),
    ],
)
def test_restore_input_matches_upstream_fixture(
    fixture_name: str, build: Callable[[], ClusterState]
) -> None:
    ours = sort_iptables_rules(restore_input(build(), NODE))
    expected = sort_iptables_rules(fixture(fixture_name))
    assert ours.splitlines() == expected.splitlines()


def _unquoted(rule: str) -> str:
    # The fixture's builtin-chain jumps come from a fake that joins arguments without quoting
    # ("--comment kubernetes service portals"); a real node, and valid restore input, quotes
    # multi-word comments. Compare those rules with quotes removed.
    return rule.replace('"', "")


BUILTIN = ("INPUT", "FORWARD", "OUTPUT", "PREROUTING", "POSTROUTING")


def _rules_by_table(text: str) -> dict[str, list[str]]:
    tables: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("*"):
            current = line[1:]
            tables[current] = []
        elif line.startswith("-A "):
            chain = line.split()[1]
            tables[current].append(_unquoted(line) if chain in BUILTIN else line)
    return tables


def test_node_rules_contain_every_tracepackets_rule_in_order() -> None:
    ours = _rules_by_table(node_rules(overall_state(), NODE))
    expected = _rules_by_table(fixture("tracepackets.rules"))
    assert set(ours) == set(expected) == {"filter", "nat"}
    for table, rules in expected.items():
        missing = [r for r in rules if r not in ours[table]]
        assert not missing, f"{table}: missing {missing}"
        # Within each chain, the fixture's rules appear in the same relative order.
        for chain in {r.split()[1] for r in rules}:
            want = [r for r in rules if r.split()[1] == chain]
            got = [r for r in ours[table] if r in want]
            assert got == want, f"{table}/{chain}"


def test_sorting_helper_is_not_a_no_op() -> None:
    # Guard against a normaliser that would make any two inputs equal.
    assert sort_iptables_rules(fixture("overall.rules")) != sort_iptables_rules(
        fixture("loadbalancer.rules")
    )
