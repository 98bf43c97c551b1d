"""IPVS, the kernel's layer-4 load balancer, as kube-proxy's IPVS mode drives it.

A :class:`VirtualServer` is one ``ipvsadm`` service (protocol, address, port, scheduler,
persistence) with its real servers; an :class:`IpvsTable` holds a namespace's virtual servers
and registers IPVS's hook functions (:func:`install_ipvs`):

* LOCAL_IN (INPUT, priority ``NF_IP_PRI_NAT_SRC - 2``): a new connection to a virtual server
  that reached this host — the service addresses sit on ``kube-ipvs0`` so they are local — is
  scheduled to a real server and DNATed (masquerading forwarding). With
  ``net/ipv4/vs/conntrack=1`` (kube-proxy sets it) conntrack carries the translation, so later
  packets and replies are rewritten by conntrack like any DNAT. The packet is then *stolen*:
  ``ip_vs_nat_xmit`` sends it out through LOCAL_OUT and POSTROUTING, so INPUT's later hooks
  (source NAT, conntrack confirmation) never see it and POSTROUTING's MASQUERADE still can.
* LOCAL_OUT (OUTPUT, ``NF_IP_PRI_NAT_DST + 1``): the same for connections the host opens.

No real server (an empty virtual server) is answered with ICMP port unreachable
(``ip_vs_leave``). Dynamic state — the round-robin position, persistence templates and the
connection counts of the connection-based schedulers — lives in the namespace's
:class:`~k8snet_sim.netfilter.context.NetfilterState` (``extensions["ipvs"]``) and is forked
with it. Deterministic schedulers decide through ``Chooser.pick``, so the trace explorer can
visit every real server.

Example
-------
>>> from k8snet_sim.net.addr import ip
>>> from k8snet_sim.net.packet import TCP
>>> vs = VirtualServer(TCP, ip("10.96.0.10"), 80, "rr", 0,
...                    (RealServer(ip("10.244.1.5"), 8080), RealServer(ip("10.244.2.7"), 8080)),
...                    service="default/web:http")
>>> print(render_ipvsadm([vs]), end="")  # doctest: +NORMALIZE_WHITESPACE
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  10.96.0.10:80 rr
  -> 10.244.1.5:8080              Masq    1      0          0
  -> 10.244.2.7:8080              Masq    1      0          0
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from k8snet_sim.errors import NotSupported
from k8snet_sim.net.addr import ip_str
from k8snet_sim.net.packet import PROTO_NAMES, SCTP, TCP, UDP, FiveTuple, Packet
from k8snet_sim.netfilter.conntrack import ORIGINAL, ConntrackTable
from k8snet_sim.netfilter.context import (
    ACCEPTED,
    ConnState,
    Hook,
    HookResult,
    PacketContext,
    RuleEvent,
    Verdict,
)
from k8snet_sim.netfilter.hooks import (
    PRI_NAT_DST,
    PRI_NAT_SRC,
    NetfilterStack,
    Skb,
)
from k8snet_sim.netfilter.nat import NatBinder

VsKey = tuple[int, int, int]  # (protocol, address, port)

STOLEN = HookResult(Verdict.STOLEN, "IPVS sends the packet on to the real server")

# Priorities of ip_vs_ops4 (net/netfilter/ipvs/ip_vs_core.c).
PRI_IPVS_LOCAL_IN = PRI_NAT_SRC - 2
PRI_IPVS_LOCAL_OUT = PRI_NAT_DST + 1

# Schedulers modelled, by how they choose. With kube-proxy's weights (always 1) wrr is rr and
# wlc is lc. lblc, lblcr and mh are not modelled.
ROUND_ROBIN = frozenset({"rr", "wrr"})
HASHING = frozenset({"sh", "dh"})
CONNECTION_BASED = frozenset({"lc", "wlc", "sed", "nq"})
SCHEDULERS = ROUND_ROBIN | HASHING | CONNECTION_BASED

_GOLDEN_RATIO_32 = 0x61C88647  # include/linux/hash.h
SH_TAB_BITS = 8  # CONFIG_IP_VS_SH_TAB_BITS


@dataclass(frozen=True)
class RealServer:
    """A destination of a virtual server (kube-proxy: an endpoint, weight 1)."""

    address: int
    port: int
    weight: int = 1

    def __str__(self) -> str:
        return f"{ip_str(self.address)}:{self.port}"


@dataclass(frozen=True)
class VirtualServer:
    """One IPVS service. ``persistence`` is the persistent timeout in seconds (0: none);
    ``service`` names the Service port it implements (for traces)."""

    protocol: int
    address: int
    port: int
    scheduler: str = "rr"
    persistence: int = 0
    real_servers: tuple[RealServer, ...] = ()
    service: str = ""

    @property
    def key(self) -> VsKey:
        return (self.protocol, self.address, self.port)

    @property
    def name(self) -> str:
        """``TCP  10.96.0.10:80`` as ipvsadm starts the line (protocol, two spaces, address)."""
        return f"{PROTO_NAMES.get(self.protocol, str(self.protocol)).upper()}  {self}"

    def __str__(self) -> str:
        return f"{ip_str(self.address)}:{self.port}"


def render_ipvsadm(virtual_servers: Iterable[VirtualServer]) -> str:
    """``ipvsadm -Ln``: services sorted by protocol, address, port; destinations by address
    and port, as ipvsadm sorts them. Connection counters are those of a fresh table (0)."""
    lines = [
        "IP Virtual Server version 1.2.1 (size=4096)",
        "Prot LocalAddress:Port Scheduler Flags",
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn",
    ]
    for vs in sorted(virtual_servers, key=lambda v: v.key):
        flags = f" persistent {vs.persistence}" if vs.persistence else ""
        lines.append(f"{vs.name} {vs.scheduler}{flags}")
        for rs in sorted(vs.real_servers, key=lambda r: (r.address, r.port)):
            lines.append(f"  -> {rs!s:<28} {'Masq':<7} {rs.weight:<6} {0:<10} {0:<10}".rstrip())
    return "\n".join(lines) + "\n"


@dataclass
class IpvsState:
    """IPVS's dynamic state in one namespace.

    ``last``: the round-robin position per virtual server; ``templates``: persistence templates
    (virtual server, client address) → (real server, expiry time); ``conns``: connections per
    virtual server for the connection-based schedulers, keyed by the conntrack original tuple
    (conntrack tells whether each still lives and whether it is established).
    """

    last: dict[VsKey, int] = field(default_factory=dict)
    templates: dict[tuple[VsKey, int], tuple[RealServer, float]] = field(default_factory=dict)
    conns: dict[VsKey, dict[FiveTuple, RealServer]] = field(default_factory=dict)

    def copy(self) -> IpvsState:
        return IpvsState(
            dict(self.last), dict(self.templates), {k: dict(v) for k, v in self.conns.items()}
        )


def ipvs_state(ctx: PacketContext) -> IpvsState:
    """The namespace's IPVS state, created on first use."""
    state = ctx.state.extensions.get("ipvs")
    if not isinstance(state, IpvsState):
        state = ctx.state.extensions["ipvs"] = IpvsState()
    return state


