"""The nftables proxier, feature by feature, on small clusters built here.

Each test builds a ClusterState for node ``node-a`` (192.168.10.11) with the pod-CIDR detector
10.244.0.0/16 unless stated, then asserts on exact rule lines, map elements and chains of the
generated ``kube-proxy`` table (packet behaviour is in ``test_nftables_engine.py``).
"""

from __future__ import annotations

import re

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
from k8snet_sim.netfilter.nftables import NftTable
from k8snet_sim.proxy import naming
from k8snet_sim.proxy.nftables import ruleset, sync

NODE = "node-a"
NODE_IP = "192.168.10.11"
POD_CIDR = "10.244.0.0/16"
WEB = "shop/web:http"
BASE = "shop/web/tcp/http"
SVC = naming.nft_chain("service", BASE)
LOCAL = naming.nft_chain("local", BASE)
EXT = naming.nft_chain("external", BASE)
FW = naming.nft_chain("firewall", BASE)
MASQ = "jump mark-for-masquerade"


def ep_chain(address: str, base: str = BASE) -> str:
    return naming.nft_chain("endpoint", naming.nft_endpoint_base(base, address))


def affinity_set(address: str, base: str = BASE) -> str:
    return naming.nft_chain("affinity", naming.nft_endpoint_base(base, address))


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
    options = {"mode": "nftables", "cluster_cidr": POD_CIDR} | proxy
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
        kube_proxy=KubeProxyConfig(**options),  # type: ignore[arg-type]
    )


def table_of(state: ClusterState) -> NftTable:
    return ruleset(state, NODE)


def rules(state: ClusterState, chain: str) -> list[str]:
    return table_of(state).chain_rules(chain)


def elements(state: ClusterState, name: str) -> dict[str, str]:
    return table_of(state).elements(name)


def service_chains(table: NftTable) -> list[str]:
    return [c for c in table.chains if "/" in c]


def check_references(table: NftTable) -> None:
    """Every chain and set named is declared; every regular chain and set is used."""
    texts = [r for c in table.chains.values() for r in c.rules]
    texts += [e.value for s in table.sets.values() for e in s.elements]
    targets = {m for t in texts for m in re.findall(r"(?:goto|jump) (\S+)", t)}
    used_sets = {m for t in texts for m in re.findall(r"@(\S+)", t)}
    assert targets <= set(table.chains), targets - set(table.chains)
    assert used_sets <= set(table.sets), used_sets - set(table.sets)
    # Helpers upstream always writes, used once some Service needs them.
    regular = {n for n, c in table.chains.items() if not c.is_base}
    regular -= {"reject-chain", "mark-for-masquerade"}
    assert regular <= targets, regular - targets
    assert set(table.sets) <= used_sets, set(table.sets) - used_sets
    assert all(table.chains[t].rules for t in targets), "a jump target is empty"


# --- fixed structure --------------------------------------------------------------------------


BASE_CHAIN_LINES = {
    "filter-prerouting-pre-dnat": (
        "type filter hook prerouting priority dstnat - 10; policy accept;"
    ),
    "filter-input": "type filter hook input priority filter; policy accept;",
    "filter-forward": "type filter hook forward priority filter; policy accept;",
    # nft names dstnat/srcnat only at prerouting/postrouting; elsewhere it lists numbers.
    "filter-output-pre-dnat": "type filter hook output priority -110; policy accept;",
    "filter-output": "type filter hook output priority filter; policy accept;",
    "nat-prerouting": "type nat hook prerouting priority dstnat; policy accept;",
    "nat-output": "type nat hook output priority -100; policy accept;",
    "nat-postrouting": "type nat hook postrouting priority srcnat; policy accept;",
}


