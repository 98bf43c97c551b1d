"""The control plane: IPAM, scheduling, endpoints, NodePorts, LoadBalancers, Ingress routes,
readiness and determinism. Scenarios are written inline, small, one fact per test."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent, indent

import pytest

from k8snet_sim.cluster.build import ClusterBuild, build_cluster
from k8snet_sim.cluster.ingress import IngressRoute
from k8snet_sim.cluster.ipam import (
    AllocationError,
    PodIPAllocator,
    ServiceIPAllocator,
    assign_node_pod_cidrs,
    bridge_address,
)
from k8snet_sim.cluster.loadbalancer import NO_PROVIDER
from k8snet_sim.cluster.nodeports import NodePortAllocator, NodePortRequest, assign_node_ports
from k8snet_sim.errors import ScenarioError
from k8snet_sim.scenario.loader import load_scenario, load_scenario_text

SHOP = Path(__file__).parent / "data" / "scenarios" / "shop.yaml"

HEAD = """\
metadata: {name: cp}
cluster:
  serviceCIDR: 10.96.0.0/16
  podCIDR: 10.244.0.0/16
  nodePortRange: 30000-32767
  kubeProxy: {mode: iptables}
  nodes:
    - {name: master, address: 192.168.10.10, subnet: lan, schedulable: false}
    - {name: node1, address: 192.168.10.11, subnet: lan, labels: {disk: ssd}}
    - {name: node2, address: 192.168.10.12, subnet: lan}
network:
  subnets: [{name: lan, cidr: 192.168.10.0/24}]
"""


def build(manifests: str, extra: str = "", *, head: str = HEAD) -> ClusterBuild:
    text = head + extra + "manifests:\n" + indent(dedent(manifests), "  ")
    return build_cluster(load_scenario_text(text, file="cp.yaml"))


def deployment(name: str, replicas: int, labels: str, spec: str = "containers: [{name: c}]") -> str:
    return f"""\
- apiVersion: apps/v1
  kind: Deployment
  metadata: {{name: {name}}}
  spec:
    replicas: {replicas}
    selector: {{matchLabels: {labels}}}
    template:
      metadata: {{labels: {labels}}}
      spec: {{{spec}}}
