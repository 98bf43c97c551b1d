"""Run the control plane on a loaded scenario: the :class:`ClusterState` kube-proxy watches.

Order (each step deterministic, see the step's module): node pod CIDRs (:mod:`.ipam`) →
pods from Pods / Deployments / StatefulSets / DaemonSets (names ``NAME-0``, ``NAME-1`` …,
DaemonSet ``NAME-<node>``) → readiness (manifest ``status.conditions`` then the scenario's
``podStatus``) → scheduling (:mod:`.scheduler`) → pod IPs → ClusterIPs → NodePorts
(:mod:`.nodeports`) → LoadBalancer IPs (:mod:`.loadbalancer`) → endpoints
(:mod:`.endpoints`) → Ingresses (:mod:`.ingress`) → reference checks (:mod:`.refcheck`).
Every problem is collected and raised at once as a ScenarioError located at the field.

Example
-------
>>> from k8snet_sim.scenario.loader import load_scenario_text
>>> text = '''
... metadata: {name: demo}
... cluster:
...   nodes: [{name: n1, address: 192.168.10.11, subnet: lan},
...           {name: n2, address: 192.168.10.12, subnet: lan}]
... network: {subnets: [{name: lan, cidr: 192.168.10.0/24}]}
... manifests:
...   - {apiVersion: apps/v1, kind: Deployment, metadata: {name: web},
...      spec: {replicas: 2, selector: {matchLabels: {app: web}},
...             template: {metadata: {labels: {app: web}}, spec: {containers: [{name: c}]}}}}
...   - {apiVersion: v1, kind: Service, metadata: {name: web},
...      spec: {type: NodePort, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}}
... '''
>>> build = build_cluster(load_scenario_text(text, file="demo.yaml"))
>>> [(p.name, p.node, p.ip) for p in build.state.pods]
[('web-0', 'n1', '10.244.0.2'), ('web-1', 'n2', '10.244.1.2')]
>>> web = build.state.service("default", "web")
>>> web.cluster_ip, web.ports[0].node_port
('10.96.0.2', 30086)
>>> [e.address for e in build.state.endpoints_for(web, web.ports[0])]
['10.244.0.2:8080', '10.244.1.2:8080']
"""

from __future__ import annotations

from dataclasses import dataclass, field

from k8snet_sim.cluster.endpoints import (
    PodCondition,
    SliceEndpointInfo,
    SliceInfo,
    compute_endpoints,
)
from k8snet_sim.cluster.ingress import (
    IngressClassInfo,
    IngressInfo,
    resolve_ingress_classes,
    resolve_ingresses,
)
from k8snet_sim.cluster.ipam import (
    AllocationError,
    PodIPAllocator,
    ServiceIPAllocator,
    assign_node_pod_cidrs,
)
from k8snet_sim.cluster.loadbalancer import LoadBalancerRequest, assign_load_balancers
from k8snet_sim.cluster.model import (
    ClusterState,
    KubeProxyConfig,
    Node,
    Pod,
    Service,
    ServicePort,
)
from k8snet_sim.cluster.nodeports import NodePortAllocator, NodePortRequest, assign_node_ports
from k8snet_sim.cluster.refcheck import check_refs
from k8snet_sim.cluster.scheduler import HOSTNAME_LABEL, NodeInfo, PodRequest, schedule
from k8snet_sim.cluster.workloads import PodDraft, expand_pods
from k8snet_sim.errors import Diagnostic, ScenarioError
from k8snet_sim.scenario.kinds import EndpointSliceObject, ServiceObject
from k8snet_sim.scenario.manifests import SERVICE_NAME_LABEL, Manifest
from k8snet_sim.scenario.modelbase import closest
from k8snet_sim.scenario.schema import Scenario

__all__ = ["ClusterBuild", "build_cluster", "check_refs"]


@dataclass(frozen=True)
class ClusterBuild:
    """What the control plane produced.

    ``pending`` maps a LoadBalancer Service key to why it has no address; ``notes`` are
    remarks for ``validate`` (a hostname-only LoadBalancer status was ignored, …).
    """

    state: ClusterState
    pending: dict[str, str] = field(default_factory=dict)
    ingresses: tuple[IngressInfo, ...] = ()
    ingress_classes: tuple[IngressClassInfo, ...] = ()
    notes: tuple[str, ...] = ()
    pod_conditions: dict[str, PodCondition] = field(default_factory=dict)


