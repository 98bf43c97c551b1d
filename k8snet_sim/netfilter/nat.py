"""Conntrack's hook functions and the NAT core (nf_conntrack_in, nf_nat_inet_fn, confirm).

The nat table (iptables) or nat chains (nftables) are consulted only while a connection's
binding for a manipulation type is not yet set up — in practice for its first packet. Every
later packet, in either direction, is rewritten from the conntrack entry's two tuples. That is
what un-DNATs a reply — *if the reply passes through the namespace that did the DNAT*.

Example
-------
>>> stack = NetfilterStack()
>>> install_conntrack(stack)
>>> [n for _, n, _ in stack.ops(Hook.PREROUTING)]
['conntrack', 'nat']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from k8snet_sim.net.addr import ip, ip_str
from k8snet_sim.net.packet import ICMP, TCP, UDP, FiveTuple
from k8snet_sim.netfilter.conntrack import (
    ORIGINAL,
    REPLY,
    ConntrackEntry,
    ConntrackTable,
    tcp_advance,
    timeout_for,
)
from k8snet_sim.netfilter.context import ACCEPTED, ConnState, Hook, HookResult, Verdict
from k8snet_sim.netfilter.hooks import (
    CONNTRACK_CONFIRM_HOOKS,
    CONNTRACK_IN_HOOKS,
    NAT_MANIP,
    PRI_CONNTRACK,
    PRI_CONNTRACK_CONFIRM,
    PRI_NAT_DST,
    PRI_NAT_SRC,
    NetfilterStack,
    Skb,
)

LOOPBACK = ip("127.0.0.1")
_NEW, _ESTABLISHED, _RELATED = ConnState.NEW, ConnState.ESTABLISHED, ConnState.RELATED
_PORT_LO, _PORT_HI = 1024, 65535


class HostAddressing(Protocol):
    """What NAT needs to know about the namespace's interfaces."""

    def iface_address(self, iface: str, toward: int | None) -> int | None:
        """The address MASQUERADE/REDIRECT use on ``iface`` (primary, preferring the one whose
        subnet contains ``toward``)."""
        ...


class NatError(Exception):
    """A NAT target could not be applied (e.g. MASQUERADE on an interface without address)."""


def _fmt(addr: int, port: int) -> str:
    return f"{ip_str(addr)}:{port}" if port else ip_str(addr)


class NatBinder:
    """Implements :class:`~k8snet_sim.netfilter.context.NatActions` for one new connection at one
    NAT hook: sets up the conntrack binding and rewrites the packet."""

    def __init__(self, skb: Skb, manip: str):
        self.skb = skb
        self.manip = manip
        self.table: ConntrackTable = skb.conntrack
        self.addressing: HostAddressing | None = skb.addressing

    def _ct(self) -> ConntrackEntry:
        assert self.skb.ct is not None
        return self.skb.ct

    def dnat(self, address: int, port: int | None = None) -> None:
        if self.manip != "dst":
            raise NatError("DNAT is only valid in PREROUTING and OUTPUT")
        ct, pkt = self._ct(), self.skb.pkt
        new_port = port if port is not None and pkt.proto != ICMP else pkt.dport
        rewrites = self.skb.rewrites
        before = _fmt(pkt.dst, pkt.dport) if rewrites is not None else ""
        ct.reply = FiveTuple(ct.reply.proto, address, new_port, ct.reply.dst, ct.reply.dport)
        ct.dnat = ct.dst_done = True
        pkt.dst, pkt.dport = address, new_port
        self.skb.ctx.ct_dnat = True
        if rewrites is not None:
            rewrites.append(f"DNAT dst {before} → {_fmt(address, new_port)}")

    def snat(
        self,
        address: int,
        port: int | None = None,
        *,
        random_fully: bool = False,
        how: str = "SNAT",
    ) -> None:
        if self.manip != "src":
            raise NatError(f"{how} is only valid in POSTROUTING and INPUT")
        ct, pkt = self._ct(), self.skb.pkt
        wanted = port if port is not None else pkt.sport
        chosen = self._free_port(ct, address, wanted, random_fully)
        rewrites = self.skb.rewrites
        before = _fmt(pkt.src, pkt.sport) if rewrites is not None else ""
        ct.reply = FiveTuple(ct.reply.proto, ct.reply.src, ct.reply.sport, address, chosen)
        ct.snat = ct.src_done = True
        pkt.src, pkt.sport = address, chosen
        self.skb.ctx.ct_snat = True
        if rewrites is not None:
            rewrites.append(f"{how} src {before} → {_fmt(address, chosen)}")

    def _free_port(self, ct: ConntrackEntry, address: int, wanted: int, random_fully: bool) -> int:
        """Keep the source port when the resulting reply tuple is unique (nf_nat_used_tuple),
        else search the port range. --random-fully starts from a pseudo-random offset; we derive
        it from the tuple so runs stay deterministic."""
        if ct.orig.proto not in (TCP, UDP, 132):
            return wanted
        now = self.skb.ctx.now

        def taken(p: int) -> bool:
            return self.table.reply_tuple_taken(
                FiveTuple(ct.reply.proto, ct.reply.src, ct.reply.sport, address, p), now
            )

        if not random_fully and not taken(wanted):
            return wanted
        span = _PORT_HI - _PORT_LO + 1
        start = (hash(ct.orig) % span) if random_fully else (wanted - _PORT_LO + 1) % span
        for i in range(span):
            p = _PORT_LO + (start + i) % span
            if not taken(p):
                return p
        raise NatError("no free source port for SNAT")

    def masquerade(self, *, random_fully: bool = False) -> None:
        ctx = self.skb.ctx
        toward = self.skb.next_hop if self.skb.next_hop is not None else self.skb.pkt.dst
        address = None
        if self.addressing is not None and ctx.out_iface:
            address = self.addressing.iface_address(ctx.out_iface, toward)
        if address is None:
            raise NatError(f"MASQUERADE: no address on {ctx.out_iface or '?'}")
        self.snat(address, None, random_fully=random_fully, how="MASQUERADE")

    def redirect(self, port: int | None = None) -> None:
        ctx = self.skb.ctx
        if ctx.hook is Hook.OUTPUT:
            address: int | None = LOOPBACK
        else:
            address = None
            if self.addressing is not None and ctx.in_iface:
                address = self.addressing.iface_address(ctx.in_iface, self.skb.pkt.src)
        if address is None:
            raise NatError(f"REDIRECT: no address on {ctx.in_iface or '?'}")
        self.dnat(address, port)