"""


def service(name: str, spec: str) -> str:
    return f"- {{apiVersion: v1, kind: Service, metadata: {{name: {name}}}, spec: {spec}}}\n"


def pod(name: str, spec: str, extra: str = "") -> str:
    return (
        f"- {{apiVersion: v1, kind: Pod, metadata: {{name: {name}, labels: {{app: web}}}},"
        f" spec: {spec}{extra}}}\n"
    )


# --- IPAM ----------------------------------------------------------------------------------


def test_cluster_ips_explicit_first_then_lowest_free_skipping_the_kubernetes_ip():
    got = build(
        service("a", "{ports: [{port: 80}]}")
        + service("b", "{clusterIP: 10.96.0.2, ports: [{port: 80}]}")
        + service("c", "{clusterIP: None, ports: [{port: 80}]}")
        + service("d", "{type: ExternalName, externalName: example.com}")
        + service("e", "{ports: [{port: 80}]}")
    )
    ips = {s.name: s.cluster_ip for s in got.state.services}
    assert ips == {"a": "10.96.0.3", "b": "10.96.0.2", "c": None, "d": None, "e": "10.96.0.4"}


def test_service_ip_allocator_unit():
    alloc = ServiceIPAllocator("10.96.0.0/29")
    assert [alloc.allocate_next(f"s{i}") for i in range(5)] == [
        "10.96.0.2",
        "10.96.0.3",
        "10.96.0.4",
        "10.96.0.5",
        "10.96.0.6",
    ]
    with pytest.raises(AllocationError, match="range is full"):
        alloc.allocate_next("s6")
    with pytest.raises(AllocationError, match="not in the valid range"):
        alloc.reserve("10.96.0.7", "x")  # broadcast


def test_pod_cidrs_explicit_then_first_free_block():
    assert assign_node_pod_cidrs("10.244.0.0/16", 24, [None, "10.244.0.0/24", None]) == [
        "10.244.1.0/24",
        "10.244.0.0/24",
        "10.244.2.0/24",
    ]
    assert assign_node_pod_cidrs("10.244.0.0/23", 24, [None, None, None]) == [
        "10.244.0.0/24",
        "10.244.1.0/24",
        None,
    ]


def test_pod_ips_bridge_and_host_network():
    got = build(
        deployment("web", 3, "{app: web}")
        + pod("agent", "{nodeName: node2, hostNetwork: true, containers: [{name: a}]}")
    )
    assert [n.pod_cidr for n in got.state.nodes] == [
        "10.244.0.0/24",
        "10.244.1.0/24",
        "10.244.2.0/24",
    ]
    assert [(p.name, p.node, p.ip) for p in got.state.pods] == [
        ("web-0", "node1", "10.244.1.2"),
        ("web-1", "node2", "10.244.2.2"),
        ("web-2", "node1", "10.244.1.3"),
        ("agent", "node2", "192.168.10.12"),
    ]
    assert got.state.pods[3].host_network
    assert bridge_address("10.244.1.0/24") == "10.244.1.1"
    assert got.state.node("node1").labels["kubernetes.io/hostname"] == "node1"


def test_pod_ip_allocator_exhaustion():
    alloc = PodIPAllocator("10.244.1.0/30")  # .1 bridge, .2 the only pod, .3 broadcast
    assert alloc.allocate_next("a") == "10.244.1.2"
    with pytest.raises(AllocationError, match="exhausted"):
        alloc.allocate_next("b")


# --- scheduler -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "nodes"),
    [
        ("containers: [{name: c}]", ["node1", "node2", "node1", "node2"]),
        ("nodeSelector: {disk: ssd}, containers: [{name: c}]", ["node1"] * 4),
        ("nodeName: master, containers: [{name: c}]", ["master"] * 4),
        ("nodeSelector: {kubernetes.io/hostname: node2}, containers: [{name: c}]", ["node2"] * 4),
        (
            "tolerations: [{operator: Exists}], containers: [{name: c}]",
            ["master", "node1", "node2", "master"],
        ),
        (
            "tolerations: [{key: node-role.kubernetes.io/control-plane, effect: NoSchedule}],"
            " nodeSelector: {kubernetes.io/hostname: master}, containers: [{name: c}]",
            ["master"] * 4,
        ),
    ],
)
def test_scheduler_spread_selector_nodename_unschedulable(spec, nodes):
    got = build(deployment("web", 4, "{app: web}", spec))
    assert [p.node for p in got.state.pods] == nodes


def test_spread_counts_pods_already_placed():
    got = build(
        pod("pinned", "{nodeName: node1, containers: [{name: c}]}")
        + deployment("web", 3, "{app: web}")
    )
    assert [(p.name, p.node) for p in got.state.pods] == [
        ("pinned", "node1"),
        ("web-0", "node2"),
        ("web-1", "node1"),
        ("web-2", "node2"),
    ]


def test_daemonset_one_pod_per_fitting_node():
    ds = """\
- apiVersion: apps/v1
  kind: DaemonSet
  metadata: {name: proxy, namespace: kube-system}
  spec:
    selector: {matchLabels: {app: proxy}}
    template:
      metadata: {labels: {app: proxy}}
      spec: {hostNetwork: true, containers: [{name: p}]}
