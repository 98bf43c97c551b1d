"""The per-hop datapath: what a Linux network namespace does with a packet.

One body of code for traces and load runs (DESIGN principle 2). Receiving:
PREROUTING → routing decision → INPUT → socket, or FORWARD → POSTROUTING → transmit.
Sending: routing → OUTPUT → (re-route if NAT changed the destination) → POSTROUTING → transmit
(or loopback). Failures are answered the way Linux answers them: ICMP net unreachable from a
router without a route, time exceeded when the TTL runs out, RST or ICMP port unreachable for a
closed port, ICMP/RST from a REJECT rule.

Each function does the work at the current simulated time, charges its CPU cost to the
namespace's CPU owner, and hands the packet on through the
:class:`~k8snet_sim.sim.simulation.Simulation` (which owns links, queues and time).

Example
-------
>>> REJECT_ICMP_CODES["icmp-port-unreachable"]  # what a bare ``-j REJECT`` sends back
(3, 3)
"""

from __future__ import annotations

from heapq import heapreplace
from typing import TYPE_CHECKING

from k8snet_sim.net.addr import ip_str
from k8snet_sim.net.packet import (
    ICMP,
    ICMP_DEST_UNREACH,
    ICMP_HOST_UNREACH,
    ICMP_NET_UNREACH,
    ICMP_PORT_UNREACH,
    ICMP_TIME_EXCEEDED,
    SCTP,
    TCP,
    UDP,
    IcmpError,
    Packet,
)
from k8snet_sim.netfilter.context import (
    ACCEPTED,
    ConnState,
    Hook,
    HookResult,
    PacketContext,
    Verdict,
)
from k8snet_sim.netfilter.hooks import Skb, new_context
from k8snet_sim.sim.recorder import TERMINAL_VERDICTS, Hop
from k8snet_sim.sim.sockets import tcp_input, udp_input

if TYPE_CHECKING:
    from k8snet_sim.net.routing import Route
    from k8snet_sim.sim.namespace import Namespace
    from k8snet_sim.sim.simulation import Simulation

VXLAN_PORT = 8472  # flannel's VXLAN UDP port (the IANA port is 4789)
# Enum members bound once: looking them up on the class costs a descriptor call each time.
_PREROUTING, _INPUT, _FORWARD, _OUTPUT, _POSTROUTING = (
    Hook.PREROUTING,
    Hook.INPUT,
    Hook.FORWARD,
    Hook.OUTPUT,
    Hook.POSTROUTING,
)
_NEW = ConnState.NEW
_ACCEPT, _STOLEN = Verdict.ACCEPT, Verdict.STOLEN

REJECT_ICMP_CODES = {
    "icmp-net-unreachable": (ICMP_DEST_UNREACH, 0),
    "icmp-host-unreachable": (ICMP_DEST_UNREACH, 1),
    "icmp-port-unreachable": (ICMP_DEST_UNREACH, 3),
    "icmp-proto-unreachable": (ICMP_DEST_UNREACH, 2),
    "icmp-net-prohibited": (ICMP_DEST_UNREACH, 9),
    "icmp-host-prohibited": (ICMP_DEST_UNREACH, 10),
    "icmp-admin-prohibited": (ICMP_DEST_UNREACH, 13),
}


class Visit:
    """Bookkeeping of one packet's visit to one namespace: cost, and the hop when recording."""

    __slots__ = ("hop", "lean", "rewrites_start")

    def __init__(self, sim: Simulation, ns: Namespace, pkt: Packet, verdict: str = "") -> None:
        self.hop: Hop | None = None
        self.lean = False
        recorder = sim.recorder
        if recorder is not None and recorder.wants(pkt):
            self.hop = Hop(
                t=sim.env.now,
                node=ns.name,
                action="",
                packet="",
                packet_in="" if recorder.lean else str(pkt),
                label=pkt.label,
                conn_id=pkt.conn_id,
                direction=pkt.meta.get("dir", 0),
                verdict=verdict,
            )
            recorder.add(self.hop)
            self.lean = recorder.lean

    def done(self, skb: Skb | None, pkt: Packet, verdict: str, action: str) -> None:
        hop = self.hop
        if hop is None:
            return
        hop.verdict = verdict
        hop.action = action
        if not self.lean or verdict in TERMINAL_VERDICTS:
            hop.packet = str(pkt)
        if skb is not None:
            hop.rules_walked = skb.ctx.rules_walked
            hop.map_lookups = skb.ctx.map_lookups
            if skb.ctx.events:
                hop.rules.extend(e.describe() for e in skb.ctx.events)
            if skb.rewrites:
                hop.rewrites.extend(skb.rewrites)


