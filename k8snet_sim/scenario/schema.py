"""Pydantic models of the scenario file (field names: the camelCase contract, README "The
scenario file").

:class:`ScenarioFile` validates everything except the Kubernetes manifests (which
:mod:`~k8snet_sim.scenario.manifests` parses). Quantities are parsed into plain floats:
seconds, bytes, bits per second, events per second. Cross-field checks (addresses inside
their subnet, names that refer to each other) are done by the loader, which knows positions.

Example
-------
>>> subnet = SubnetSpec.model_validate({"name": "lan", "cidr": "192.168.10.0/24"})
>>> subnet.bandwidth, subnet.latency, subnet.buffer_packets
(10000000000.0, 5e-05, 1000)
>>> node = {"name": "n1", "address": "192.168.10.11", "subnet": "lan"}
>>> cluster = ClusterSpec.model_validate({"nodePortRange": "30000-30100", "nodes": [node]})
>>> cluster.node_port_range, cluster.service_cidr, cluster.kube_proxy.mode
((30000, 30100), '10.96.0.0/12', 'iptables')
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from k8snet_sim.errors import Diagnostic
from k8snet_sim.scenario.manifests import Manifest
from k8snet_sim.scenario.modelbase import CidrText, IPv4, StrictModel, describe
from k8snet_sim.scenario.refs import RefSyntaxError, parse_ref
from k8snet_sim.scenario.units import parse_bandwidth, parse_duration, parse_rate, parse_size
from k8snet_sim.scenario.yamlpos import YamlDocument, YamlPath

_T = TypeVar("_T")

ProxyMode = Literal["userspace", "iptables", "ipvs", "nftables"]
Disposition = Literal[
    "DELIVERED", "DROPPED", "REJECTED", "NO_ROUTE", "NO_LISTENER", "REPLY_LOST", "TTL_EXCEEDED"
]
IpvsScheduler = Literal["rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh"]
API_VERSION: Literal["k8snet-sim.io/v1alpha1"] = "k8snet-sim.io/v1alpha1"


def _unit(parser: Callable[[object], float]) -> Any:
    return BeforeValidator(parser)


Seconds = Annotated[float, _unit(parse_duration)]
Bytes = Annotated[float, _unit(parse_size)]
BitsPerSecond = Annotated[float, _unit(parse_bandwidth)]
PerSecond = Annotated[float, _unit(parse_rate)]


def _object_key(value: object) -> object:
    """``NS/NAME`` or ``NAME`` (namespace default) → ``NS/NAME``."""
    if not isinstance(value, str) or not value or value.count("/") > 1 or value.endswith("/"):
        raise ValueError(f"expected NAMESPACE/NAME or NAME, got {describe(value)}")
    return value if "/" in value else f"default/{value}"


ObjectKey = Annotated[str, BeforeValidator(_object_key)]


def _ref(role: Literal["source", "target"]) -> Any:
    def check(value: object) -> object:
        try:
            parse_ref(value if isinstance(value, str) else "", role=role)
        except RefSyntaxError as err:
            raise ValueError(f"{err} | hint: {err.hint}") from None
        return value

    return BeforeValidator(check)


SourceRef = Annotated[str, _ref("source")]
TargetRef = Annotated[str, _ref("target")]


def _port_range(value: object) -> object:
    lo_hi: list[object] | None = None
    if isinstance(value, str) and value.count("-") == 1:
        lo_hi = [p.strip() for p in value.split("-")]
        lo_hi = [int(p) if isinstance(p, str) and p.isdigit() else p for p in lo_hi]
    elif isinstance(value, list) and len(value) == 2:
        lo_hi = list(value)
    if lo_hi is not None and all(isinstance(p, int) and not isinstance(p, bool) for p in lo_hi):
        lo, hi = lo_hi
        assert isinstance(lo, int) and isinstance(hi, int)
        if 1 <= lo <= hi <= 65535:
            return (lo, hi)
    raise ValueError(f"expected a port range like 30000-32767, got {describe(value)}")


def _pool(value: object) -> object:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ValueError(
            f"expected an address range a.b.c.d-a.b.c.e or CIDRs, got {describe(value)}"
        )
    for item in items:
        pool_range(item)
    return [str(item).strip() for item in items]


def pool_range(item: object) -> tuple[int, int]:
    """First and last address (as ints) of one pool entry: ``a.b.c.d-a.b.c.e`` or a CIDR."""
    try:
        if isinstance(item, str) and "-" in item:
            first, last = (int(IPv4Address(p.strip())) for p in item.split("-", 1))
            if first <= last:
                return first, last
        elif isinstance(item, str):
            net = IPv4Network(item.strip(), strict=True)
            return int(net.network_address), int(net.broadcast_address)
    except ValueError:
        pass
    raise ValueError(f"expected an address range a.b.c.d-a.b.c.e or a CIDR, got {describe(item)}")


class Metadata(StrictModel):
    name: str = Field(min_length=1)
    description: str = ""


class KubeProxySpec(StrictModel):
    mode: ProxyMode = "iptables"
    cluster_cidr: CidrText | None = Field(None, alias="clusterCIDR")
    masquerade_all: bool = Field(False, alias="masqueradeAll")
    masquerade_bit: int = Field(14, alias="masqueradeBit", ge=0, le=31)
    ipvs_scheduler: IpvsScheduler = Field("rr", alias="ipvsScheduler")
    localhost_node_ports: bool = Field(True, alias="localhostNodePorts")
    node_port_addresses: list[CidrText] = Field(default_factory=list, alias="nodePortAddresses")


class NodeSpec(StrictModel):
    name: str = Field(min_length=1)
    address: IPv4
    subnet: str
    gateway: IPv4 | None = None
    pod_cidr: CidrText | None = Field(None, alias="podCIDR")
    schedulable: bool = True
    labels: dict[str, str] = Field(default_factory=dict)
    cpus: int = Field(2, ge=1)
    ip_forward: bool = Field(True, alias="ipForward")


class ClusterSpec(StrictModel):
    service_cidr: CidrText = Field("10.96.0.0/12", alias="serviceCIDR")
    pod_cidr: CidrText = Field("10.244.0.0/16", alias="podCIDR")
    node_cidr_mask_size: int = Field(24, alias="nodeCIDRMaskSize", ge=8, le=30)
    node_port_range: Annotated[tuple[int, int], BeforeValidator(_port_range)] = Field(
        (30000, 32767), alias="nodePortRange"
    )
    cni: Literal["host-gw", "vxlan"] = "host-gw"
    kube_proxy: KubeProxySpec = Field(
        default_factory=lambda: KubeProxySpec.model_validate({}), alias="kubeProxy"
    )
    nodes: list[NodeSpec] = Field(min_length=1)


class SubnetSpec(StrictModel):
    name: str = Field(min_length=1)
    cidr: CidrText
    bandwidth: BitsPerSecond = 10e9
    latency: Seconds = 50e-6
    buffer_packets: int = Field(1000, alias="bufferPackets", ge=1)


class InterfaceSpec(StrictModel):
    subnet: str
    address: IPv4


class RouteSpec(StrictModel):
    to: CidrText
    via: IPv4


class RouterSpec(StrictModel):
    name: str = Field(min_length=1)
    interfaces: list[InterfaceSpec] = Field(min_length=1)
    routes: list[RouteSpec] = Field(default_factory=list)
    default_route: IPv4 | None = Field(None, alias="defaultRoute")
    ip_forward: bool = Field(True, alias="ipForward")


class HostSpec(StrictModel):
    name: str = Field(min_length=1)
    subnet: str
    address: IPv4
    gateway: IPv4 | None = None
    routes: list[RouteSpec] = Field(default_factory=list)


class NetworkSpec(StrictModel):
    subnets: list[SubnetSpec] = Field(default_factory=list)
    routers: list[RouterSpec] = Field(default_factory=list)
    hosts: list[HostSpec] = Field(default_factory=list)


class LoadBalancerSpec(StrictModel):
    provider: Literal["metallb-l2", "cloud"]
    pool: Annotated[list[str], BeforeValidator(_pool)]

    def pool_ranges(self) -> list[tuple[int, int]]:
        return [pool_range(item) for item in self.pool]


class IngressControllerSpec(StrictModel):
    class_name: str = Field(alias="class", min_length=1)
    deployment: ObjectKey
    service: ObjectKey
    upstream: Literal["endpoints", "service"] = "endpoints"


def _reachable(value: object) -> object:
    if value is None or isinstance(value, bool) or value == "partial":
        return value
    raise ValueError(f"expected true, false or partial, got {describe(value)}")


class ExpectSpec(StrictModel):
    """One expectation. It applies when the mode is in ``modes`` (if given) and every
    ``when`` condition holds: ``{dotted.scenario.key: value or [values]}``."""

    source: SourceRef = Field(alias="from")
    target: TargetRef = Field(alias="to")
    reachable: Annotated[bool | str | None, BeforeValidator(_reachable)] = None  # or "partial"
    disposition: Disposition | None = None
    endpoint: list[str] | None = None
    reachable_via: list[str] | None = Field(None, alias="reachableVia")
    source_seen_by_backend: list[str] | None = Field(None, alias="sourceSeenByBackend")
    modes: list[ProxyMode] | None = None
    when: dict[str, Any] = Field(default_factory=dict)
    description: str = ""

    @field_validator("endpoint", "reachable_via", "source_seen_by_backend", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    def applies_to(self, scenario: Scenario) -> bool:
        """Whether this expectation is meant for ``scenario`` (its mode and ``when``)."""
        if self.modes is not None and scenario.mode not in self.modes:
            return False
        for key, wanted in self.when.items():
            options = wanted if isinstance(wanted, list) else [wanted]
            if scenario.value(key) not in options:
                return False
        return True


class TrafficSpec(StrictModel):
    name: str = Field(min_length=1)
    source: SourceRef = Field(alias="from")
    target: TargetRef = Field(alias="to")
    kind: Literal["requests", "clients", "bulk"] = "requests"
    rate: PerSecond | None = None
    duration: Seconds = Field(10.0, gt=0)
    warmup: Seconds = 0.0
    keepalive: bool = False
    request_bytes: Bytes = Field(100.0, alias="requestBytes")
    response_bytes: Bytes = Field(1024.0, alias="responseBytes")
    clients: int | None = Field(None, ge=1)
    think_time: Seconds = Field(0.0, alias="thinkTime")
    size: Bytes | None = None
    flows: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _needs(self) -> TrafficSpec:
        needed = {"requests": ("rate", self.rate), "clients": ("clients", self.clients)}
        needed["bulk"] = ("size", self.size)
        name, value = needed[self.kind]
        if value is None:
            raise ValueError(f"traffic of kind {self.kind} needs `{name}` | hint: add `{name}:`")
        return self


class PodStatusOverride(StrictModel):
    pod: ObjectKey
    ready: bool | None = None
    serving: bool | None = None
    terminating: bool | None = None


class ScenarioFile(StrictModel):
    """The whole scenario file as written (manifests still raw)."""

    api_version: Literal["k8snet-sim.io/v1alpha1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["Scenario"] = "Scenario"
    metadata: Metadata
    cluster: ClusterSpec
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    load_balancer: LoadBalancerSpec | None = Field(None, alias="loadBalancer")
    ingress_controllers: list[IngressControllerSpec] = Field(
        default_factory=list, alias="ingressControllers"
    )
    manifests: list[Any] = Field(default_factory=list)
    expect: list[ExpectSpec] = Field(default_factory=list)
    traffic: list[TrafficSpec] = Field(default_factory=list)
    costs: dict[str, Any] = Field(default_factory=dict)
    pod_status: list[PodStatusOverride] = Field(default_factory=list, alias="podStatus")


class Scenario(BaseModel):
    """A loaded, validated scenario: the file's sections plus the parsed manifests.

    ``ignored`` lists kinds and fields the simulator does not interpret (with location),
    ``defaulted`` the defaults that were applied (``service default/web type = ClusterIP``),
    ``notes`` legal but noteworthy facts (a subnet overlapping the pod CIDR, …).
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    path: Path | None
    name: str
    description: str
    cluster: ClusterSpec
    network: NetworkSpec
    load_balancer: LoadBalancerSpec | None
    ingress_controllers: list[IngressControllerSpec]
    manifests: list[Manifest]
    expect: list[ExpectSpec]
    traffic: list[TrafficSpec]
    costs: dict[str, Any]
    pod_status: list[PodStatusOverride]
    ignored: list[Diagnostic] = Field(default_factory=list)
    defaulted: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    document: YamlDocument = Field(repr=False)

    @property
    def mode(self) -> str:
        """The kube-proxy mode (after ``--mode`` / ``--set``)."""
        return self.cluster.kube_proxy.mode

    @property
    def node_specs(self) -> list[NodeSpec]:
        return self.cluster.nodes

    def locate(self, path: YamlPath) -> tuple[str, int, int]:
        """File, line and column of a scenario path such as ``("cluster", "nodes", 1)``."""
        return self.document.where(path)

    def diagnostic(self, path: YamlPath, message: str, hint: str = "") -> Diagnostic:
        return self.document.diagnostic(path, message, hint)

    def node_spec(self, name: str) -> NodeSpec:
        return _named(self.cluster.nodes, name, "node")

    def subnet(self, name: str) -> SubnetSpec:
        return _named(self.network.subnets, name, "subnet")

    def router(self, name: str) -> RouterSpec:
        return _named(self.network.routers, name, "router")

    def host(self, name: str) -> HostSpec:
        return _named(self.network.hosts, name, "host")

    def value(self, key: str) -> Any:
        """The (validated, defaulted) value of a dotted scenario key such as
        ``cluster.kubeProxy.mode`` or ``network.subnets.0.cidr``. Inside free-form data
        (``manifests``, ``costs``) a missing key is ``None`` (absent); elsewhere an unknown key
        raises KeyError."""
        raw = self.document.data if isinstance(self.document.data, dict) else {}
        node: Any = {
            "manifests": raw.get("manifests", []),
            "metadata": {"name": self.name, "description": self.description},
            "cluster": self.cluster,
            "network": self.network,
            "loadBalancer": self.load_balancer,
            "ingressControllers": self.ingress_controllers,
            "podStatus": self.pod_status,
            "costs": self.costs,
        }
        for part in key.split("."):
            if isinstance(node, BaseModel):
                names = {(f.alias or n): n for n, f in type(node).model_fields.items()}
                if part not in names:
                    raise KeyError(f"unknown scenario key {key!r} (at {part!r})")
                node = getattr(node, names[part])
            elif isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list | tuple) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, dict | list | tuple) and key.split(".", 1)[0] in (
                "manifests",
                "costs",
            ):
                return None
            else:
                raise KeyError(f"unknown scenario key {key!r} (at {part!r})")
        return node

    def objects(self, kind: str) -> list[Manifest]:
        """The manifests of one kind, in file order."""
        return [m for m in self.manifests if m.kind == kind]


def _named(items: Sequence[_T], name: str, what: str) -> _T:
    for item in items:
        if getattr(item, "name", None) == name:
            return item
    raise KeyError(f"no {what} named {name!r}")
