"""Pydantic models of the Kubernetes objects k8snet_sim interprets, field names as in the API.

Only the fields that change the network are modelled; everything else in a manifest is listed
in ``Scenario.ignored``. Values are the object *as written*: defaults that Kubernetes would
fill in are applied (and recorded) by :mod:`k8snet_sim.scenario.manifests`.

Example
-------
>>> svc = ServiceObject.model_validate({"apiVersion": "v1", "kind": "Service",
...     "metadata": {"name": "web"}, "spec": {"ports": [{"port": 80, "targetPort": "http"}]}})
>>> svc.spec.ports[0].target_port, svc.spec.type
('http', 'ClusterIP')
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from k8snet_sim.scenario.modelbase import CidrText, IPv4, PortNumber, PortRef, StrictModel

Protocol = Literal["TCP", "UDP", "SCTP"]


class ObjectMeta(StrictModel):
    name: str = Field(min_length=1)
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class _Object(StrictModel):
    api_version: str = Field(alias="apiVersion")
    kind: str
    metadata: ObjectMeta


class NamespaceObject(_Object):
    pass


# --- Service -------------------------------------------------------------------------------


def _port_name(value: str) -> str:
    """A Service port name is a DNS label (IANA_SVC_NAME rules are for container ports)."""
    if value and not _DNS_LABEL.match(value):
        raise ValueError(
            f"invalid port name {value!r}: lowercase letters, digits and '-', at most 63, "
            "starting and ending with a letter or digit | hint: e.g. `http` or `metrics-1`"
        )
    return value


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class ServicePortSpec(StrictModel):
    name: Annotated[str, AfterValidator(_port_name)] = ""
    protocol: Protocol = "TCP"
    port: PortNumber
    target_port: PortRef | None = Field(None, alias="targetPort")
    node_port: int | None = Field(None, alias="nodePort")


class ClientIPConfig(StrictModel):
    timeout_seconds: int = Field(10800, alias="timeoutSeconds", ge=1, le=86400)


class SessionAffinityConfig(StrictModel):
    client_ip: ClientIPConfig | None = Field(None, alias="clientIP")


class ServiceSpec(StrictModel):
    type: Literal["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"] = "ClusterIP"
    cluster_ip: str | None = Field(None, alias="clusterIP")  # an IPv4, "None" (headless) or ""
    selector: dict[str, str] | None = None
    ports: list[ServicePortSpec] = Field(default_factory=list)
    external_ips: list[IPv4] = Field(default_factory=list, alias="externalIPs")
    external_name: str | None = Field(None, alias="externalName")
    load_balancer_ip: IPv4 | None = Field(None, alias="loadBalancerIP")
    load_balancer_source_ranges: list[CidrText] = Field(
        default_factory=list, alias="loadBalancerSourceRanges"
    )
    external_traffic_policy: Literal["Cluster", "Local"] = Field(
        "Cluster", alias="externalTrafficPolicy"
    )
    internal_traffic_policy: Literal["Cluster", "Local"] = Field(
        "Cluster", alias="internalTrafficPolicy"
    )
    session_affinity: Literal["None", "ClientIP"] = Field("None", alias="sessionAffinity")
    session_affinity_config: SessionAffinityConfig | None = Field(
        None, alias="sessionAffinityConfig"
    )
    allocate_load_balancer_node_ports: bool = Field(True, alias="allocateLoadBalancerNodePorts")
    health_check_node_port: int | None = Field(None, alias="healthCheckNodePort")
    publish_not_ready_addresses: bool = Field(False, alias="publishNotReadyAddresses")


class LoadBalancerIngress(StrictModel):
    ip: IPv4 | None = None
    hostname: str | None = None
    ip_mode: Literal["VIP", "Proxy"] | None = Field(None, alias="ipMode")


class LoadBalancerStatus(StrictModel):
    ingress: list[LoadBalancerIngress] = Field(default_factory=list)


class ServiceStatus(StrictModel):
    load_balancer: LoadBalancerStatus | None = Field(None, alias="loadBalancer")


class ServiceObject(_Object):
    spec: ServiceSpec = Field(default_factory=lambda: ServiceSpec.model_validate({}))
    status: ServiceStatus | None = None


# --- Pods and workloads --------------------------------------------------------------------


class ContainerPortSpec(StrictModel):
    container_port: PortNumber = Field(alias="containerPort")
    name: str = ""
    protocol: Protocol = "TCP"


class ContainerSpec(StrictModel):
    name: str
    ports: list[ContainerPortSpec] = Field(default_factory=list)


class Toleration(StrictModel):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: str | None = None


class PodSpec(StrictModel):
    node_name: str | None = Field(None, alias="nodeName")
    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector")
    host_network: bool = Field(False, alias="hostNetwork")
    containers: list[ContainerSpec] = Field(default_factory=list)
    tolerations: list[Toleration] = Field(default_factory=list)


class PodCondition(StrictModel):
    type: str
    status: Literal["True", "False", "Unknown"]


class PodStatusSpec(StrictModel):
    conditions: list[PodCondition] = Field(default_factory=list)


class PodObject(_Object):
    spec: PodSpec = Field(default_factory=lambda: PodSpec.model_validate({}))
    status: PodStatusSpec | None = None


class LabelSelector(StrictModel):
    match_labels: dict[str, str] = Field(default_factory=dict, alias="matchLabels")


class TemplateMeta(StrictModel):
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class PodTemplate(StrictModel):
    metadata: TemplateMeta = Field(default_factory=TemplateMeta)
    spec: PodSpec = Field(default_factory=lambda: PodSpec.model_validate({}))


class DeploymentSpec(StrictModel):
    replicas: int = Field(1, ge=0)
    selector: LabelSelector
    template: PodTemplate


class StatefulSetSpec(DeploymentSpec):
    service_name: str | None = Field(None, alias="serviceName")


class DaemonSetSpec(StrictModel):
    selector: LabelSelector
    template: PodTemplate


class DeploymentObject(_Object):
    spec: DeploymentSpec


class StatefulSetObject(_Object):
    spec: StatefulSetSpec


class DaemonSetObject(_Object):
    spec: DaemonSetSpec


# --- EndpointSlice -------------------------------------------------------------------------


class EndpointConditions(StrictModel):
    ready: bool | None = None
    serving: bool | None = None
    terminating: bool | None = None


class ObjectReference(StrictModel):
    kind: str | None = None
    namespace: str | None = None
    name: str


class SliceEndpoint(StrictModel):
    addresses: list[IPv4] = Field(min_length=1)
    conditions: EndpointConditions = Field(default_factory=EndpointConditions)
    node_name: str | None = Field(None, alias="nodeName")
    target_ref: ObjectReference | None = Field(None, alias="targetRef")


class SlicePort(StrictModel):
    name: str = ""
    port: PortNumber | None = None
    protocol: Protocol = "TCP"


class EndpointSliceObject(_Object):
    address_type: Literal["IPv4", "IPv6", "FQDN"] = Field(alias="addressType")
    endpoints: list[SliceEndpoint] = Field(default_factory=list)
    ports: list[SlicePort] = Field(default_factory=list)


# --- Ingress -------------------------------------------------------------------------------


class ServiceBackendPort(StrictModel):
    number: PortNumber | None = None
    name: str | None = None


class IngressServiceBackend(StrictModel):
    name: str
    port: ServiceBackendPort


class IngressBackend(StrictModel):
    service: IngressServiceBackend | None = None


class HTTPIngressPath(StrictModel):
    path: str = "/"
    path_type: Literal["Exact", "Prefix", "ImplementationSpecific"] = Field(alias="pathType")
    backend: IngressBackend


class HTTPIngressRuleValue(StrictModel):
    paths: list[HTTPIngressPath] = Field(min_length=1)


class IngressRule(StrictModel):
    host: str | None = None
    http: HTTPIngressRuleValue | None = None


class IngressSpec(StrictModel):
    ingress_class_name: str | None = Field(None, alias="ingressClassName")
    default_backend: IngressBackend | None = Field(None, alias="defaultBackend")
    rules: list[IngressRule] = Field(default_factory=list)


class IngressObject(_Object):
    spec: IngressSpec = Field(default_factory=lambda: IngressSpec.model_validate({}))


class IngressClassSpec(StrictModel):
    controller: str | None = None


class IngressClassObject(_Object):
    spec: IngressClassSpec = Field(default_factory=IngressClassSpec)


K8sObject = (
    NamespaceObject
    | ServiceObject
    | PodObject
    | DeploymentObject
    | StatefulSetObject
    | DaemonSetObject
    | EndpointSliceObject
    | IngressObject
    | IngressClassObject
)

# (kind) -> (apiVersion, model, namespaced). The one table of what the simulator understands.
KINDS: dict[str, tuple[str, type[_Object], bool]] = {
    "Namespace": ("v1", NamespaceObject, False),
    "Pod": ("v1", PodObject, True),
    "Service": ("v1", ServiceObject, True),
    "Deployment": ("apps/v1", DeploymentObject, True),
    "StatefulSet": ("apps/v1", StatefulSetObject, True),
    "DaemonSet": ("apps/v1", DaemonSetObject, True),
    "EndpointSlice": ("discovery.k8s.io/v1", EndpointSliceObject, True),
    "Ingress": ("networking.k8s.io/v1", IngressObject, True),
    "IngressClass": ("networking.k8s.io/v1", IngressClassObject, False),
}
