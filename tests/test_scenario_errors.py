"""Bad scenarios: every problem is reported as ``file:line:col: dotted.path: message`` with a
hint, all at once, never as a traceback. Each case asserts the exact location prefix."""

from __future__ import annotations

from pathlib import Path

import pytest

from k8snet_sim.api import load_checked
from k8snet_sim.cluster.build import build_cluster
from k8snet_sim.errors import ScenarioError
from k8snet_sim.scenario.loader import load_scenario, load_scenario_text

DATA = Path(__file__).parent / "data" / "scenarios"
F = "bad.yaml"

# Line numbers below refer to this text (1-based); cases replace one fragment of it.
BASE = """\
metadata: {name: base}
cluster:
  serviceCIDR: 10.96.0.0/16
  podCIDR: 10.244.0.0/16
  nodePortRange: 30000-32767
  kubeProxy: {mode: iptables}
  nodes:
    - {name: node1, address: 192.168.10.11, subnet: lan, gateway: 192.168.10.1}
    - {name: node2, address: 192.168.10.12, subnet: lan, gateway: 192.168.10.1}
network:
  subnets:
    - {name: lan, cidr: 192.168.10.0/24}
    - {name: office, cidr: 172.16.0.0/24}
  routers:
    - name: core
      interfaces: [{subnet: lan, address: 192.168.10.1}, {subnet: office, address: 172.16.0.1}]
      routes: [{to: 10.96.0.0/16, via: 192.168.10.11}]
  hosts:
    - {name: laptop, subnet: office, address: 172.16.0.50, gateway: 172.16.0.1}
manifests:
  - apiVersion: v1
    kind: Service
    metadata: {name: web}
    spec:
      type: NodePort
      clusterIP: 10.96.0.20
      selector: {app: web}
      ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]
  - apiVersion: v1
    kind: Pod
    metadata: {name: web, labels: {app: web}}
    spec: {containers: [{name: app}]}
expect:
  - {from: host/laptop, to: "service/default/web:80", reachable: true}
"""


def _errors(text: str, *, overrides: tuple[str, ...] = (), build: bool = True) -> list[str]:
    """Rendered diagnostics (first line of each) of loading — and building — ``text``."""
    try:
        scenario = load_scenario_text(text, file=F, overrides=overrides)
        if build:
            build_cluster(scenario)
    except ScenarioError as err:
        for d in err.diagnostics:
            assert d.hint, f"every diagnostic has a hint: {d.render()}"
        return [d.render().splitlines()[0] for d in err.diagnostics]
    return []


def test_base_is_valid():
    assert _errors(BASE) == []