"""
    got = build(ds)
    assert [(p.key, p.node, p.ip) for p in got.state.pods] == [
        ("kube-system/proxy-node1", "node1", "192.168.10.11"),
        ("kube-system/proxy-node2", "node2", "192.168.10.12"),
    ]


def test_unschedulable_everywhere_is_an_error_with_hint():
    with pytest.raises(ScenarioError) as info:
        build(
            deployment(
                "web", 1, "{app: web}", "nodeSelector: {disk: nvme}, containers: [{name: c}]"
            )
        )
    (diag,) = info.value.diagnostics
    assert diag.path == "manifests[0].spec.template.spec.nodeSelector"
    assert "0/3 nodes are available: 1 node(s) were unschedulable, 2 node(s) did not match" in (
        diag.message
    )
    assert "node1 kubernetes.io/hostname=node1,disk=ssd" in diag.hint


def test_a_misspelt_node_name_gets_a_did_you_mean_hint():
    with pytest.raises(ScenarioError) as info:
        build(deployment("web", 1, "{app: web}", "nodeName: nod1, containers: [{name: c}]"))
    (diag,) = info.value.diagnostics
    assert diag.path == "manifests[0].spec.template.spec.nodeName"
    assert diag.hint == "did you mean `node1`? (nodes: master, node1, node2)"


# --- endpoints -----------------------------------------------------------------------------


def test_named_target_port_is_resolved_per_pod_and_pods_without_it_are_skipped():
    got = build(
        pod(
            "a",
            "{nodeName: node1, containers: [{name: c,"
            " ports: [{name: http, containerPort: 8080}]}]}",
        )
        + pod(
            "b",
            "{nodeName: node2, containers: [{name: c,"
            " ports: [{name: http, containerPort: 9090}]}]}",
        )
        + pod(
            "c",
            "{nodeName: node2, containers: [{name: c, ports: [{name: web, containerPort: 80}]}]}",
        )
        + pod(
            "d",
            "{nodeName: node1, containers: [{name: c, ports: [{name: http, containerPort: 53,"
            " protocol: UDP}]}]}",
        )
        + service("web", "{selector: {app: web}, ports: [{port: 80, targetPort: http}]}")
    )
    web = got.state.service("default", "web")
    assert web is not None
    eps = got.state.endpoints_for(web, web.ports[0])
    assert [(e.address, e.pod, e.node_name) for e in eps] == [
        ("10.244.1.2:8080", "default/a", "node1"),
        ("10.244.2.2:9090", "default/b", "node2"),
    ]


def test_endpoints_are_sorted_as_strings_like_kube_proxy():
    got = build(
        deployment("web", 10, "{app: web}", "nodeName: node1, containers: [{name: c}]")
        + service("web", "{selector: {app: web}, ports: [{port: 80}]}")
    )
    web = got.state.service("default", "web")
    assert web is not None
    addresses = [e.address for e in got.state.endpoints_for(web, web.ports[0])]
    assert addresses[:3] == ["10.244.1.10:80", "10.244.1.11:80", "10.244.1.2:80"]
    assert addresses == sorted(addresses)


READY_SVC = service("web", "{selector: {app: web}, ports: [{port: 80}]}")


@pytest.mark.parametrize(
    ("extra", "status", "expected"),
    [
        ("", "", (True, True, True, False)),
        (
            "",
            ", status: {conditions: [{type: Ready, status: 'False'}]}",
            (False, False, False, False),
        ),
        ("podStatus: [{pod: default/p, ready: false}]\n", "", (False, False, False, False)),
        ("podStatus: [{pod: p, terminating: true}]\n", "", (True, False, True, True)),
        (
            "podStatus: [{pod: p, terminating: true, serving: false}]\n",
            "",
            (True, False, False, True),
        ),
        (
            "podStatus: [{pod: default/p, ready: true}]\n",
            ", status: {conditions: [{type: Ready, status: 'False'}]}",
            (True, True, True, False),
        ),
    ],
)
def test_readiness(extra, status, expected):
    got = build(pod("p", "{nodeName: node1, containers: [{name: c}]}", status) + READY_SVC, extra)
    (p,) = got.state.pods
    web = got.state.service("default", "web")
    assert web is not None
    (e,) = got.state.endpoints_for(web, web.ports[0])
    assert (p.ready, e.ready, e.serving, e.terminating) == expected


def test_publish_not_ready_addresses():
    got = build(
        pod(
            "p",
            "{containers: [{name: c}]}",
            ", status: {conditions: [{type: Ready, status: 'False'}]}",
        )
        + service(
            "web", "{selector: {app: web}, publishNotReadyAddresses: true, ports: [{port: 80}]}"
        )
    )
    web = got.state.service("default", "web")
    assert web is not None
    assert [e.ready for e in got.state.endpoints_for(web, web.ports[0])] == [True]


def test_endpoint_slices_for_selectorless_service():
    slices = """\
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: ext-1, labels: {kubernetes.io/service-name: ext}}
  addressType: IPv4
  ports: [{name: http, port: 8080}, {name: metrics, port: 9100}]
  endpoints:
    - {addresses: [10.0.0.9], nodeName: node1, targetRef: {kind: Pod, name: ext-a}}
    - {addresses: [10.0.0.10], conditions: {ready: false, serving: true, terminating: true}}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: ext-2, labels: {kubernetes.io/service-name: ext}}
  addressType: IPv4
  ports: [{name: http, port: 8080}]
  endpoints: [{addresses: [10.0.0.9]}, {addresses: [192.168.10.50]}]
