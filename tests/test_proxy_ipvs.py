"""The IPVS proxier, feature by feature, on small clusters built here.

Each test builds a ClusterState for node ``node-a`` (192.168.10.11, cni0 10.244.1.1) with the
pod-CIDR detector 10.244.0.0/16 unless stated, runs the pure ``sync`` and asserts on virtual
servers, ipset members, bound addresses and rule lines (packet behaviour is in
``test_ipvs_datapath.py``).
"""

from __future__ import annotations

import pytest

from k8snet_sim.cluster.model import (
    ClusterState,
    Endpoint,
    KubeProxyConfig,
    Node,
    Service,
    ServicePort,
)
from k8snet_sim.errors import RulesError, UnknownEndpoint
from k8snet_sim.net.addr import ip, ip_str
from k8snet_sim.net.packet import SCTP, TCP, UDP
from k8snet_sim.netfilter.iptables_save import parse_iptables_save
from k8snet_sim.netfilter.ipvs import VirtualServer
from k8snet_sim.proxy.ipvs import SETS, IpvsConfig, sync

NODE = "node-a"
NODE_IP = "192.168.10.11"
BRIDGE_IP = "10.244.1.1"
POD_CIDR = "10.244.0.0/16"
CIP = "10.96.0.10"
MASQ_RULE = (
    '-A KUBE-SERVICES -m comment --comment "Kubernetes service cluster ip + port for '
    'masquerade purpose" -m set --match-set KUBE-CLUSTER-IP {}'
)


def local(address: str, *, ready: bool = True, terminating: bool = False) -> Endpoint:
    return Endpoint(address, 8080, NODE, ready=ready, terminating=terminating)


def remote(address: str, *, ready: bool = True, terminating: bool = False) -> Endpoint:
    return Endpoint(address, 8080, "node-b", ready=ready, terminating=terminating)


EPS = (local("10.244.1.5"), remote("10.244.2.7"))


def web(
    type_: str = "ClusterIP", *, node_port: int = 0, protocol: str = "TCP", **kw: object
) -> Service:
    port = ServicePort("http", protocol, 80, 8080, node_port)
    return Service("shop", "web", type_, CIP, (port,), **kw)  # type: ignore[arg-type]


def cluster(*services: tuple[Service, tuple[Endpoint, ...]], **proxy: object) -> ClusterState:
    options = {"mode": "ipvs", "cluster_cidr": POD_CIDR} | proxy
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


def run(svc: Service, eps: tuple[Endpoint, ...] = EPS, **proxy: object) -> IpvsConfig:
    return sync(cluster((svc, eps), **proxy), NODE)


def servers(config: IpvsConfig) -> dict[str, list[str]]:
    """``"TCP 10.96.0.10:80"`` → real servers, for every virtual server."""
    return {_name(vs): [str(r) for r in vs.real_servers] for vs in config.virtual_servers}


def _name(vs: VirtualServer) -> str:
    proto = {TCP: "TCP", UDP: "UDP", SCTP: "SCTP"}[vs.protocol]
    return f"{proto} {ip_str(vs.address)}:{vs.port}"


def members(config: IpvsConfig) -> dict[str, list[str]]:
    """Non-empty sets only."""
    return {s.name: s.entries() for s in config.ipsets if len(s)}


def chain(config: IpvsConfig, name: str, table: str = "nat") -> list[str]:
    text = config.iptables.split(f"*{table}\n", 1)[1].split("COMMIT", 1)[0]
    return [line for line in text.splitlines() if line.startswith(f"-A {name} ")]


BOTH = ["10.244.1.5:8080", "10.244.2.7:8080"]
LOCAL_ONLY = ["10.244.1.5:8080"]


# ----------------------------------------------------------------------------- virtual servers


