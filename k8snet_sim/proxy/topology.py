"""Which endpoints a node's kube-proxy uses for a service port, in any proxy mode.

This is the mode-neutral half of every proxier: the Service predicates of K28
``pkg/proxy/service.go`` / ``pkg/api/v1/service/util.go`` and ``proxy.CategorizeEndpoints`` of
``pkg/proxy/topology.go``, plus the derived "which chains / which verdicts" decisions that the
iptables and nftables proxiers share (:func:`plan_service_port`). Nothing here knows about
rule syntax.

Simplified: topology-aware hints (EndpointSlice ``hints``) are not modelled, so the Cluster set
is every Ready endpoint. Only IPv4 addresses are kept (the simulator is single-stack IPv4).

Example
-------
>>> from k8snet_sim.cluster.model import Endpoint, KubeProxyConfig, Service, ServicePort
>>> port = ServicePort(name="http", protocol="TCP", port=80, target_port=8080, node_port=30080)
>>> svc = Service(namespace="shop", name="web", type="NodePort", cluster_ip="10.96.0.10",
...               ports=(port,), external_traffic_policy="Local")
>>> eps = (Endpoint("10.244.1.5", 8080, "node-a"), Endpoint("10.244.2.7", 8080, "node-b"))
>>> plan = plan_service_port(svc, port, eps, "node-b")
>>> [e.ip for e in plan.endpoints.local], plan.has_external_endpoints
(['10.244.2.7'], True)
>>> plan_service_port(svc, port, eps[:1], "node-b").has_external_endpoints
False
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from k8snet_sim.cluster.model import Endpoint, KubeProxyConfig, Service, ServicePort
from k8snet_sim.net.addr import is_ip


def should_skip_service(service: Service) -> bool:
    """True for Services kube-proxy ignores: headless and ExternalName (``ShouldSkipService``).

    >>> should_skip_service(Service("ns", "db", "ClusterIP", None, ()))
    True
    """
    if service.type == "ExternalName":
        return True
    return service.cluster_ip in (None, "", "None")


def external_policy_local(service: Service) -> bool:
    """eTP=Local, which only counts for NodePort and LoadBalancer Services."""
    if service.type not in ("NodePort", "LoadBalancer"):
        return False
    return service.external_traffic_policy == "Local"


def internal_policy_local(service: Service) -> bool:
    """iTP=Local (applies to ClusterIP traffic only)."""
    return service.internal_traffic_policy == "Local"


def needs_health_check(service: Service) -> bool:
    """Whether the Service gets a healthCheckNodePort: type LoadBalancer with eTP=Local."""
    return service.type == "LoadBalancer" and external_policy_local(service)


def health_check_node_port(service: Service) -> int:
    """The healthCheckNodePort kube-proxy honours; 0 when the Service does not need one.

    Upstream ignores a stale value left on a Service that no longer needs it.
    """
    return service.health_check_node_port if needs_health_check(service) else 0


def external_ips(service: Service) -> tuple[str, ...]:
    """``spec.externalIPs`` of this node's family (IPv4), in spec order; invalid ones dropped."""
    return tuple(a for a in service.external_ips if is_ip(a))


def load_balancer_vips(service: Service) -> tuple[str, ...]:
    """The LoadBalancer status ingress IPs kube-proxy captures (IPv4, in status order)."""
    return tuple(a for a in service.load_balancer_ips if is_ip(a))


def _is_ipv4_cidr(text: str) -> bool:
    if "/" not in text:
        return False
    try:
        IPv4Network(text, strict=False)
    except ValueError:
        return False
    return True


def load_balancer_source_ranges(service: Service) -> tuple[str, ...]:
    """``loadBalancerSourceRanges``, whitespace-trimmed, IPv4 CIDRs only (others dropped).

    >>> load_balancer_source_ranges(Service("ns", "lb", "LoadBalancer", "10.96.0.9", (),
    ...     load_balancer_source_ranges=(" 203.0.113.0/25", "fd00::/64", "bogus")))
    ('203.0.113.0/25',)
    """
    trimmed = (r.strip() for r in service.load_balancer_source_ranges)
    return tuple(r for r in trimmed if _is_ipv4_cidr(r))