def _translate(skb: Skb, manip: str) -> None:
    """nf_nat_packet: rewrite a packet of a known connection from the entry's tuples."""
    ct, pkt, direction = skb.ct, skb.pkt, skb.ct_dir
    assert ct is not None
    if manip == "dst":
        if direction == ORIGINAL and ct.dnat:
            new, what = (ct.reply.src, ct.reply.sport), "DNAT (conntrack)"
        elif direction == REPLY and ct.snat:
            new, what = (ct.orig.src, ct.orig.sport), "un-SNAT (conntrack)"
        else:
            return
        if (pkt.dst, pkt.dport) != new:
            if skb.rewrites is not None:
                skb.rewrites.append(f"{what} dst {_fmt(pkt.dst, pkt.dport)} → {_fmt(*new)}")
            pkt.dst, pkt.dport = new
    else:
        if direction == ORIGINAL and ct.snat:
            new, what = (ct.reply.dst, ct.reply.dport), "SNAT (conntrack)"
        elif direction == REPLY and ct.dnat:
            new, what = (ct.orig.dst, ct.orig.dport), "un-DNAT (conntrack)"
        else:
            return
        if (pkt.src, pkt.sport) != new:
            if skb.rewrites is not None:
                skb.rewrites.append(f"{what} src {_fmt(pkt.src, pkt.sport)} → {_fmt(*new)}")
            pkt.src, pkt.sport = new


def _translate_icmp_error(skb: Skb, manip: str) -> None:
    """nf_nat_icmp_reply_translation: an ICMP error about a NATed connection has its outer
    header and the quoted header rewritten, so the original sender recognises its packet."""
    ct, pkt = skb.ct, skb.pkt
    assert ct is not None and pkt.icmp is not None
    inner = pkt.icmp.original
    if manip == "dst" and ct.snat:  # un-SNAT: the error goes back to the original source
        pkt.dst = ct.orig.src
        inner = inner._replace(src=ct.orig.src, sport=ct.orig.sport)
    elif manip == "src" and ct.dnat:  # un-DNAT: quote the destination the sender used
        inner = inner._replace(dst=ct.orig.dst, dport=ct.orig.dport)
    else:
        return
    pkt.icmp.original = inner