# (case id, old fragment, new fragment, expected "file:line:col: path: message" prefix)
CASES = [
    (
        "yaml-syntax",
        "  routers:\n",
        "  routers: [\n",
        "bad.yaml:15:5: YAML syntax error: while parsing a flow node expected the node content",
    ),
    (
        "wrong-type",
        "name: node2, address",
        "name: node2, cpus: two, address",
        "bad.yaml:9:27: cluster.nodes[1].cpus: expected an integer, got 'two'",
    ),
    (
        "missing-required",
        ", subnet: lan, gateway: 192.168.10.1}\n    - {name: node2",
        ", gateway: 192.168.10.1}\n    - {name: node2",
        "bad.yaml:8:7: cluster.nodes[0].subnet: required field is missing",
    ),
    (
        "unknown-mode",
        "{mode: iptables}",
        "{mode: iptable}",
        "bad.yaml:6:21: cluster.kubeProxy.mode: expected one of 'userspace', 'iptables', "
        "'ipvs' or 'nftables', got 'iptable'",
    ),
    (
        "unknown-service-type",
        "type: NodePort",
        "type: Nodeport",
        "bad.yaml:25:13: manifests[0].spec.type: expected one of 'ClusterIP', 'NodePort', "
        "'LoadBalancer' or 'ExternalName', got 'Nodeport'",
    ),
    (
        "unknown-protocol",
        "port: 80, targetPort",
        "port: 80, protocol: HTTP, targetPort",
        "bad.yaml:28:48: manifests[0].spec.ports[0].protocol: expected one of 'TCP', 'UDP' or "
        "'SCTP', got 'HTTP'",
    ),
    (
        "bad-cidr",
        "cidr: 172.16.0.0/24",
        "cidr: 172.16.0.0/33",
        "bad.yaml:13:28: network.subnets[1].cidr: expected an IPv4 CIDR like 10.0.0.0/24, "
        "got '172.16.0.0/33'",
    ),
    (
        "cidr-host-bits",
        "serviceCIDR: 10.96.0.0/16",
        "serviceCIDR: 10.96.0.1/16",
        "bad.yaml:3:16: cluster.serviceCIDR: '10.96.0.1/16' has host bits set; the prefix is "
        "10.96.0.0/16",
    ),
    (
        "bad-ip",
        "address: 172.16.0.50",
        "address: 172.16.0.500",
        "bad.yaml:19:47: network.hosts[0].address: expected an IPv4 address like 10.0.0.1, "
        "got '172.16.0.500'",
    ),
    (
        "address-outside-subnet",
        "address: 192.168.10.12",
        "address: 192.168.11.12",
        "bad.yaml:9:30: cluster.nodes[1].address: 192.168.11.12 is outside subnet lan "
        "(192.168.10.0/24)",
    ),
    (
        "gateway-outside-subnet",
        "gateway: 172.16.0.1}",
        "gateway: 172.16.1.1}",
        "bad.yaml:19:69: network.hosts[0].gateway: gateway 172.16.1.1 is outside subnet office",
    ),
    (
        "duplicate-node",
        "name: node2",
        "name: node1",
        "bad.yaml:9:14: cluster.nodes[1].name: duplicate node name 'node1' (also nodes[0])",
    ),
    (
        "duplicate-subnet",
        "name: office",
        "name: lan",
        "bad.yaml:13:14: network.subnets[1].name: duplicate subnet name 'lan' (also subnets[0])",
    ),
    (
        "duplicate-object",
        "kind: Pod\n    metadata: {name: web,",
        "kind: Service\n    metadata: {name: web,",
        "bad.yaml:31:22: manifests[1].metadata.name: duplicate Service default/web",
    ),
    (
        "unknown-node-subnet",
        "192.168.10.12, subnet: lan",
        "192.168.10.12, subnet: lab",
        "bad.yaml:9:53: cluster.nodes[1].subnet: unknown subnet 'lab'",
    ),
    (
        "route-via-unreachable",
        "via: 192.168.10.11}",
        "via: 10.0.0.1}",
        "bad.yaml:17:40: network.routers[0].routes[0].via: next hop 10.0.0.1 is not on a "
        "directly connected subnet",
    ),
    (
        "unknown-nodename",
        "spec: {containers: [{name: app}]}",
        "spec: {nodeName: node3, containers: [{name: app}]}",
        "bad.yaml:32:22: manifests[1].spec.nodeName: pod default/web cannot be placed: "
        "unknown node 'node3'",
    ),
    (
        "expect-unknown-host",
        "from: host/laptop",
        "from: host/desktop",
        "bad.yaml:34:12: expect[0].from: unknown host 'desktop'",
    ),
    (
        "expect-unknown-service-port",
        "service/default/web:80",
        "service/default/web:443",
        "bad.yaml:34:29: expect[0].to: Service default/web has no port 443",
    ),
    (
        "expect-bad-syntax",
        "service/default/web:80",
        "svc/default/web:80",
        "bad.yaml:34:29: expect[0].to: cannot read 'svc/default/web:80' as a reference",
    ),
    (
        "port-out-of-range",
        "targetPort: 8080",
        "targetPort: -1",
        "bad.yaml:28:50: manifests[0].spec.ports[0].targetPort: expected a port number or name, "
        "got -1 (ports are 1–65535",
    ),
    (
        "nodeport-out-of-range",
        "nodePort: 30080",
        "nodePort: 8080",
        "bad.yaml:28:66: manifests[0].spec.ports[0].nodePort: invalid value 8080: provided port "
        "is not in the valid range. The range of valid ports is 30000-32767",
    ),
    (
        "nodeport-on-clusterip",
        "type: NodePort",
        "type: ClusterIP",
        "bad.yaml:28:66: manifests[0].spec.ports[0].nodePort: may not be used when `type` is "
        "'ClusterIP'",
    ),
    (
        "clusterip-outside-range",
        "clusterIP: 10.96.0.20",
        "clusterIP: 10.97.0.20",
        "bad.yaml:26:18: manifests[0].spec.clusterIP: invalid value 10.97.0.20: provided IP "
        "(10.97.0.20) is not in the valid range. The range of valid IPs is 10.96.0.0/16",
    ),
    (
        "clusterip-reserved",
        "clusterIP: 10.96.0.20",
        "clusterIP: 10.96.0.1",
        "bad.yaml:26:18: manifests[0].spec.clusterIP: invalid value 10.96.0.1: provided IP "
        "(10.96.0.1) is already allocated (to default/kubernetes)",
    ),
    (
        "node-podcidr-outside",
        "gateway: 192.168.10.1}\n    - {name: node2",
        "gateway: 192.168.10.1, podCIDR: 10.245.0.0/24}\n    - {name: node2",
        "bad.yaml:8:90: cluster.nodes[0].podCIDR: node podCIDR 10.245.0.0/24 is outside the "
        "cluster podCIDR 10.244.0.0/16",
    ),
    (
        "node-podcidr-overlap",
        "192.168.10.1}\n    - {name: node2, address: 192.168.10.12, subnet: lan, "
        "gateway: 192.168.10.1}",
        "192.168.10.1, podCIDR: 10.244.0.0/24}\n    - {name: node2, address: 192.168.10.12, "
        "subnet: lan, gateway: 192.168.10.1, podCIDR: 10.244.0.0/23}",
        "bad.yaml:9:90: cluster.nodes[1].podCIDR: node podCIDR 10.244.0.0/23 overlaps the podCIDR "
        "of node1 (10.244.0.0/24)",
    ),
    (
        "pod-cidr-exhausted",
        "podCIDR: 10.244.0.0/16",
        "podCIDR: 10.244.0.0/24",
        "bad.yaml:9:7: cluster.nodes[1]: pod CIDR exhausted: no free /24 left in podCIDR "
        "10.244.0.0/24 for node node2",
    ),
    (
        "unknown-ingress-backend",
        "  - apiVersion: v1\n    kind: Pod",
        "  - apiVersion: networking.k8s.io/v1\n    kind: Ingress\n    metadata: {name: www}\n"
        "    spec: {defaultBackend: {service: {name: webb, port: {number: 80}}}}\n"
        "  - apiVersion: v1\n    kind: Pod",
        "bad.yaml:32:45: manifests[1].spec.defaultBackend.service.name: unknown Service "
        "default/webb",
    ),
    (
        "unknown-ingress-controller-workload",
        "manifests:\n",
        "ingressControllers: [{class: nginx, deployment: ingress/nginx, service: default/web}]\n"
        "manifests:\n",
        "bad.yaml:20:49: ingressControllers[0].deployment: no Deployment, DaemonSet or "
        "StatefulSet ingress/nginx in the manifests",
    ),
    (
        "pod-fits-nowhere",
        "spec: {containers: [{name: app}]}",
        "spec: {nodeSelector: {disk: ssd}, containers: [{name: app}]}",
        "bad.yaml:32:26: manifests[1].spec.nodeSelector: pod default/web cannot be placed: "
        "0/2 nodes are available: 2 node(s) did not match the nodeSelector",
    ),
    (
        "unknown-provider",
        "manifests:\n",
        "loadBalancer: {provider: metallb-bgp, pool: 192.168.10.200-192.168.10.210}\nmanifests:\n",
        "bad.yaml:20:26: loadBalancer.provider: expected one of 'metallb-l2' or 'cloud', "
        "got 'metallb-bgp'",
    ),
    (
        "bad-pool",
        "manifests:\n",
        "loadBalancer: {provider: cloud, pool: 192.168.10.210-192.168.10.200}\nmanifests:\n",
        "bad.yaml:20:39: loadBalancer.pool: expected an address range a.b.c.d-a.b.c.e or a CIDR",
    ),
    (
        "duplicate-host",
        "gateway: 172.16.0.1}\n",
        "gateway: 172.16.0.1}\n    - {name: laptop, subnet: office, address: 172.16.0.51}\n",
        "bad.yaml:20:14: network.hosts[1].name: duplicate host name 'laptop' (also hosts[0])",
    ),
    (
        "duplicate-address",
        "gateway: 172.16.0.1}\n",
        "gateway: 172.16.0.1}\n    - {name: phone, subnet: office, address: 172.16.0.1}\n",
        "bad.yaml:20:46: network.hosts[1].address: address 172.16.0.1 on subnet office is already "
        "used by router/core",
    ),
    (
        "traffic-missing-rate",
        "reachable: true}\n",
        "reachable: true}\ntraffic: [{name: t, from: host/laptop, to: '10.96.0.20:80'}]\n",
        "bad.yaml:35:11: traffic[0]: traffic of kind requests needs `rate`",
    ),
    (
        "traffic-unknown-pod",
        "reachable: true}\n",
        "reachable: true}\ntraffic: [{name: t, from: pod/db-0, to: '10.96.0.20:80', rate: 5/s}]\n",
        "bad.yaml:35:27: traffic[0].from: unknown pod default/db-0",
    ),
    (
        "unknown-ingress-controller-service",
        "manifests:\n",
        "ingressControllers: [{class: nginx, deployment: default/web, service: default/nginx}]\n"
        "manifests:\n",
        "bad.yaml:20:71: ingressControllers[0].service: no Service default/nginx in the manifests",
    ),
    (
        "service-port-name-uppercase",
        "ports: [{name: http,",
        "ports: [{name: HTTP,",
        "bad.yaml:28:22: manifests[0].spec.ports[0].name: invalid port name 'HTTP'",
    ),
    (
        "traffic-zero-duration",
        "reachable: true}\n",
        "reachable: true}\ntraffic: [{name: t, from: host/laptop, to: '10.96.0.20:80', rate: 5/s,"
        " duration: 0s}]\n",
        "bad.yaml:35:82: traffic[0].duration: input should be greater than 0",
    ),
    (
        "scenario-field-typo",
        "  kubeProxy: {mode: iptables}",
        "  kubeProxy: {mdoe: ipvs}",
        "bad.yaml:6:15: cluster.kubeProxy.mdoe: unknown field",
    ),
    (
        "scenario-field-by-python-name",
        "  serviceCIDR:",
        "  service_cidr:",
        "bad.yaml:3:3: cluster.service_cidr: unknown field",
    ),
    (
        "route-list-typo",
        "      routes: [",
        "      route: [",
        "bad.yaml:17:7: network.routers[0].route: unknown field",
    ),
    (
        "unknown-kind-version",
        "  - apiVersion: v1\n    kind: Pod",
        "  - apiVersion: v1beta1\n    kind: Pod",
        "bad.yaml:29:17: manifests[1].apiVersion: expected apiVersion v1 for kind Pod, "
        "got 'v1beta1'",
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_located(old, new, expected):
    assert old in BASE, "the case must change the base text"
    errors = _errors(BASE.replace(old, new, 1))
    assert any(e.startswith(expected) for e in errors), "\n".join(errors)
    if not any(new == c[2] and c[0] in MORE_THAN_ONE for c in CASES):
        assert len(errors) == 1, "one mistake, one error:\n" + "\n".join(errors)


# Cases whose one edit makes several real mistakes (a renamed subnet leaves references to the
# old name; the duplicate Service has no port; the controller's Deployment does not exist).
MORE_THAN_ONE = {"duplicate-subnet", "duplicate-object", "unknown-ingress-controller-service"}


def test_a_service_made_without_its_cluster_ip_or_node_port_is_not_reported_again():
    """The allocation error is the one error: an expectation aiming at that Service's
    ClusterIP or nodePort does not add "has no ClusterIP" / "has no nodePort"."""
    aims = (
        "reachable: true}\n"
        "  - {from: host/laptop, to: 'nodeport/node1/default/web:80', reachable: true}\n"
    )
    outside = BASE.replace("clusterIP: 10.96.0.20", "clusterIP: 10.97.0.20").replace(
        "reachable: true}\n", aims
    )
    (error,) = _errors(outside)
    assert "spec.clusterIP" in error
    bad_port = BASE.replace("nodePort: 30080", "nodePort: 8080").replace("reachable: true}\n", aims)
    (error,) = _errors(bad_port)
    assert "nodePort" in error.split(": ")[1]


def test_nodeport_taken_uses_upstream_message():
    text = BASE.replace(
        "  - apiVersion: v1\n    kind: Pod",
        "  - apiVersion: v1\n    kind: Service\n    metadata: {name: other}\n"
        "    spec: {type: NodePort, ports: [{port: 81, nodePort: 30080}]}\n"
        "  - apiVersion: v1\n    kind: Pod",
    )
    assert _errors(text) == [
        "bad.yaml:32:57: manifests[1].spec.ports[0].nodePort: invalid value 30080: provided port "
        "is already allocated (to default/web)"
    ]


def test_clusterip_taken():
    text = BASE.replace(
        "  - apiVersion: v1\n    kind: Pod",
        "  - apiVersion: v1\n    kind: Service\n    metadata: {name: other}\n"
        "    spec: {clusterIP: 10.96.0.20, ports: [{port: 81}]}\n"
        "  - apiVersion: v1\n    kind: Pod",
    )
    assert _errors(text) == [
        "bad.yaml:32:23: manifests[1].spec.clusterIP: invalid value 10.96.0.20: provided IP "
        "(10.96.0.20) is already allocated (to default/web)"
    ]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("cluster.kubeProxi.mode=ipvs", "--set:1:9: cluster.kubeProxi: unknown field kubeProxi"),
        ("network.routers.3.routes=[]", "--set:1:17: network.routers[3]: expected a list index"),
        ("cluster.cni", "--set:1:1: expected dotted.key=value, got 'cluster.cni'"),
        ("cluster.cni=vx lan", "--set:1:13: cluster.cni: expected one of 'host-gw' or 'vxlan'"),
        (
            "cluster.nodes.x=1",
            "--set:1:15: cluster.nodes.x: expected a list index up to 2, got 'x'",
        ),
        ("network.routers.1.name=r2", "--set:1:17: network.routers[1]: expected a list index"),
    ],
)
def test_bad_set_override(override, expected):
    errors = _errors(BASE, overrides=(override,), build=False)
    assert any(e.startswith(expected) for e in errors), "\n".join(errors)