def externally_accessible(service: Service, port: ServicePort) -> bool:
    """Reachable from "external" destinations: a NodePort, an LB VIP or an external IP."""
    return port.node_port != 0 or bool(load_balancer_vips(service)) or bool(external_ips(service))


def uses_cluster_endpoints(service: Service, port: ServicePort) -> bool:
    """Cluster endpoints are needed for iTP=Cluster, and for eTP=Local's short-circuits."""
    return not internal_policy_local(service) or externally_accessible(service, port)


def uses_local_endpoints(service: Service, port: ServicePort) -> bool:
    """Local endpoints are needed for iTP=Local, or eTP=Local on an externally reachable port."""
    return internal_policy_local(service) or (
        external_policy_local(service) and externally_accessible(service, port)
    )


@dataclass(frozen=True)
class EndpointCategories:
    """The result of ``CategorizeEndpoints`` for one service port on one node.

    ``cluster``: endpoints for Cluster policy (empty when the port never uses it);
    ``local``: node-local endpoints for Local policy (empty when unused);
    ``reachable``: union of the two, in the sorted endpoint order — each gets a SEP chain;
    ``has_any``: some usable endpoint exists anywhere (even if none is reachable from here).
    """

    cluster: tuple[Endpoint, ...]
    local: tuple[Endpoint, ...]
    reachable: tuple[Endpoint, ...]
    has_any: bool


def _serving_terminating(ep: Endpoint) -> bool:
    return ep.serving and ep.terminating


def categorize_endpoints(
    endpoints: tuple[Endpoint, ...], service: Service, port: ServicePort, node_name: str
) -> EndpointCategories:
    """Split a service port's endpoints into the Cluster / Local sets used on ``node_name``.

    Ready endpoints are preferred; if none are Ready, Serving+Terminating ones are used
    (independently for the cluster-wide and the local set). Terminating endpoints that are
    no longer Serving are never used. Upstream merges the two sets through a Go map (random
    order); here the union keeps the input ("ip:port"-sorted) order, for determinism.

    >>> from k8snet_sim.cluster.model import ServicePort
    >>> p = ServicePort(name="", protocol="TCP", port=80, target_port=80)
    >>> s = Service("ns", "web", "ClusterIP", "10.96.0.10", (p,))
    >>> eps = (Endpoint("10.0.1.10", 80, "a", ready=False, terminating=True),
    ...        Endpoint("10.0.1.2", 80, "b", ready=False, serving=False, terminating=True))
    >>> [e.address for e in categorize_endpoints(eps, s, p, "a").cluster]
    ['10.0.1.10:80']
    """
    if not endpoints:
        return EndpointCategories((), (), (), False)

    cluster: tuple[Endpoint, ...] = ()
    has_any = False
    uses_cluster = uses_cluster_endpoints(service, port)
    if uses_cluster:
        cluster = tuple(ep for ep in endpoints if ep.ready)
        if not cluster:
            cluster = tuple(ep for ep in endpoints if _serving_terminating(ep))
        has_any = bool(cluster)

    if not uses_local_endpoints(service, port):
        return EndpointCategories(cluster, (), cluster, has_any)

    has_any = has_any or any(ep.ready or _serving_terminating(ep) for ep in endpoints)
    mine = [ep for ep in endpoints if ep.node_name == node_name]
    local = tuple(ep for ep in mine if ep.ready)
    used_terminating = False
    if not local:
        local = tuple(ep for ep in mine if not ep.ready and _serving_terminating(ep))
        used_terminating = bool(local)

    if not uses_cluster:
        return EndpointCategories((), local, local, has_any)
    if not used_terminating:
        # Local holds only Ready endpoints and Cluster holds every Ready endpoint:
        # Cluster is already the union.
        return EndpointCategories(cluster, local, cluster, has_any)
    chosen = {ep.address for ep in cluster} | {ep.address for ep in local}
    reachable = tuple(ep for ep in endpoints if ep.address in chosen)
    return EndpointCategories(cluster, local, reachable, has_any)