# Load runs keep the recorder off: every visit then shares this one, which records nothing
# (its ``hop`` stays None forever).
_NO_VISIT = Visit.__new__(Visit)
_NO_VISIT.hop = None
_NO_VISIT.lean = False


def _visit(sim: Simulation, ns: Namespace, pkt: Packet, verdict: str = "") -> Visit:
    return _NO_VISIT if sim.recorder is None else Visit(sim, ns, pkt, verdict)


def _skb(
    sim: Simulation,
    ns: Namespace,
    pkt: Packet,
    visit: Visit,
    hook: Hook,
    in_iface: str | None = None,
    out_iface: str | None = None,
) -> Skb:
    st = sim._states[ns.name]
    if visit.hop is None:  # the hot path: positional arguments, no trace lists
        ctx = PacketContext(
            hook, sim.env._now, sim.chooser, st.nf, ns.is_local, in_iface, out_iface
        )
        return Skb(pkt, ctx, st.conntrack, ns)
    ctx = new_context(
        hook=hook,
        now=sim.env.now,
        chooser=sim.chooser,
        state=st.nf,
        is_local=ns.is_local,
        in_iface=in_iface,
        out_iface=out_iface,
        events=None if visit.lean else [],
    )
    return Skb(pkt, ctx, conntrack=st.conntrack, addressing=ns, rewrites=[])


def _charge(sim: Simulation, ns: Namespace, skb: Skb | None, pkt: Packet) -> tuple[float, float]:
    """Charge one packet's visit to ``ns``'s CPU owner: ``(cost, delay until done)``. A flow
    probe riding on the packet (bulk traffic learning its path) is told what was charged."""
    c = sim.costs
    cost = c.packet + pkt.length * c.byte_cost
    if skb is not None:
        ctx = skb.ctx
        cost += ctx.rules_walked * c.rule_cost + ctx.map_lookups * c.map_lookup
        ct = skb.ct
        if ct is not None:
            cost += c.conntrack_lookup
            if ctx.ct_state is _NEW and not ct.confirmed:
                cost += c.conntrack_new
            if ct.dnat or ct.snat:
                # Established NATed traffic: iptables mode reaches ~96 % of direct (§2, §7).
                cost += pkt.length * c.byte_cost * c.nat_byte_overhead
    # sim.charge(ns, cost), inlined for the kernel once the owner's cores exist (every packet
    # event comes here): the least busy core takes the work.
    owner = ns.cpu_owner
    st = sim._states[owner]
    cores = st.cpu_free_at
    if cores:
        now = sim.env._now
        free_at = cores[0]
        end = (now if now >= free_at else free_at) + cost
        heapreplace(cores, end)
        st.cpu_busy_s += cost
        delay = end - now
    else:
        delay = sim.charge(ns, cost)
    probe = pkt.probe
    if probe is not None:
        probe.on_cpu(ns, cost, pkt.length * c.byte_cost)
    return cost, delay


# ----------------------------------------------------------------------------- receive


