"""kube-proxy's IPVS mode as a pure function: cluster state in, IPVS tables, ipsets and rules out.

:func:`sync` reproduces one full ``syncProxyRules`` of upstream's IPVS proxier
(``pkg/proxy/ipvs/proxier.go``, ≈ v1.29–v1.31) for one node:

* every ClusterIP, external IP and LoadBalancer IP is bound to the dummy device ``kube-ipvs0``
  (:attr:`IpvsConfig.addresses`), so the node accepts them as local and IPVS sees them at
  LOCAL_IN; an external or LoadBalancer IP that is already a node address is not bound;
* one virtual server per ClusterIP, external IP and LoadBalancer IP port, and one per node IP
  per NodePort; real servers are the endpoints (weight 1); ClientIP affinity makes the virtual
  server persistent with the affinity timeout;
* Local traffic policies give a virtual server the node's local endpoints — or, when there is
  none, the cluster-wide ones (upstream PR #97081: pods may still reach the Service; outside
  clients then get replies from a pod address, which they drop);
* the ipsets and the constant iptables rules upstream writes around them (masquerade marks,
  hairpin, source ranges, the ``KUBE-IPVS-FILTER`` that keeps VIPs from exposing host ports).

Fidelity notes: service ports are walked sorted by ServicePortName then protocol (upstream:
Go-map order). The two ``ACCEPT`` rules for external IPs need ``-m physdev`` and the
``KUBE-IPVS-OUT-FILTER`` rules need ``-m ipvs``, neither modelled: they are left out (see
docs/fidelity.md). The mark prints as ``hex(mark)`` like the iptables proxier's.

Example
-------
>>> from k8snet_sim.cluster.model import (ClusterState, Endpoint, KubeProxyConfig, Node,
...     Service, ServicePort)
>>> port = ServicePort(name="http", protocol="TCP", port=80, target_port=8080)
>>> state = ClusterState(service_cidr="10.96.0.0/16", pod_cidr="10.244.0.0/16",
...     node_port_range=(30000, 32767), nodes=(Node("n1", "192.168.10.11", "10.244.1.0/24",
...     "lan"),), pods=(), services=(Service("shop", "web", "ClusterIP", "10.96.0.80", (port,)),),
...     endpoints={("shop/web", "http"): (Endpoint("10.244.1.5", 8080, "n1"),)},
...     kube_proxy=KubeProxyConfig(mode="ipvs", cluster_cidr="10.244.0.0/16"))
>>> config = sync(state, "n1")
>>> config.addresses, config.ipset("KUBE-CLUSTER-IP").entries()
(('10.96.0.80',), ['10.96.0.80,tcp:80'])
>>> print(config.ipvsadm().splitlines()[3:])
['TCP  10.96.0.80:80 rr', '  -> 10.244.1.5:8080              Masq    1      0          0']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from k8snet_sim.cluster.model import ClusterState, Endpoint, Service, ServicePort
from k8snet_sim.errors import UnknownEndpoint
from k8snet_sim.net.addr import ip
from k8snet_sim.net.packet import PROTO_NUMBERS
from k8snet_sim.netfilter.ipset import IpSet, render_sets
from k8snet_sim.netfilter.ipvs import RealServer, VirtualServer, render_ipvsadm
from k8snet_sim.proxy.iptables import BUILTIN_CHAINS, JumpChain
from k8snet_sim.proxy.topology import (
    EndpointCategories,
    categorize_endpoints,
    external_ips,
    external_policy_local,
    health_check_node_port,
    internal_policy_local,
    load_balancer_source_ranges,
    load_balancer_vips,
    should_skip_service,
)

DUMMY_DEVICE = "kube-ipvs0"
MARK_MASQ = "KUBE-MARK-MASQ"


@dataclass(frozen=True)
class SetInfo:
    name: str
    type: str
    comment: str


# Upstream's ipsetInfo (ipset.go / proxier.go), in its order.
SETS: tuple[SetInfo, ...] = (
    SetInfo("KUBE-LOOP-BACK", "hash:ip,port,ip",
            "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose"),
    SetInfo("KUBE-CLUSTER-IP", "hash:ip,port",
            "Kubernetes service cluster ip + port for masquerade purpose"),
    SetInfo("KUBE-EXTERNAL-IP", "hash:ip,port",
            "Kubernetes service external ip + port for masquerade and filter purpose"),
    SetInfo("KUBE-EXTERNAL-IP-LOCAL", "hash:ip,port",
            "Kubernetes service external ip + port with externalTrafficPolicy=local"),
    SetInfo("KUBE-LOAD-BALANCER", "hash:ip,port", "Kubernetes service lb portal"),
    SetInfo("KUBE-LOAD-BALANCER-FW", "hash:ip,port",
            "Kubernetes service load balancer ip + port for load balancer with sourceRange"),
    SetInfo("KUBE-LOAD-BALANCER-LOCAL", "hash:ip,port",
            "Kubernetes service load balancer ip + port with externalTrafficPolicy=local"),
    SetInfo("KUBE-LOAD-BALANCER-SOURCE-IP", "hash:ip,port,ip",
            "Kubernetes service load balancer ip + port + source IP for packet filter purpose"),
    SetInfo("KUBE-LOAD-BALANCER-SOURCE-CIDR", "hash:ip,port,net",
            "Kubernetes service load balancer ip + port + source cidr for packet filter purpose"),
    SetInfo("KUBE-NODE-PORT-TCP", "bitmap:port",
            "Kubernetes nodeport TCP port for masquerade purpose"),
    SetInfo("KUBE-NODE-PORT-LOCAL-TCP", "bitmap:port",
            "Kubernetes nodeport TCP port with externalTrafficPolicy=local"),
    SetInfo("KUBE-NODE-PORT-UDP", "bitmap:port",
            "Kubernetes nodeport UDP port for masquerade purpose"),
    SetInfo("KUBE-NODE-PORT-LOCAL-UDP", "bitmap:port",
            "Kubernetes nodeport UDP port with externalTrafficPolicy=local"),
    SetInfo("KUBE-NODE-PORT-SCTP-HASH", "hash:ip,port",
            "Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'"),
    SetInfo("KUBE-NODE-PORT-LOCAL-SCTP-HASH", "hash:ip,port",
            "Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type "
            "'hash ip:port'"),
    SetInfo("KUBE-HEALTH-CHECK-NODE-PORT", "bitmap:port", "Kubernetes health check node port"),
    SetInfo("KUBE-IPVS-IPS", "hash:ip", "Addresses on the ipvs interface"),
)  # fmt: skip
_COMMENTS = {s.name: s.comment for s in SETS}

# Upstream's ipsetWithIptablesChain: (set, table, chain, target, flags, protocol); a rule is
# written only when its set has members.
SET_RULES: tuple[tuple[str, str, str, str, str, str], ...] = (
    ("KUBE-LOOP-BACK", "nat", "KUBE-POSTROUTING", "MASQUERADE", "dst,dst,src", ""),
    ("KUBE-LOAD-BALANCER", "nat", "KUBE-SERVICES", "KUBE-LOAD-BALANCER", "dst,dst", ""),
    ("KUBE-LOAD-BALANCER-LOCAL", "nat", "KUBE-LOAD-BALANCER", "RETURN", "dst,dst", ""),
    ("KUBE-NODE-PORT-LOCAL-TCP", "nat", "KUBE-NODE-PORT", "RETURN", "dst", "tcp"),
    ("KUBE-NODE-PORT-TCP", "nat", "KUBE-NODE-PORT", MARK_MASQ, "dst", "tcp"),
    ("KUBE-NODE-PORT-LOCAL-UDP", "nat", "KUBE-NODE-PORT", "RETURN", "dst", "udp"),
    ("KUBE-NODE-PORT-UDP", "nat", "KUBE-NODE-PORT", MARK_MASQ, "dst", "udp"),
    ("KUBE-NODE-PORT-LOCAL-SCTP-HASH", "nat", "KUBE-NODE-PORT", "RETURN", "dst,dst", "sctp"),
    ("KUBE-NODE-PORT-SCTP-HASH", "nat", "KUBE-NODE-PORT", MARK_MASQ, "dst,dst", "sctp"),
    ("KUBE-LOAD-BALANCER-FW", "filter", "KUBE-PROXY-FIREWALL", "KUBE-SOURCE-RANGES-FIREWALL",
     "dst,dst", ""),
    ("KUBE-LOAD-BALANCER-SOURCE-CIDR", "filter", "KUBE-SOURCE-RANGES-FIREWALL", "RETURN",
     "dst,dst,src", ""),
    ("KUBE-LOAD-BALANCER-SOURCE-IP", "filter", "KUBE-SOURCE-RANGES-FIREWALL", "RETURN",
     "dst,dst,src", ""),
)  # fmt: skip

NAT_CHAINS = (
    "KUBE-SERVICES",
    "KUBE-POSTROUTING",
    "KUBE-NODE-PORT",
    "KUBE-LOAD-BALANCER",
    MARK_MASQ,
)
FILTER_CHAINS = (
    "KUBE-FORWARD",
    "KUBE-NODE-PORT",
    "KUBE-PROXY-FIREWALL",
    "KUBE-SOURCE-RANGES-FIREWALL",
    "KUBE-IPVS-FILTER",
    "KUBE-IPVS-OUT-FILTER",
)

# Upstream's iptablesJumpChain, in installation order (each prepended).
JUMP_CHAINS: tuple[JumpChain, ...] = (
    JumpChain("nat", "KUBE-SERVICES", "OUTPUT", "kubernetes service portals"),
    JumpChain("nat", "KUBE-SERVICES", "PREROUTING", "kubernetes service portals"),
    JumpChain("nat", "KUBE-POSTROUTING", "POSTROUTING", "kubernetes postrouting rules"),
    JumpChain("filter", "KUBE-FORWARD", "FORWARD", "kubernetes forwarding rules"),
    JumpChain("filter", "KUBE-NODE-PORT", "INPUT", "kubernetes health check rules"),
    JumpChain("filter", "KUBE-PROXY-FIREWALL", "INPUT", "kube-proxy firewall rules"),
    JumpChain("filter", "KUBE-PROXY-FIREWALL", "FORWARD", "kube-proxy firewall rules"),
    JumpChain("filter", "KUBE-IPVS-FILTER", "INPUT", "kubernetes ipvs access filter"),
    JumpChain("filter", "KUBE-IPVS-OUT-FILTER", "OUTPUT", "kubernetes ipvs access filter"),
)


@dataclass(frozen=True)
class IpvsConfig:
    """What kube-proxy in IPVS mode configures on one node.

    ``addresses``: bound to ``kube-ipvs0``; ``node_ips``: the addresses NodePort virtual
    servers were made for; ``iptables``: what ``iptables-save`` shows afterwards.
    """

    node: str
    virtual_servers: tuple[VirtualServer, ...]
    ipsets: tuple[IpSet, ...]
    iptables: str
    addresses: tuple[str, ...]
    node_ips: tuple[str, ...]

    def ipset(self, name: str) -> IpSet:
        return self.registry()[name]

    def registry(self) -> dict[str, IpSet]:
        """The sets by name, for the iptables parser's ``-m set``."""
        return {s.name: s for s in self.ipsets}

    def ipvsadm(self) -> str:
        """``ipvsadm -Ln``."""
        return render_ipvsadm(self.virtual_servers)

    def ipset_list(self) -> str:
        """``ipset list``."""
        return render_sets(self.ipsets)