@pytest.mark.parametrize(
    ("svc", "eps", "expected"),
    [
        pytest.param(web(), EPS, {f"TCP {CIP}:80": BOTH}, id="clusterip"),
        pytest.param(web(), (), {f"TCP {CIP}:80": []}, id="no-endpoints-keeps-empty-vs"),
        pytest.param(
            web("NodePort", node_port=30080),
            EPS,
            {f"TCP {CIP}:80": BOTH, f"TCP {NODE_IP}:30080": BOTH, f"TCP {BRIDGE_IP}:30080": BOTH},
            id="nodeport-per-node-ip",
        ),
        pytest.param(
            web("NodePort", node_port=30080, external_traffic_policy="Local"),
            EPS,
            {
                f"TCP {CIP}:80": BOTH,
                f"TCP {NODE_IP}:30080": LOCAL_ONLY,
                f"TCP {BRIDGE_IP}:30080": LOCAL_ONLY,
            },
            id="etp-local-nodeport-local-endpoints",
        ),
        pytest.param(
            web("NodePort", node_port=30080, external_traffic_policy="Local"),
            (remote("10.244.2.7"),),
            {
                f"TCP {CIP}:80": ["10.244.2.7:8080"],
                f"TCP {NODE_IP}:30080": ["10.244.2.7:8080"],
                f"TCP {BRIDGE_IP}:30080": ["10.244.2.7:8080"],
            },
            id="etp-local-without-local-falls-back-to-cluster",  # upstream PR #97081
        ),
        pytest.param(
            web("LoadBalancer", node_port=30080, load_balancer_ips=("192.168.10.200",)),
            EPS,
            {
                f"TCP {CIP}:80": BOTH,
                "TCP 192.168.10.200:80": BOTH,
                f"TCP {NODE_IP}:30080": BOTH,
                f"TCP {BRIDGE_IP}:30080": BOTH,
            },
            id="loadbalancer",
        ),
        pytest.param(
            web(external_ips=("203.0.113.10",)),
            EPS,
            {f"TCP {CIP}:80": BOTH, "TCP 203.0.113.10:80": BOTH},
            id="external-ip",
        ),
        pytest.param(
            web(internal_traffic_policy="Local"),
            EPS,
            {f"TCP {CIP}:80": LOCAL_ONLY},
            id="itp-local",
        ),
        pytest.param(
            web(internal_traffic_policy="Local"),
            (remote("10.244.2.7"),),
            {f"TCP {CIP}:80": []},
            id="itp-local-none-local-clusterip-only-is-empty",
        ),
        pytest.param(
            web("NodePort", node_port=30080, internal_traffic_policy="Local"),
            (remote("10.244.2.7"),),
            {
                f"TCP {CIP}:80": ["10.244.2.7:8080"],
                f"TCP {NODE_IP}:30080": ["10.244.2.7:8080"],
                f"TCP {BRIDGE_IP}:30080": ["10.244.2.7:8080"],
            },
            id="itp-local-none-local-but-external-falls-back",
        ),
        pytest.param(
            web(),
            (local("10.244.1.5", ready=False, terminating=True), remote("10.244.2.7")),
            {f"TCP {CIP}:80": ["10.244.2.7:8080"]},
            id="ready-preferred-over-terminating",
        ),
        pytest.param(
            web(protocol="UDP"), EPS, {f"UDP {CIP}:80": BOTH}, id="udp",
        ),
    ],
)  # fmt: skip
def test_virtual_servers(svc: Service, eps: tuple[Endpoint, ...], expected: dict) -> None:
    assert servers(run(svc, eps)) == expected


def test_real_servers_have_weight_one_and_name_the_service() -> None:
    (vs,) = run(web()).virtual_servers
    assert {r.weight for r in vs.real_servers} == {1}
    assert vs.service == "shop/web:http"
    assert (vs.scheduler, vs.persistence) == ("rr", 0)


@pytest.mark.parametrize(
    ("affinity", "timeout", "persistence"),
    [("None", 10800, 0), ("ClientIP", 10800, 10800), ("ClientIP", 60, 60)],
)
def test_client_ip_affinity_is_persistence(affinity: str, timeout: int, persistence: int) -> None:
    svc = web("NodePort", node_port=30080, session_affinity=affinity,
              session_affinity_timeout=timeout)  # fmt: skip
    assert {vs.persistence for vs in run(svc).virtual_servers} == {persistence}


@pytest.mark.parametrize("scheduler", ["rr", "lc", "sh", "wrr"])
def test_scheduler_comes_from_the_config(scheduler: str) -> None:
    config = run(web("NodePort", node_port=30080), ipvs_scheduler=scheduler)
    assert {vs.scheduler for vs in config.virtual_servers} == {scheduler}
    assert f"TCP  {CIP}:80 {scheduler}\n" in config.ipvsadm()


def test_node_ips_given_by_the_node_and_narrowed_by_nodeport_addresses() -> None:
    state = cluster((web("NodePort", node_port=30080), EPS),
                    nodeport_addresses=("192.168.10.0/24",))  # fmt: skip
    config = sync(state, NODE, node_ips=["10.244.1.1", "10.244.1.0", NODE_IP])
    assert config.node_ips == (NODE_IP,)
    assert set(servers(config)) == {f"TCP {CIP}:80", f"TCP {NODE_IP}:30080"}