def receive(
    sim: Simulation, ns: Namespace, iface: str, pkt: Packet, skb: Skb | None = None
) -> None:
    """ip_rcv: a packet arrives on ``iface`` (``skb`` is passed when looping back locally)."""
    visit = _NO_VISIT if sim.recorder is None else Visit(sim, ns, pkt)
    if skb is None:
        pkt.mark = 0  # skb->mark does not cross namespaces
        if ns.martian_check and iface != "lo" and pkt.src in ns.local_addresses:
            _drop(
                sim,
                ns,
                None,
                pkt,
                visit,
                f"martian source {ip_str(pkt.src)} (one of our own addresses) on {iface}",
            )
            return
        if visit.hop is None and not ns.stack.hooked and _receive_plain(sim, ns, iface, pkt):
            return
        skb = _skb(sim, ns, pkt, visit, _PREROUTING, iface)
    else:
        skb.ctx.in_iface, skb.ctx.out_iface = iface, None
        if visit.hop is not None and skb.rewrites is None:
            skb.rewrites = []
            if not visit.lean:
                skb.ctx.events = []
    stack = ns.stack
    result = stack.run(_PREROUTING, skb) if stack.hooked else ACCEPTED
    if result is not ACCEPTED and result.verdict is not _ACCEPT:
        _refuse(sim, ns, skb, visit, result, "PREROUTING")
        return
    # ip_rcv_finish: the routing decision (for a local address, ip_local_deliver).
    dst = pkt.dst
    if dst in ns.local_addresses or (dst >> 24) == 127:  # ns.is_local(dst), inlined
        _local_in(sim, ns, skb, visit)
        return
    if not ns.ip_forward:
        _drop(
            sim,
            ns,
            skb,
            pkt,
            visit,
            f"{ip_str(dst)} is not a local address and {ns.name} does not forward "
            "(net.ipv4.ip_forward=0)",
            verdict="drop",
        )
        return
    route = ns.routes.lookup(dst)
    if route is None or route.kind != "unicast":
        reason = f"no route to {ip_str(dst)}" if route is None else f"{route.kind} route {route}"
        _icmp_error(sim, ns, skb, ICMP_DEST_UNREACH, ICMP_NET_UNREACH, reason)
        _finish(sim, ns, skb, pkt, visit, "no-route", f"NO_ROUTE at {ns.name}: {reason}")
        return
    if pkt.ttl <= 1:
        _icmp_error(sim, ns, skb, ICMP_TIME_EXCEEDED, 0, "TTL exceeded")
        _finish(sim, ns, skb, pkt, visit, "ttl", f"TTL exceeded at {ns.name} (routing loop?)")
        return
    # ip_forward
    pkt.ttl -= 1
    skb.ctx.out_iface = route.dev
    skb.next_hop = route.via if route.via is not None else dst
    result = stack.run(_FORWARD, skb) if stack.hooked else ACCEPTED
    if result is not ACCEPTED and result.verdict is not _ACCEPT:
        _refuse(sim, ns, skb, visit, result, "FORWARD")
        return
    _postrouting(
        sim,
        ns,
        skb,
        visit,
        route,
        f"forward {skb.ctx.in_iface} → {route}" if visit.hop is not None else "",
    )


def _receive_plain(sim: Simulation, ns: Namespace, iface: str, pkt: Packet) -> bool:
    """The common case of :func:`receive` in a namespace without netfilter (a pod, a host, a
    router) when nothing is recorded: deliver locally, or forward along a unicast route.

    Nothing in such a namespace attaches anything to a packet (no conntrack entry, no rule
    walked, the same CPU cost), so no skb is built; :meth:`Simulation._enqueue` builds one if
    the packet then cannot leave. Returns False, having changed nothing, for everything else
    (TTL running out, no route, forwarding off): :func:`receive` answers those in full.
    """
    dst = pkt.dst
    if dst in ns.local_addresses or (dst >> 24) == 127:  # ns.is_local(dst), inlined
        _, delay = _charge(sim, ns, None, pkt)
        sim.env.call_later(delay, _deliver, (sim, ns, pkt, None, _NO_VISIT))
        return True
    if not ns.ip_forward or pkt.ttl <= 1:
        return False
    route = ns.routes.lookup(dst)
    if route is None or route.kind != "unicast":
        return False
    pkt.ttl -= 1
    _, delay = _charge(sim, ns, None, pkt)
    next_hop = route.via if route.via is not None else dst
    sim.transmit(ns, route.dev, next_hop, pkt, delay, None, iface)
    return True