@dataclass
class _Sync:
    """The accumulators of one sync."""

    scheduler: str
    members: dict[str, list[str]] = field(default_factory=lambda: {s.name: [] for s in SETS})
    servers: list[VirtualServer] = field(default_factory=list)
    bound: dict[str, None] = field(default_factory=dict)  # ordered set

    def add(self, set_name: str, member: str) -> None:
        self.members[set_name].append(member)

    def serve(
        self, svc: Service, port: ServicePort, address: str, number: int, eps: tuple[Endpoint, ...]
    ) -> None:
        affinity = svc.session_affinity == "ClientIP"
        self.servers.append(
            VirtualServer(
                PROTO_NUMBERS[port.protocol.lower()],
                ip(address),
                number,
                self.scheduler,
                svc.session_affinity_timeout if affinity else 0,
                tuple(RealServer(ip(e.ip), e.port) for e in eps),
                svc.port_name(port),
            )
        )


def real_endpoints(cats: EndpointCategories, only_local: bool) -> tuple[Endpoint, ...]:
    """``syncEndpoint``: a Local policy takes the local endpoints, or the cluster-wide ones
    when there is none here (PR #97081); otherwise the cluster-wide ones."""
    if only_local and cats.local:
        return cats.local
    return cats.cluster


def default_node_ips(state: ClusterState, node: str) -> tuple[str, ...]:
    """The node's addresses outside ``kube-ipvs0`` when not told: its primary address and
    its cni0 bridge address (the pod CIDR's first host)."""
    n = state.node(node)
    bridge = IPv4Network(n.pod_cidr, strict=False).network_address + 1
    return tuple(sorted({n.address, str(bridge)}, key=IPv4Address))


