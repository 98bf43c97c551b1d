"""Loading good scenarios: file + inline manifests, multi-document files, List, defaulting,
the ignored list, --set overrides and --mode, units, references and positions."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

from k8snet_sim.errors import ScenarioError
from k8snet_sim.scenario.kinds import ServiceObject
from k8snet_sim.scenario.loader import load_scenario, load_scenario_text
from k8snet_sim.scenario.modelbase import is_likely_typo
from k8snet_sim.scenario.refs import Ref, RefSyntaxError, parse_ref
from k8snet_sim.scenario.units import parse_bandwidth, parse_duration, parse_rate, parse_size
from k8snet_sim.scenario.yamlpos import load_yaml_documents

DATA = Path(__file__).parent / "data" / "scenarios"
SHOP = DATA / "shop.yaml"

MINIMAL = """\
metadata: {name: minimal}
cluster:
  nodes: [{name: node1, address: 192.168.10.11, subnet: lan}]
network:
  subnets: [{name: lan, cidr: 192.168.10.0/24}]
manifests:
  - apiVersion: v1
    kind: Service
    metadata: {name: web}
    spec: {selector: {app: web}, ports: [{port: 80}]}
"""


@pytest.fixture(scope="module")
def shop():
    return load_scenario(SHOP)


def test_sections_are_parsed_with_units(shop):
    assert shop.name == "shop"
    assert shop.description.startswith("A small shop")
    assert shop.path == SHOP
    assert shop.cluster.node_port_range == (30000, 32767)
    assert shop.cluster.kube_proxy.cluster_cidr == "10.244.0.0/16"
    assert shop.cluster.kube_proxy.masquerade_bit == 14
    assert shop.cluster.kube_proxy.ipvs_scheduler == "rr"
    assert shop.cluster.kube_proxy.localhost_node_ports is True
    assert [n.name for n in shop.node_specs] == ["master", "node1", "node2"]
    assert shop.node_spec("master").schedulable is False
    assert shop.node_spec("node1").cpus == 2 and shop.node_spec("node1").ip_forward
    lan = shop.subnet("lan")
    assert (lan.bandwidth, lan.latency, lan.buffer_packets) == (1e9, 100e-6, 1000)
    assert shop.subnet("office").bandwidth == 10e9
    assert shop.router("core").routes[0].via == "192.168.10.10"
    assert shop.host("laptop").gateway == "172.16.0.1"
    assert shop.load_balancer is not None and shop.load_balancer.provider == "metallb-l2"
    assert shop.ingress_controllers[0].class_name == "nginx"
    assert shop.ingress_controllers[0].upstream == "endpoints"
    assert shop.costs == {"iptablesRule": "50ns"}
    assert shop.pod_status[0].pod == "shop/web-2" and shop.pod_status[0].ready is False


def test_traffic_and_expect(shop):
    browse, shoppers, backup = shop.traffic
    assert (browse.kind, browse.rate, browse.duration) == ("requests", 500.0, 10.0)
    assert (browse.request_bytes, browse.response_bytes) == (300.0, 20 * 1024.0)
    assert (shoppers.kind, shoppers.clients, shoppers.think_time) == ("clients", 50, 0.1)
    assert (backup.kind, backup.size, backup.flows) == ("bulk", 200e6, 4)
    first, second = shop.expect
    assert (first.source, first.target, first.reachable) == (
        "host/laptop",
        "service/shop/web:80",
        True,
    )
    assert second.endpoint == ["pod/shop/cart-0"]
    assert second.modes == ["iptables", "ipvs"]


def test_manifests_from_files_multidoc_list_and_inline(shop):
    got = [(m.kind, m.key) for m in shop.manifests]
    assert got == [
        ("Namespace", "shop"),
        ("Deployment", "shop/web"),
        ("Service", "shop/web"),
        ("StatefulSet", "shop/cart"),
        ("Service", "shop/cart"),
        ("Namespace", "ingress-nginx"),
        ("Deployment", "ingress-nginx/controller"),
        ("Service", "ingress-nginx/controller"),
        ("IngressClass", "nginx"),
        ("Ingress", "shop/shop"),
        ("Service", "kube-system/dns"),
        ("DaemonSet", "kube-system/dns"),
    ]
    cart = shop.objects("Service")[1]
    # A List item knows its file and its path inside the document.
    assert cart.path == ("items", 1)
    assert cart.locate(("spec", "ports", 0, "targetPort")) == (
        str(DATA / "manifests" / "shop.yaml"),
        50,
        38,
    )
    inline = shop.objects("Service")[3]
    assert inline.path == ("manifests", 2)
    assert inline.locate(("spec", "clusterIP")) == (str(SHOP), 38, 18)


def test_defaulted_lists_visible_defaults(shop):
    assert "service shop/web ports[0].protocol = TCP" in shop.defaulted
    assert "service shop/web externalTrafficPolicy = Cluster" in shop.defaulted
    assert "service shop/web allocateLoadBalancerNodePorts = true" in shop.defaulted
    assert "service shop/cart type = ClusterIP" in shop.defaulted
    assert "service kube-system/dns ports[0].targetPort = 53" in shop.defaulted
    # eTP is only defaulted where it means something (NodePort / LoadBalancer).
    assert "service shop/cart externalTrafficPolicy = Cluster" not in shop.defaulted
    # Given values are not "defaulted".
    assert not any(
        d.startswith("service kube-system/dns ports[0].protocol") for d in shop.defaulted
    )


def test_ignored_lists_unknown_kinds_and_fields_with_location(shop):
    rendered = [d.render().splitlines()[0] for d in shop.ignored]
    manifest = str(DATA / "manifests" / "shop.yaml")
    assert (
        f"{manifest}:18:11: spec.template.spec.containers[0].image: "
        "field not interpreted by the simulator"
    ) in rendered
    assert (
        f"{manifest}:52:11: items[2].kind: kind Secret (v1) is not modelled; the object is ignored"
        in rendered
    )
    assert any("manifests[3].spec.template.spec.containers[0].image" in r for r in rendered)


MINIMAL_DEFAULTS = [
    ("cluster.serviceCIDR = 10.96.0.0/12"),
    ("cluster.podCIDR = 10.244.0.0/16"),
    ("cluster.nodePortRange = 30000-32767"),
    ("cluster.cni = host-gw"),
    ("cluster.kubeProxy.mode = iptables"),
    ("service default/web metadata.namespace = default"),
    ("service default/web ports[0].protocol = TCP"),
    ("service default/web ports[0].targetPort = 80"),
    ("service default/web type = ClusterIP"),
    ("service default/web sessionAffinity = None"),
    ("service default/web internalTrafficPolicy = Cluster"),
]


def test_minimal_scenario_defaults_in_order():
    scenario = load_scenario_text(MINIMAL, file="minimal.yaml")
    assert scenario.defaulted == MINIMAL_DEFAULTS
    assert scenario.ignored == []
    service = scenario.manifests[0]
    assert service.namespace == "default"
    assert isinstance(service.obj, ServiceObject)
    assert service.obj.spec.ports[0].target_port == 80


@pytest.mark.parametrize(
    ("overrides", "mode", "check"),
    [
        (["cluster.kubeProxy.mode=ipvs"], None, lambda s: s.mode == "ipvs"),
        ([], "nftables", lambda s: s.mode == "nftables"),
        (["cluster.kubeProxy.mode=ipvs"], "userspace", lambda s: s.mode == "userspace"),
        (["cluster.cni=vxlan"], None, lambda s: s.cluster.cni == "vxlan"),
        (
            ["cluster.kubeProxy.masqueradeAll=true"],
            None,
            lambda s: s.cluster.kube_proxy.masquerade_all is True,
        ),
        (["network.routers.0.routes=[]"], None, lambda s: s.router("core").routes == []),
        (
            ["network.subnets.1.bandwidth=100Mbps"],
            None,
            lambda s: s.subnet("office").bandwidth == 100e6,
        ),
        (["podStatus.0.ready=true"], None, lambda s: s.pod_status[0].ready is True),
        (
            ["podStatus=[{pod: shop/web-0, terminating: true}]"],
            None,
            lambda s: s.pod_status[0].pod == "shop/web-0" and s.pod_status[0].terminating,
        ),
        (
            ["manifests.2.spec.clusterIP=10.96.0.53"],
            None,
            lambda s: s.objects("Service")[3].obj.spec.cluster_ip == "10.96.0.53",
        ),
        (
            ["loadBalancer.pool=[10.0.0.0/30, 10.0.1.5-10.0.1.6]"],
            None,
            lambda s: (
                s.load_balancer.pool_ranges()[0][1] - s.load_balancer.pool_ranges()[0][0] == 3
            ),
        ),
    ],
)
def test_set_overrides(overrides, mode, check):
    scenario = load_scenario(SHOP, overrides=overrides, mode=mode)
    assert check(scenario)


def test_set_value_positions_point_at_the_override():
    scenario = load_scenario(SHOP, overrides=["cluster.cni=vxlan", "podStatus.0.ready=true"])
    assert scenario.locate(("cluster", "cni")) == ("--set", 1, 13)
    assert scenario.locate(("podStatus", 0, "ready")) == ("--set", 2, 19)
    assert scenario.locate(("cluster", "serviceCIDR")) == (str(SHOP), 5, 16)


def test_creating_a_missing_section_with_set():
    scenario = load_scenario_text(
        MINIMAL, overrides=["loadBalancer={provider: cloud, pool: 10.0.0.10-10.0.0.20}"]
    )
    assert scenario.load_balancer is not None
    assert scenario.load_balancer.pool_ranges() == [(0x0A00000A, 0x0A000014)]


def test_loading_is_deterministic():
    a = load_scenario(SHOP)
    b = load_scenario(SHOP)
    assert a.defaulted == b.defaulted
    assert [d.render() for d in a.ignored] == [d.render() for d in b.ignored]
    assert [(m.kind, m.key, m.obj) for m in a.manifests] == [
        (m.kind, m.key, m.obj) for m in b.manifests
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pod/shop/web-0", Ref("pod", namespace="shop", name="web-0")),
        ("pod/web-0", Ref("pod", namespace="default", name="web-0")),
        ("node/node1", Ref("node", name="node1")),
        ("host/laptop", Ref("host", name="laptop")),
        ("router/core", Ref("router", name="core")),
        ("10.96.0.10:53", Ref("ip", ip="10.96.0.10", port=53)),
        ("pod/shop/web-0:8080", Ref("pod", namespace="shop", name="web-0", port=8080)),
        ("service/shop/web:http", Ref("service", namespace="shop", name="web", port="http")),
        ("service/web:80", Ref("service", namespace="default", name="web", port=80)),
        (
            "nodeport/node1/shop/web:80",
            Ref("nodeport", namespace="shop", name="web", node="node1", port=80),
        ),
        ("loadbalancer/shop/web:80", Ref("loadbalancer", namespace="shop", name="web", port=80)),
        ("http://shop.example/cart", Ref("http", host="shop.example", port=80, path="/cart")),
        ("http://shop.example:8080", Ref("http", host="shop.example", port=8080, path="/")),
    ],
)
def test_parse_ref(text, expected):
    ref = parse_ref(text)
    assert ref == expected
    assert parse_ref(str(ref)) == ref  # str() round-trips


@pytest.mark.parametrize(
    ("text", "role", "fragment"),
    [
        ("service/shop/web", None, "needs a port"),
        ("pod/a/b/c", None, "cannot read"),
        ("10.0.0.1", None, "needs a port"),
        ("10.0.0.300:80", None, "cannot read"),
        ("service/web:70000", None, "out of range"),
        ("host/laptop:80", "source", "is not a source"),
        ("pod/web", "target", "is not a target"),
        ("http://", None, "expected http://HOST/PATH"),
        ("bogus", None, "cannot read"),
    ],
)
def test_parse_ref_errors(text, role, fragment):
    with pytest.raises(RefSyntaxError, match=fragment):
        parse_ref(text, role=role)


@pytest.mark.parametrize(
    ("parser", "text", "value"),
    [
        (parse_bandwidth, "10Gbps", 10e9),
        (parse_bandwidth, "100Mbps", 100e6),
        (parse_bandwidth, 1000, 1000.0),
        (parse_duration, "50us", 50e-6),
        (parse_duration, "100ms", 0.1),
        (parse_duration, "10s", 10.0),
        (parse_duration, "2min", 120.0),
        (parse_duration, 3, 3.0),
        (parse_size, "20KiB", 20480.0),
        (parse_size, "200MB", 200e6),
        (parse_size, "1.5GiB", 1.5 * 1024**3),
        (parse_size, 300, 300.0),
        (parse_rate, "500/s", 500.0),
        (parse_rate, "30/min", 0.5),
        (parse_rate, 42, 42.0),
    ],
)
def test_units(parser, text, value):
    assert parser(text) == pytest.approx(value)


@pytest.mark.parametrize(
    ("parser", "text"),
    [
        (parse_bandwidth, "10GB"),
        (parse_duration, "ten seconds"),
        (parse_size, "-5"),
        (parse_rate, "5/fortnight"),
        (parse_duration, True),
        (parse_size, [1]),
    ],
)
def test_unit_errors(parser, text):
    with pytest.raises(ValueError, match="expected"):
        parser(text)


def test_yaml_positions_multidoc_and_safety():
    text = "a: 1\n---\nkind: X\nspec:\n  ports:\n    - port: 80\n"
    docs, problems = load_yaml_documents(text, "m.yaml")
    assert problems == []
    assert [d.index for d in docs] == [0, 1]
    assert docs[1].locate(("spec", "ports", 0, "port")) == (6, 13)
    assert docs[1].locate_key(("spec", "ports", 0, "port")) == (6, 7)
    # A missing path is located at its nearest existing ancestor.
    assert docs[1].locate(("spec", "ports", 0, "name")) == (6, 7)
    _, problems = load_yaml_documents("a: !!python/object/apply:os.system [echo]\n", "evil.yaml")
    assert len(problems) == 1 and problems[0].line == 1
    assert "constructor" in problems[0].message


def test_unknown_scenario_fields_are_errors_with_a_did_you_mean_hint():
    text = MINIMAL.replace("cluster:\n", "cluster:\n  kubeProxi: {mode: ipvs}\n")
    with pytest.raises(ScenarioError) as info:
        load_scenario_text(text, file="typo.yaml")
    assert info.value.render().endswith(
        "typo.yaml:3:3: cluster.kubeProxi: unknown field\n    hint: did you mean `kubeProxy`?"
    )


def test_manifest_fields_by_python_name_are_ignored_not_used():
    """Kubernetes knows ``targetPort``, not ``target_port``: the latter is skipped (and listed,
    with a hint), so the port defaults as Kubernetes would default it."""
    text = MINIMAL.replace("ports: [{port: 80}]", "ports: [{port: 80, target_port: 8080}]")
    scenario = load_scenario_text(text, file="snake.yaml")
    service = scenario.manifests[0].obj
    assert service.spec.ports[0].target_port == 80
    (entry,) = [d for d in scenario.ignored if d.path.endswith("target_port")]
    assert entry.hint == "did you mean `targetPort`?"
    assert is_likely_typo(entry)


def test_misspelt_kinds_and_fields_are_likely_typos():
    text = MINIMAL.replace("kind: Service", "kind: Servcie")
    (entry,) = load_scenario_text(text, file="kind.yaml").ignored
    assert entry.message == "kind Servcie (v1) is not modelled; the object is ignored"
    assert entry.hint == "did you mean `Service`?" and is_likely_typo(entry)
    image = load_scenario_text(
        MINIMAL.replace("kind: Service", "kind: ConfigMap"), file="cm.yaml"
    ).ignored
    assert not any(is_likely_typo(d) for d in image)


def test_bad_mode_is_located_at_the_mode_option():
    with pytest.raises(ScenarioError) as info:
        load_scenario_text(MINIMAL, file="m.yaml", mode="ipvs2")
    assert info.value.render().startswith("--mode:1:1: cluster.kubeProxy.mode: expected one of")


MODULES = [
    "k8snet_sim.scenario.yamlpos",
    "k8snet_sim.scenario.units",
    "k8snet_sim.scenario.modelbase",
    "k8snet_sim.scenario.kinds",
    "k8snet_sim.scenario.manifests",
    "k8snet_sim.scenario.refs",
    "k8snet_sim.scenario.schema",
    "k8snet_sim.scenario.overrides",
    "k8snet_sim.scenario.topology",
    "k8snet_sim.scenario.loader",
    "k8snet_sim.cluster.ipam",
    "k8snet_sim.cluster.scheduler",
    "k8snet_sim.cluster.workloads",
    "k8snet_sim.cluster.endpoints",
    "k8snet_sim.cluster.nodeports",
    "k8snet_sim.cluster.loadbalancer",
    "k8snet_sim.cluster.ingress",
    "k8snet_sim.cluster.refcheck",
    "k8snet_sim.cluster.build",
]


@pytest.mark.parametrize("name", MODULES)
def test_module_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no runnable example"
    assert result.failed == 0


WHEN = (
    MINIMAL
    + """\