def _local_in(sim: Simulation, ns: Namespace, skb: Skb, visit: Visit) -> None:
    pkt = skb.pkt
    stack = ns.stack
    result = stack.run(_INPUT, skb) if stack.hooked else ACCEPTED
    if result.verdict is _STOLEN:
        # IPVS took the packet at LOCAL_IN after rewriting its destination, and sends it on
        # itself (ip_vs_nat_xmit): the rest of INPUT does not run; routing and POSTROUTING do.
        route = ns.routes.lookup(pkt.dst)
        if route is None:
            _drop(sim, ns, skb, pkt, visit, f"no route to real server {ip_str(pkt.dst)}")
            return
        skb.ctx.out_iface = route.dev
        skb.next_hop = route.via if route.via is not None else pkt.dst
        _postrouting(
            sim, ns, skb, visit, route, f"IPVS forward → {route}" if visit.hop is not None else ""
        )
        return
    if result is not ACCEPTED and result.verdict is not _ACCEPT:
        _refuse(sim, ns, skb, visit, result, "INPUT")
        return
    cost, delay = _charge(sim, ns, skb, pkt)
    if visit.hop is not None:
        visit.hop.cost_s = cost
    sim.env.call_later(delay, _deliver, (sim, ns, pkt, skb, visit))


def _deliver(sim: Simulation, ns: Namespace, pkt: Packet, skb: Skb | None, visit: Visit) -> None:
    """Hand a packet that passed INPUT to the socket layer (``skb`` is None for a namespace
    without netfilter: see :func:`receive`)."""
    sockets = sim._states[ns.name].sockets  # sim.sockets_of
    if pkt.proto in (TCP, SCTP):
        note = tcp_input(sim, ns.name, sockets, pkt)
        if visit.hop is not None:
            verdict = (
                "stray"
                if note.startswith("no socket")
                else ("refused" if note.startswith("no listener") else "deliver")
            )
            visit.done(skb, pkt, verdict, note)
        return
    if pkt.proto == UDP:
        vxlan = sim.world.vxlan_iface(ns.name) if pkt.dport == VXLAN_PORT else None
        if vxlan is not None and isinstance(pkt.payload, Packet):
            visit.done(skb, pkt, "deliver", f"VXLAN decapsulation on {vxlan}")
            receive(sim, ns, vxlan, pkt.payload)
            return
        delivered = udp_input(sim, ns.name, sockets, pkt)
        if delivered is None:
            _icmp_error(
                sim,
                ns,
                skb if skb is not None else _skb(sim, ns, pkt, visit, _INPUT),
                ICMP_DEST_UNREACH,
                ICMP_PORT_UNREACH,
                f"no listener on UDP {ip_str(pkt.dst)}:{pkt.dport}",
            )
            visit.done(
                skb,
                pkt,
                "refused",
                f"no listener on {ip_str(pkt.dst)}:{pkt.dport}: ICMP port unreachable",
            )
            return
        visit.done(skb, pkt, "deliver", delivered)
        return
    if pkt.proto == ICMP and pkt.icmp is not None:
        note = sim.icmp_to_socket(ns.name, pkt)
        visit.done(skb, pkt, "deliver", note)
        return
    visit.done(skb, pkt, "deliver", "delivered (no handler)")


# ----------------------------------------------------------------------------- send