def test_unknown_node() -> None:
    with pytest.raises(UnknownEndpoint, match="node/nope"):
        sync(cluster((web(), EPS)), "nope")


# ----------------------------------------------------------------------------- addresses, ipsets


def test_service_addresses_are_bound_to_the_dummy_device() -> None:
    svc = web("LoadBalancer", node_port=30080, load_balancer_ips=("192.168.10.200",),
              external_ips=("203.0.113.10", NODE_IP))  # fmt: skip
    config = run(svc)
    # The node's own address (an external IP here) is never bound to kube-ipvs0.
    assert config.addresses == (CIP, "203.0.113.10", "192.168.10.200")
    assert config.ipset("KUBE-IPVS-IPS").entries() == list(config.addresses)


@pytest.mark.parametrize(
    ("svc", "expected"),
    [
        pytest.param(web(), {"KUBE-CLUSTER-IP": [f"{CIP},tcp:80"]}, id="clusterip"),
        pytest.param(
            web("NodePort", node_port=30080),
            {"KUBE-CLUSTER-IP": [f"{CIP},tcp:80"], "KUBE-NODE-PORT-TCP": ["30080"]},
            id="nodeport",
        ),
        pytest.param(
            web("NodePort", node_port=30080, protocol="UDP"),
            {"KUBE-CLUSTER-IP": [f"{CIP},udp:80"], "KUBE-NODE-PORT-UDP": ["30080"]},
            id="nodeport-udp",
        ),
        pytest.param(
            web("NodePort", node_port=30080, protocol="SCTP"),
            {
                "KUBE-CLUSTER-IP": [f"{CIP},sctp:80"],
                "KUBE-NODE-PORT-SCTP-HASH": [f"{BRIDGE_IP},sctp:30080", f"{NODE_IP},sctp:30080"],
            },
            id="nodeport-sctp-hash-per-node-ip",
        ),
        pytest.param(
            web("NodePort", node_port=30080, external_traffic_policy="Local"),
            {
                "KUBE-CLUSTER-IP": [f"{CIP},tcp:80"],
                "KUBE-NODE-PORT-TCP": ["30080"],
                "KUBE-NODE-PORT-LOCAL-TCP": ["30080"],
            },
            id="nodeport-etp-local",
        ),
        pytest.param(
            web(external_ips=("203.0.113.10",)),
            {"KUBE-CLUSTER-IP": [f"{CIP},tcp:80"], "KUBE-EXTERNAL-IP": ["203.0.113.10,tcp:80"]},
            id="external-ip",
        ),
        pytest.param(
            web("NodePort", node_port=30080, external_ips=("203.0.113.10",),
                external_traffic_policy="Local"),
            {
                "KUBE-CLUSTER-IP": [f"{CIP},tcp:80"],
                "KUBE-EXTERNAL-IP-LOCAL": ["203.0.113.10,tcp:80"],
                "KUBE-NODE-PORT-TCP": ["30080"],
                "KUBE-NODE-PORT-LOCAL-TCP": ["30080"],
            },
            id="external-ip-etp-local",
        ),
        pytest.param(
            web("LoadBalancer", node_port=30080, load_balancer_ips=("1.2.3.4",),
                external_traffic_policy="Local", health_check_node_port=30500),
            {
                "KUBE-CLUSTER-IP": [f"{CIP},tcp:80"],
                "KUBE-LOAD-BALANCER": ["1.2.3.4,tcp:80"],
                "KUBE-LOAD-BALANCER-LOCAL": ["1.2.3.4,tcp:80"],
                "KUBE-NODE-PORT-TCP": ["30080"],
                "KUBE-NODE-PORT-LOCAL-TCP": ["30080"],
                "KUBE-HEALTH-CHECK-NODE-PORT": ["30500"],
            },
            id="loadbalancer-etp-local-health-check",
        ),
        pytest.param(
            web("LoadBalancer", node_port=30080, load_balancer_ips=("1.2.3.4",),
                load_balancer_source_ranges=(" 203.0.113.0/25", "192.168.10.0/24")),
            {
                "KUBE-CLUSTER-IP": [f"{CIP},tcp:80"],
                "KUBE-LOAD-BALANCER": ["1.2.3.4,tcp:80"],
                "KUBE-LOAD-BALANCER-FW": ["1.2.3.4,tcp:80"],
                "KUBE-LOAD-BALANCER-SOURCE-CIDR": [
                    "1.2.3.4,tcp:80,203.0.113.0/25", "1.2.3.4,tcp:80,192.168.10.0/24"],
                # The node is inside a range: its own LB-IP-sourced traffic is allowed too.
                "KUBE-LOAD-BALANCER-SOURCE-IP": ["1.2.3.4,tcp:80,1.2.3.4"],
                "KUBE-NODE-PORT-TCP": ["30080"],
            },
            id="source-ranges-covering-the-node",
        ),
        pytest.param(
            web("LoadBalancer", node_port=30080, load_balancer_ips=("1.2.3.4",),
                load_balancer_source_ranges=("203.0.113.0/25",)),
            {
                "KUBE-CLUSTER-IP": [f"{CIP},tcp:80"],
                "KUBE-LOAD-BALANCER": ["1.2.3.4,tcp:80"],
                "KUBE-LOAD-BALANCER-FW": ["1.2.3.4,tcp:80"],
                "KUBE-LOAD-BALANCER-SOURCE-CIDR": ["1.2.3.4,tcp:80,203.0.113.0/25"],
                "KUBE-NODE-PORT-TCP": ["30080"],
            },
            id="source-ranges",
        ),
    ],
)  # fmt: skip
def test_ipset_members(svc: Service, expected: dict[str, list[str]]) -> None:
    got = members(run(svc))
    got.pop("KUBE-LOOP-BACK")
    got.pop("KUBE-IPVS-IPS")
    assert got == expected