def build_cluster(scenario: Scenario, *, check_references: bool = True) -> ClusterBuild:
    """Run the control plane on ``scenario``. Raises ScenarioError listing every problem."""
    problems: list[Diagnostic] = []
    notes: list[str] = []
    nodes = _nodes(scenario, problems)
    drafts = expand_pods(
        scenario, [NodeInfo(n.name, n.labels, n.schedulable) for n in nodes], problems
    )
    conditions = _apply_pod_status(scenario, drafts, problems)
    pods = _place_pods(drafts, nodes, problems)
    services, pending = _services(scenario, problems, notes)
    slices = _slices(scenario.objects("EndpointSlice"), {s.key for s in services}, notes)
    publish = frozenset(
        m.key
        for m in scenario.objects("Service")
        if isinstance(m.obj, ServiceObject) and m.obj.spec.publish_not_ready_addresses
    )
    endpoints = compute_endpoints(services, pods, conditions, slices, publish_not_ready=publish)
    classes = resolve_ingress_classes(scenario.manifests)
    ingresses, ingress_problems = resolve_ingresses(scenario.manifests, services, classes)
    problems.extend(ingress_problems)
    proxy = scenario.cluster.kube_proxy
    state = ClusterState(
        service_cidr=scenario.cluster.service_cidr,
        pod_cidr=scenario.cluster.pod_cidr,
        node_port_range=scenario.cluster.node_port_range,
        nodes=tuple(nodes),
        pods=tuple(pods),
        services=tuple(services),
        endpoints=endpoints,
        kube_proxy=KubeProxyConfig(
            mode=proxy.mode,
            cluster_cidr=proxy.cluster_cidr,
            masquerade_all=proxy.masquerade_all,
            masquerade_bit=proxy.masquerade_bit,
            ipvs_scheduler=proxy.ipvs_scheduler,
            localhost_nodeports=proxy.localhost_node_ports,
            nodeport_addresses=tuple(proxy.node_port_addresses),
        ),
    )
    build = ClusterBuild(state, pending, ingresses, classes, tuple(notes), conditions)
    if check_references:
        failed = None
        if problems:
            # Objects declared but not made have had their problem reported: references to
            # them are not reported again, so that one mistake makes one error.
            made = {("pod", p.key) for p in pods} | {("service", s.key) for s in services}
            made |= {("node", n.name) for n in nodes}
            declared = {("pod", d.key) for d in drafts}
            declared |= {("node", n.name) for n in scenario.cluster.nodes}
            declared |= {("service", m.key) for m in scenario.objects("Service")}
            failed = frozenset(declared - made)
        problems.extend(check_refs(scenario, build, failed))
    if problems:
        raise ScenarioError(problems)
    return build


def _nodes(scenario: Scenario, problems: list[Diagnostic]) -> list[Node]:
    specs = scenario.cluster.nodes
    cidrs = assign_node_pod_cidrs(
        scenario.cluster.pod_cidr,
        scenario.cluster.node_cidr_mask_size,
        [n.pod_cidr for n in specs],
    )
    out = []
    for i, (spec, cidr) in enumerate(zip(specs, cidrs, strict=True)):
        if cidr is None:
            problems.append(
                scenario.diagnostic(
                    ("cluster", "nodes", i),
                    f"pod CIDR exhausted: no free /{scenario.cluster.node_cidr_mask_size} left in"
                    f" podCIDR {scenario.cluster.pod_cidr} for node {spec.name}",
                    "widen cluster.podCIDR, raise cluster.nodeCIDRMaskSize or give nodes podCIDR",
                )
            )
            cidr = ""
        labels = {HOSTNAME_LABEL: spec.name, **spec.labels}
        out.append(
            Node(spec.name, spec.address, cidr, spec.subnet, spec.gateway, labels, spec.schedulable)
        )
    return out


def _apply_pod_status(
    scenario: Scenario, drafts: list[PodDraft], problems: list[Diagnostic]
) -> dict[str, PodCondition]:
    by_key = {d.key: d for d in drafts}
    for i, override in enumerate(scenario.pod_status):
        draft = by_key.get(override.pod)
        if draft is None:
            problems.append(
                scenario.diagnostic(
                    ("podStatus", i, "pod"),
                    f"unknown pod {override.pod}",
                    "pods made by a Deployment are NAME-0, NAME-1, …; DaemonSet NAME-<node>",
                )
            )
            continue
        if override.ready is not None:
            draft.ready = override.ready
        if override.serving is not None:
            draft.serving = override.serving
        if override.terminating is not None:
            draft.terminating = override.terminating
    return {
        d.key: PodCondition(d.ready if d.serving is None else d.serving, d.terminating)
        for d in drafts
    }