def test_fixed_structure_on_an_empty_cluster() -> None:
    state = cluster()
    table = table_of(state)
    text = sync(state, NODE)
    assert text.startswith('table ip kube-proxy {\n\tcomment "rules for kube-proxy"\n')
    assert text.endswith("\n}\n") and text.count("table ip ") == 1
    for name, line in BASE_CHAIN_LINES.items():
        assert f"\tchain {name} {{\n\t\t{line}\n" in text
    assert [(n, c.type, c.hook, c.priority) for n, c in table.chains.items() if c.is_base] == [
        ("filter-prerouting-pre-dnat", "filter", "prerouting", -110),
        ("filter-input", "filter", "input", 0),
        ("filter-forward", "filter", "forward", 0),
        ("filter-output-pre-dnat", "filter", "output", -110),
        ("filter-output", "filter", "output", 0),
        ("nat-prerouting", "nat", "prerouting", -100),
        ("nat-output", "nat", "output", -100),
        ("nat-postrouting", "nat", "postrouting", 100),
    ]
    new = "ct state new jump"
    expected = {
        "filter-prerouting-pre-dnat": [f"{new} firewall-check"],
        "filter-input": [f"{new} nodeport-endpoints-check", f"{new} service-endpoints-check"],
        "filter-forward": [f"{new} service-endpoints-check", f"{new} cluster-ips-check"],
        "filter-output-pre-dnat": [f"{new} firewall-check"],
        "filter-output": [f"{new} service-endpoints-check", f"{new} cluster-ips-check"],
        "nat-prerouting": ["jump services"],
        "nat-output": ["jump services"],
        "nat-postrouting": ["jump masquerading"],
        "cluster-ips-check": [
            'ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"',
            'ip daddr { 10.96.0.0/16 } drop comment "Drop traffic to unallocated ClusterIPs"',
        ],
        "firewall-check": ["ip daddr . meta l4proto . th dport vmap @firewall-ips"],
        "mark-for-masquerade": ["mark set mark or 0x4000"],
        "masquerading": [
            "meta mark & 0x4000 == 0 return",
            "meta mark set meta mark ^ 0x4000",
            "masquerade fully-random",
        ],
        "nodeport-endpoints-check": [
            "ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports"
        ],
        "reject-chain": ["reject"],
        "service-endpoints-check": [
            "ip daddr . meta l4proto . th dport vmap @no-endpoint-services"
        ],
        "services": [
            "ip daddr . meta l4proto . th dport vmap @service-ips",
            "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport "
            "vmap @service-nodeports",
        ],
    }
    assert {n: c.rules for n, c in table.chains.items()} == expected
    assert table.chains["reject-chain"].comment == (
        "helper for @no-endpoint-services / @no-endpoint-nodeports"
    )
    assert {n: (s.type, s.value_type) for n, s in table.sets.items()} == {
        "cluster-ips": ("ipv4_addr", ""),
        "firewall-ips": ("ipv4_addr . inet_proto . inet_service", "verdict"),
        "no-endpoint-nodeports": ("inet_proto . inet_service", "verdict"),
        "no-endpoint-services": ("ipv4_addr . inet_proto . inet_service", "verdict"),
        "service-ips": ("ipv4_addr . inet_proto . inet_service", "verdict"),
        "service-nodeports": ("inet_proto . inet_service", "verdict"),
    }
    assert all(not s.elements for s in table.sets.values())
    assert table.sets["service-ips"].comment == "ClusterIP, ExternalIP and LoadBalancer IP traffic"
    check_references(table)


@pytest.mark.parametrize(("bit", "mark"), [(14, "0x4000"), (15, "0x8000"), (0, "0x1")])
def test_masquerade_mark_follows_the_bit(bit: int, mark: str) -> None:
    table = table_of(cluster(masquerade_bit=bit))
    assert table.chain_rules("mark-for-masquerade") == [f"mark set mark or {mark}"]
    assert table.chain_rules("masquerading")[:2] == [
        f"meta mark & {mark} == 0 return",
        f"meta mark set meta mark ^ {mark}",
    ]


def test_unknown_node_is_a_library_error() -> None:
    with pytest.raises(UnknownEndpoint, match="node/nope"):
        sync(cluster(), "nope")


@pytest.mark.parametrize(
    ("addresses", "node_ips"),
    [
        (("192.168.10.0/24",), ["192.168.10.11"]),
        (("192.168.10.0/24", "127.0.0.0/8"), ["192.168.10.11"]),  # no localhost NodePorts
        (("127.0.0.0/8",), []),
        (("172.31.0.0/16",), []),
    ],
)
def test_nodeport_addresses_use_the_nodeport_ips_set(
    addresses: tuple[str, ...], node_ips: list[str]
) -> None:
    table = table_of(cluster(nodeport_addresses=addresses))
    assert table.sets["nodeport-ips"].comment == "IPs that accept NodePort traffic"
    assert list(table.elements("nodeport-ips")) == node_ips
    assert table.chain_rules("services")[1] == (
        "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"
    )
    assert table.chain_rules("nodeport-endpoints-check") == [
        "ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports"
    ]