def local_out(sim: Simulation, ns: Namespace, pkt: Packet, *, related: Skb | None = None) -> bool:
    """ip_local_out for a packet created in ``ns``. Returns False if it could not be routed."""
    visit = _NO_VISIT if sim.recorder is None else Visit(sim, ns, pkt, verdict="send")
    dst = pkt.dst
    local = dst in ns.local_addresses or (dst >> 24) == 127  # ns.is_local(dst), inlined
    route = None if local else ns.routes.lookup(dst)
    if route is None and not local:
        visit.done(None, pkt, "no-route", f"NO_ROUTE at {ns.name}: no route to {ip_str(pkt.dst)}")
        sim.socket_error(ns.name, pkt, f"no route to {ip_str(pkt.dst)} from {ns.name}")
        return False
    if route is not None and visit.hop is None and not ns.stack.hooked and related is None:
        # A namespace without netfilter (a pod, a host, a router) attaches nothing to what it
        # sends: no hook runs, so no skb is built; _postrouting would only charge and queue.
        # (_enqueue builds one if the packet fails to leave.)
        _, delay = _charge(sim, ns, None, pkt)
        next_hop = route.via if route.via is not None else dst
        sim.transmit(ns, route.dev, next_hop, pkt, delay)
        return True
    out_dev = route.dev if route is not None else "lo"
    skb = _skb(sim, ns, pkt, visit, _OUTPUT, None, out_dev)
    skb.local_origin = True
    if related is not None and related.ct is not None:
        # Errors generated by REJECT carry the offending connection (nf_ct_attach), so NAT
        # translates their quoted header on the way out.
        skb.ct, skb.ct_dir = related.ct, 1 - related.ct_dir
        skb.ctx.ct_state = ConnState.RELATED
    stack = ns.stack
    result = stack.run(_OUTPUT, skb) if stack.hooked else ACCEPTED
    if result is not ACCEPTED and result.verdict is not _ACCEPT:
        _refuse(sim, ns, skb, visit, result, "OUTPUT")
        return True
    if pkt.dst != dst:  # ip_route_me_harder: NAT changed the destination
        route = ns.routes.lookup(pkt.dst) if not ns.is_local(pkt.dst) else None
        if route is None and not ns.is_local(pkt.dst):
            _drop(sim, ns, skb, pkt, visit, f"no route to {ip_str(pkt.dst)} after NAT")
            return True
        skb.ctx.out_iface = route.dev if route is not None else "lo"
    if route is None:  # local destination: loop back through lo
        skb.ctx.out_iface = "lo"
        result = ns.stack.run(Hook.POSTROUTING, skb)
        if result is not ACCEPTED and result.verdict is not _ACCEPT:
            _refuse(sim, ns, skb, visit, result, "POSTROUTING")
            return True
        visit.done(skb, pkt, "send", "loopback (lo)")
        _, delay = _charge(sim, ns, skb, pkt)
        sim.later(delay, receive, sim, ns, "lo", pkt, skb)
        return True
    skb.next_hop = route.via if route.via is not None else pkt.dst
    _postrouting(sim, ns, skb, visit, route, f"send → {route}" if visit.hop is not None else "")
    return True


def _postrouting(
    sim: Simulation, ns: Namespace, skb: Skb, visit: Visit, route: Route, action: str
) -> None:
    stack = ns.stack
    result = stack.run(_POSTROUTING, skb) if stack.hooked else ACCEPTED
    if result is not ACCEPTED and result.verdict is not _ACCEPT:
        _refuse(sim, ns, skb, visit, result, "POSTROUTING")
        return
    pkt = skb.pkt
    next_hop = skb.next_hop if skb.next_hop is not None else pkt.dst
    cost, delay = _charge(sim, ns, skb, pkt)
    if visit.hop is not None:
        visit.done(skb, pkt, "send" if skb.local_origin else "forward", action)
        visit.hop.cost_s = cost
    sim.transmit(ns, route.dev, next_hop, pkt, delay, skb)


# ----------------------------------------------------------------------------- bridge


def bridge_netfilter(sim: Simulation, owner: Namespace, port_iface: str, pkt: Packet) -> bool:
    """br_netfilter: a frame bridged between two ports of ``owner``'s bridge traverses the
    owner's PREROUTING, FORWARD and POSTROUTING hooks (bridge-nf-call-iptables=1). Returns
    whether the frame may continue."""
    visit = _visit(sim, owner, pkt)
    skb = _skb(sim, owner, pkt, visit, Hook.PREROUTING, in_iface=port_iface)
    for hook in (Hook.PREROUTING, Hook.FORWARD, Hook.POSTROUTING):
        if hook is not Hook.PREROUTING:
            skb.ctx.out_iface = port_iface
        result = owner.stack.run(hook, skb)
        if result is not ACCEPTED and result.verdict is not _ACCEPT:
            _refuse(sim, owner, skb, visit, result, f"{hook.value} (bridged)")
            return False
    _charge(sim, owner, skb, pkt)
    if visit.hop is not None:
        visit.done(skb, pkt, "forward", f"bridge {port_iface} (br_netfilter)")
    return True


# ----------------------------------------------------------------------------- failures


def _finish(
    sim: Simulation,
    ns: Namespace,
    skb: Skb | None,
    pkt: Packet,
    visit: Visit,
    verdict: str,
    action: str,
) -> None:
    _charge(sim, ns, skb, pkt)
    sim.count(ns, verdict)
    visit.done(skb, pkt, verdict, action)


def _drop(
    sim: Simulation,
    ns: Namespace,
    skb: Skb | None,
    pkt: Packet,
    visit: Visit,
    reason: str,
    verdict: str = "drop",
) -> None:
    _finish(sim, ns, skb, pkt, visit, verdict, f"DROP at {ns.name}: {reason}")