def sync(
    state: ClusterState,
    node: str,
    *,
    node_ips: Sequence[str] | None = None,
) -> IpvsConfig:
    """Compute what kube-proxy in IPVS mode writes on ``node`` (one full sync).

    ``node_ips`` are the node's non-loopback addresses outside ``kube-ipvs0`` (every one gets
    NodePort virtual servers, unless ``nodePortAddresses`` narrows them).
    Raises :class:`~k8snet_sim.errors.UnknownEndpoint` if ``node`` is not in
    ``state``.
    """
    try:
        node_ip = state.node(node).address
    except KeyError:
        known = ", ".join(n.name for n in state.nodes)
        raise UnknownEndpoint(f"node/{node}", hint=f"nodes are: {known}") from None
    cfg = state.kube_proxy
    all_ips = tuple(node_ips) if node_ips is not None else default_node_ips(state, node)
    cidrs = [IPv4Network(c.strip(), strict=False) for c in cfg.nodeport_addresses if "." in c]
    if cidrs and not any(c.prefixlen == 0 for c in cidrs):
        nodeport_ips = tuple(a for a in all_ips if any(IPv4Address(a) in c for c in cidrs))
    else:
        nodeport_ips = all_ips
    nodeport_ips = tuple(a for a in nodeport_ips if not IPv4Address(a).is_loopback)
    out = _Sync(cfg.ipvs_scheduler or "rr")
    ports = sorted(
        ((svc, p) for svc in state.services if not should_skip_service(svc) for p in svc.ports),
        key=lambda sp: (sp[0].port_name(sp[1]), sp[1].protocol),
    )
    for svc, port in ports:
        vips = load_balancer_vips(svc)
        _service_port(out, state, node, (node_ip, all_ips, nodeport_ips), vips, svc, port)
    out.members["KUBE-IPVS-IPS"] = list(out.bound)
    sets = tuple(IpSet.build(s.name, s.type, out.members[s.name], s.comment) for s in SETS)
    nonempty = {s.name for s in sets if len(s)}
    return IpvsConfig(
        node=node,
        virtual_servers=tuple(out.servers),
        ipsets=sets,
        iptables=_render_iptables(_iptables_rules(nonempty, cfg.masquerade_all,
                                                  cfg.cluster_cidr, hex(cfg.masquerade_mark))),
        addresses=tuple(out.bound),
        node_ips=nodeport_ips,
    )  # fmt: skip