def test_match_all_nodeport_addresses_need_no_set() -> None:
    table = table_of(cluster(nodeport_addresses=("0.0.0.0/0",)))
    assert "nodeport-ips" not in table.sets
    assert "127.0.0.0/8" in table.chain_rules("services")[1]


def test_unallocated_cluster_ip_rule_lists_every_service_cidr() -> None:
    state = cluster()
    state = ClusterState(**{**state.__dict__, "service_cidr": "10.96.0.0/16,10.97.0.0/16"})
    assert rules(state, "cluster-ips-check")[1].startswith(
        "ip daddr { 10.96.0.0/16 , 10.97.0.0/16 } drop"
    )


# --- ClusterIP, dispatch, endpoints -----------------------------------------------------------


def test_cluster_ip_service_exact_rules() -> None:
    eps = (remote("10.244.2.10"), local("10.244.1.7"), remote("10.244.2.9"))
    state = cluster((web(), eps))
    table = table_of(state)
    assert table.elements("service-ips") == {"10.96.0.10 . tcp . 80": f"goto {SVC}"}
    assert table.elements("cluster-ips") == {"10.96.0.10": ""}
    a, b, c = (ep_chain(e.address) for e in eps)
    assert table.chain_rules(SVC) == [
        f"ip daddr 10.96.0.10 tcp dport 80 ip saddr != {POD_CIDR} {MASQ}",
        f"numgen random mod 3 vmap {{ 0 : goto {a} , 1 : goto {b} , 2 : goto {c} }}",
    ]
    assert table.chain_rules(b) == [
        f"ip saddr 10.244.1.7 {MASQ}",  # hairpin
        "meta l4proto tcp dnat to 10.244.1.7:8080",
    ]
    assert service_chains(table) == [SVC, a, b, c]
    assert b == "endpoint-" + b.split("-")[1] + "-shop/web/tcp/http__10.244.1.7/8080"
    check_references(table)


@pytest.mark.parametrize("n", [1, 2, 4])
def test_numgen_picks_uniformly_among_endpoints(n: int) -> None:
    eps = tuple(remote(f"10.244.2.{i}") for i in range(1, n + 1))
    dispatch = rules(cluster((web(), eps)), SVC)[-1]
    branches = " , ".join(f"{i} : goto {ep_chain(e.address)}" for i, e in enumerate(eps))
    assert dispatch == f"numgen random mod {n} vmap {{ {branches} }}"


@pytest.mark.parametrize(
    ("proxy", "masq_rule"),
    [
        ({}, f"ip daddr 10.96.0.10 tcp dport 80 ip saddr != {POD_CIDR} {MASQ}"),
        ({"cluster_cidr": None}, None),  # no-op detector: off-cluster clients not masqueraded
        ({"masquerade_all": True}, f"ip daddr 10.96.0.10 tcp dport 80 {MASQ}"),
        (
            {"masquerade_all": True, "cluster_cidr": None},
            f"ip daddr 10.96.0.10 tcp dport 80 {MASQ}",
        ),
    ],
)
def test_cluster_ip_masquerade_rule(proxy: dict[str, object], masq_rule: str | None) -> None:
    svc_rules = rules(cluster((web(), (remote("10.244.2.5"),)), **proxy), SVC)
    assert svc_rules[:-1] == ([masq_rule] if masq_rule else [])


@pytest.mark.parametrize("protocol", ["UDP", "SCTP"])
def test_udp_and_sctp_ports(protocol: str) -> None:
    proto = protocol.lower()
    table = table_of(cluster((web(protocol=protocol, type_="NodePort", node_port=30053),
                              (local("10.244.1.7"),))))  # fmt: skip
    base = f"shop/web/{proto}/http"
    chain = naming.nft_chain("service", base)
    assert table.elements("service-ips") == {f"10.96.0.10 . {proto} . 80": f"goto {chain}"}
    assert table.elements("service-nodeports") == {
        f"{proto} . 30053": f"goto {naming.nft_chain('external', base)}"
    }
    endpoint = ep_chain("10.244.1.7:8080", base)
    assert table.chain_rules(endpoint) == [
        f"ip saddr 10.244.1.7 {MASQ}",  # hairpin masquerade is protocol-independent
        f"meta l4proto {proto} dnat to 10.244.1.7:8080",
    ]
    assert table.chain_rules(chain)[0].startswith(f"ip daddr 10.96.0.10 {proto} dport 80 ")


