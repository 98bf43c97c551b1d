"""Packet-flow cases in the style of kube-proxy's own tests: generate a node's rules with the
iptables proxier, trace a new connection's first packet through them, and compare the possible
DNAT targets (in rule order) and the masquerade decision.

The facts are kube-proxy's (reference §5.6–5.8: the internal/external masquerade matrix, the
LoadBalancer source-range cases, traffic policies, terminating endpoints), restated here as our
own data with our own names.
"""

from __future__ import annotations

import pytest

from k8snet_sim.analysis.iptables_trace import iptables_trace
from k8snet_sim.cluster.model import (
    ClusterState,
    Endpoint,
    KubeProxyConfig,
    Node,
    Service,
    ServicePort,
)
from k8snet_sim.proxy.iptables import restore_input

NODE = "this-node"
NODE_IP = "192.168.0.2"
POD, LOCALHOST, EXTERNAL = "10.0.0.2", "127.0.0.1", "203.0.113.2"


def state(
    *services: tuple[Service, list[Endpoint]],
    detector: str | None = "10.0.0.0/8",
    masquerade_all: bool = False,
) -> ClusterState:
    return ClusterState(
        service_cidr="172.30.0.0/16",
        pod_cidr="10.0.0.0/8",
        node_port_range=(30000, 32767),
        nodes=(
            Node(NODE, NODE_IP, "10.0.0.0/24", "lan"),
            Node("other", "192.168.0.3", "10.0.1.0/24", "lan"),
        ),
        pods=(),
        services=tuple(s for s, _ in services),
        endpoints={
            (s.key, s.ports[0].name): tuple(sorted(eps, key=lambda e: e.address))
            for s, eps in services
        },
        kube_proxy=KubeProxyConfig(cluster_cidr=detector, masquerade_all=masquerade_all),
    )


def lb(
    name: str,
    ip: str,
    node_port: int,
    lb_ip: str,
    *,
    etp: str = "Cluster",
    itp: str = "Cluster",
    hcnp: int = 0,
    ranges: tuple[str, ...] = (),
    affinity: bool = False,
) -> Service:
    return Service(
        "lab",
        name,
        "LoadBalancer",
        ip,
        (ServicePort("web", "TCP", 80, 80, node_port),),
        load_balancer_ips=(lb_ip,),
        external_traffic_policy=etp,
        internal_traffic_policy=itp,
        health_check_node_port=hcnp,
        load_balancer_source_ranges=ranges,
        session_affinity="ClientIP" if affinity else "None",
    )


def ep(
    ip: str, local: bool, *, ready: bool = True, serving: bool = True, terminating: bool = False
) -> Endpoint:
    return Endpoint(
        ip, 80, NODE if local else "other", ready=ready, serving=serving, terminating=terminating
    )


def flow(st: ClusterState, src: str, dst: str, dport: int, proto: str = "tcp") -> tuple[str, bool]:
    result = iptables_trace(
        restore_input(st, NODE), src=src, dst=dst, dport=dport, proto=proto, local_ips=[NODE_IP]
    )
    return ", ".join(result.output), result.masquerade


# --- The internal/external masquerade matrix (three LoadBalancer Services) -------------------


def matrix(detector: str | None = "10.0.0.0/8", masquerade_all: bool = False) -> ClusterState:
    return state(
        (
            lb("alpha", "172.30.0.41", 3001, "1.2.3.4", hcnp=30001),
            [ep("10.180.0.1", True), ep("10.180.1.1", False)],
        ),
        (
            lb("beta", "172.30.0.42", 3002, "5.6.7.8", etp="Local", hcnp=30002),
            [ep("10.180.0.2", True), ep("10.180.1.2", False)],
        ),
        (
            lb("gamma", "172.30.0.43", 3003, "9.10.11.12", itp="Local", hcnp=30003),
            [ep("10.180.0.3", True), ep("10.180.1.3", False)],
        ),
        detector=detector,
        masquerade_all=masquerade_all,
    )