def test_set_one_past_the_end_appends():
    route = "network.routers[0].routes[1]={to: 10.244.1.0/24, via: 192.168.10.12}"
    scenario = load_scenario_text(BASE, file=F, overrides=(route,))
    assert [str(r.to) for r in scenario.network.routers[0].routes] == [
        "10.96.0.0/16",
        "10.244.1.0/24",
    ]


def test_missing_scenario_file():
    missing = DATA / "no-such-scenario.yaml"
    with pytest.raises(ScenarioError) as info:
        load_scenario(missing)
    assert info.value.render().startswith(f"{missing}:0:0: cannot read scenario file")


def test_errors_in_manifest_files_use_their_own_file_and_path():
    scenario_file = DATA / "bad-manifests.yaml"
    manifests = DATA / "manifests"
    with pytest.raises(ScenarioError) as info:
        load_scenario(scenario_file)
    lines = [d.render().splitlines()[0] for d in info.value.diagnostics]
    assert lines == [
        f"{scenario_file}:8:12: manifests[1].file: manifest file not found: "
        f"{manifests / 'does-not-exist.yaml'}",
        f"{manifests / 'bad-ports.yaml'}:15:20: spec.ports[1].targetPort: expected a port number "
        "or name, got -1 (ports are 1–65535, names are up to 15 lowercase letters, digits and '-')",
        f"{manifests / 'bad-ports.yaml'}:24:33: spec.rules[0].http.paths[0].pathType: expected "
        "one of 'Exact', 'Prefix' or 'ImplementationSpecific', got 'Regex'",
        f"{manifests / 'broken.yaml'}:4:5: YAML syntax error: while parsing a flow mapping "
        "expected ',' or '}', but got ':'",
    ]