def test_unnamed_port_uses_an_empty_port_name() -> None:
    svc = Service("shop", "cart", "ClusterIP", "10.96.0.20", (ServicePort("", "TCP", 80, 80),))
    table = table_of(cluster((svc, (remote("10.244.2.5"),))))
    assert table.elements("service-ips") == {
        "10.96.0.20 . tcp . 80": f"goto {naming.nft_chain('service', 'shop/cart/tcp/')}"
    }


@pytest.mark.parametrize(
    "svc",
    [
        Service("shop", "db", "ClusterIP", None, (ServicePort("pg", "TCP", 5432, 5432),)),
        Service("shop", "ext", "ExternalName", None, (ServicePort("h", "TCP", 80, 80),)),
    ],
)
def test_headless_and_external_name_get_no_rules(svc: Service) -> None:
    assert sync(cluster((svc, (remote("10.244.2.5"),))), NODE) == sync(cluster(), NODE)


# --- external destinations --------------------------------------------------------------------


def lb_web(**kw: object) -> Service:
    options: dict[str, object] = {
        "node_port": 30080,
        "external_ips": ("172.16.0.100",),
        "load_balancer_ips": ("192.168.10.200",),
    }
    return web("LoadBalancer", **(options | kw))  # type: ignore[arg-type]


def test_nodeport_loadbalancer_and_external_ip_go_to_the_external_chain() -> None:
    table = table_of(cluster((lb_web(), (remote("10.244.2.5"),))))
    assert table.elements("service-ips") == {
        "10.96.0.10 . tcp . 80": f"goto {SVC}",
        "172.16.0.100 . tcp . 80": f"goto {EXT}",
        "192.168.10.200 . tcp . 80": f"goto {EXT}",
    }
    assert table.elements("service-nodeports") == {"tcp . 30080": f"goto {EXT}"}
    assert table.chain_rules(EXT) == [MASQ, f"goto {SVC}"]
    assert not table.elements("no-endpoint-services")
    assert not table.elements("firewall-ips")
    check_references(table)


def test_type_cluster_ip_with_external_ip_behaves_as_cluster_policy() -> None:
    svc = web(external_ips=("172.16.0.100",), external_traffic_policy="Local")
    table = table_of(cluster((svc, (remote("10.244.2.5"), local("10.244.1.7")))))
    assert table.chain_rules(EXT) == [MASQ, f"goto {SVC}"]
    assert LOCAL not in table.chains


def test_external_traffic_policy_local() -> None:
    svc = lb_web(external_traffic_policy="Local", health_check_node_port=32000)
    eps = (remote("10.244.2.5"), local("10.244.1.7"))
    state = cluster((svc, eps))
    table = table_of(state)
    assert table.chain_rules(EXT) == [
        f'ip saddr {POD_CIDR} goto {SVC} comment "short-circuit pod traffic"',
        f'fib saddr type local {MASQ} comment "masquerade local traffic"',
        f'fib saddr type local goto {SVC} comment "short-circuit local traffic"',
        f"goto {LOCAL}",
    ]
    local_ep = ep_chain("10.244.1.7:8080")
    assert table.chain_rules(LOCAL) == [f"numgen random mod 1 vmap {{ 0 : goto {local_ep} }}"]
    assert "mod 2" in table.chain_rules(SVC)[-1]
    # No healthCheckNodePort rule: kube-proxy's table has nothing to punch through.
    assert "32000" not in sync(state, NODE)
    assert not table.elements("no-endpoint-services") and not table.elements(
        "no-endpoint-nodeports"
    )
    check_references(table)


def test_external_traffic_policy_local_without_detector_has_no_pod_short_circuit() -> None:
    svc = web("NodePort", node_port=30080, external_traffic_policy="Local")
    ext = rules(cluster((svc, (local("10.244.1.7"),)), cluster_cidr=None), EXT)
    assert [r for r in ext if "short-circuit pod" in r] == [] and len(ext) == 3