def _service_port(
    out: _Sync,
    state: ClusterState,
    node: str,
    ips: tuple[str, tuple[str, ...], tuple[str, ...]],
    vips: tuple[str, ...],
    svc: Service,
    port: ServicePort,
) -> None:
    """One service port's ipset members, virtual servers and bound addresses. ``ips``: the
    node's primary IP, all its IPs, the IPs taking NodePorts; ``vips``: LoadBalancer IPs."""
    node_ip, all_ips, nodeport_ips = ips
    proto = port.protocol.lower()
    endpoints = state.endpoints_for(svc, port)
    cats = categorize_endpoints(endpoints, svc, port, node)
    etp_local = external_policy_local(svc)
    for ep in endpoints:  # hairpin: a local endpoint reaching itself through the Service
        if ep.node_name == node:
            out.add("KUBE-LOOP-BACK", f"{ep.ip},{proto}:{ep.port},{ep.ip}")
    assert svc.cluster_ip is not None
    out.add("KUBE-CLUSTER-IP", f"{svc.cluster_ip},{proto}:{port.port}")
    out.serve(svc, port, svc.cluster_ip, port.port,
              real_endpoints(cats, internal_policy_local(svc)))  # fmt: skip
    out.bound[svc.cluster_ip] = None
    external = real_endpoints(cats, etp_local)
    for address in external_ips(svc):
        out.add("KUBE-EXTERNAL-IP-LOCAL" if etp_local else "KUBE-EXTERNAL-IP",
                f"{address},{proto}:{port.port}")  # fmt: skip
        out.serve(svc, port, address, port.port, external)
        if address not in all_ips:  # never bind a node's own address to the dummy device
            out.bound[address] = None
    ranges = load_balancer_source_ranges(svc)
    for address in vips:
        entry = f"{address},{proto}:{port.port}"
        out.add("KUBE-LOAD-BALANCER", entry)
        if etp_local:
            out.add("KUBE-LOAD-BALANCER-LOCAL", entry)
        if ranges:
            out.add("KUBE-LOAD-BALANCER-FW", entry)
            for cidr in ranges:
                out.add("KUBE-LOAD-BALANCER-SOURCE-CIDR", f"{entry},{cidr}")
            if any(IPv4Address(node_ip) in IPv4Network(c, strict=False) for c in ranges):
                # Traffic from the node itself leaves with the LB IP as source (it is local).
                out.add("KUBE-LOAD-BALANCER-SOURCE-IP", f"{entry},{address}")
        out.serve(svc, port, address, port.port, external)
        if address not in all_ips:
            out.bound[address] = None
    if port.node_port and nodeport_ips:
        local = "LOCAL-" if etp_local else ""
        if proto == "sctp":
            for address in nodeport_ips:
                out.add("KUBE-NODE-PORT-SCTP-HASH", f"{address},sctp:{port.node_port}")
                if etp_local:
                    out.add("KUBE-NODE-PORT-LOCAL-SCTP-HASH", f"{address},sctp:{port.node_port}")
        else:
            out.add(f"KUBE-NODE-PORT-{proto.upper()}", str(port.node_port))
            if local:
                out.add(f"KUBE-NODE-PORT-{local}{proto.upper()}", str(port.node_port))
        for address in nodeport_ips:
            out.serve(svc, port, address, port.node_port, external)
    hcnp = health_check_node_port(svc)
    if hcnp:
        out.add("KUBE-HEALTH-CHECK-NODE-PORT", str(hcnp))