def _refuse(
    sim: Simulation, ns: Namespace, skb: Skb, visit: Visit, result: HookResult, where: str
) -> None:
    """A hook said DROP or REJECT."""
    pkt = skb.pkt
    why = result.reason or f"{where} verdict {result.verdict.value}"
    if result.verdict is Verdict.REJECT:
        with_ = result.reject_with or "icmp-port-unreachable"
        if with_ == "tcp-reset" and pkt.proto == TCP:
            _tcp_reset(sim, ns, skb, why)
        else:
            icmp_type, code = REJECT_ICMP_CODES.get(with_, (ICMP_DEST_UNREACH, ICMP_PORT_UNREACH))
            _icmp_error(sim, ns, skb, icmp_type, code, why, cause="reject")
        _finish(sim, ns, skb, pkt, visit, "reject", f"REJECT at {ns.name} ({where}): {why}")
        return
    _finish(sim, ns, skb, pkt, visit, "drop", f"DROP at {ns.name} ({where}): {why}")


def _icmp_error(
    sim: Simulation,
    ns: Namespace,
    skb: Skb,
    icmp_type: int,
    code: int,
    reason: str,
    cause: str = "",
) -> None:
    """icmp_send: tell the source why its packet went no further (never about an ICMP error)."""
    pkt = skb.pkt
    if pkt.proto == ICMP and pkt.icmp is not None:
        return
    src = pkt.dst if ns.is_local(pkt.dst) else ns.iface_address(skb.ctx.in_iface or "", pkt.src)
    if src is None:
        src = ns.primary_address() or 0
    error = Packet(
        src=src,
        dst=pkt.src,
        proto=ICMP,
        icmp=IcmpError(icmp_type, code, pkt.tuple(), reporter=ns.name),
        conn_id=pkt.conn_id,
        label="ICMP",
        meta={"dir": 1 - pkt.meta.get("dir", 0), "cause": cause or "icmp", "reason": reason},
    )
    sim.later(0.0, local_out, sim, ns, error, related=skb if cause == "reject" else None)


def _tcp_reset(sim: Simulation, ns: Namespace, skb: Skb, reason: str) -> None:
    pkt = skb.pkt
    rst = Packet(
        src=pkt.dst,
        dst=pkt.src,
        proto=TCP,
        sport=pkt.dport,
        dport=pkt.sport,
        flags="RA",
        conn_id=pkt.conn_id,
        label="RST",
        meta={"dir": 1 - pkt.meta.get("dir", 0), "cause": "reject", "reason": reason},
    )
    sim.later(0.0, local_out, sim, ns, rst, related=skb)


def plain_skb(
    sim: Simulation, ns: Namespace, pkt: Packet, out_iface: str, in_iface: str | None
) -> Skb:
    """The skb :func:`local_out` (``in_iface`` None) or :func:`receive` (a forwarded packet)
    would have built for ``pkt`` in a namespace without netfilter: built only when a failure
    to send needs one (the ICMP error's source address, the sending socket)."""
    # The skb the hot path would have built: no hop of its own (unreachable_neighbour records
    # the failure), even if a recorder started watching the packet since.
    if in_iface is None:
        skb = _skb(sim, ns, pkt, _NO_VISIT, _OUTPUT, out_iface=out_iface)
        skb.local_origin = True
    else:
        skb = _skb(sim, ns, pkt, _NO_VISIT, _PREROUTING, in_iface=in_iface, out_iface=out_iface)
    return skb


def unreachable_neighbour(
    sim: Simulation, ns: Namespace, skb: Skb | None, pkt: Packet, next_hop: int, segment: str
) -> None:
    """No ARP answer for the next hop: Linux reports host unreachable to the sender."""
    reason = f"no ARP reply for {ip_str(next_hop)} on {segment}"
    visit = _visit(sim, ns, pkt)
    if skb is not None and not skb.local_origin:
        _icmp_error(sim, ns, skb, ICMP_DEST_UNREACH, ICMP_HOST_UNREACH, reason)
    elif skb is not None:
        sim.socket_error(ns.name, pkt, reason)
    _finish(sim, ns, skb, pkt, visit, "no-route", f"NO_ROUTE at {ns.name}: {reason}")