def test_no_local_endpoints_with_etp_local_drops_external_traffic() -> None:
    svc = lb_web(external_traffic_policy="Local", health_check_node_port=32000)
    table = table_of(cluster((svc, (remote("10.244.2.5"),))))
    assert table.elements("no-endpoint-services") == {
        "172.16.0.100 . tcp . 80": "drop",
        "192.168.10.200 . tcp . 80": "drop",
    }
    assert table.elements("no-endpoint-nodeports") == {"tcp . 30080": "drop"}
    assert {e.comment for e in table.sets["no-endpoint-services"].elements} == {WEB}
    # The external chain keeps its short-circuits but has no local chain to go to.
    assert len(table.chain_rules(EXT)) == 3 and LOCAL not in table.chains
    # Dispatch still captures every destination, for the short-circuits; ClusterIP works.
    assert table.elements("service-ips")["10.96.0.10 . tcp . 80"] == f"goto {SVC}"
    assert table.elements("service-nodeports") == {"tcp . 30080": f"goto {EXT}"}
    check_references(table)


def test_no_endpoints_reject_everything_and_build_no_service_chains() -> None:
    svc = lb_web(external_traffic_policy="Local", load_balancer_source_ranges=("203.0.113.0/25",))
    table = table_of(cluster((svc, ())))
    reject = "goto reject-chain"
    assert table.elements("no-endpoint-services") == {
        "10.96.0.10 . tcp . 80": reject,  # REJECT, not DROP, even with eTP=Local
        "172.16.0.100 . tcp . 80": reject,
        "192.168.10.200 . tcp . 80": reject,
    }
    assert table.elements("no-endpoint-nodeports") == {"tcp . 30080": reject}
    assert table.elements("cluster-ips") == {"10.96.0.10": ""}
    assert not table.elements("service-ips") and not table.elements("service-nodeports")
    # Unlike iptables, the source-range firewall stays: blocked clients are dropped first.
    assert service_chains(table) == [FW]
    assert table.elements("firewall-ips") == {"192.168.10.200 . tcp . 80": f"goto {FW}"}
    check_references(table)


def test_ready_endpoints_only_not_ready_counts_as_none() -> None:
    table = table_of(cluster((web(), (remote("10.244.2.5", ready=False),))))
    assert table.elements("no-endpoint-services") == {"10.96.0.10 . tcp . 80": "goto reject-chain"}


# --- internal traffic policy ------------------------------------------------------------------


def test_internal_traffic_policy_local() -> None:
    table = table_of(cluster((web(internal_traffic_policy="Local"),
                              (remote("10.244.2.5"), local("10.244.1.7")))))  # fmt: skip
    endpoint = ep_chain("10.244.1.7:8080")
    assert table.elements("service-ips") == {"10.96.0.10 . tcp . 80": f"goto {LOCAL}"}
    assert table.chain_rules(LOCAL) == [
        f"ip daddr 10.96.0.10 tcp dport 80 ip saddr != {POD_CIDR} {MASQ}",
        f"numgen random mod 1 vmap {{ 0 : goto {endpoint} }}",
    ]
    assert service_chains(table) == [LOCAL, endpoint]
    check_references(table)


def test_internal_traffic_policy_local_without_local_endpoints_drops() -> None:
    svc = web("NodePort", node_port=30080, internal_traffic_policy="Local")
    table = table_of(cluster((svc, (remote("10.244.2.5"),))))
    assert table.elements("no-endpoint-services") == {"10.96.0.10 . tcp . 80": "drop"}
    # iTP affects ClusterIP traffic only: the NodePort still reaches every endpoint.
    assert table.elements("service-nodeports") == {"tcp . 30080": f"goto {EXT}"}
    assert table.chain_rules(EXT)[-1] == f"goto {SVC}"
    assert not table.chain_rules(SVC)[0].startswith("ip daddr")  # no ClusterIP masq rule here


# --- session affinity -------------------------------------------------------------------------