def test_loop_back_set_holds_local_endpoints_for_hairpin() -> None:
    eps = (local("10.244.1.5"), local("10.244.1.6", ready=False), remote("10.244.2.7"))
    assert run(web(), eps).ipset("KUBE-LOOP-BACK").entries() == [
        "10.244.1.5,tcp:8080,10.244.1.5",
        "10.244.1.6,tcp:8080,10.244.1.6",
    ]


def test_every_upstream_set_exists_even_when_empty() -> None:
    config = run(web())
    assert [s.name for s in config.ipsets] == [s.name for s in SETS]
    assert {s.name: s.type for s in config.ipsets}["KUBE-NODE-PORT-TCP"] == "bitmap:port"


# ----------------------------------------------------------------------------- iptables rules


@pytest.mark.parametrize(
    ("proxy", "rule"),
    [
        ({}, MASQ_RULE.format("dst,dst ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ")),
        ({"cluster_cidr": None}, MASQ_RULE.format("src,dst -j KUBE-MARK-MASQ")),
        ({"masquerade_all": True}, MASQ_RULE.format("dst,dst -j KUBE-MARK-MASQ")),
    ],
    ids=["detector", "no-detector-masquerades-vip-sourced", "masquerade-all"],
)
def test_clusterip_masquerade_rule(proxy: dict, rule: str) -> None:
    assert rule in chain(run(web(), **proxy), "KUBE-SERVICES")


def test_nat_chains_in_upstream_order() -> None:
    svc = web("LoadBalancer", node_port=30080, load_balancer_ips=("1.2.3.4",),
              external_traffic_policy="Local")  # fmt: skip
    config = run(svc)
    services = chain(config, "KUBE-SERVICES")
    assert services[0] == "-A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN"
    assert "--match-set KUBE-LOAD-BALANCER dst,dst -j KUBE-LOAD-BALANCER" in services[1]
    assert "KUBE-CLUSTER-IP dst,dst ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ" in services[2]
    assert services[3:] == [
        "-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT",
        "-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT",
        "-A KUBE-SERVICES -m set --match-set KUBE-LOAD-BALANCER dst,dst -j ACCEPT",
    ]
    node_port = chain(config, "KUBE-NODE-PORT")
    assert len(node_port) == 2
    assert node_port[0].startswith("-A KUBE-NODE-PORT -p tcp ")
    assert node_port[0].endswith("--match-set KUBE-NODE-PORT-LOCAL-TCP dst -j RETURN")
    assert node_port[1].endswith("--match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ")
    assert chain(config, "KUBE-LOAD-BALANCER")[-1] == "-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ"
    assert chain(config, "KUBE-POSTROUTING")[0].endswith(
        "--match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE"
    )


def test_rules_of_empty_sets_are_not_written() -> None:
    config = run(web())
    assert not chain(config, "KUBE-NODE-PORT")
    assert not chain(config, "KUBE-LOAD-BALANCER")[:-1]
    assert chain(config, "KUBE-SOURCE-RANGES-FIREWALL", "filter") == [
        "-A KUBE-SOURCE-RANGES-FIREWALL -j DROP"
    ]