def test_all_errors_are_reported_at_once():
    text = (
        BASE.replace("{mode: iptables}", "{mode: iptable}")
        .replace("cidr: 172.16.0.0/24", "cidr: 172.16.0.0/33")
        .replace("address: 192.168.10.12", "address: 192.168.11.12")
        .replace("name: node2", "name: node1")
        .replace("targetPort: 8080", "targetPort: -1")
        .replace("from: host/laptop", "from: laptop")
    )
    errors = _errors(text)
    assert [e.split(": ")[0] + ": " + e.split(": ")[1] for e in errors] == [
        "bad.yaml:6:21: cluster.kubeProxy.mode",
        "bad.yaml:9:14: cluster.nodes[1].name",
        "bad.yaml:9:30: cluster.nodes[1].address",
        "bad.yaml:13:28: network.subnets[1].cidr",
        "bad.yaml:28:50: manifests[0].spec.ports[0].targetPort",
        "bad.yaml:34:12: expect[0].from",
    ]


def test_error_rendering_has_a_hint_line():
    with pytest.raises(ScenarioError) as info:
        load_scenario_text(BASE.replace("subnet: lan, gateway", "subnet: lab, gateway", 1), file=F)
    text = info.value.render()
    assert text.splitlines()[0].startswith("bad.yaml:8:53: cluster.nodes[0].subnet: unknown subnet")
    assert text.splitlines()[1] == "    hint: subnets in network.subnets: lan, office"