expect:
  - {from: node/node1, to: "service/default/web:80", reachable: partial,
     reachableVia: pod/default/web-0,
     when: {cluster.kubeProxy.mode: [iptables, ipvs], cluster.kubeProxy.clusterCIDR: null}}
  - {from: node/node1, to: "service/default/web:80", reachable: true, modes: [userspace]}
"""
)


@pytest.mark.parametrize(
    ("mode", "overrides", "applies"),
    [
        ("iptables", [], [True, False]),
        ("ipvs", [], [True, False]),
        ("nftables", [], [False, False]),
        ("userspace", [], [False, True]),
        ("iptables", ["cluster.kubeProxy.clusterCIDR=10.244.0.0/16"], [False, False]),
    ],
)
def test_expectations_apply_by_mode_and_when(mode, overrides, applies):
    scenario = load_scenario_text(WHEN, file="when.yaml", mode=mode, overrides=overrides)
    assert [e.applies_to(scenario) for e in scenario.expect] == applies
    first = scenario.expect[0]
    assert (first.reachable, first.reachable_via) == ("partial", ["pod/default/web-0"])


def test_scenario_value_reads_validated_defaulted_fields():
    scenario = load_scenario(SHOP)
    assert scenario.value("cluster.kubeProxy.mode") == "iptables"
    assert scenario.value("cluster.kubeProxy.masqueradeAll") is False  # a default
    assert scenario.value("network.subnets.1.cidr") == "172.16.0.0/24"
    assert scenario.value("loadBalancer.provider") == "metallb-l2"
    with pytest.raises(KeyError):
        scenario.value("cluster.kubeProxy.bogus")


def test_bad_when_key_and_reachable_value_are_located():
    text = WHEN.replace("cluster.kubeProxy.clusterCIDR: null", "cluster.proxy: null").replace(
        "reachable: true", "reachable: maybe"
    )
    with pytest.raises(ScenarioError) as info:
        load_scenario_text(text, file="when.yaml")
    lines = [d.render().splitlines()[0] for d in info.value.diagnostics]
    assert lines == [
        "when.yaml:15:65: expect[1].reachable: expected true, false or partial, got 'maybe'"
    ]
    with pytest.raises(ScenarioError) as info:
        load_scenario_text(WHEN.replace("cluster.kubeProxy.clusterCIDR: null", "cluster.proxy: 1"))
    (diag,) = info.value.diagnostics
    assert diag.render().startswith(
        "<scenario>:14:55: expect[0].when.cluster.proxy: unknown scenario key 'cluster.proxy'"
    )


def test_only_http_urls_are_targets():
    with pytest.raises(RefSyntaxError, match="only http:// URLs are modelled, not https://"):
        parse_ref("https://shop.example/cart", role="target")


def test_python_names_are_likely_typos_but_real_kubernetes_fields_are_not():
    text = MINIMAL.replace(
        "spec: {selector: {app: web}, ports: [{port: 80}]}",
        "spec: {selector: {app: web}, ports: [{port: 80}], cluster_ip: 10.96.0.77,"
        " external_traffic_policy: Local, clusterIPs: [10.96.0.5]}",
    )
    scenario = load_scenario_text(text, file="names.yaml")
    hints = {d.path.rsplit(".", 1)[-1]: d.hint for d in scenario.ignored}
    assert hints["cluster_ip"] == "did you mean `clusterIP`?"
    assert hints["external_traffic_policy"] == "did you mean `externalTrafficPolicy`?"
    assert hints["clusterIPs"] == ""  # what `kubectl get svc -o yaml` prints beside clusterIP
    assert scenario.manifests[0].obj.spec.cluster_ip is None  # not read by its Python name


def test_uppercase_schemes_are_refused_too():
    with pytest.raises(RefSyntaxError, match="only http:// URLs are modelled, not HTTPS://"):
        parse_ref("HTTPS://shop.example/", role="target")


def test_set_starts_a_list_the_file_does_not_have():
    scenario = load_scenario_text(
        MINIMAL, file="m.yaml", overrides=["podStatus.0={pod: default/web-0, ready: false}"]
    )
    assert [p.pod for p in scenario.pod_status] == ["default/web-0"]
    with pytest.raises(ScenarioError, match="the list is empty: index 0 appends"):
        load_scenario_text(MINIMAL, file="m.yaml", overrides=["traffic=[]", "traffic.1={}"])