def test_source_range_filter_rules() -> None:
    svc = web("LoadBalancer", node_port=30080, load_balancer_ips=("1.2.3.4",),
              load_balancer_source_ranges=("203.0.113.0/25",))  # fmt: skip
    config = run(svc)
    assert chain(config, "KUBE-PROXY-FIREWALL", "filter")[0].endswith(
        "--match-set KUBE-LOAD-BALANCER-FW dst,dst -j KUBE-SOURCE-RANGES-FIREWALL"
    )
    ranges = chain(config, "KUBE-SOURCE-RANGES-FIREWALL", "filter")
    assert ranges[0].endswith("--match-set KUBE-LOAD-BALANCER-SOURCE-CIDR dst,dst,src -j RETURN")
    assert ranges[-1] == "-A KUBE-SOURCE-RANGES-FIREWALL -j DROP"


def test_ipvs_filter_keeps_vips_from_exposing_host_ports() -> None:
    rules = chain(run(web()), "KUBE-IPVS-FILTER", "filter")
    assert rules[-1] == (
        "-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst "
        "-j REJECT"
    )
    assert len(rules) == 6


def test_builtin_jumps_are_prepended_in_reverse_installation_order() -> None:
    text = run(web()).iptables
    inputs = [line for line in text.splitlines() if line.startswith("-A INPUT ")]
    assert [line.rsplit(" ", 1)[1] for line in inputs] == [
        "KUBE-IPVS-FILTER",
        "KUBE-PROXY-FIREWALL",
        "KUBE-NODE-PORT",
    ]
    assert (
        '-A FORWARD -m comment --comment "kube-proxy firewall rules" -j KUBE-PROXY-FIREWALL' in text
    )
    assert (
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING'
        in text
    )


def test_the_rules_restore_with_the_sets_and_not_without() -> None:
    svc = web("LoadBalancer", node_port=30080, load_balancer_ips=("1.2.3.4",),
              load_balancer_source_ranges=("203.0.113.0/25",), protocol="SCTP")  # fmt: skip
    config = run(svc)
    ruleset = parse_iptables_save(config.iptables, ipsets=config.registry())
    assert set(ruleset.tables) == {"filter", "nat"}
    with pytest.raises(RulesError, match=r"ipset KUBE-[A-Z-]+ does not exist"):
        parse_iptables_save(config.iptables)


# ----------------------------------------------------------------------------- renderings


def test_ipvsadm_listing() -> None:
    svc = web("NodePort", node_port=30080, session_affinity="ClientIP",
              session_affinity_timeout=60)  # fmt: skip
    assert run(svc).ipvsadm() == (
        "IP Virtual Server version 1.2.1 (size=4096)\n"
        "Prot LocalAddress:Port Scheduler Flags\n"
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
        "TCP  10.96.0.10:80 rr persistent 60\n"
        "  -> 10.244.1.5:8080              Masq    1      0          0\n"
        "  -> 10.244.2.7:8080              Masq    1      0          0\n"
        "TCP  10.244.1.1:30080 rr persistent 60\n"
        "  -> 10.244.1.5:8080              Masq    1      0          0\n"
        "  -> 10.244.2.7:8080              Masq    1      0          0\n"
        "TCP  192.168.10.11:30080 rr persistent 60\n"
        "  -> 10.244.1.5:8080              Masq    1      0          0\n"
        "  -> 10.244.2.7:8080              Masq    1      0          0\n"
    )


def test_ipset_listing() -> None:
    text = run(web("NodePort", node_port=30080)).ipset_list()
    assert (
        "Name: KUBE-NODE-PORT-TCP\nType: bitmap:port\nHeader: range 0-65535\n"
        "Number of entries: 1\nMembers:\n30080\n"
    ) in text
    assert (
        "Name: KUBE-CLUSTER-IP\nType: hash:ip,port\n"
        "Header: family inet hashsize 1024 maxelem 65536\nNumber of entries: 1\n"
        "Members:\n10.96.0.10,tcp:80\n"
    ) in text


def test_sync_is_deterministic_across_service_order() -> None:
    a = web()
    b = Service("shop", "api", "NodePort", "10.96.0.11",
                (ServicePort("", "TCP", 80, 8080, 30090),))  # fmt: skip
    one = sync(cluster((a, EPS), (b, EPS)), NODE)
    two = sync(cluster((b, EPS), (a, EPS)), NODE)
    assert one == two
    assert [vs.service for vs in one.virtual_servers][:1] == ["shop/api"]
    assert ip("10.96.0.11") == one.virtual_servers[0].address
