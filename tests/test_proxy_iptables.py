"""The iptables proxier, feature by feature, on small clusters built here.

Each test builds a ClusterState for node ``node-a`` (192.168.10.11) with the pod-CIDR detector
10.244.0.0/16 unless stated, then asserts on exact rule lines, their presence and their order.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import replace

import pytest

from k8snet_sim.cluster.model import (
    ClusterState,
    Endpoint,
    KubeProxyConfig,
    Node,
    Service,
    ServicePort,
)
from k8snet_sim.errors import UnknownEndpoint
from k8snet_sim.proxy import naming
from k8snet_sim.proxy.iptables import IptablesRuleSet, node_rules, restore_input, sync

NODE = "node-a"
NODE_IP = "192.168.10.11"
POD_CIDR = "10.244.0.0/16"
WEB = "shop/web:http"
SVC = naming.service_chain(WEB, "tcp")
SVL = naming.local_service_chain(WEB, "tcp")
EXT = naming.external_chain(WEB, "tcp")
FW = naming.firewall_chain(WEB, "tcp")
LAST_RULE = (
    '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the '
    'last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS'
)


def sep(address: str, name: str = WEB, proto: str = "tcp") -> str:
    return naming.endpoint_chain(name, proto, address)


def local(
    ip: str, *, ready: bool = True, serving: bool = True, terminating: bool = False
) -> Endpoint:
    return Endpoint(ip, 8080, NODE, ready=ready, serving=serving, terminating=terminating)


def remote(
    ip: str, *, ready: bool = True, serving: bool = True, terminating: bool = False
) -> Endpoint:
    return Endpoint(ip, 8080, "node-b", ready=ready, serving=serving, terminating=terminating)


def web(
    type_: str = "ClusterIP", *, node_port: int = 0, protocol: str = "TCP", **kw: object
) -> Service:
    port = ServicePort("http", protocol, 80, 8080, node_port)
    return Service("shop", "web", type_, "10.96.0.10", (port,), **kw)  # type: ignore[arg-type]


def cluster(*services: tuple[Service, tuple[Endpoint, ...]], **proxy: object) -> ClusterState:
    kube_proxy = KubeProxyConfig(**({"cluster_cidr": POD_CIDR} | proxy))  # type: ignore[arg-type]
    return ClusterState(
        service_cidr="10.96.0.0/16",
        pod_cidr=POD_CIDR,
        node_port_range=(30000, 32767),
        nodes=(
            Node(NODE, NODE_IP, "10.244.1.0/24", "lan"),
            Node("node-b", "192.168.10.12", "10.244.2.0/24", "lan"),
        ),
        pods=(),
        services=tuple(s for s, _ in services),
        endpoints={(s.key, p.name): eps for s, eps in services for p in s.ports},
        kube_proxy=kube_proxy,
    )


def rules_of(state: ClusterState) -> IptablesRuleSet:
    return sync(state, NODE)


def nat(state: ClusterState, chain: str) -> list[str]:
    return rules_of(state).nat.chain_rules(chain)


def filt(state: ClusterState, chain: str) -> list[str]:
    return rules_of(state).filter.chain_rules(chain)


def check_jumps(rules: IptablesRuleSet) -> None:
    """Upstream's checkIPTablesRuleJumps: jumped-to or filled chains are declared, jumped-to
    chains have rules (KUBE-NODEPORTS may be empty), declared chains are jumped to."""
    top_level = {
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FORWARD",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-PROXY-FIREWALL",
        "KUBE-FIREWALL",
    }
    builtin_targets = {"ACCEPT", "DROP", "REJECT", "RETURN", "DNAT", "MARK", "MASQUERADE"}
    for table in (rules.filter, rules.nat):
        declared = set(table.chains)
        assert len(declared) == len(table.chains), f"{table.name}: duplicate declarations"
        filled = {r.split()[1] for r in table.rules}
        jumped = {m for r in table.rules for m in re.findall(r" -j (\S+)", r)} - builtin_targets
        assert filled <= declared, filled - declared
        assert jumped <= declared, jumped - declared
        assert (jumped - {"KUBE-NODEPORTS"}) <= filled, jumped - filled
        assert declared - jumped <= top_level, declared - jumped - top_level


# --- fixed rules ------------------------------------------------------------------------------


def test_fixed_rules_on_an_empty_cluster() -> None:
    rules = rules_of(cluster())
    assert rules.nat.rules == (
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
        "-j MASQUERADE",
        "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
        LAST_RULE,
    )
    assert rules.filter.rules == (
        '-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" '
        "-d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" '
        "-m mark --mark 0x4000/0x4000 -j ACCEPT",
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" '
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    )
    assert rules.filter.chains == (
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FORWARD",
        "KUBE-NODEPORTS",
        "KUBE-PROXY-FIREWALL",
        "KUBE-FIREWALL",
    )
    assert rules.nat.chains == (
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    )


def test_restore_input_layout() -> None:
    text = restore_input(cluster((web(), (remote("10.244.2.5"),))), NODE)
    lines = text.splitlines()
    assert lines[0] == "*filter" and lines[-1] == "COMMIT" and text.endswith("\n")
    assert lines.count("COMMIT") == 2 and lines.index("*nat") == lines.index("COMMIT") + 1
    assert not any(re.match(r"-A (INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) ", x) for x in lines)
    assert lines[lines.index("*nat") - 2] == (
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" '
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    )
    assert lines[-2] == LAST_RULE


@pytest.mark.parametrize(("bit", "mark"), [(14, "0x4000"), (15, "0x8000"), (0, "0x1")])
def test_masquerade_mark_follows_the_bit(bit: int, mark: str) -> None:
    rules = rules_of(cluster(masquerade_bit=bit))
    assert f"-A KUBE-MARK-MASQ -j MARK --or-mark {mark}" in rules.nat.rules
    assert f"-A KUBE-POSTROUTING -m mark ! --mark {mark}/{mark} -j RETURN" in rules.nat.rules
    assert any(f"--mark {mark}/{mark} -j ACCEPT" in r for r in rules.filter.rules)


def test_unknown_node_is_a_library_error() -> None:
    with pytest.raises(UnknownEndpoint, match="node/nope"):
        sync(cluster(), "nope")


def test_random_fully_is_opt_in() -> None:
    rules = sync(cluster(), NODE, random_fully=True)
    assert rules.nat.rules[2].endswith("-j MASQUERADE --random-fully")


@pytest.mark.parametrize(
    ("proxy", "last_rules", "firewall"),
    [
        ({}, [LAST_RULE], True),
        (
            {"localhost_nodeports": False},
            [LAST_RULE.replace("LOCAL -j", "LOCAL ! -d 127.0.0.0/8 -j")],
            False,
        ),
        (
            {"nodeport_addresses": ("192.168.10.0/24",)},
            [LAST_RULE.replace("-m addrtype --dst-type LOCAL", "-d 192.168.10.11")],
            False,  # loopback not covered: localhost NodePorts are switched off
        ),
        (
            {"nodeport_addresses": ("192.168.10.0/24", "127.0.0.0/8")},
            [
                LAST_RULE.replace("-m addrtype --dst-type LOCAL", "-d 127.0.0.1"),
                LAST_RULE.replace("-m addrtype --dst-type LOCAL", "-d 192.168.10.11"),
            ],
            True,
        ),
        (
            {"nodeport_addresses": ("127.0.0.0/8",), "localhost_nodeports": False},
            [],  # loopback excluded by the flag, and nothing else matches
            False,
        ),
        ({"nodeport_addresses": ("0.0.0.0/0",)}, [LAST_RULE], True),
        ({"nodeport_addresses": ("172.31.0.0/16",)}, [], False),
    ],
)
def test_nodeports_jump_and_localhost(
    proxy: dict[str, object], last_rules: list[str], firewall: bool
) -> None:
    rules = rules_of(cluster(**proxy))
    assert [r for r in rules.nat.rules if "KUBE-NODEPORTS" in r and "-A KUBE-SERVICES" in r] == (
        last_rules
    )
    assert ("KUBE-FIREWALL" in rules.filter.chains) is firewall
    assert bool(rules.filter.chain_rules("KUBE-FIREWALL")) is firewall


# --- ClusterIP, dispatch, endpoints -----------------------------------------------------------


def test_cluster_ip_service_exact_rules() -> None:
    eps = (remote("10.244.2.10"), local("10.244.1.7"), remote("10.244.2.9"))
    state = cluster((web(), eps))
    assert nat(state, "KUBE-SERVICES")[0] == (
        f'-A KUBE-SERVICES -m comment --comment "{WEB} cluster IP" -m tcp -p tcp '
        f"-d 10.96.0.10 --dport 80 -j {SVC}"
    )
    assert nat(state, SVC) == [
        f'-A {SVC} -m comment --comment "{WEB} cluster IP" -m tcp -p tcp -d 10.96.0.10 '
        f"--dport 80 ! -s {POD_CIDR} -j KUBE-MARK-MASQ",
        f'-A {SVC} -m comment --comment "{WEB} -> 10.244.2.10:8080" '
        f"-m statistic --mode random --probability 0.3333333333 -j {sep('10.244.2.10:8080')}",
        f'-A {SVC} -m comment --comment "{WEB} -> 10.244.1.7:8080" '
        f"-m statistic --mode random --probability 0.5000000000 -j {sep('10.244.1.7:8080')}",
        f'-A {SVC} -m comment --comment "{WEB} -> 10.244.2.9:8080" -j {sep("10.244.2.9:8080")}',
    ]
    chain = sep("10.244.1.7:8080")
    assert nat(state, chain) == [
        f"-A {chain} -m comment --comment {WEB} -s 10.244.1.7 -j KUBE-MARK-MASQ",  # hairpin
        f"-A {chain} -m comment --comment {WEB} -m tcp -p tcp -j DNAT "
        "--to-destination 10.244.1.7:8080",
    ]
    rules = rules_of(state)
    assert rules.nat.chains[4:] == (SVC, *(sep(e.address) for e in eps))
    assert not any(EXT in c or SVL in c for c in rules.nat.chains)
    check_jumps(rules)


@pytest.mark.parametrize(
    ("n", "probabilities"),
    [
        (1, []),
        (2, ["0.5000000000"]),
        (4, ["0.2500000000", "0.3333333333", "0.5000000000"]),
    ],
)
def test_probabilities_make_a_uniform_choice(n: int, probabilities: list[str]) -> None:
    eps = tuple(remote(f"10.244.2.{i}") for i in range(1, n + 1))
    dispatch = [r for r in nat(cluster((web(), eps)), SVC) if "KUBE-SEP-" in r]
    assert len(dispatch) == n
    assert [re.search(r"--probability (\S+)", r).group(1) for r in dispatch[:-1]] == probabilities  # type: ignore[union-attr]
    assert "statistic" not in dispatch[-1]


@pytest.mark.parametrize(
    ("proxy", "masq_rule"),
    [
        ({}, f"--dport 80 ! -s {POD_CIDR} -j KUBE-MARK-MASQ"),
        ({"cluster_cidr": None}, None),  # no-op detector: off-cluster clients not masqueraded
        ({"masquerade_all": True}, "--dport 80 -j KUBE-MARK-MASQ"),
        ({"masquerade_all": True, "cluster_cidr": None}, "--dport 80 -j KUBE-MARK-MASQ"),
    ],
)
def test_cluster_ip_masquerade_rule(proxy: dict[str, object], masq_rule: str | None) -> None:
    svc_rules = nat(cluster((web(), (remote("10.244.2.5"),)), **proxy), SVC)
    masq = [r for r in svc_rules if r.endswith("KUBE-MARK-MASQ")]
    if masq_rule is None:
        assert masq == []
    else:
        assert len(masq) == 1 and masq[0].endswith(masq_rule)
        assert svc_rules[0] == masq[0]


@pytest.mark.parametrize(
    ("protocol", "match"), [("UDP", "-m udp -p udp"), ("SCTP", "-m sctp -p sctp")]
)
def test_udp_and_sctp_ports(protocol: str, match: str) -> None:
    state = cluster((web(protocol=protocol), (local("10.244.1.7"),)))
    proto = protocol.lower()
    chain = naming.service_chain(WEB, proto)
    endpoint = naming.endpoint_chain(WEB, proto, "10.244.1.7:8080")
    assert chain != SVC
    assert nat(state, "KUBE-SERVICES")[0] == (
        f'-A KUBE-SERVICES -m comment --comment "{WEB} cluster IP" {match} '
        f"-d 10.96.0.10 --dport 80 -j {chain}"
    )
    assert nat(state, endpoint)[-1] == (
        f"-A {endpoint} -m comment --comment {WEB} {match} -j DNAT --to-destination 10.244.1.7:8080"
    )
    # Hairpin masquerade is protocol-independent.
    assert nat(state, endpoint)[0].endswith("-s 10.244.1.7 -j KUBE-MARK-MASQ")


def test_unnamed_port_uses_service_name() -> None:
    svc = Service("shop", "cart", "ClusterIP", "10.96.0.20", (ServicePort("", "TCP", 80, 80),))
    state = cluster((svc, (remote("10.244.2.5"),)))
    chain = naming.service_chain("shop/cart", "tcp")
    assert '--comment "shop/cart cluster IP"' in nat(state, "KUBE-SERVICES")[0]
    assert nat(state, "KUBE-SERVICES")[0].endswith(f"-j {chain}")


@pytest.mark.parametrize(
    "svc",
    [
        Service("shop", "db", "ClusterIP", None, (ServicePort("pg", "TCP", 5432, 5432),)),
        Service("shop", "ext", "ExternalName", None, (ServicePort("h", "TCP", 80, 80),)),
    ],
)
def test_headless_and_external_name_get_no_rules(svc: Service) -> None:
    state = cluster((svc, (remote("10.244.2.5"),)))
    assert rules_of(state) == rules_of(cluster())


# --- external destinations --------------------------------------------------------------------


def test_nodeport_loadbalancer_and_external_ip_go_through_ext() -> None:
    svc = web(
        "LoadBalancer",
        node_port=30080,
        external_ips=("172.16.0.100",),
        load_balancer_ips=("192.168.10.200",),
    )
    state = cluster((svc, (remote("10.244.2.5"),)))
    assert nat(state, "KUBE-SERVICES") == [
        f'-A KUBE-SERVICES -m comment --comment "{WEB} cluster IP" -m tcp -p tcp '
        f"-d 10.96.0.10 --dport 80 -j {SVC}",
        f'-A KUBE-SERVICES -m comment --comment "{WEB} external IP" -m tcp -p tcp '
        f"-d 172.16.0.100 --dport 80 -j {EXT}",
        f'-A KUBE-SERVICES -m comment --comment "{WEB} loadbalancer IP" -m tcp -p tcp '
        f"-d 192.168.10.200 --dport 80 -j {EXT}",
        LAST_RULE,
    ]
    assert nat(state, "KUBE-NODEPORTS") == [
        f"-A KUBE-NODEPORTS -m comment --comment {WEB} -m tcp -p tcp --dport 30080 -j {EXT}"
    ]
    assert nat(state, EXT) == [
        f'-A {EXT} -m comment --comment "masquerade traffic for {WEB} external destinations" '
        "-j KUBE-MARK-MASQ",
        f"-A {EXT} -j {SVC}",
    ]
    assert filt(state, "KUBE-NODEPORTS") == []  # eTP=Cluster: no health check port
    check_jumps(rules_of(state))


def test_type_clusterip_with_external_ip_behaves_as_cluster_policy() -> None:
    svc = web(external_ips=("172.16.0.100",), external_traffic_policy="Local")
    state = cluster((svc, (remote("10.244.2.5"), local("10.244.1.7"))))
    assert nat(state, EXT)[-1] == f"-A {EXT} -j {SVC}"
    assert SVL not in rules_of(state).nat.chains


def test_external_traffic_policy_local() -> None:
    svc = web(
        "LoadBalancer",
        node_port=30080,
        load_balancer_ips=("192.168.10.200",),
        external_traffic_policy="Local",
        health_check_node_port=32000,
    )
    eps = (remote("10.244.2.5"), local("10.244.1.7"))
    state = cluster((svc, eps))
    assert nat(state, EXT) == [
        f'-A {EXT} -m comment --comment "pod traffic for {WEB} external destinations" '
        f"-s {POD_CIDR} -j {SVC}",
        f'-A {EXT} -m comment --comment "masquerade LOCAL traffic for {WEB} external '
        'destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ',
        f'-A {EXT} -m comment --comment "route LOCAL traffic for {WEB} external destinations" '
        f"-m addrtype --src-type LOCAL -j {SVC}",
        f"-A {EXT} -j {SVL}",
    ]
    assert nat(state, SVL) == [
        f'-A {SVL} -m comment --comment "{WEB} -> 10.244.1.7:8080" -j {sep("10.244.1.7:8080")}'
    ]
    assert len([r for r in nat(state, SVC) if "KUBE-SEP" in r]) == 2
    assert filt(state, "KUBE-NODEPORTS") == [
        f'-A KUBE-NODEPORTS -m comment --comment "{WEB} health check node port" '
        "-m tcp -p tcp --dport 32000 -j ACCEPT"
    ]
    assert filt(state, "KUBE-EXTERNAL-SERVICES") == []
    check_jumps(rules_of(state))


def test_external_traffic_policy_local_without_detector_has_no_pod_short_circuit() -> None:
    svc = web("NodePort", node_port=30080, external_traffic_policy="Local")
    state = cluster((svc, (local("10.244.1.7"),)), cluster_cidr=None)
    assert not any("pod traffic" in r for r in nat(state, EXT))
    assert len(nat(state, EXT)) == 3


def test_health_check_node_port_ignored_without_etp_local() -> None:
    svc = web("LoadBalancer", node_port=30080, health_check_node_port=32000)
    assert filt(cluster((svc, (remote("10.244.2.5"),))), "KUBE-NODEPORTS") == []


def test_no_local_endpoints_with_etp_local_drops_external_traffic() -> None:
    svc = web(
        "LoadBalancer",
        node_port=30080,
        external_ips=("172.16.0.100",),
        load_balancer_ips=("192.168.10.200",),
        external_traffic_policy="Local",
        health_check_node_port=32000,
    )
    state = cluster((svc, (remote("10.244.2.5"),)))
    comment = f'-m comment --comment "{WEB} has no local endpoints"'
    assert filt(state, "KUBE-EXTERNAL-SERVICES") == [
        f"-A KUBE-EXTERNAL-SERVICES {comment} -m tcp -p tcp -d 172.16.0.100 --dport 80 -j DROP",
        f"-A KUBE-EXTERNAL-SERVICES {comment} -m tcp -p tcp -d 192.168.10.200 --dport 80 -j DROP",
        f"-A KUBE-EXTERNAL-SERVICES {comment} -m addrtype --dst-type LOCAL -m tcp -p tcp "
        "--dport 30080 -j DROP",
    ]
    # The EXT chain keeps its short-circuits but never reaches KUBE-SVL.
    assert len(nat(state, EXT)) == 3 and not any(SVL in r for r in nat(state, EXT))
    assert SVL not in rules_of(state).nat.chains
    # The health check port is still accepted (it answers 503 here).
    assert len(filt(state, "KUBE-NODEPORTS")) == 1
    # ClusterIP traffic still works.
    assert nat(state, "KUBE-SERVICES")[0].endswith(f"-j {SVC}")
    check_jumps(rules_of(state))


def test_no_endpoints_rejects_everything_and_builds_no_nat_chains() -> None:
    svc = web(
        "LoadBalancer",
        node_port=30080,
        external_ips=("172.16.0.100",),
        load_balancer_ips=("192.168.10.200",),
        external_traffic_policy="Local",  # still REJECT, not DROP
        health_check_node_port=32000,
        load_balancer_source_ranges=("203.0.113.0/25",),
    )
    state = cluster((svc, ()))
    comment = f'-m comment --comment "{WEB} has no endpoints"'
    assert filt(state, "KUBE-SERVICES") == [
        f"-A KUBE-SERVICES {comment} -m tcp -p tcp -d 10.96.0.10 --dport 80 -j REJECT"
    ]
    assert [r.split(" -j ")[1] for r in filt(state, "KUBE-EXTERNAL-SERVICES")] == ["REJECT"] * 3
    assert filt(state, "KUBE-PROXY-FIREWALL") == []
    rules = rules_of(state)
    assert rules.nat.rules == rules_of(cluster()).nat.rules
    assert rules.nat.chains == rules_of(cluster()).nat.chains
    assert len(filt(state, "KUBE-NODEPORTS")) == 1


def test_ready_endpoints_only_not_ready_counts_as_none() -> None:
    state = cluster((web(), (remote("10.244.2.5", ready=False),)))
    assert filt(state, "KUBE-SERVICES")[0].endswith("-j REJECT")


# --- internal traffic policy ------------------------------------------------------------------


def test_internal_traffic_policy_local() -> None:
    svc = web(internal_traffic_policy="Local")
    state = cluster((svc, (remote("10.244.2.5"), local("10.244.1.7"))))
    assert nat(state, "KUBE-SERVICES")[0].endswith(f"-j {SVL}")
    assert nat(state, SVL)[0].endswith(f"! -s {POD_CIDR} -j KUBE-MARK-MASQ")
    assert nat(state, SVL)[1:] == [
        f'-A {SVL} -m comment --comment "{WEB} -> 10.244.1.7:8080" -j {sep("10.244.1.7:8080")}'
    ]
    # Only the local endpoint is reachable from here: no SVC chain, one SEP.
    assert rules_of(state).nat.chains[4:] == (SVL, sep("10.244.1.7:8080"))
    check_jumps(rules_of(state))


def test_internal_traffic_policy_local_without_local_endpoints_drops() -> None:
    state = cluster((web(internal_traffic_policy="Local"), (remote("10.244.2.5"),)))
    assert filt(state, "KUBE-SERVICES") == [
        f'-A KUBE-SERVICES -m comment --comment "{WEB} has no local endpoints" -m tcp -p tcp '
        "-d 10.96.0.10 --dport 80 -j DROP"
    ]
    assert rules_of(state).nat.chains == rules_of(cluster()).nat.chains


def test_internal_policy_local_does_not_affect_nodeport() -> None:
    svc = web("NodePort", node_port=30080, internal_traffic_policy="Local")
    state = cluster((svc, (remote("10.244.2.5"),)))
    assert filt(state, "KUBE-SERVICES")[0].endswith("-j DROP")
    assert nat(state, EXT)[-1] == f"-A {EXT} -j {SVC}"
    assert nat(state, "KUBE-NODEPORTS")[0].endswith(f"-j {EXT}")


# --- session affinity -------------------------------------------------------------------------


def test_client_ip_affinity() -> None:
    svc = web(session_affinity="ClientIP", session_affinity_timeout=600)
    eps = (remote("10.244.2.5"), local("10.244.1.7"))
    state = cluster((svc, eps))
    a, b = sep("10.244.2.5:8080"), sep("10.244.1.7:8080")
    assert nat(state, SVC)[1:] == [
        f'-A {SVC} -m comment --comment "{WEB} -> 10.244.2.5:8080" '
        f"-m recent --name {a} --rcheck --seconds 600 --reap -j {a}",
        f'-A {SVC} -m comment --comment "{WEB} -> 10.244.1.7:8080" '
        f"-m recent --name {b} --rcheck --seconds 600 --reap -j {b}",
        f'-A {SVC} -m comment --comment "{WEB} -> 10.244.2.5:8080" '
        f"-m statistic --mode random --probability 0.5000000000 -j {a}",
        f'-A {SVC} -m comment --comment "{WEB} -> 10.244.1.7:8080" -j {b}',
    ]
    assert nat(state, b)[1] == (
        f"-A {b} -m comment --comment {WEB} -m recent --name {b} --set -m tcp -p tcp "
        "-j DNAT --to-destination 10.244.1.7:8080"
    )


# --- loadBalancerSourceRanges -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("ranges", "fw_sources"),
    [
        ((" 203.0.113.0/25",), ["203.0.113.0/25"]),  # whitespace trimmed
        (
            ("192.168.10.0/24", "203.0.113.0/25"),  # covers the node: node-sourced VIP allowed
            ["192.168.10.0/24", "203.0.113.0/25", "192.168.10.200", "192.168.10.201"],
        ),
    ],
)
def test_load_balancer_source_ranges(ranges: tuple[str, ...], fw_sources: list[str]) -> None:
    svc = web(
        "LoadBalancer",
        node_port=30080,
        load_balancer_ips=("192.168.10.200", "192.168.10.201"),
        load_balancer_source_ranges=ranges,
    )
    state = cluster((svc, (remote("10.244.2.5"),)))
    head = f'-A {FW} -m comment --comment "{WEB} loadbalancer IP"'
    assert nat(state, FW) == [
        *(f"{head} -s {src} -j {EXT}" for src in fw_sources),
        f'-A {FW} -m comment --comment "other traffic to {WEB} will be dropped by '
        'KUBE-PROXY-FIREWALL"',
    ]
    assert [r for r in nat(state, "KUBE-SERVICES") if "loadbalancer IP" in r] == [
        f'-A KUBE-SERVICES -m comment --comment "{WEB} loadbalancer IP" -m tcp -p tcp '
        f"-d {lb} --dport 80 -j {FW}"
        for lb in ("192.168.10.200", "192.168.10.201")
    ]
    assert filt(state, "KUBE-PROXY-FIREWALL") == [
        f'-A KUBE-PROXY-FIREWALL -m comment --comment "{WEB} traffic not accepted by {FW}" '
        f"-m tcp -p tcp -d {lb} --dport 80 -j DROP"
        for lb in ("192.168.10.200", "192.168.10.201")
    ]
    # NodePorts are not subject to the source ranges.
    assert nat(state, "KUBE-NODEPORTS")[0].endswith(f"-j {EXT}")
    check_jumps(rules_of(state))


def test_source_ranges_without_lb_ip_build_no_firewall() -> None:
    svc = web("LoadBalancer", node_port=30080, load_balancer_source_ranges=("203.0.113.0/25",))
    rules = rules_of(cluster((svc, (remote("10.244.2.5"),))))
    assert FW not in rules.nat.chains and rules.filter.chain_rules("KUBE-PROXY-FIREWALL") == []


# --- terminating endpoints --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("eps", "svc_targets", "svl_targets"),
    [
        # Ready endpoints win over serving-terminating ones.
        (
            (local("10.244.1.7"), local("10.244.1.8", ready=False, terminating=True)),
            ["10.244.1.7:8080"],
            ["10.244.1.7:8080"],
        ),
        # No Ready endpoint anywhere: fall back to serving+terminating (not the non-serving).
        (
            (
                remote("10.244.2.5", ready=False, terminating=True),
                local("10.244.1.8", ready=False, serving=False, terminating=True),
            ),
            ["10.244.2.5:8080"],
            None,
        ),
        # Local set falls back independently of the cluster set.
        (
            (remote("10.244.2.5"), local("10.244.1.8", ready=False, terminating=True)),
            ["10.244.2.5:8080"],
            ["10.244.1.8:8080"],
        ),
    ],
)
def test_terminating_endpoint_fallback(
    eps: tuple[Endpoint, ...], svc_targets: list[str], svl_targets: list[str] | None
) -> None:
    svc = web("NodePort", node_port=30080, external_traffic_policy="Local")
    state = cluster((svc, eps))

    def targets(chain: str) -> list[str]:
        return [m for r in nat(state, chain) for m in re.findall(r'-> (\S+)"', r)]

    assert targets(SVC) == svc_targets
    rules = rules_of(state)
    if svl_targets is None:
        assert SVL not in rules.nat.chains
        assert filt(state, "KUBE-EXTERNAL-SERVICES")[0].endswith("-j DROP")
    else:
        assert targets(SVL) == svl_targets
    # Every endpoint reachable from either chain, and only those, has a SEP chain.
    reachable = sorted(set(svc_targets) | set(svl_targets or []))
    assert sorted(c for c in rules.nat.chains if c.startswith("KUBE-SEP-")) == sorted(
        sep(a) for a in reachable
    )
    check_jumps(rules)


# --- ordering, scale, determinism -------------------------------------------------------------


def test_services_are_ordered_by_service_port_name() -> None:
    def svc(ns: str, name: str, ip: str) -> tuple[Service, tuple[Endpoint, ...]]:
        port = ServicePort("http", "TCP", 80, 8080)
        return (Service(ns, name, "ClusterIP", ip, (port,)), (remote("10.244.2.5"),))

    a, b, c = (
        svc("shop", "web", "10.96.0.1"),
        svc("admin", "ui", "10.96.0.2"),
        svc("shop", "api", "10.96.0.3"),
    )
    forward, backward = cluster(a, b, c), cluster(c, b, a)
    assert restore_input(forward, NODE) == restore_input(backward, NODE)
    comments = [re.search(r'"(\S+) cluster IP"', r) for r in nat(forward, "KUBE-SERVICES")]
    assert [m.group(1) for m in comments if m] == [
        "admin/ui:http",
        "shop/api:http",
        "shop/web:http",
    ]


def test_large_clusters_drop_endpoint_comments() -> None:
    services = tuple(
        (
            Service(f"ns{i}", "svc", "ClusterIP", f"10.96.{i // 250}.{i % 250 + 1}",
                    (ServicePort("p", "TCP", 80, 80),)),
            tuple(Endpoint(f"10.244.{i // 250}.{i % 250 + 1}", 80 + k, "node-b") for k in range(3)),
        )
        for i in range(334)  # 1002 endpoints > 1000
    )  # fmt: skip
    big = rules_of(cluster(*services))
    name = "ns0/svc:p"
    svc_chain = naming.service_chain(name, "tcp")
    assert big.nat.chain_rules(svc_chain)[1] == (
        f"-A {svc_chain} -m statistic --mode random --probability 0.3333333333 "
        f"-j {naming.endpoint_chain(name, 'tcp', '10.244.0.1:80')}"
    )
    sep_chain = naming.endpoint_chain(name, "tcp", "10.244.0.1:80")
    assert big.nat.chain_rules(sep_chain)[0] == f"-A {sep_chain} -s 10.244.0.1 -j KUBE-MARK-MASQ"
    # The cluster-IP rules keep their comments.
    assert '"ns0/svc:p cluster IP"' in big.nat.chain_rules(svc_chain)[0]
    small = rules_of(cluster(*services[:333]))  # 999 endpoints
    assert "-m comment" in small.nat.chain_rules(sep_chain)[0]


def test_multi_port_service_gets_one_chain_set_per_port() -> None:
    ports = (ServicePort("http", "TCP", 80, 8080), ServicePort("dns", "UDP", 53, 5353))
    svc = Service("shop", "web", "ClusterIP", "10.96.0.10", ports)
    state = cluster((svc, (remote("10.244.2.5"),)))
    rules = rules_of(state)
    assert naming.service_chain("shop/web:dns", "udp") in rules.nat.chains
    assert SVC in rules.nat.chains
    # Sorted by port name: dns before http.
    first, second = nat(state, "KUBE-SERVICES")[:2]
    assert "shop/web:dns" in first and "shop/web:http" in second


# --- node_rules: what iptables-save shows -----------------------------------------------------


def test_node_rules_builtin_chains_and_jumps() -> None:
    text = node_rules(cluster((web(), (remote("10.244.2.5"),))), NODE)
    filter_text, nat_text = text.split("COMMIT\n")[:2]
    flines, nlines = filter_text.splitlines(), nat_text.splitlines()
    assert flines[:4] == ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]",
                          ":OUTPUT ACCEPT [0:0]"]  # fmt: skip
    assert nlines[:5] == ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]",
                          ":OUTPUT ACCEPT [0:0]", ":POSTROUTING ACCEPT [0:0]"]  # fmt: skip
    new = "-m conntrack --ctstate NEW"

    def jumps(lines: list[str], chain: str) -> list[str]:
        return [x for x in lines if x.startswith(f"-A {chain} ")]

    assert jumps(flines, "INPUT") == [
        "-A INPUT -j KUBE-FIREWALL",
        f'-A INPUT {new} -m comment --comment "kubernetes load balancer firewall" '
        "-j KUBE-PROXY-FIREWALL",
        '-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS',
        f'-A INPUT {new} -m comment --comment "kubernetes externally-visible service portals" '
        "-j KUBE-EXTERNAL-SERVICES",
    ]
    assert [x.split(" -j ")[1] for x in jumps(flines, "FORWARD")] == [
        "KUBE-PROXY-FIREWALL", "KUBE-FORWARD", "KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES",
    ]  # fmt: skip
    assert [x.split(" -j ")[1] for x in jumps(flines, "OUTPUT")] == [
        "KUBE-FIREWALL", "KUBE-PROXY-FIREWALL", "KUBE-SERVICES",
    ]  # fmt: skip
    assert jumps(nlines, "PREROUTING") == [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'
    ]
    assert jumps(nlines, "OUTPUT") == [
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'
    ]
    assert jumps(nlines, "POSTROUTING") == [
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING'
    ]
    # User chains listed alphabetically after the builtins; every restore rule is present.
    user = [x[1:].split()[0] for x in nlines if x.startswith(":KUBE-")]
    assert user == sorted(user)
    restore = restore_input(cluster((web(), (remote("10.244.2.5"),))), NODE)
    assert {x for x in restore.splitlines() if x.startswith("-A")} <= set(text.splitlines())


def test_node_rules_declare_kube_firewall_even_when_kube_proxy_leaves_it_empty() -> None:
    text = node_rules(cluster(localhost_nodeports=False), NODE)
    assert ":KUBE-FIREWALL - [0:0]" in text
    assert "-A INPUT -j KUBE-FIREWALL" in text
    assert "-A KUBE-FIREWALL " not in text


def test_node_rules_group_rules_by_chain() -> None:
    svc = web("NodePort", node_port=30080)
    text = node_rules(cluster((svc, (remote("10.244.2.5"),))), NODE)
    for table_text in text.split("COMMIT\n")[:2]:
        chains = [x.split()[1] for x in table_text.splitlines() if x.startswith("-A ")]
        seen: list[str] = []
        for chain in chains:
            if not seen or seen[-1] != chain:
                assert chain not in seen, f"{chain} split in two"
                seen.append(chain)
        assert len(seen) > 3


def test_node_rules_parse_with_the_netfilter_parser() -> None:
    parser = pytest.importorskip("k8snet_sim.netfilter.iptables_save")
    parse = getattr(parser, "parse_iptables_save", None)
    if parse is None:
        pytest.skip("parse_iptables_save not available yet")
    svc = web(
        "LoadBalancer",
        node_port=30080,
        load_balancer_ips=("192.168.10.200",),
        load_balancer_source_ranges=("192.168.10.0/24",),
        external_traffic_policy="Local",
        health_check_node_port=32000,
        session_affinity="ClientIP",
    )
    text = node_rules(cluster((svc, (remote("10.244.2.5"), local("10.244.1.7")))), NODE)
    ruleset = parse(text)
    # Every rule survives the parse in order (a lossless round trip of the rule lines).
    rendered = [x for x in ruleset.render().splitlines() if x.startswith("-A ")]
    assert rendered == [x for x in text.splitlines() if x.startswith("-A ")]


@pytest.mark.kernel
def test_node_rules_load_into_real_iptables() -> None:
    required = os.environ.get("K8SNET_KERNEL_TESTS") == "1"
    tools = shutil.which("iptables-restore") and shutil.which("unshare")
    if not (tools and os.geteuid() == 0):
        if required:
            pytest.fail("kernel tests required but iptables-restore/unshare/root unavailable")
        pytest.skip("needs root, unshare and iptables-restore")
    svc = web(
        "LoadBalancer",
        node_port=30080,
        external_ips=("172.16.0.100",),
        load_balancer_ips=("192.168.10.200",),
        load_balancer_source_ranges=("192.168.10.0/24",),
        external_traffic_policy="Local",
        health_check_node_port=32000,
        session_affinity="ClientIP",
    )
    udp = replace(web(protocol="SCTP"), name="sctp", cluster_ip="10.96.0.11")
    state = cluster((svc, (remote("10.244.2.5"), local("10.244.1.7"))), (udp, ()))
    # A fresh network namespace has its own, empty netfilter tables: nothing on the host changes.
    done = subprocess.run(
        ["unshare", "-n", "iptables-restore", "--test"],
        input=node_rules(state, NODE),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