def test_scenario_must_be_one_mapping():
    with pytest.raises(ScenarioError) as info:
        load_scenario_text("- just\n- a list\n", file=F)
    assert info.value.render().startswith("bad.yaml:1:1: expected exactly one YAML document")


def test_unknown_scenario_fields_are_all_errors_with_a_hint():
    """A typo in the scenario's own fields must not silently change what is simulated."""
    text = BASE.replace("  kubeProxy: {mode: iptables}", "  kubeProxi: {mode: ipvs}").replace(
        "      routes: [", "      rutes: ["
    )
    with pytest.raises(ScenarioError) as info:
        load_scenario_text(text, file=F)
    rendered = info.value.render()
    assert (
        "bad.yaml:6:3: cluster.kubeProxi: unknown field\n    hint: did you mean `kubeProxy`?"
        in (rendered)
    )
    assert (
        "bad.yaml:17:7: network.routers[0].rutes: unknown field\n    hint: did you mean `routes`?"
        in (rendered)
    )
    far = load_scenario_text_error(
        BASE.replace("metadata: {name: base}", "metadata: {nmae: base, zzz: 1}")
    )
    assert "metadata.zzz: unknown field\n    hint: the fields here are name, description" in far


def load_scenario_text_error(text: str) -> str:
    with pytest.raises(ScenarioError) as info:
        load_scenario_text(text, file=F)
    return info.value.render()


