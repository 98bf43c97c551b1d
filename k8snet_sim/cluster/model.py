"""The cluster as kube-proxy and the CNI see it after the control plane has run.

These are plain frozen values: Services with their allocated ClusterIP / NodePorts / LoadBalancer
status, EndpointSlice endpoints, Pods with their IPs and Nodes with their pod CIDRs. Proxiers
(`k8snet_sim.proxy`) turn a :class:`ClusterState` into a node's datapath configuration; they
never see the scenario file.

Names follow the Kubernetes API (``external_traffic_policy`` ↔ ``externalTrafficPolicy``).

Example
-------
>>> port = ServicePort(name="http", protocol="TCP", port=80, target_port=8080)
>>> svc = Service(namespace="default", name="web", type="ClusterIP", cluster_ip="10.96.0.10",
...               ports=(port,))
>>> svc.port_name(port)
'default/web:http'
"""

from __future__ import annotations

from dataclasses import dataclass, field

ServiceType = str  # "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
Protocol = str  # "TCP" | "UDP" | "SCTP"


@dataclass(frozen=True)
class ServicePort:
    name: str  # "" for an unnamed port
    protocol: Protocol
    port: int
    target_port: int | str  # a number, or a container port name resolved per pod
    node_port: int = 0  # 0 = none allocated


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    type: ServiceType
    cluster_ip: str | None  # None = headless (clusterIP: None)
    ports: tuple[ServicePort, ...]
    selector: dict[str, str] | None = None  # None = selector-less (EndpointSlices given)
    external_ips: tuple[str, ...] = ()
    load_balancer_ips: tuple[str, ...] = ()  # status.loadBalancer.ingress[].ip
    load_balancer_pending: str | None = None  # why no IP was assigned (type LoadBalancer only)
    load_balancer_source_ranges: tuple[str, ...] = ()
    external_traffic_policy: str = "Cluster"  # "Cluster" | "Local"
    internal_traffic_policy: str = "Cluster"  # "Cluster" | "Local"
    health_check_node_port: int = 0
    session_affinity: str = "None"  # "None" | "ClientIP"
    session_affinity_timeout: int = 10800
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def port_name(self, port: ServicePort) -> str:
        """kube-proxy's ServicePortName string: ``ns/name:port`` or ``ns/name`` if unnamed."""
        return f"{self.key}:{port.name}" if port.name else self.key

    def find_port(self, ref: str | int) -> ServicePort | None:
        """A port by number or name."""
        for p in self.ports:
            if str(p.port) == str(ref) or (p.name and p.name == ref):
                return p
        return None


@dataclass(frozen=True)
class Endpoint:
    """One address of an EndpointSlice, already resolved for one Service port."""

    ip: str
    port: int
    node_name: str | None  # EndpointSlice endpoints[].nodeName
    pod: str | None = None  # "namespace/name" of the targetRef, when a Pod
    ready: bool = True
    serving: bool = True
    terminating: bool = False

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"


@dataclass(frozen=True)
class ContainerPort:
    port: int
    protocol: Protocol = "TCP"
    name: str = ""


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    node: str
    ip: str
    labels: dict[str, str] = field(default_factory=dict)
    ports: tuple[ContainerPort, ...] = ()
    ready: bool = True
    host_network: bool = False
    owner: str | None = None  # "Deployment/web" etc.

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Node:
    name: str
    address: str
    pod_cidr: str
    subnet: str  # name of the scenario subnet the node's primary interface sits on
    gateway: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    schedulable: bool = True


@dataclass(frozen=True)
class KubeProxyConfig:
    """The kube-proxy flags that change the datapath it writes."""

    mode: str = "iptables"  # "userspace" | "iptables" | "ipvs" | "nftables"
    cluster_cidr: str | None = None  # local-traffic detector; None = no-op detector
    masquerade_all: bool = False
    masquerade_bit: int = 14
    ipvs_scheduler: str = "rr"
    localhost_nodeports: bool = True
    nodeport_addresses: tuple[str, ...] = ()  # empty = all local addresses

    @property
    def masquerade_mark(self) -> int:
        return 1 << self.masquerade_bit


@dataclass(frozen=True)
class ClusterState:
    """Everything kube-proxy watches, after IPAM, scheduling and endpoint computation."""

    service_cidr: str
    pod_cidr: str
    node_port_range: tuple[int, int]
    nodes: tuple[Node, ...]
    pods: tuple[Pod, ...]
    services: tuple[Service, ...]
    # Key: (service key "ns/name", service port name as in ServicePort.name) -> endpoints
    # sorted as kube-proxy sorts them (by the "ip:port" string).
    endpoints: dict[tuple[str, str], tuple[Endpoint, ...]]
    kube_proxy: KubeProxyConfig = KubeProxyConfig()

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def service(self, namespace: str, name: str) -> Service | None:
        for s in self.services:
            if s.namespace == namespace and s.name == name:
                return s
        return None

    def endpoints_for(self, service: Service, port: ServicePort) -> tuple[Endpoint, ...]:
        return self.endpoints.get((service.key, port.name), ())