def test_client_ip_affinity() -> None:
    svc = web(session_affinity="ClientIP", session_affinity_timeout=600)
    eps = (remote("10.244.2.5"), local("10.244.1.7"))
    table = table_of(cluster((svc, eps)))
    a, b = (ep_chain(e.address) for e in eps)
    sa, sb = (affinity_set(e.address) for e in eps)
    assert sa == "affinity-" + a.removeprefix("endpoint-")  # same hash, other prefix
    assert table.chain_rules(SVC)[1:] == [
        f"ip saddr @{sa} goto {a}",
        f"ip saddr @{sb} goto {b}",
        f"numgen random mod 2 vmap {{ 0 : goto {a} , 1 : goto {b} }}",
    ]
    assert table.chain_rules(b) == [
        f"ip saddr 10.244.1.7 {MASQ}",
        f"update @{sb} {{ ip saddr }}",
        "meta l4proto tcp dnat to 10.244.1.7:8080",
    ]
    affinity = table.sets[sa]
    assert (affinity.type, affinity.flags, affinity.timeout) == (
        "ipv4_addr",
        ("dynamic", "timeout"),
        600,
    )
    text = sync(cluster((svc, eps)), NODE)
    assert (
        f"\tset {sa} {{\n\t\ttype ipv4_addr\n\t\tflags dynamic,timeout\n\t\ttimeout 600s\n" in text
    )
    check_references(table)


def test_affinity_sets_only_for_reachable_endpoints() -> None:
    svc = web("NodePort", node_port=30080, internal_traffic_policy="Local",
              session_affinity="ClientIP")  # fmt: skip
    # iTP=Local on an externally reachable port: both endpoints reachable (NodePort).
    both = table_of(cluster((svc, (remote("10.244.2.5"), local("10.244.1.7")))))
    assert sorted(n for n in both.sets if n.startswith("affinity-")) == sorted(
        affinity_set(a) for a in ("10.244.2.5:8080", "10.244.1.7:8080")
    )
    cip = web(internal_traffic_policy="Local", session_affinity="ClientIP")
    only_local = table_of(cluster((cip, (remote("10.244.2.5"), local("10.244.1.7")))))
    assert [n for n in only_local.sets if n.startswith("affinity-")] == [
        affinity_set("10.244.1.7:8080")
    ]


# --- loadBalancerSourceRanges -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("ranges", "rule"),
    [
        ((" 203.0.113.0/25",), "ip saddr != { 203.0.113.0/25 } drop"),  # whitespace trimmed
        (
            ("192.168.10.0/24", "203.0.113.0/25"),  # covers the node: node-sourced VIPs allowed
            "ip saddr != { 192.168.10.0/24 , 203.0.113.0/25 , 192.168.10.200 , 192.168.10.201 }"
            " drop",
        ),
    ],
)
def test_load_balancer_source_ranges(ranges: tuple[str, ...], rule: str) -> None:
    svc = lb_web(
        external_ips=(),
        load_balancer_ips=("192.168.10.200", "192.168.10.201"),
        load_balancer_source_ranges=ranges,
    )
    table = table_of(cluster((svc, (remote("10.244.2.5"),))))
    assert table.chain_rules(FW) == [rule]
    assert table.elements("firewall-ips") == {
        "192.168.10.200 . tcp . 80": f"goto {FW}",
        "192.168.10.201 . tcp . 80": f"goto {FW}",
    }
    # Allowed traffic is dispatched as usual; NodePorts are not subject to the ranges.
    assert table.elements("service-ips")["192.168.10.200 . tcp . 80"] == f"goto {EXT}"
    assert table.elements("service-nodeports") == {"tcp . 30080": f"goto {EXT}"}
    check_references(table)


def test_source_ranges_without_lb_ip_build_no_firewall() -> None:
    svc = web("LoadBalancer", node_port=30080, load_balancer_source_ranges=("203.0.113.0/25",))
    table = table_of(cluster((svc, (remote("10.244.2.5"),))))
    assert FW not in table.chains and not table.elements("firewall-ips")