def _set_match(set_name: str, flags: str) -> str:
    return f'-m comment --comment "{_COMMENTS[set_name]}" -m set --match-set {set_name} {flags}'


def _set_rule(chain: str, set_name: str, flags: str, target: str, proto: str = "") -> str:
    p = f" -p {proto}" if proto else ""
    return f"-A {chain}{p} {_set_match(set_name, flags)} -j {target}"


def _iptables_rules(
    nonempty: set[str], masquerade_all: bool, cluster_cidr: str | None, mark: str
) -> dict[str, list[str]]:
    """``writeIptablesRules``: the constant rules, by table, in upstream's writing order."""
    nat: list[str] = ["-A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN"]
    filt: list[str] = []
    for set_name, table, chain, target, flags, proto in SET_RULES:
        if set_name in nonempty:
            (nat if table == "nat" else filt).append(
                _set_rule(chain, set_name, flags, target, proto)
            )
    if "KUBE-CLUSTER-IP" in nonempty:
        if masquerade_all:
            nat.append(_set_rule("KUBE-SERVICES", "KUBE-CLUSTER-IP", "dst,dst", MARK_MASQ))
        elif cluster_cidr:
            # Off-cluster sources reaching a VIP through a bastion route are masqueraded, so
            # the reply comes back through this node (the founding lesson, PR #24429).
            match = _set_match("KUBE-CLUSTER-IP", "dst,dst")
            nat.append(f"-A KUBE-SERVICES {match} ! -s {cluster_cidr} -j {MARK_MASQ}")
        else:
            # The node's own connections to a VIP leave from that VIP (it is local): masquerade
            # them. Traffic from elsewhere is not.
            nat.append(_set_rule("KUBE-SERVICES", "KUBE-CLUSTER-IP", "src,dst", MARK_MASQ))
    if "KUBE-EXTERNAL-IP" in nonempty:
        nat.append(_set_rule("KUBE-SERVICES", "KUBE-EXTERNAL-IP", "dst,dst", MARK_MASQ))
    nat.append("-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT")
    nat.append(f"-A KUBE-LOAD-BALANCER -j {MARK_MASQ}")
    filt.append("-A KUBE-SOURCE-RANGES-FIREWALL -j DROP")
    for set_name in ("KUBE-CLUSTER-IP", "KUBE-LOAD-BALANCER"):  # acceptIPVSTraffic
        if set_name in nonempty:
            nat.append(f"-A KUBE-SERVICES -m set --match-set {set_name} dst,dst -j ACCEPT")
    filt += [
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" '
        f"-m mark --mark {mark}/{mark} -j ACCEPT",
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" '
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        _set_rule("KUBE-NODE-PORT", "KUBE-HEALTH-CHECK-NODE-PORT", "dst", "ACCEPT"),
    ]
    for set_name, flags in (("KUBE-LOAD-BALANCER", "dst,dst"), ("KUBE-CLUSTER-IP", "dst,dst"),
                            ("KUBE-EXTERNAL-IP", "dst,dst"), ("KUBE-EXTERNAL-IP-LOCAL", "dst,dst"),
                            ("KUBE-HEALTH-CHECK-NODE-PORT", "dst")):  # fmt: skip
        filt.append(f"-A KUBE-IPVS-FILTER -m set --match-set {set_name} {flags} -j RETURN")
    filt.append("-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW "
                "-m set --match-set KUBE-IPVS-IPS dst -j REJECT")  # fmt: skip
    nat += [
        f"-A KUBE-POSTROUTING -m mark ! --mark {mark}/{mark} -j RETURN",
        f"-A KUBE-POSTROUTING -j MARK --xor-mark {mark}",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
        "-j MASQUERADE",
        f"-A {MARK_MASQ} -j MARK --or-mark {mark}",
    ]
    return {"filter": filt, "nat": nat}


def _render_iptables(rules: dict[str, list[str]]) -> str:
    """``iptables-save`` after the sync: builtin chains with the prepended jump rules, then
    kube-proxy's chains alphabetically with their rules grouped by chain."""
    text: list[str] = []
    for table, chains in (("filter", FILTER_CHAINS), ("nat", NAT_CHAINS)):
        jumps: dict[str, list[str]] = {c: [] for c in BUILTIN_CHAINS[table]}
        for jump in JUMP_CHAINS:
            if jump.table == table:
                jumps[jump.source].insert(0, jump.rule())  # EnsureRule(Prepend, …)
        by_chain: dict[str, list[str]] = {c: [] for c in sorted(chains)}
        for rule in rules[table]:
            by_chain[rule.split(" ", 2)[1]].append(rule)
        text.append(f"*{table}")
        text += [f":{c} ACCEPT [0:0]" for c in BUILTIN_CHAINS[table]]
        text += [f":{c} - [0:0]" for c in by_chain]
        for chain_rules in (*jumps.values(), *by_chain.values()):
            text += chain_rules
        text.append("COMMIT")
    return "\n".join(text) + "\n"