def conntrack_in(skb: Skb) -> HookResult:
    """nf_conntrack_in: find or create the packet's entry and classify it."""
    if skb.ct is not None:  # looped back: the entry travels with the skb
        return ACCEPTED
    pkt, ctx, table = skb.pkt, skb.ctx, skb.conntrack
    now = ctx.now
    if pkt.proto == ICMP and pkt.icmp is not None:
        found = table.lookup(pkt.icmp.original.reply(), now)
        if found is None:
            ctx.ct_state = ConnState.INVALID
            return ACCEPTED
        skb.ct, skb.ct_dir = found
        ctx.ct_state = ConnState.RELATED
        ctx.ct_reply = skb.ct_dir == REPLY
        return ACCEPTED
    # A plain tuple finds the entry as the FiveTuple would (same hash, same equality); the
    # FiveTuple itself is only built for a new entry.
    proto = pkt.proto
    key = (proto, pkt.src, pkt.sport, pkt.dst, pkt.dport)
    flags = pkt.flags
    # table.lookup(key, now), inlined: this runs for every packet through a node.
    ct = table._by_tuple.get(key)  # type: ignore[call-overload]
    if ct is not None and ct.expires < now:
        table.remove(ct)
        ct = None
    if ct is not None:
        direction = ORIGINAL if key == ct.orig else REPLY
        if (
            proto == TCP
            and flags == "S"
            and direction == ORIGINAL
            and ct.state in ("TIME_WAIT", "CLOSE")
        ):
            table.remove(ct)  # a new SYN reopens a closed tuple (NEW on sCL/sTW)
            ct = None
    if ct is not None:
        skb.ct, skb.ct_dir = ct, direction
        if direction == REPLY and not ct.seen_reply:
            ct.seen_reply = True
            if proto != TCP:
                ct.state, ct.assured = "REPLIED", True
        if proto == TCP:
            tcp_advance(ct, direction, flags, now)
        else:
            ct.expires = now + timeout_for(ct)
        ctx.ct_state = _ESTABLISHED if ct.seen_reply else _NEW
        ctx.ct_reply = direction == REPLY
        ctx.ct_dnat, ctx.ct_snat = ct.dnat, ct.snat
        return ACCEPTED
    if pkt.proto == TCP and flags != "S":
        # nf_conntrack_tcp_loose=1 picks up mid-stream ACKs; SYN-ACK, RST and FIN without an
        # entry are invalid (tcp_conntracks[][sNO] = sIV).
        if "R" in flags or "S" in flags or "F" in flags:
            ctx.ct_state = ConnState.INVALID
            return ACCEPTED
        ct = ConntrackEntry.new(FiveTuple(*key), now)
        ct.state = "ESTABLISHED"
    else:
        ct = ConntrackEntry.new(FiveTuple(*key), now)
    skb.ct, skb.ct_dir = ct, ORIGINAL
    ctx.ct_state = ConnState.NEW
    ctx.ct_reply = False
    return ACCEPTED


def conntrack_confirm(skb: Skb) -> HookResult:
    """__nf_conntrack_confirm: a new entry enters the table when its first packet leaves the
    namespace or is delivered locally."""
    ct, table = skb.ct, skb.conntrack
    if ct is None or ct.confirmed:
        return ACCEPTED
    if not table.confirm(ct, skb.ctx.now):
        return HookResult(
            Verdict.DROP, f"conntrack table full (nf_conntrack_max={table.max_entries})"
        )
    return ACCEPTED


NatTableFn = Callable[[Skb], HookResult]


def nat_hook(manip: str, run_table: NatTableFn | None) -> Callable[[Skb], HookResult]:
    """nf_nat_inet_fn: consult the nat rules for a connection's first packet, translate the rest.

    ``run_table`` evaluates the nat rules for this hook (iptables nat table, nftables nat
    chains); None means no rules (null binding)."""

    dst = manip == "dst"

    def hook(skb: Skb) -> HookResult:
        ct = skb.ct
        if ct is None:
            return ACCEPTED
        ctx = skb.ctx
        if ctx.ct_state is _RELATED:
            _translate_icmp_error(skb, manip)
            return ACCEPTED
        done = ct.dst_done if dst else ct.src_done
        if not done and skb.ct_dir == ORIGINAL and not ct.seen_reply:
            if run_table is not None:
                ctx.nat = NatBinder(skb, manip)
                try:
                    result = run_table(skb)
                except NatError as err:
                    return HookResult(Verdict.DROP, str(err))
                finally:
                    ctx.nat = None
                if not result.accepted:
                    return result
            if dst:
                ct.dst_done = True
            else:
                ct.src_done = True
            return ACCEPTED
        if ct.dnat or ct.snat:  # a connection without NAT bindings has nothing to translate
            _translate(skb, manip)
        return ACCEPTED

    return hook


def install_conntrack(
    stack: NetfilterStack,
    nat_tables: dict[Hook, tuple[int, str, NatTableFn]] | None = None,
) -> None:
    """Register conntrack lookup/confirm and, if given, NAT rule evaluation.

    ``nat_tables`` maps a NAT hook to ``(priority, name, fn)`` of the rules to consult there.
    Without rules for a NAT hook, packets are still translated there from existing bindings."""
    for hook in CONNTRACK_IN_HOOKS:
        stack.register(hook, PRI_CONNTRACK, "conntrack", conntrack_in)
    for hook in CONNTRACK_CONFIRM_HOOKS:
        stack.register(hook, PRI_CONNTRACK_CONFIRM, "conntrack-confirm", conntrack_confirm)
    # NAT hooks sit at all four points even where no rule is consulted: bindings made at one
    # hook are undone at the opposite one (un-DNAT happens in POSTROUTING/INPUT).
    tables = nat_tables or {}
    for hook, manip in NAT_MANIP.items():
        priority = PRI_NAT_DST if manip == "dst" else PRI_NAT_SRC
        _, name, fn = tables.get(hook, (priority, "nat", None))
        stack.register(hook, priority, name, nat_hook(manip, fn))
