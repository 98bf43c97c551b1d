"""`Simulation(world, seed)`: one object owns the clock, the randomness and the record.

It wraps a simpy Environment, one seeded ``random.Random`` (all decisions go through
``self.chooser``), the per-namespace dynamic state, CPU and link queues, and the optional
:class:`~k8snet_sim.sim.recorder.Recorder`. :meth:`fork` gives an independent copy that shares
the static world and copies only the namespaces' dynamic state (conntrack, sockets, queues) —
this is how every branch of a random choice is explored without rebuilding the world.

Example
-------
>>> from k8snet_sim.sim.world import World
>>> sim = Simulation(World(), seed=7)
>>> sim.later(0.5, lambda: None); sim.run(); sim.env.now
0.5
"""

from __future__ import annotations

import copy
import random
from collections import deque
from collections.abc import Callable
from typing import Any

import simpy

from k8snet_sim.net.addr import ip_str
from k8snet_sim.net.packet import UDP, Packet
from k8snet_sim.netfilter.conntrack import ConntrackTable
from k8snet_sim.netfilter.context import Chooser
from k8snet_sim.netfilter.hooks import Skb
from k8snet_sim.sim import datapath
from k8snet_sim.sim.choice import SeededChooser
from k8snet_sim.sim.costs import CostModel
from k8snet_sim.sim.namespace import Namespace, NsState
from k8snet_sim.sim.recorder import Recorder
from k8snet_sim.sim.sockets import SocketTable
from k8snet_sim.sim.world import World