def test_a_misspelt_manifest_field_is_shown_beside_the_missing_one():
    text = BASE.replace(
        "    spec: {containers: [{name: app}]}", "    spec: {containers: [{nme: app}]}"
    )
    rendered = load_scenario_text_error(text)
    assert "manifests[1].spec.containers[0].name: required field is missing" in rendered
    assert (
        "manifests[1].spec.containers[0].nme: field not interpreted by the simulator\n"
        "    hint: did you mean `name`?"
    ) in rendered


def test_loader_and_control_plane_problems_are_reported_in_one_run(tmp_path):
    """A bad route (found when loading), a pod on an unknown node (found by the control plane)
    and an expectation naming an unknown pod (found by the reference checks): one run, three
    errors. The pod that could not be placed is not reported again as unknown."""
    text = (
        BASE.replace("via: 192.168.10.11", "via: 10.0.0.1")
        .replace(
            "spec: {containers: [{name: app}]}", "spec: {nodeName: nod2, containers: [{name: app}]}"
        )
        .replace(
            "reachable: true}\n",
            "reachable: true}\n"
            "  - {from: pod/default/web, to: '10.96.0.20:80'}\n"
            "  - {from: pod/default/db-0, to: '10.96.0.20:80'}\n",
        )
    )
    path = tmp_path / F
    path.write_text(text)
    with pytest.raises(ScenarioError) as info:
        load_checked(path)
    lines = [d.render().splitlines()[0].split(": ")[1] for d in info.value.diagnostics]
    assert lines == [
        "network.routers[0].routes[0].via",
        "manifests[1].spec.nodeName",
        "expect[2].from",
    ], info.value.render()
    assert "did you mean `node2`?" in info.value.render()
    # The scenario's own problems alone, when the control plane has none to add.
    with pytest.raises(ScenarioError) as alone:
        path.write_text(BASE.replace("via: 192.168.10.11", "via: 10.0.0.1"))
        load_checked(path)
    assert len(alone.value.diagnostics) == 1