def hash_32(value: int, bits: int) -> int:
    """The kernel's ``hash_32``: multiplicative hashing, keeping the top ``bits`` bits."""
    return ((value * _GOLDEN_RATIO_32) & 0xFFFFFFFF) >> (32 - bits)


def source_hash_bucket(address: int) -> int:
    """``ip_vs_sh_hashkey`` for an IPv4 address without the port option."""
    return hash_32(address, SH_TAB_BITS) & ((1 << SH_TAB_BITS) - 1)


class IpvsTable:
    """A namespace's virtual servers and the scheduling of new connections."""

    def __init__(self, virtual_servers: Iterable[VirtualServer]) -> None:
        self.services: dict[VsKey, VirtualServer] = {}
        for vs in virtual_servers:
            if vs.scheduler not in SCHEDULERS:
                raise NotSupported(
                    f"IPVS scheduler {vs.scheduler!r} is not modelled",
                    hint=f"modelled schedulers: {', '.join(sorted(SCHEDULERS))}",
                )
            self.services[vs.key] = vs

    def lookup(self, protocol: int, address: int, port: int) -> VirtualServer | None:
        return self.services.get((protocol, address, port))

    def schedule(
        self, vs: VirtualServer, pkt: Packet, ctx: PacketContext, conntrack: ConntrackTable
    ) -> RealServer | None:
        """Choose a real server for a new connection (``ip_vs_schedule``), honouring a live
        persistence template first (``ip_vs_sched_persist``). None if the service has none."""
        servers = [rs for rs in vs.real_servers if rs.weight > 0]
        if not servers:
            return None
        state = ipvs_state(ctx)
        template_key = (vs.key, pkt.src)
        if vs.persistence:
            ctx.map_lookups += 1
            template = state.templates.get(template_key)
            if template is not None and ctx.now <= template[1] and template[0] in servers:
                dest = template[0]
                state.templates[template_key] = (dest, ctx.now + vs.persistence)
                ctx.record(
                    RuleEvent(
                        "ipvs",
                        vs.name,
                        "persistence template",
                        comment=f"{vs.service} persistent {vs.persistence}",
                        effect=f"client {ip_str(pkt.src)} stays on {dest}",
                    )
                )
                self._remember(vs, pkt, dest, state)
                return dest
        index = self._pick(vs, servers, pkt, ctx, state, conntrack)
        dest = servers[index]
        if vs.persistence:
            state.templates[template_key] = (dest, ctx.now + vs.persistence)
        self._remember(vs, pkt, dest, state)
        return dest

    def _remember(self, vs: VirtualServer, pkt: Packet, dest: RealServer, state: IpvsState) -> None:
        if vs.scheduler in CONNECTION_BASED:
            state.conns.setdefault(vs.key, {})[pkt.tuple()] = dest

    def _pick(
        self,
        vs: VirtualServer,
        servers: list[RealServer],
        pkt: Packet,
        ctx: PacketContext,
        state: IpvsState,
        conntrack: ConntrackTable,
    ) -> int:
        label = f"IPVS {vs.name} {vs.scheduler}"
        n = len(servers)
        if vs.scheduler in ROUND_ROBIN:
            default = (state.last.get(vs.key, -1) + 1) % n
        elif vs.scheduler == "sh":
            default = source_hash_bucket(pkt.src) % n
        elif vs.scheduler == "dh":
            default = source_hash_bucket(pkt.dst) % n
        else:
            default = self._least_loaded(vs, servers, ctx, state, conntrack)
        chosen = ctx.chooser.pick(n, default, label)
        state.last[vs.key] = chosen
        return chosen

    def _least_loaded(
        self,
        vs: VirtualServer,
        servers: list[RealServer],
        ctx: PacketContext,
        state: IpvsState,
        conntrack: ConntrackTable,
    ) -> int:
        """lc/wlc: least (active·256 + inactive); sed: least active+1; nq: an idle server
        first, else as sed. Ties go to the first server, as the kernel's loops do."""
        active = dict.fromkeys(servers, 0)
        inactive = dict.fromkeys(servers, 0)
        conns = state.conns.get(vs.key, {})
        for orig, dest in list(conns.items()):
            found = conntrack.lookup(orig, ctx.now)
            if found is None or found[0].state in ("CLOSE", "TIME_WAIT"):
                del conns[orig]  # the connection is gone: IPVS expired its entry too
                continue
            if dest not in active:
                continue
            if orig.proto == TCP and found[0].state == "ESTABLISHED":
                active[dest] += 1
            else:
                inactive[dest] += 1
        ctx.map_lookups += len(servers)  # the kernel walks the destinations once
        if vs.scheduler == "nq":
            idle = [i for i, rs in enumerate(servers) if active[rs] == 0]
            if idle:
                return idle[0]
        if vs.scheduler in ("sed", "nq"):
            loads = [(active[rs] + 1) / rs.weight for rs in servers]
        else:
            loads = [(active[rs] * 256 + inactive[rs]) / rs.weight for rs in servers]
        return loads.index(min(loads))