class Simulation:
    """A run over a :class:`~k8snet_sim.sim.world.World`."""

    def __init__(self, world: World, *, seed: int = 0, chooser: Chooser | None = None,
                 costs: CostModel | None = None, start: float = 0.0) -> None:
        self.world = world
        self.seed = seed
        self.env = simpy.Environment(initial_time=start)
        self.rng = random.Random(seed)
        self.chooser: Chooser = chooser or SeededChooser(self.rng)
        self.costs = costs or world.costs
        self.recorder: Recorder | None = None
        self._states: dict[str, NsState] = {}
        self.link_drops: dict[str, int] = {}
        self._conn_seq = 0
        self.link_bytes: dict[str, int] = {}

    # ------------------------------------------------------------------ state

    def ns(self, name: str) -> Namespace:
        return self.world.namespaces[name]

    def state(self, name: str) -> NsState:
        st = self._states.get(name)
        if st is None:
            st = self._states[name] = self._new_state(name)
        return st

    def _new_state(self, name: str) -> NsState:
        ns = self.world.namespaces[name]
        st = NsState(conntrack=ConntrackTable(ns.conntrack_max))
        sockets = SocketTable()
        for listener in self.world.listeners.get(name, ()):
            sockets.listen(listener)
        st.sockets = sockets
        return st

    def _copy_state(self, st: NsState) -> NsState:
        sockets = SocketTable()
        sockets.listeners = st.sockets.listeners  # static configuration, shared
        sockets.conns = {k: copy.copy(v) for k, v in st.sockets.conns.items()}
        sockets._next_port = st.sockets._next_port
        return NsState(
            conntrack=st.conntrack.copy(), nf=st.nf.copy(), sockets=sockets,
            counters=dict(st.counters), apps=copy.deepcopy(st.apps),
        )

    def sockets_of(self, name: str) -> SocketTable:
        sockets: SocketTable = self.state(name).sockets
        return sockets

    def fork(self, *, chooser: Chooser | None = None, seed: int | None = None) -> Simulation:
        """An independent continuation of this simulation from its current time and state."""
        child = Simulation(self.world, seed=self.seed if seed is None else seed, chooser=chooser,
                           costs=self.costs, start=self.env.now)
        child.rng.setstate(self.rng.getstate())
        child._conn_seq = self._conn_seq
        # Namespaces this run has touched are copied now; untouched ones start fresh in the
        # child exactly as they would here.
        child._states = {name: self._copy_state(st) for name, st in self._states.items()}
        if chooser is None:
            child.chooser = SeededChooser(child.rng)
        return child

    def next_conn_id(self) -> int:
        """Identity of a new simulated connection (trace metadata; deterministic per run)."""
        self._conn_seq += 1
        return self._conn_seq

    # ------------------------------------------------------------------ time

    def later(self, delay: float, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Call ``fn(*args)`` after ``delay`` simulated seconds."""
        event = self.env.timeout(delay)
        event.callbacks.append(lambda _e: fn(*args, **kwargs))

    def run(self, until: float | simpy.Event | None = None) -> None:
        self.env.run(until=until)

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` of simulated time pass (timeouts expire, affinity lapses)."""
        self.env.run(until=self.env.now + seconds)

    def charge(self, ns: Namespace, cost: float) -> float:
        """Queue ``cost`` CPU seconds on the namespace's CPU owner (FIFO over its cores).
        Returns the delay until the work is done."""
        st = self.state(ns.cpu_owner)
        cores = st.cpu_free_at
        if not cores:
            owner = self.world.namespaces.get(ns.cpu_owner, ns)
            cores.extend([0.0] * max(1, owner.cores))
        now = self.env.now
        i = min(range(len(cores)), key=cores.__getitem__)
        end = max(now, cores[i]) + cost
        cores[i] = end
        st.cpu_busy_s += cost
        return end - now

    def count(self, ns: Namespace, what: str) -> None:
        counters = self.state(ns.name).counters
        counters[what] = counters.get(what, 0) + 1

    # ------------------------------------------------------------------ packets

    def send(self, ns_name: str, pkt: Packet) -> None:
        """A socket or kernel component of ``ns_name`` sends ``pkt``."""
        datapath.local_out(self, self.world.namespaces[ns_name], pkt)

    def transmit(self, ns: Namespace, iface_name: str, next_hop: int, pkt: Packet, *,
                 delay: float = 0.0, skb: Skb | None = None) -> None:
        """Put ``pkt`` on the wire of ``iface_name`` toward ``next_hop``."""
        iface = ns.interfaces[iface_name]
        if iface.kind == "vxlan":
            self._vxlan_encap(ns, iface_name, next_hop, pkt, delay)
            return
        if iface.segment is None:
            datapath.unreachable_neighbour(self, ns, skb, pkt, next_hop, iface_name)
            return
        seg = self.world.segments[iface.segment]
        peer = seg.resolve(next_hop)
        if peer is None:
            datapath.unreachable_neighbour(self, ns, skb, pkt, next_hop, seg.name)
            return
        if (seg.kind == "bridge" and seg.bridge_nf and seg.owner is not None
                and ns.name != seg.owner and peer[0] != seg.owner):
            owner = self.world.namespaces[seg.owner]
            if not datapath.bridge_netfilter(self, owner, seg.owner_iface or "cni0", pkt):
                return
        st = self.state(ns.name)
        key = iface_name
        now = self.env.now
        backlog = st.tx_backlog.get(key)
        if backlog is None:
            backlog = st.tx_backlog[key] = deque()
        while backlog and backlog[0] <= now:
            backlog.popleft()
        link = f"{ns.name}:{iface_name}"
        if len(backlog) >= seg.buffer_packets:
            self.link_drops[link] = self.link_drops.get(link, 0) + 1
            self.count(ns, "tx-queue-drop")
            return
        start = max(now + delay, st.tx_free_at.get(key, 0.0))
        depart = start + seg.serialization_s(pkt.length)
        st.tx_free_at[key] = depart
        backlog.append(depart)
        self.link_bytes[link] = self.link_bytes.get(link, 0) + pkt.length
        peer_ns = self.world.namespaces[peer[0]]
        self.later(depart + seg.latency_s - now, datapath.receive, self, peer_ns, peer[1], pkt)

    def _vxlan_encap(self, ns: Namespace, iface: str, next_hop: int, inner: Packet,
                     delay: float) -> None:
        vx = self.world.vxlans[ns.name]
        remote = vx.fdb.get(next_hop)
        if remote is None:
            datapath.unreachable_neighbour(self, ns, None, inner, next_hop, f"{iface} fdb")
            return
        # The outer UDP source port is a hash of the inner flow (udp_flow_src_port).
        sport = 32768 + hash((inner.src, inner.dst, inner.sport, inner.dport, inner.proto)) % 28232
        outer = Packet(src=vx.local_underlay, dst=remote, proto=UDP, sport=sport,
                       dport=datapath.VXLAN_PORT, length=inner.length + 50, payload=inner,
                       conn_id=inner.conn_id, label=f"VXLAN({inner.label})",
                       meta=dict(inner.meta))
        self.later(delay, datapath.local_out, self, ns, outer)

    # ------------------------------------------------------------------ sockets

    def _endpoint_for_sent(self, ns_name: str, pkt: Packet) -> Any:
        return self.sockets_of(ns_name).conns.get((pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport))

    def socket_error(self, ns_name: str, pkt: Packet, reason: str) -> None:
        """A packet this namespace sent could not leave it: tell its socket."""
        ep = self._endpoint_for_sent(ns_name, pkt)
        if ep is not None and ep.state != "CLOSED":
            self.sockets_of(ns_name).unregister(ep)
            ep.state, ep.error = "CLOSED", f"unreachable: {reason}"
            ep.app.on_closed(self, ep, ep.error)

    def icmp_to_socket(self, ns_name: str, pkt: Packet) -> str:
        """Deliver an ICMP error to the socket whose packet it quotes."""
        assert pkt.icmp is not None
        orig = pkt.icmp.original
        ep = self.sockets_of(ns_name).conns.get((orig.proto, orig.src, orig.sport, orig.dst, orig.dport))
        if ep is None:
            return f"ICMP error about {orig}: no such connection here, ignored"
        self.sockets_of(ns_name).unregister(ep)
        ep.state = "CLOSED"
        ep.error = f"icmp {pkt.icmp.type}/{pkt.icmp.code} from {ip_str(pkt.src)}"
        ep.meta["icmp"] = pkt
        ep.app.on_closed(self, ep, ep.error)
        return f"ICMP type {pkt.icmp.type} code {pkt.icmp.code} to socket: {ep.error}"