"""
    got = build(slices + service("ext", "{ports: [{name: http, port: 80}, {name: dns, port: 53}]}"))
    ext = got.state.service("default", "ext")
    assert ext is not None and ext.selector is None
    http = got.state.endpoints_for(ext, ext.find_port("http"))  # type: ignore[arg-type]
    assert [(e.address, e.ready, e.serving, e.terminating, e.pod) for e in http] == [
        ("10.0.0.10:8080", False, True, True, None),
        ("10.0.0.9:8080", True, True, False, "default/ext-a"),
        ("192.168.10.50:8080", True, True, False, None),
    ]
    assert got.state.endpoints_for(ext, ext.find_port("dns")) == ()  # type: ignore[arg-type]


# --- NodePorts -----------------------------------------------------------------------------


def test_node_ports_explicit_reserved_first_then_upper_band_upward():
    got = build(
        service("a", "{type: NodePort, ports: [{port: 80}]}")
        + service("b", "{type: NodePort, ports: [{port: 80, nodePort: 30086}]}")
        + service(
            "dns",
            "{type: NodePort, ports: [{name: udp, port: 53, protocol: UDP},"
            " {name: tcp, port: 53, protocol: TCP}, {name: metrics, port: 9153}]}",
        )
        + service("lb", "{type: LoadBalancer, ports: [{port: 443}]}")
        + service(
            "lb-none",
            "{type: LoadBalancer, allocateLoadBalancerNodePorts: false, ports: [{port: 443}]}",
        )
        + service(
            "local", "{type: LoadBalancer, externalTrafficPolicy: Local, ports: [{port: 80}]}"
        )
        + service(
            "local-hc",
            "{type: LoadBalancer, externalTrafficPolicy: Local, healthCheckNodePort: 32000,"
            " ports: [{port: 80, nodePort: 30000}]}",
        )
    )
    ports = {
        s.name: ([p.node_port for p in s.ports], s.health_check_node_port)
        for s in got.state.services
    }
    assert ports == {
        "a": ([30087], 0),
        "b": ([30086], 0),
        "dns": ([30088, 30088, 30089], 0),
        "lb": ([30090], 0),
        "lb-none": ([0], 0),
        "local": ([30091], 30092),
        "local-hc": ([30000], 32000),
    }


def test_node_port_allocator_bands():
    assert NodePortAllocator(30000, 32767).offset == 86
    assert NodePortAllocator(30000, 30015).offset == 0  # 16 ports: no static band
    assert NodePortAllocator(30000, 30099).offset == 16
    small = NodePortAllocator(30000, 30019)  # offset 16: upper band 30016-30019
    got = [small.allocate_next(f"s{i}") for i in range(6)]
    assert got == [30016, 30017, 30018, 30019, 30000, 30001]
    full = NodePortAllocator(30000, 30000)
    full.allocate_next("x")
    with pytest.raises(AllocationError, match="range is full"):
        full.allocate_next("y")


def test_node_port_errors_are_collected_per_port():
    alloc = NodePortAllocator(30000, 30099)
    results = assign_node_ports(
        [
            NodePortRequest("ns/a", ((80, 30050),), allocate=True),
            NodePortRequest("ns/b", ((80, 30050), (81, 40000)), allocate=True),
        ],
        alloc,
    )
    assert results[0].problems == []
    assert results[1].problems == [
        (0, "invalid value 30050: provided port is already allocated (to ns/a)"),
        (
            1,
            "invalid value 40000: provided port is not in the valid range. "
            "The range of valid ports is 30000-30099",
        ),
    ]


def test_health_check_node_port_not_allowed_without_local_lb():
    with pytest.raises(ScenarioError) as info:
        build(service("web", "{type: NodePort, healthCheckNodePort: 32000, ports: [{port: 80}]}"))
    (diag,) = info.value.diagnostics
    assert diag.path == "manifests[0].spec.healthCheckNodePort"
    assert diag.message.startswith("may only be set when `type` is 'LoadBalancer'")


# --- LoadBalancer --------------------------------------------------------------------------


LB_POOL = "loadBalancer: {provider: metallb-l2, pool: 192.168.10.200-192.168.10.202}\n"


def test_load_balancer_pool_request_status_and_exhaustion():
    got = build(
        service("a", "{type: LoadBalancer, ports: [{port: 80}]}")
        + service("b", "{type: LoadBalancer, loadBalancerIP: 192.168.10.200, ports: [{port: 80}]}")
        + service("c", "{type: LoadBalancer, loadBalancerIP: 10.1.1.1, ports: [{port: 80}]}")
        + "- {apiVersion: v1, kind: Service, metadata: {name: d}, spec: {type: LoadBalancer,"
        " ports: [{port: 80}]}, status: {loadBalancer: {ingress: [{ip: 192.168.10.201},"
        " {hostname: lb.example}]}}}\n"
        + service("e", "{type: LoadBalancer, ports: [{port: 80}]}")
        + service("f", "{type: LoadBalancer, ports: [{port: 80}]}"),
        LB_POOL,
    )
    lbs = {s.name: (s.load_balancer_ips, s.load_balancer_pending) for s in got.state.services}
    assert lbs == {
        "a": (("192.168.10.202",), None),
        "b": (("192.168.10.200",), None),
        "c": ((), "requested loadBalancerIP 10.1.1.1 is not in the address pool"),
        "d": (("192.168.10.201",), None),
        "e": ((), "address pool exhausted (3 addresses)"),
        "f": ((), "address pool exhausted (3 addresses)"),
    }
    assert got.pending == {k: v for k, (_, v) in (("default/" + n, x) for n, x in lbs.items()) if v}
    assert any("hostname-only" in n for n in got.notes)


def test_load_balancer_without_provider_is_pending():
    got = build(service("a", "{type: LoadBalancer, ports: [{port: 80}]}"))
    assert got.pending == {"default/a": NO_PROVIDER}
    assert got.state.services[0].load_balancer_pending == "no load-balancer provider configured"


def test_load_balancer_cidr_pool_uses_every_address():
    got = build(
        service("a", "{type: LoadBalancer, ports: [{port: 80}]}"),
        "loadBalancer: {provider: cloud, pool: [203.0.113.0/31]}\n",
    )
    assert got.state.services[0].load_balancer_ips == ("203.0.113.0",)


# --- kube-proxy config, ingress, references -------------------------------------------------


def test_kube_proxy_config():
    got = build("[]\n")
    assert got.state.kube_proxy.cluster_cidr is None
    assert got.state.kube_proxy.mode == "iptables"
    assert got.state.kube_proxy.masquerade_mark == 0x4000
    shop = build_cluster(load_scenario(SHOP, overrides=["cluster.kubeProxy.masqueradeBit=15"]))
    assert shop.state.kube_proxy.cluster_cidr == "10.244.0.0/16"
    assert shop.state.kube_proxy.masquerade_mark == 0x8000


def test_shop_scenario_ingress_and_pending_state():
    shop = build_cluster(load_scenario(SHOP))
    (ingress,) = shop.ingresses
    assert ingress.class_name == "nginx"  # from the default IngressClass
    assert [(r.path, r.service, r.port) for r in ingress.routes] == [
        ("/cart", "shop/cart", 80),
        ("/", "shop/web", "http"),
    ]
    assert shop.ingress_classes[0].is_default
    assert shop.state.service("shop", "web").load_balancer_ips == ("192.168.10.200",)  # type: ignore[union-attr]
    web2 = next(p for p in shop.state.pods if p.name == "web-2")
    assert web2.ready is False  # from podStatus


@pytest.mark.parametrize(
    ("route", "host", "path", "matches"),
    [
        (IngressRoute("a.example", "/cart", "Prefix", "s/x", 80), "a.example", "/cart", True),
        (IngressRoute("a.example", "/cart", "Prefix", "s/x", 80), "a.example", "/cart/1", True),
        (IngressRoute("a.example", "/cart", "Prefix", "s/x", 80), "a.example", "/carts", False),
        (IngressRoute("a.example", "/cart", "Exact", "s/x", 80), "a.example", "/cart/1", False),
        (IngressRoute(None, "/", "Prefix", "s/x", 80), "b.example", "/anything", True),
        (IngressRoute("*.example", "/", "Prefix", "s/x", 80), "a.example", "/", True),
        (IngressRoute("*.example", "/", "Prefix", "s/x", 80), "a.b.example", "/", False),
        (IngressRoute("a.example", "/", "Prefix", "s/x", 80), "b.example", "/", False),
    ],
)
def test_ingress_route_matching(route, host, path, matches):
    assert route.matches(host, path) is matches


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            'expect.0.to="nodeport/node1/shop/cart:80"',
            "expect[0].to: Service shop/cart port 80 has no nodePort",
        ),
        (
            'expect.0.to="loadbalancer/shop/cart:80"',
            "expect[0].to: Service shop/cart is type ClusterIP",
        ),
        ("expect.0.from=pod/shop/web-7", "expect[0].from: unknown pod shop/web-7"),
        ('traffic.2.to="nodeport/node9/shop/web:80"', "traffic[2].to: unknown node 'node9'"),
        ("podStatus.0.pod=shop/web-9", "podStatus[0].pod: unknown pod shop/web-9"),
        ("ingressControllers=[]", "expect[1].to: http://shop.example/cart goes through an ingress"),
    ],
)
def test_references_are_checked_after_the_control_plane(override, expected):
    scenario = load_scenario(SHOP, overrides=[override])
    with pytest.raises(ScenarioError) as info:
        build_cluster(scenario)
    rendered = [d.render().splitlines()[0] for d in info.value.diagnostics]
    assert any(expected in line for line in rendered), rendered


def test_build_is_deterministic():
    first = build_cluster(load_scenario(SHOP))
    second = build_cluster(load_scenario(SHOP))
    assert first.state == second.state
    assert first.pending == second.pending and first.ingresses == second.ingresses