A = "10.180.0.1:80, 10.180.1.1:80"
B = "10.180.0.2:80, 10.180.1.2:80"
B_LOCAL = "10.180.0.2:80"
G = "10.180.0.3:80, 10.180.1.3:80"
G_LOCAL = "10.180.0.3:80"

# (case, src, dst, port, base output, base masq)
MATRIX = [
    ("pod → ClusterIP", POD, "172.30.0.41", 80, A, False),
    ("pod → NodePort", POD, NODE_IP, 3001, A, True),
    ("pod → LB", POD, "1.2.3.4", 80, A, True),
    ("node → ClusterIP", NODE_IP, "172.30.0.41", 80, A, True),
    ("node → NodePort", NODE_IP, NODE_IP, 3001, A, True),
    ("localhost → NodePort", LOCALHOST, LOCALHOST, 3001, A, True),
    ("node → LB", NODE_IP, "1.2.3.4", 80, A, True),
    ("external → ClusterIP", EXTERNAL, "172.30.0.41", 80, A, True),
    ("external → NodePort", EXTERNAL, NODE_IP, 3001, A, True),
    ("external → LB", EXTERNAL, "1.2.3.4", 80, A, True),
    ("pod → ClusterIP, eTP Local", POD, "172.30.0.42", 80, B, False),
    ("pod → NodePort, eTP Local (short-circuit)", POD, NODE_IP, 3002, B, False),
    ("pod → LB, eTP Local (short-circuit)", POD, "5.6.7.8", 80, B, False),
    ("node → ClusterIP, eTP Local", NODE_IP, "172.30.0.42", 80, B, True),
    ("localhost → NodePort, eTP Local", LOCALHOST, LOCALHOST, 3002, B, True),
    ("node → LB, eTP Local", NODE_IP, "5.6.7.8", 80, B, True),
    ("external → ClusterIP, eTP Local", EXTERNAL, "172.30.0.42", 80, B, True),
    ("external → NodePort, eTP Local", EXTERNAL, NODE_IP, 3002, B_LOCAL, False),
    ("external → LB, eTP Local", EXTERNAL, "5.6.7.8", 80, B_LOCAL, False),
    ("pod → ClusterIP, iTP Local", POD, "172.30.0.43", 80, G_LOCAL, False),
    ("pod → NodePort, iTP Local", POD, NODE_IP, 3003, G, True),
    ("pod → LB, iTP Local", POD, "9.10.11.12", 80, G, True),
    ("node → ClusterIP, iTP Local", NODE_IP, "172.30.0.43", 80, G_LOCAL, True),
    ("node → NodePort, iTP Local", NODE_IP, NODE_IP, 3003, G, True),
    ("localhost → NodePort, iTP Local", LOCALHOST, LOCALHOST, 3003, G, True),
    ("node → LB, iTP Local", NODE_IP, "9.10.11.12", 80, G, True),
    ("external → ClusterIP, iTP Local", EXTERNAL, "172.30.0.43", 80, G_LOCAL, True),
    ("external → NodePort, iTP Local", EXTERNAL, NODE_IP, 3003, G, True),
    ("external → LB, iTP Local", EXTERNAL, "9.10.11.12", 80, G, True),
]
# Without a local-traffic detector, the node/outside → ClusterIP flows are no longer
# masqueraded and pods lose the eTP=Local short-circuit; masquerade-all masquerades pods too.
NO_DETECTOR = {
    "node → ClusterIP": (A, False),
    "external → ClusterIP": (A, False),
    "node → ClusterIP, eTP Local": (B, False),
    "external → ClusterIP, eTP Local": (B, False),
    "node → ClusterIP, iTP Local": (G_LOCAL, False),
    "external → ClusterIP, iTP Local": (G_LOCAL, False),
    "pod → NodePort, eTP Local (short-circuit)": (B_LOCAL, False),
    "pod → LB, eTP Local (short-circuit)": (B_LOCAL, False),
}
MASQUERADE_ALL = {
    "pod → ClusterIP": (A, True),
    "pod → ClusterIP, eTP Local": (B, True),
    "pod → ClusterIP, iTP Local": (G_LOCAL, True),
}