def _place_pods(drafts: list[PodDraft], nodes: list[Node], problems: list[Diagnostic]) -> list[Pod]:
    infos = [NodeInfo(n.name, n.labels, n.schedulable) for n in nodes]
    requests = [
        PodRequest(d.key, d.node_name, d.node_selector, d.tolerates_unschedulable) for d in drafts
    ]
    by_name = {n.name: n for n in nodes}
    allocators = {n.name: PodIPAllocator(n.pod_cidr) for n in nodes if n.pod_cidr}
    pods = []
    for draft, placement in zip(drafts, schedule(requests, infos), strict=True):
        if placement.node is None:
            if draft.node_name is not None:
                where: tuple[str, ...] = ("nodeName",)
                hint = "nodes: " + ", ".join(by_name)
                typo = closest(draft.node_name, by_name)
                hint = f"{typo} ({hint})" if typo else hint
            else:
                where = ("nodeSelector",)
                hint = "node labels: " + "; ".join(
                    f"{n.name} " + ",".join(f"{k}={v}" for k, v in n.labels.items()) for n in nodes
                )
                hint += " — cordoned nodes need a toleration"
            problems.append(
                draft.manifest.diagnostic(
                    (*draft.spec_path, *where),
                    f"pod {draft.key} cannot be placed: {placement.error}",
                    hint,
                )
            )
            continue
        node = by_name[placement.node]
        if draft.host_network:
            address = node.address
        elif placement.node not in allocators:
            continue  # the node has no pod CIDR: reported already
        else:
            try:
                address = allocators[placement.node].allocate_next(draft.key)
            except AllocationError as err:
                problems.append(
                    draft.manifest.diagnostic(
                        ("metadata", "name"),
                        f"pod {draft.key}: {err}",
                        "use a larger nodeCIDRMaskSize or add nodes",
                    )
                )
                continue
        pods.append(
            Pod(
                draft.namespace,
                draft.name,
                node.name,
                address,
                draft.labels,
                draft.ports,
                draft.ready,
                draft.host_network,
                draft.owner,
            )
        )
    return pods


def _services(
    scenario: Scenario, problems: list[Diagnostic], notes: list[str]
) -> tuple[list[Service], dict[str, str]]:
    manifests = [m for m in scenario.objects("Service") if isinstance(m.obj, ServiceObject)]
    cluster_ips = _cluster_ips(scenario, manifests, problems)
    low, high = scenario.cluster.node_port_range
    requests = []
    for m in manifests:
        assert isinstance(m.obj, ServiceObject)
        spec = m.obj.spec
        requests.append(
            NodePortRequest(
                m.key,
                tuple((p.port, p.node_port) for p in spec.ports),
                allocate=spec.type == "NodePort"
                or (spec.type == "LoadBalancer" and spec.allocate_load_balancer_node_ports),
                needs_health_check=spec.type == "LoadBalancer"
                and spec.external_traffic_policy == "Local",
                health_check_node_port=spec.health_check_node_port,
            )
        )
    node_ports = assign_node_ports(requests, NodePortAllocator(low, high))
    lb = scenario.load_balancer
    lb_requests = [
        _lb_request(m, notes)
        for m in manifests
        if isinstance(m.obj, ServiceObject) and m.obj.spec.type == "LoadBalancer"
    ]
    lb_results = assign_load_balancers(
        lb_requests, lb.provider if lb else None, lb.pool_ranges() if lb else []
    )
    services, pending = [], {}
    for m, cluster_ip, np in zip(manifests, cluster_ips, node_ports, strict=True):
        assert isinstance(m.obj, ServiceObject)
        spec = m.obj.spec
        for index, message in np.problems:
            where = (
                ("spec", "healthCheckNodePort")
                if index is None
                else ("spec", "ports", index, "nodePort")
            )
            problems.append(
                m.diagnostic(where, message, "pick a free port inside nodePortRange or omit it")
            )
        result = lb_results.get(m.key)
        if result is not None and result.pending is not None:
            pending[m.key] = result.pending
        affinity = spec.session_affinity_config
        timeout = affinity.client_ip.timeout_seconds if affinity and affinity.client_ip else 10800
        services.append(
            Service(
                namespace=m.namespace,
                name=m.name,
                type=spec.type,
                cluster_ip=cluster_ip,
                ports=tuple(
                    ServicePort(p.name, p.protocol, p.port, p.target_port or p.port, n)
                    for p, n in zip(spec.ports, np.node_ports, strict=True)
                ),
                selector=dict(spec.selector) if spec.selector else None,
                external_ips=tuple(spec.external_ips),
                load_balancer_ips=result.ips if result else (),
                load_balancer_pending=result.pending if result else None,
                load_balancer_source_ranges=tuple(spec.load_balancer_source_ranges),
                external_traffic_policy=spec.external_traffic_policy,
                internal_traffic_policy=spec.internal_traffic_policy,
                health_check_node_port=np.health_check_node_port,
                session_affinity=spec.session_affinity,
                session_affinity_timeout=timeout,
                labels=dict(m.obj.metadata.labels),
            )
        )
    return services, pending