@dataclass(frozen=True)
class ServicePortPlan:
    """What a proxier must build for one service port on one node (K28 ``syncProxyRules``).

    ``has_internal_endpoints`` / ``has_external_endpoints`` decide between forwarding and a
    REJECT (no endpoints at all) or DROP (Local policy, none on this node) verdict;
    ``uses_*_chain`` say which per-service chains exist.
    """

    endpoints: EndpointCategories
    has_endpoints: bool
    has_internal_endpoints: bool
    has_external_endpoints: bool
    internal_policy_local: bool
    external_policy_local: bool
    uses_cluster_chain: bool
    uses_local_chain: bool
    uses_external_chain: bool
    uses_firewall_chain: bool
    external_ips: tuple[str, ...]
    load_balancer_vips: tuple[str, ...]
    source_ranges: tuple[str, ...]
    health_check_node_port: int

    @property
    def filter_verdict(self) -> str:
        """REJECT when nothing serves the port anywhere, else DROP (no local endpoint)."""
        return "DROP" if self.has_endpoints else "REJECT"


def plan_service_port(
    service: Service, port: ServicePort, endpoints: tuple[Endpoint, ...], node_name: str
) -> ServicePortPlan:
    """Derive the per-service-port decisions shared by the kernel proxy modes."""
    cats = categorize_endpoints(endpoints, service, port, node_name)
    has_endpoints = cats.has_any
    itp_local = internal_policy_local(service)
    etp_local = external_policy_local(service)
    vips = load_balancer_vips(service)
    ranges = load_balancer_source_ranges(service)
    return ServicePortPlan(
        endpoints=cats,
        has_endpoints=has_endpoints,
        has_internal_endpoints=has_endpoints and not (itp_local and not cats.local),
        has_external_endpoints=has_endpoints and not (etp_local and not cats.local),
        internal_policy_local=itp_local,
        external_policy_local=etp_local,
        uses_cluster_chain=bool(cats.cluster) and uses_cluster_endpoints(service, port),
        uses_local_chain=bool(cats.local) and uses_local_endpoints(service, port),
        # Built even without external endpoints: its short-circuit rules still apply.
        uses_external_chain=has_endpoints and externally_accessible(service, port),
        uses_firewall_chain=has_endpoints and bool(vips) and bool(ranges),
        external_ips=external_ips(service),
        load_balancer_vips=vips,
        source_ranges=ranges,
        health_check_node_port=health_check_node_port(service),
    )


@dataclass(frozen=True)
class NodePortAddresses:
    """Where NodePorts listen on a node (``--nodeport-addresses``, K28 ``NodePortAddresses``).

    ``match_all``: every local address (no flag, or a 0.0.0.0/0 entry); otherwise ``node_ips``
    lists the node's addresses inside the given CIDRs. ``localhost_nodeports`` is the
    effective ``--iptables-localhost-nodeports``: forced off unless the CIDRs cover 127.0.0.0.
    """

    match_all: bool
    localhost_nodeports: bool
    node_ips: tuple[str, ...]


def nodeport_addresses(cfg: KubeProxyConfig, node_ip: str) -> NodePortAddresses:
    """Resolve ``--nodeport-addresses`` for a node whose addresses are ``node_ip`` and loopback.

    Upstream collects matching interface addresses through a Go map (random order); they are
    sorted numerically here. Only the node's primary IP and 127.0.0.1 are modelled.

    >>> cfg = KubeProxyConfig(nodeport_addresses=("192.168.10.0/24",))
    >>> nodeport_addresses(cfg, "192.168.10.11")
    NodePortAddresses(match_all=False, localhost_nodeports=False, node_ips=('192.168.10.11',))
    """
    cidrs = [IPv4Network(c.strip(), strict=False) for c in cfg.nodeport_addresses if "." in c]
    if not cidrs or any(c.prefixlen == 0 for c in cidrs):
        return NodePortAddresses(True, cfg.localhost_nodeports, ())
    loopback = any(IPv4Address("127.0.0.0") in c for c in cidrs)
    addresses = sorted({IPv4Address(node_ip), IPv4Address("127.0.0.1")})
    return NodePortAddresses(
        match_all=False,
        localhost_nodeports=cfg.localhost_nodeports and loopback,
        node_ips=tuple(str(a) for a in addresses if any(a in c for c in cidrs)),
    )