@pytest.mark.parametrize(
    ("case", "src", "dst", "port", "output", "masq"), MATRIX, ids=[c[0] for c in MATRIX]
)
def test_masquerade_matrix(
    case: str, src: str, dst: str, port: int, output: str, masq: bool
) -> None:
    assert flow(matrix(), src, dst, port) == (output, masq)


@pytest.mark.parametrize(
    ("case", "src", "dst", "port", "output", "masq"), MATRIX, ids=[c[0] for c in MATRIX]
)
def test_masquerade_matrix_without_detector(case, src, dst, port, output, masq) -> None:
    assert flow(matrix(detector=None), src, dst, port) == NO_DETECTOR.get(case, (output, masq))


@pytest.mark.parametrize("case", list(MASQUERADE_ALL))
def test_masquerade_all(case: str) -> None:
    _, src, dst, port, _, _ = next(c for c in MATRIX if c[0] == case)
    assert flow(matrix(masquerade_all=True), src, dst, port) == MASQUERADE_ALL[case]


# --- LoadBalancer source ranges -----------------------------------------------------------


def ranged() -> ClusterState:
    svc = Service(
        "lab",
        "gated",
        "LoadBalancer",
        "172.30.0.41",
        (ServicePort("web", "TCP", 80, 80, 3001),),
        load_balancer_ips=("1.2.3.4", "5.6.7.8"),
        load_balancer_source_ranges=("192.168.0.0/24", "203.0.113.0/25"),
    )
    return state((svc, [ep("10.180.0.1", False)]))


@pytest.mark.parametrize(
    ("src", "dst", "port", "output", "masq"),
    [
        (POD, "172.30.0.41", 80, "10.180.0.1:80", False),
        ("203.0.113.2", NODE_IP, 3001, "10.180.0.1:80", True),  # NodePorts ignore source ranges
        ("203.0.113.130", NODE_IP, 3001, "10.180.0.1:80", True),
        ("203.0.113.2", "1.2.3.4", 80, "10.180.0.1:80", True),
        ("203.0.113.2", "5.6.7.8", 80, "10.180.0.1:80", True),
        ("203.0.113.130", "1.2.3.4", 80, "DROP", False),
        (POD, "5.6.7.8", 80, "DROP", False),  # pods are not in the ranges either
        (NODE_IP, "1.2.3.4", 80, "10.180.0.1:80", True),  # node inside 192.168.0.0/24
        ("5.6.7.8", "5.6.7.8", 80, "10.180.0.1:80", True),  # node traffic SNATed to the LB IP
    ],
)
def test_source_ranges(src: str, dst: str, port: int, output: str, masq: bool) -> None:
    assert flow(ranged(), src, dst, port) == (output, masq)


# --- No endpoints, traffic policies, terminating endpoints, hairpin --------------------------


def single(svc_type: str = "ClusterIP", **kw) -> Service:
    node_port = kw.pop("node_port", 0)
    return Service(
        "lab",
        "one",
        svc_type,
        "172.30.1.1",
        (ServicePort("", kw.pop("proto", "TCP"), 80, 80, node_port),),
        **kw,
    )


