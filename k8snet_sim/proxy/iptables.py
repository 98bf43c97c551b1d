"""kube-proxy's iptables mode as a pure function: cluster state in, rule text out.

:func:`sync` reproduces one full ``syncProxyRules`` of upstream kube-proxy (K28, ≈ v1.28)
for one node; :func:`restore_input` is the text it hands to ``iptables-restore`` and
:func:`node_rules` what ``iptables-save`` would show afterwards (builtin chains, the jump rules
kube-proxy installs with ``EnsureRule``, then its own chains), both valid restore input.

Fidelity notes:

* Upstream walks its service map in Go's random order; we walk service ports sorted by their
  ServicePortName string (``ns/name:port``) then protocol, so the output is deterministic. Within
  a service port the rule order is upstream's generation order.
* A full sync against empty tables: no partial syncs, no ``-X`` of stale chains.
* The mark prints as ``hex(mark)`` (``0x4000``), the form of upstream's test fixtures and of
  ``iptables-save``; the real binary writes ``%#08x``. ``--random-fully`` is opt-in.
* Rule text keeps kube-proxy's argument order (``-m tcp -p tcp -d IP``); ``iptables-save``
  would normalise it (``-d IP/32 -p tcp ...``). ``node_rules`` orders chains like
  ``iptables-save`` (builtins, then user chains alphabetically) and groups rules by chain.
* The ``KUBE-PROXY-CANARY`` chains of ``ipt.Monitor`` and kubelet's own rules are not shown.

Example
-------
>>> from k8snet_sim.cluster.model import (ClusterState, Endpoint, KubeProxyConfig, Node,
...     Service, ServicePort)
>>> port = ServicePort(name="http", protocol="TCP", port=80, target_port=8080)
>>> state = ClusterState(service_cidr="10.96.0.0/16", pod_cidr="10.244.0.0/16",
...     node_port_range=(30000, 32767), nodes=(Node("n1", "192.168.10.11", "10.244.1.0/24",
...     "lan"),), pods=(), services=(Service("shop", "web", "ClusterIP", "10.96.0.80", (port,)),),
...     endpoints={("shop/web", "http"): (Endpoint("10.244.1.5", 8080, "n1"),)},
...     kube_proxy=KubeProxyConfig(cluster_cidr="10.244.0.0/16"))
>>> rule = sync(state, "n1").nat.chain_rules("KUBE-SERVICES")[0]
>>> for part in rule.split(" -m tcp "):
...     print(part)
-A KUBE-SERVICES -m comment --comment "shop/web:http cluster IP"
-p tcp -d 10.96.0.80 --dport 80 -j KUBE-SVC-67NZLRHBNDSAWJRO
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from k8snet_sim.cluster.model import ClusterState, Endpoint, Service, ServicePort
from k8snet_sim.errors import UnknownEndpoint
from k8snet_sim.proxy import naming
from k8snet_sim.proxy.topology import (
    NodePortAddresses,
    ServicePortPlan,
    nodeport_addresses,
    plan_service_port,
    should_skip_service,
)

# Top-level chains kube-proxy declares on every sync, in upstream's order.
FILTER_CHAINS = (
    "KUBE-SERVICES",
    "KUBE-EXTERNAL-SERVICES",
    "KUBE-FORWARD",
    "KUBE-NODEPORTS",
    "KUBE-PROXY-FIREWALL",
)
NAT_CHAINS = ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ")
MARK_MASQ = "KUBE-MARK-MASQ"

# Above this many endpoints in total, upstream drops the per-endpoint comments.
LARGE_CLUSTER_ENDPOINTS_THRESHOLD = 1000

_CT_NEW = "-m conntrack --ctstate NEW"


@dataclass(frozen=True)
class JumpChain:
    """A jump from a builtin chain into a kube-proxy chain, installed with ``EnsureRule``."""

    table: str
    target: str
    source: str
    comment: str
    extra_args: str = ""

    def rule(self) -> str:
        parts = ["-A", self.source]
        if self.extra_args:
            parts.append(self.extra_args)
        if self.comment:
            parts.append(f'-m comment --comment "{self.comment}"')
        parts += ["-j", self.target]
        return " ".join(parts)


# K28 ``iptablesJumpChains`` then ``iptablesKubeletJumpChains``, in installation order; each is
# *prepended*, so the last one installed ends up first in its builtin chain.
JUMP_CHAINS: tuple[JumpChain, ...] = (
    JumpChain("filter", "KUBE-EXTERNAL-SERVICES", "INPUT",
              "kubernetes externally-visible service portals", _CT_NEW),
    JumpChain("filter", "KUBE-EXTERNAL-SERVICES", "FORWARD",
              "kubernetes externally-visible service portals", _CT_NEW),
    JumpChain("filter", "KUBE-NODEPORTS", "INPUT", "kubernetes health check service ports"),
    JumpChain("filter", "KUBE-SERVICES", "FORWARD", "kubernetes service portals", _CT_NEW),
    JumpChain("filter", "KUBE-SERVICES", "OUTPUT", "kubernetes service portals", _CT_NEW),
    JumpChain("filter", "KUBE-FORWARD", "FORWARD", "kubernetes forwarding rules"),
    JumpChain("filter", "KUBE-PROXY-FIREWALL", "INPUT", "kubernetes load balancer firewall",
              _CT_NEW),
    JumpChain("filter", "KUBE-PROXY-FIREWALL", "OUTPUT", "kubernetes load balancer firewall",
              _CT_NEW),
    JumpChain("filter", "KUBE-PROXY-FIREWALL", "FORWARD", "kubernetes load balancer firewall",
              _CT_NEW),
    JumpChain("nat", "KUBE-SERVICES", "OUTPUT", "kubernetes service portals"),
    JumpChain("nat", "KUBE-SERVICES", "PREROUTING", "kubernetes service portals"),
    JumpChain("nat", "KUBE-POSTROUTING", "POSTROUTING", "kubernetes postrouting rules"),
    JumpChain("filter", "KUBE-FIREWALL", "INPUT", ""),
    JumpChain("filter", "KUBE-FIREWALL", "OUTPUT", ""),
)  # fmt: skip

BUILTIN_CHAINS: dict[str, tuple[str, ...]] = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
}


@dataclass(frozen=True)
class IptablesTable:
    """One table of restore input: declared chains and ``-A`` rules, in writing order."""

    name: str
    chains: tuple[str, ...]
    rules: tuple[str, ...]

    def chain_rules(self, chain: str) -> list[str]:
        """The rules appended to ``chain``, in order."""
        prefix = f"-A {chain} "
        return [r for r in self.rules if r.startswith(prefix)]

    def render(self) -> str:
        lines = [f"*{self.name}"]
        lines += [f":{c} - [0:0]" for c in self.chains]
        lines += self.rules
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class IptablesRuleSet:
    """The result of one sync: the filter and nat tables kube-proxy restores."""

    filter: IptablesTable
    nat: IptablesTable

    def render(self) -> str:
        return self.filter.render() + self.nat.render()


@dataclass
class _Buffers:
    """The four line buffers of one sync (upstream's filterChains/filterRules/natChains/...)."""

    filter_chains: list[str] = field(default_factory=lambda: list(FILTER_CHAINS))
    filter_rules: list[str] = field(default_factory=list)
    nat_chains: list[str] = field(default_factory=lambda: list(NAT_CHAINS))
    nat_rules: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Settings:
    """Per-node constants of a sync."""

    node_ip: str
    mark: str
    masquerade_all: bool
    cluster_cidr: str | None  # the ClusterCIDR local-traffic detector; None = no-op
    large_cluster: bool


def sync(state: ClusterState, node: str, *, random_fully: bool = False) -> IptablesRuleSet:
    """Compute the rules kube-proxy in iptables mode writes on ``node`` (one full sync).

    Raises :class:`~k8snet_sim.errors.UnknownEndpoint` if ``node`` is not in ``state``.
    """
    try:
        node_ip = state.node(node).address
    except KeyError:
        known = ", ".join(n.name for n in state.nodes)
        raise UnknownEndpoint(f"node/{node}", hint=f"nodes are: {known}") from None
    cfg = state.kube_proxy
    ports = sorted(
        (
            (svc, port)
            for svc in state.services
            if not should_skip_service(svc)
            for port in svc.ports
        ),
        key=lambda sp: (sp[0].port_name(sp[1]), sp[1].protocol),
    )
    total_endpoints = sum(len(state.endpoints_for(svc, port)) for svc, port in ports)
    settings = _Settings(
        node_ip=node_ip,
        mark=hex(cfg.masquerade_mark),
        masquerade_all=cfg.masquerade_all,
        cluster_cidr=cfg.cluster_cidr,
        large_cluster=total_endpoints > LARGE_CLUSTER_ENDPOINTS_THRESHOLD,
    )
    out = _Buffers()
    mark = settings.mark
    out.nat_rules += [
        f"-A KUBE-POSTROUTING -m mark ! --mark {mark}/{mark} -j RETURN",
        f"-A KUBE-POSTROUTING -j MARK --xor-mark {mark}",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
        "-j MASQUERADE" + (" --random-fully" if random_fully else ""),
        f"-A {MARK_MASQ} -j MARK --or-mark {mark}",
    ]
    npa = nodeport_addresses(cfg, settings.node_ip)
    if npa.localhost_nodeports:
        # Mitigates the route_localnet hole (issue 90259); a duplicate of kubelet's rule.
        out.filter_chains.append("KUBE-FIREWALL")
        out.filter_rules.append(
            '-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" '
            "-d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT "
            "-j DROP"
        )
    for svc, port in ports:
        plan = plan_service_port(svc, port, state.endpoints_for(svc, port), node)
        _write_service_port(out, settings, svc, port, plan)
    out.nat_rules += _nodeports_jumps(npa)
    out.filter_rules += [
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" '
        f"-m mark --mark {mark}/{mark} -j ACCEPT",
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" '
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    ]
    return IptablesRuleSet(
        filter=IptablesTable("filter", tuple(out.filter_chains), tuple(out.filter_rules)),
        nat=IptablesTable("nat", tuple(out.nat_chains), tuple(out.nat_rules)),
    )


def restore_input(state: ClusterState, node: str) -> str:
    """The ``iptables-restore`` input kube-proxy writes on ``node``: ``*filter`` then ``*nat``.

    Every KUBE-* chain used is declared; builtin chains and their jump rules are not included
    (kube-proxy installs those separately, see :func:`node_rules`).
    """
    return sync(state, node).render()


def node_rules(state: ClusterState, node: str) -> str:
    """What ``iptables-save`` shows on ``node`` after kube-proxy's first sync.

    Builtin chains (policy ACCEPT), the ``EnsureRule`` jump rules, then kube-proxy's chains
    (alphabetically, as ``iptables-save`` lists user chains) with their rules grouped by chain.
    Each table's text is valid ``iptables-restore`` input.
    """
    rules = sync(state, node)
    text: list[str] = []
    for table in (rules.filter, rules.nat):
        jumps: dict[str, list[str]] = {c: [] for c in BUILTIN_CHAINS[table.name]}
        targets: set[str] = set()
        for jump in JUMP_CHAINS:
            if jump.table == table.name:
                jumps[jump.source].insert(0, jump.rule())  # EnsureRule(Prepend, ...)
                targets.add(jump.target)
        user_chains = sorted(targets | set(table.chains))
        by_chain: dict[str, list[str]] = {c: [] for c in user_chains}
        for rule in table.rules:
            by_chain[rule.split(" ", 2)[1]].append(rule)
        text.append(f"*{table.name}")
        text += [f":{c} ACCEPT [0:0]" for c in BUILTIN_CHAINS[table.name]]
        text += [f":{c} - [0:0]" for c in user_chains]
        for chain_rules in (*jumps.values(), *by_chain.values()):
            text += chain_rules
        text.append("COMMIT")
    return "\n".join(text) + "\n"


def _nodeports_jumps(npa: NodePortAddresses) -> list[str]:
    """The final KUBE-SERVICES rule(s) handing local-destination traffic to KUBE-NODEPORTS."""
    comment = (
        '-m comment --comment "kubernetes service nodeports; '
        'NOTE: this must be the last rule in this chain"'
    )
    if npa.match_all:
        # 127.0.0.0/8 works only with route_localnet, which kube-proxy sets if allowed.
        negate = "" if npa.localhost_nodeports else " ! -d 127.0.0.0/8"
        return [
            f"-A KUBE-SERVICES {comment} -m addrtype --dst-type LOCAL{negate} -j KUBE-NODEPORTS"
        ]
    return [
        f"-A KUBE-SERVICES {comment} -d {addr} -j KUBE-NODEPORTS"
        for addr in npa.node_ips
        if npa.localhost_nodeports or not IPv4Address(addr).is_loopback
    ]


def _write_service_port(
    out: _Buffers, s: _Settings, svc: Service, port: ServicePort, plan: ServicePortPlan
) -> None:
    """Append one service port's rules, in upstream's order (reference §3.4 steps 1–10)."""
    name = svc.port_name(port)
    proto = port.protocol.lower()
    suffix = naming.service_port_chain_suffix(name, proto)
    svc_chain, svl_chain = naming.SVC_PREFIX + suffix, naming.SVL_PREFIX + suffix
    ext_chain, fw_chain = naming.EXT_PREFIX + suffix, naming.FW_PREFIX + suffix
    seps = {
        ep.address: naming.endpoint_chain(name, proto, ep.address)
        for ep in plan.endpoints.reachable
    }
    internal_chain = svl_chain if plan.internal_policy_local else svc_chain
    external_policy_chain = svl_chain if plan.external_policy_local else svc_chain
    lb_chain = fw_chain if plan.uses_firewall_chain else ext_chain
    match = f"-m {proto} -p {proto}"
    dport = f"--dport {port.port}"
    # Filter verdict for destinations nothing will DNAT: REJECT if no endpoint exists
    # anywhere, DROP if a Local policy finds none on this node.
    verdict = plan.filter_verdict
    why = "has no endpoints" if verdict == "REJECT" else "has no local endpoints"
    no_endpoints = f'-m comment --comment "{name} {why}"'
    filter_rules, nat_rules, nat_chains = out.filter_rules, out.nat_rules, out.nat_chains

    # 1. ClusterIP
    cluster_ip = f'-m comment --comment "{name} cluster IP" {match} -d {svc.cluster_ip} {dport}'
    if plan.has_internal_endpoints:
        nat_rules.append(f"-A KUBE-SERVICES {cluster_ip} -j {internal_chain}")
    else:
        filter_rules.append(
            f"-A KUBE-SERVICES {no_endpoints} {match} -d {svc.cluster_ip} {dport} -j {verdict}"
        )
    # 2. external IPs
    for ext_ip in plan.external_ips:
        if plan.has_endpoints:
            nat_rules.append(
                f'-A KUBE-SERVICES -m comment --comment "{name} external IP" {match} '
                f"-d {ext_ip} {dport} -j {ext_chain}"
            )
        if not plan.has_external_endpoints:
            filter_rules.append(
                f"-A KUBE-EXTERNAL-SERVICES {no_endpoints} {match} -d {ext_ip} {dport} -j {verdict}"
            )
    # 3. LoadBalancer ingress IPs
    for lb_ip in plan.load_balancer_vips:
        if plan.has_endpoints:
            nat_rules.append(
                f'-A KUBE-SERVICES -m comment --comment "{name} loadbalancer IP" {match} '
                f"-d {lb_ip} {dport} -j {lb_chain}"
            )
        if plan.uses_firewall_chain:
            filter_rules.append(
                f'-A KUBE-PROXY-FIREWALL -m comment --comment "{name} traffic not accepted by '
                f'{fw_chain}" {match} -d {lb_ip} {dport} -j DROP'
            )
    if not plan.has_external_endpoints:
        for lb_ip in plan.load_balancer_vips:
            filter_rules.append(
                f"-A KUBE-EXTERNAL-SERVICES {no_endpoints} {match} -d {lb_ip} {dport} -j {verdict}"
            )
    # 4. NodePort (not subject to loadBalancerSourceRanges, as upstream notes)
    if port.node_port:
        if plan.has_endpoints:
            nat_rules.append(
                f"-A KUBE-NODEPORTS -m comment --comment {name} {match} "
                f"--dport {port.node_port} -j {ext_chain}"
            )
        if not plan.has_external_endpoints:
            filter_rules.append(
                f"-A KUBE-EXTERNAL-SERVICES {no_endpoints} -m addrtype --dst-type LOCAL "
                f"{match} --dport {port.node_port} -j {verdict}"
            )
    # 5. healthCheckNodePort: accepted whether or not this node has endpoints
    if plan.health_check_node_port:
        filter_rules.append(
            f'-A KUBE-NODEPORTS -m comment --comment "{name} health check node port" '
            f"-m tcp -p tcp --dport {plan.health_check_node_port} -j ACCEPT"
        )
    # 6. masquerade off-cluster (or all) traffic to the ClusterIP: the node may bounce it
    #    to another node, and the reply must come back through this node's conntrack.
    if plan.has_internal_endpoints:
        if s.masquerade_all:
            nat_rules.append(f"-A {internal_chain} {cluster_ip} -j {MARK_MASQ}")
        elif s.cluster_cidr:
            nat_rules.append(
                f"-A {internal_chain} {cluster_ip} ! -s {s.cluster_cidr} -j {MARK_MASQ}"
            )
    # 7. KUBE-EXT
    if plan.uses_external_chain:
        nat_chains.append(ext_chain)
        if not plan.external_policy_local:
            nat_rules.append(
                f'-A {ext_chain} -m comment --comment "masquerade traffic for {name} '
                f'external destinations" -j {MARK_MASQ}'
            )
        else:
            if s.cluster_cidr:
                # Pods reaching an external destination get every endpoint, unmasqueraded.
                nat_rules.append(
                    f'-A {ext_chain} -m comment --comment "pod traffic for {name} external '
                    f'destinations" -s {s.cluster_cidr} -j {svc_chain}'
                )
            nat_rules.append(
                f'-A {ext_chain} -m comment --comment "masquerade LOCAL traffic for {name} '
                f'external destinations" -m addrtype --src-type LOCAL -j {MARK_MASQ}'
            )
            nat_rules.append(
                f'-A {ext_chain} -m comment --comment "route LOCAL traffic for {name} '
                f'external destinations" -m addrtype --src-type LOCAL -j {svc_chain}'
            )
        if plan.has_external_endpoints:
            nat_rules.append(f"-A {ext_chain} -j {external_policy_chain}")
    # 8. KUBE-FW
    if plan.uses_firewall_chain:
        nat_chains.append(fw_chain)
        head = f'-A {fw_chain} -m comment --comment "{name} loadbalancer IP"'
        node_ip = IPv4Address(s.node_ip)
        allow_from_node = False
        for src in plan.source_ranges:
            nat_rules.append(f"{head} -s {src} -j {ext_chain}")
            allow_from_node = allow_from_node or node_ip in IPv4Network(src, strict=False)
        if allow_from_node:
            # Node-originated traffic to a VIP bound locally loops back with the VIP as source.
            nat_rules += [f"{head} -s {lb_ip} -j {ext_chain}" for lb_ip in plan.load_balancer_vips]
        nat_rules.append(
            f'-A {fw_chain} -m comment --comment "other traffic to {name} will be dropped by '
            'KUBE-PROXY-FIREWALL"'
        )
    # 9. KUBE-SVC / KUBE-SVL
    if plan.uses_cluster_chain:
        nat_chains.append(svc_chain)
        _write_dispatch(nat_rules, s, svc, name, seps, svc_chain, plan.endpoints.cluster)
    if plan.uses_local_chain:
        nat_chains.append(svl_chain)
        _write_dispatch(nat_rules, s, svc, name, seps, svl_chain, plan.endpoints.local)
    # 10. KUBE-SEP: hairpin masquerade, then DNAT
    comment = "" if s.large_cluster else f" -m comment --comment {name}"
    for ep in plan.endpoints.reachable:
        sep = seps[ep.address]
        nat_chains.append(sep)
        nat_rules.append(f"-A {sep}{comment} -s {ep.ip} -j {MARK_MASQ}")
        recent = f" -m recent --name {sep} --set" if svc.session_affinity == "ClientIP" else ""
        nat_rules.append(f"-A {sep}{comment}{recent} {match} -j DNAT --to-destination {ep.address}")


def _write_dispatch(
    nat_rules: list[str],
    s: _Settings,
    svc: Service,
    name: str,
    sep_chains: dict[str, str],
    chain: str,
    endpoints: tuple[Endpoint, ...],
) -> None:
    """``writeServiceToEndpointRules``: affinity checks, then one random jump per endpoint."""
    seps = [sep_chains[ep.address] for ep in endpoints]
    comments = [
        "" if s.large_cluster else f' -m comment --comment "{name} -> {ep.address}"'
        for ep in endpoints
    ]
    if svc.session_affinity == "ClientIP":
        timeout = svc.session_affinity_timeout
        for sep, comment in zip(seps, comments, strict=True):
            nat_rules.append(
                f"-A {chain}{comment} -m recent --name {sep} --rcheck --seconds {timeout} "
                f"--reap -j {sep}"
            )
    n = len(endpoints)
    for i, (sep, comment) in enumerate(zip(seps, comments, strict=True)):
        # Walking top to bottom, 1/(n-i) at step i makes the overall choice uniform.
        chance = (
            f" -m statistic --mode random --probability {naming.compute_probability(n - i)}"
            if i < n - 1
            else ""
        )
        nat_rules.append(f"-A {chain}{comment}{chance} -j {sep}")