def _cluster_ips(
    scenario: Scenario, manifests: list[Manifest], problems: list[Diagnostic]
) -> list[str | None]:
    """Explicit clusterIPs first (in order), then the others; None for headless/ExternalName."""
    allocator = ServiceIPAllocator(scenario.cluster.service_cidr)
    out: list[str | None] = []
    for m in manifests:
        assert isinstance(m.obj, ServiceObject)
        wanted = m.obj.spec.cluster_ip
        out.append(None)
        if m.obj.spec.type == "ExternalName" or wanted in (None, "", "None"):
            continue
        assert wanted is not None
        try:
            out[-1] = allocator.reserve(wanted, m.key)
        except AllocationError as err:
            problems.append(
                m.diagnostic(
                    ("spec", "clusterIP"),
                    f"invalid value {wanted}: {err}",
                    f"omit clusterIP to have one allocated from {scenario.cluster.service_cidr}",
                )
            )
    for i, m in enumerate(manifests):
        assert isinstance(m.obj, ServiceObject)
        if m.obj.spec.type == "ExternalName" or m.obj.spec.cluster_ip not in (None, ""):
            continue
        try:
            out[i] = allocator.allocate_next(m.key)
        except AllocationError as err:
            problems.append(
                m.diagnostic(("metadata", "name"), str(err), "widen cluster.serviceCIDR")
            )
    return out


def _lb_request(m: Manifest, notes: list[str]) -> LoadBalancerRequest:
    assert isinstance(m.obj, ServiceObject)
    ips = []
    status = m.obj.status.load_balancer if m.obj.status else None
    for entry in status.ingress if status else []:
        if entry.ip is None:
            notes.append(
                f"service {m.key}: hostname-only load-balancer ingress ignored"
                " (kube-proxy uses IPs)"
            )
        elif entry.ip_mode == "Proxy":
            notes.append(
                f"service {m.key}: ingress {entry.ip} has ipMode Proxy; kube-proxy skips it"
            )
        else:
            ips.append(entry.ip)
    return LoadBalancerRequest(m.key, m.obj.spec.load_balancer_ip, tuple(ips))


def _slices(manifests: list[Manifest], services: set[str], notes: list[str]) -> list[SliceInfo]:
    out = []
    for m in manifests:
        obj = m.obj
        if not isinstance(obj, EndpointSliceObject) or obj.address_type != "IPv4":
            continue
        service = obj.metadata.labels.get(SERVICE_NAME_LABEL)
        if service is None:
            continue
        if f"{m.namespace}/{service}" not in services:
            notes.append(
                f"EndpointSlice {m.key} names Service {m.namespace}/{service}, which does not exist"
            )
        endpoints = tuple(
            SliceEndpointInfo(
                tuple(e.addresses),
                e.conditions.ready,
                e.conditions.serving,
                e.conditions.terminating,
                e.node_name,
                f"{e.target_ref.namespace or m.namespace}/{e.target_ref.name}"
                if e.target_ref is not None and e.target_ref.kind in (None, "Pod")
                else None,
            )
            for e in obj.endpoints
        )
        ports = tuple((p.name, p.port, p.protocol) for p in obj.ports)
        out.append(SliceInfo(m.namespace, service, ports, endpoints))
    return out