# --- terminating endpoints --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("eps", "svc_targets", "local_targets"),
    [
        (
            (local("10.244.1.7"), local("10.244.1.8", ready=False, terminating=True)),
            ["10.244.1.7:8080"],
            ["10.244.1.7:8080"],
        ),
        (
            (
                remote("10.244.2.5", ready=False, terminating=True),
                local("10.244.1.8", ready=False, serving=False, terminating=True),
            ),
            ["10.244.2.5:8080"],
            None,
        ),
        (
            (remote("10.244.2.5"), local("10.244.1.8", ready=False, terminating=True)),
            ["10.244.2.5:8080"],
            ["10.244.1.8:8080"],
        ),
    ],
)
def test_terminating_endpoint_fallback(
    eps: tuple[Endpoint, ...], svc_targets: list[str], local_targets: list[str] | None
) -> None:
    svc = web("NodePort", node_port=30080, external_traffic_policy="Local")
    table = table_of(cluster((svc, eps)))

    def targets(chain: str) -> list[str]:
        found = re.findall(r"goto endpoint-\w+-\S+__(\S+)/(\d+)", table.chain_rules(chain)[-1])
        return [f"{a}:{p}" for a, p in found]

    assert targets(SVC) == svc_targets
    if local_targets is None:
        assert LOCAL not in table.chains
        assert table.elements("no-endpoint-nodeports") == {"tcp . 30080": "drop"}
    else:
        assert targets(LOCAL) == local_targets
    reachable = set(svc_targets) | set(local_targets or [])
    assert {c for c in table.chains if c.startswith("endpoint-")} == {
        ep_chain(a) for a in reachable
    }
    check_references(table)


# --- ordering, determinism, reference names ---------------------------------------------------


def test_services_are_ordered_by_service_port_name() -> None:
    def svc(ns: str, name: str, ip: str) -> tuple[Service, tuple[Endpoint, ...]]:
        return (Service(ns, name, "ClusterIP", ip, (ServicePort("http", "TCP", 80, 8080),)),
                (remote("10.244.2.5"),))  # fmt: skip

    a, b, c = (
        svc("shop", "web", "10.96.0.1"),
        svc("admin", "ui", "10.96.0.2"),
        svc("shop", "api", "10.96.0.3"),
    )
    forward, backward = cluster(a, b, c), cluster(c, b, a)
    assert sync(forward, NODE) == sync(backward, NODE)
    assert list(table_of(forward).elements("cluster-ips")) == [
        "10.96.0.2",
        "10.96.0.3",
        "10.96.0.1",
    ]


def test_multi_port_service_gets_one_chain_set_per_port() -> None:
    ports = (ServicePort("http", "TCP", 80, 8080), ServicePort("dns", "UDP", 53, 5353))
    svc = Service("shop", "web", "ClusterIP", "10.96.0.10", ports)
    table = table_of(cluster((svc, (remote("10.244.2.5"),))))
    assert table.elements("cluster-ips") == {"10.96.0.10": ""}  # one element per IP
    assert list(table.elements("service-ips")) == [
        "10.96.0.10 . udp . 53",  # dns sorts before http
        "10.96.0.10 . tcp . 80",
    ]
    assert naming.nft_chain("service", "shop/web/udp/dns") in table.chains


def test_upstream_reference_names_and_elements() -> None:
    """Facts from the reference (§8): chain hashes, elements, DNAT rule, no-endpoint element."""
    port = (ServicePort("p80", "TCP", 80, 80),)
    state = ClusterState(
        service_cidr="172.30.0.0/16",
        pod_cidr="10.0.0.0/8",
        node_port_range=(30000, 32767),
        nodes=(Node("test-node", "192.168.0.2", "10.0.0.0/24", "lan"),),
        pods=(),
        services=(
            Service("ns1", "svc1", "ClusterIP", "172.30.0.41", port),
            Service("ns6", "svc6", "ClusterIP", "172.30.0.46", port),
        ),
        endpoints={("ns1/svc1", "p80"): (Endpoint("10.180.0.1", 80, "elsewhere"),)},
        kube_proxy=KubeProxyConfig(mode="nftables", cluster_cidr="10.0.0.0/8"),
    )
    text = sync(state, "test-node")
    assert "172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80" in text
    assert (
        "\tchain endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 {\n"
        "\t\tip saddr 10.180.0.1 jump mark-for-masquerade\n"
        "\t\tmeta l4proto tcp dnat to 10.180.0.1:80\n\t}"
    ) in text
    assert '172.30.0.46 . tcp . 80 comment "ns6/svc6:p80" : goto reject-chain' in text
    assert (
        "ip daddr 172.30.0.41 tcp dport 80 ip saddr != 10.0.0.0/8 jump mark-for-masquerade" in text
    )