@pytest.mark.parametrize(
    ("services", "src", "dst", "port", "output", "masq"),
    [
        ((single(), []), POD, "172.30.1.1", 80, "REJECT", False),
        ((single("NodePort", node_port=3001), []), EXTERNAL, NODE_IP, 3001, "REJECT", False),
        (
            (single(external_ips=("192.168.99.11",)), []),
            EXTERNAL,
            "192.168.99.11",
            80,
            "REJECT",
            False,
        ),
        (
            (
                single(internal_traffic_policy="Local"),
                [ep("10.0.1.1", True), ep("10.0.1.2", False)],
            ),
            POD,
            "172.30.1.1",
            80,
            "10.0.1.1:80",
            False,
        ),
        (
            (single(internal_traffic_policy="Local"), [ep("10.0.1.2", False)]),
            POD,
            "172.30.1.1",
            80,
            "DROP",
            False,
        ),
        (
            (single(), [ep("10.0.1.1", True), ep("10.0.1.2", False), ep("10.0.1.3", False)]),
            POD,
            "172.30.1.1",
            80,
            "10.0.1.1:80, 10.0.1.2:80, 10.0.1.3:80",
            False,
        ),
        # Ready endpoints preferred; serving+terminating only as fallback; never non-serving.
        (
            (
                single(),
                [ep("10.0.1.2", True, ready=False, terminating=True), ep("10.0.1.5", False)],
            ),
            POD,
            "172.30.1.1",
            80,
            "10.0.1.5:80",
            False,
        ),
        (
            (
                single(),
                [
                    ep("10.0.1.2", True, ready=False, terminating=True),
                    ep("10.0.1.4", True, ready=False, serving=False, terminating=True),
                ],
            ),
            POD,
            "172.30.1.1",
            80,
            "10.0.1.2:80",
            False,
        ),
        (
            (single(), [ep("10.0.1.4", True, ready=False, serving=False, terminating=True)]),
            POD,
            "172.30.1.1",
            80,
            "REJECT",
            False,
        ),
        # Hairpin: an endpoint reaching its own Service is masqueraded (also for SCTP).
        (
            (single(proto="SCTP"), [ep("10.180.0.1", True)]),
            "10.180.0.1",
            "172.30.1.1",
            80,
            "10.180.0.1:80",
            True,
        ),
        (
            (single(), [ep("10.180.0.1", True)]),
            "10.180.0.2",
            "172.30.1.1",
            80,
            "10.180.0.1:80",
            False,
        ),
        # A ClusterIP Service's external IP behaves as eTP Cluster: both endpoints, masqueraded.
        (
            (
                single(external_ips=("192.168.99.11",)),
                [ep("10.180.0.1", False), ep("10.180.2.1", True)],
            ),
            EXTERNAL,
            "192.168.99.11",
            80,
            "10.180.0.1:80, 10.180.2.1:80",
            True,
        ),
        # eTP Local external IP from outside: the local endpoint only, client address kept.
        (
            (
                single(
                    "NodePort", external_traffic_policy="Local", external_ips=("192.168.99.11",)
                ),
                [ep("10.180.0.1", False), ep("10.180.2.1", True)],
            ),
            EXTERNAL,
            "192.168.99.11",
            80,
            "10.180.2.1:80",
            False,
        ),
        # A healthCheckNodePort is accepted even without endpoints.
        (
            (
                Service(
                    "lab",
                    "hc",
                    "LoadBalancer",
                    "172.30.0.42",
                    (ServicePort("", "TCP", 80, 80, 3001),),
                    load_balancer_ips=("1.2.3.4",),
                    external_traffic_policy="Local",
                    health_check_node_port=30000,
                ),
                [],
            ),
            "1.2.3.4",
            NODE_IP,
            30000,
            "ACCEPT",
            False,
        ),
        ((single(), [ep("10.0.1.1", True)]), POD, "10.0.0.3", 80, "", False),  # nothing matches
    ],
)
def test_policies_and_edge_cases(services, src, dst, port, output, masq) -> None:
    proto = services[0].ports[0].protocol.lower()
    assert flow(state(services), src, dst, port, proto) == (output, masq)


def test_affinity_rules_do_not_hide_endpoints_on_a_first_packet() -> None:
    svc = lb("sticky", "172.30.0.41", 3001, "1.2.3.4", etp="Local", hcnp=30000, affinity=True)
    st = state((svc, [ep("10.180.0.1", False), ep("10.180.2.1", True)]))
    assert flow(st, POD, "172.30.0.41", 80) == ("10.180.0.1:80, 10.180.2.1:80", False)
    assert flow(st, EXTERNAL, "1.2.3.4", 80) == ("10.180.2.1:80", False)
    assert flow(st, EXTERNAL, NODE_IP, 3001) == ("10.180.2.1:80", False)