def test_a_manifest_that_failed_to_parse_stops_before_the_control_plane(tmp_path):
    """A Service that did not parse would make every reference to it "unknown": no cascade."""
    path = tmp_path / F
    path.write_text(
        BASE.replace("targetPort: 8080", "targetPort: -1").replace(
            "via: 192.168.10.11", "via: 10.0.0.1"
        )
    )
    with pytest.raises(ScenarioError) as info:
        load_checked(path)
    assert [d.path for d in info.value.diagnostics] == [
        "network.routers[0].routes[0].via",
        "manifests[0].spec.ports[0].targetPort",
    ]


def test_an_endpoint_list_may_name_pods_that_do_not_exist_but_reachable_via_may_not():
    """``endpoint:`` lists what is allowed (one list covers a Deployment scaled down);
    ``reachableVia:`` lists what must work, which a missing pod never can."""
    allowed = "reachable: true, endpoint: [pod/default/web, pod/default/web-9]}\n"
    assert _errors(BASE.replace("reachable: true}\n", allowed)) == []
    must = "reachable: true, reachableVia: [pod/default/web-9]}\n"
    (error,) = _errors(BASE.replace("reachable: true}\n", must))
    assert error.startswith("bad.yaml:34:") and "unknown pod default/web-9" in error


def test_a_single_override_may_be_a_plain_string():
    scenario = load_scenario_text(BASE, file=F, overrides="cluster.kubeProxy.mode=ipvs")
    assert scenario.mode == "ipvs"


def test_references_to_machines_are_checked_even_when_the_schema_fails():
    """`rate: fast`, `kind: client` and a misspelt host in one traffic entry: three errors in
    one run, though the schema's errors leave no scenario for the control plane."""
    traffic = (
        "reachable: true}\n"
        "traffic: [{name: t, from: host/lapotp, to: '10.96.0.20:80', rate: fast, kind: client}]\n"
    )
    errors = _errors(BASE.replace("reachable: true}\n", traffic))
    assert [e.split(": ")[1] for e in errors] == [
        "traffic[0].from",
        "traffic[0].rate",
        "traffic[0].kind",
    ]
    with pytest.raises(ScenarioError) as info:
        load_scenario_text(BASE.replace("reachable: true}\n", traffic), file=F)
    assert "did you mean `laptop`? (hosts: laptop)" in info.value.render()
    # A malformed host list is not a reason to call every host unknown.
    broken_hosts = BASE.replace(
        "    - {name: laptop, subnet: office, address: 172.16.0.50, gateway: 172.16.0.1}\n",
        "    - laptop\n",
    )
    assert not any("unknown host" in e for e in _errors(broken_hosts))