def _schedulable(skb: Skb) -> bool:
    """A packet IPVS may schedule: the first of a connection (``tcp_conn_schedule`` takes a
    SYN without RST; UDP and SCTP take the first packet), not yet translated by anyone."""
    pkt, ct = skb.pkt, skb.ct
    if ct is None or ct.dnat or skb.ct_dir != ORIGINAL or ct.seen_reply:
        return False
    if skb.ctx.ct_state is not ConnState.NEW:
        return False
    if pkt.proto == TCP:
        return "S" in pkt.flags and "R" not in pkt.flags
    return pkt.proto in (UDP, SCTP)


def _ipvs_in(table: IpvsTable, skb: Skb, *, local_in: bool) -> HookResult:
    """ip_vs_in for one packet at LOCAL_IN or LOCAL_OUT."""
    if not _schedulable(skb):
        return ACCEPTED
    pkt, ctx = skb.pkt, skb.ctx
    ctx.map_lookups += 1  # ip_vs_service_find: one hash lookup
    vs = table.lookup(pkt.proto, pkt.dst, pkt.dport)
    if vs is None:
        return ACCEPTED
    dest = table.schedule(vs, pkt, ctx, skb.conntrack)
    comment = f"{vs.service} ({vs.scheduler})" if vs.service else vs.scheduler
    if dest is None:
        ctx.record(
            RuleEvent(
                "ipvs", vs.name, "no real server", comment=comment, effect="ICMP port unreachable"
            )
        )
        return HookResult(
            Verdict.REJECT,
            f"IPVS {vs.name} ({vs.service or 'virtual server'}) has no real server",
            reject_with="icmp-port-unreachable",
        )
    before = f"{vs}"
    NatBinder(skb, "dst").dnat(dest.address, dest.port)
    ctx.record(
        RuleEvent(
            "ipvs", vs.name, "schedule", comment=comment, effect=f"DNAT {before} → {dest} (Masq)"
        )
    )
    if local_in and not ctx.is_local(dest.address):
        # ip_vs_nat_xmit steals the packet (NF_STOLEN): nothing after IPVS at LOCAL_IN runs;
        # the packet is routed and goes through POSTROUTING, where MASQUERADE and the
        # confirmation of the final reply tuple belong.
        return STOLEN
    return ACCEPTED


def hook_functions(table: IpvsTable) -> dict[str, Callable[[Skb], HookResult]]:
    """IPVS's hook functions by role: ``local_in`` and ``local_out``."""

    def local_in(skb: Skb) -> HookResult:
        return _ipvs_in(table, skb, local_in=True)

    def local_out(skb: Skb) -> HookResult:
        return _ipvs_in(table, skb, local_in=False)

    return {"local_in": local_in, "local_out": local_out}


def install_ipvs(stack: NetfilterStack, table: IpvsTable) -> None:
    """Register IPVS in a namespace (next to its conntrack and NAT hooks)."""
    fns = hook_functions(table)
    stack.register(Hook.INPUT, PRI_IPVS_LOCAL_IN, "ipvs", fns["local_in"])
    stack.register(Hook.OUTPUT, PRI_IPVS_LOCAL_OUT, "ipvs", fns["local_out"])
