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
from heapq import heapreplace
from typing import Any

import simpy

from k8snet_sim.net.addr import ip_str
from k8snet_sim.net.link import ETHERNET_OVERHEAD_BYTES, Segment
from k8snet_sim.net.packet import HEADER_BYTES, UDP, Packet
from k8snet_sim.netfilter.conntrack import ConntrackTable
from k8snet_sim.netfilter.context import Chooser
from k8snet_sim.netfilter.hooks import Skb
from k8snet_sim.sim import datapath
from k8snet_sim.sim.choice import SeededChooser
from k8snet_sim.sim.clock import Clock
from k8snet_sim.sim.costs import CostModel
from k8snet_sim.sim.namespace import Namespace, NsState
from k8snet_sim.sim.recorder import Recorder
from k8snet_sim.sim.sockets import SocketTable
from k8snet_sim.sim.world import World

KERNEL = "kernel"  # the process charged for packet processing (softirq)
FRAME_MTU = 1500  # a segment train longer than this leaves the interface as several frames


class TxQueue:
    """The egress FIFO of one interface and what it carried.

    ``backlog`` holds ``(departure time, frames)`` of what is still queued: a segment train
    (one simulated packet standing for several MTU-sized frames, like a GSO super-packet)
    occupies as many buffer slots as it has frames.
    """

    __slots__ = (
        "backlog",
        "bandwidth_bps",
        "busy_s",
        "bytes",
        "drops",
        "frames",
        "free_at",
        "name",
        "packets",
    )

    def __init__(self, name: str, bandwidth_bps: float) -> None:
        self.name = name
        self.bandwidth_bps = bandwidth_bps
        self.free_at = 0.0
        self.backlog: deque[tuple[float, int]] = deque()
        self.frames = 0
        self.bytes = 0
        self.packets = 0
        self.busy_s = 0.0  # serialization time booked on the wire
        self.drops = 0  # tail drops: the buffer was full


class _States(dict[str, NsState]):
    """The dynamic state of each namespace by name, made when first asked for with
    ``states[name]``; ``get`` and ``in`` never make one.

    >>> states = _States(lambda name: NsState(conntrack=ConntrackTable(8)))
    >>> "pod/a" in states, states["pod/a"].counters, "pod/a" in states
    (False, {}, True)
    """

    __slots__ = ("_make",)

    def __init__(self, make: Callable[[str], NsState]) -> None:
        super().__init__()
        self._make = make

    def __missing__(self, name: str) -> NsState:
        st = self[name] = self._make(name)
        return st


class _Port:
    """What sending on one interface of one namespace needs, looked up once per simulation:
    its segment, its egress queue (created when first used, as :meth:`Simulation.tx_queue`
    does) and the neighbours ARP found on it, each with the bridge owner whose netfilter a
    bridged frame crosses. Segment wiring is static while a simulation runs; ARP claims bump
    ``Segment.generation``, which forgets the neighbours found before."""

    __slots__ = ("generation", "neighbours", "queue", "segment", "vxlan")

    def __init__(self, world: World, ns: Namespace, iface_name: str) -> None:
        iface = ns.interfaces[iface_name]
        self.vxlan = iface.kind == "vxlan"
        self.segment: Segment | None = None
        if not self.vxlan and iface.segment is not None:
            self.segment = world.segments[iface.segment]
        self.queue: TxQueue | None = None
        self.neighbours: dict[int, tuple[Namespace, str, Namespace | None]] = {}
        self.generation = -1

    def resolve(
        self, world: World, ns: Namespace, next_hop: int
    ) -> tuple[Namespace, str, Namespace | None] | None:
        """ARP for ``next_hop``: the peer namespace and interface, and the bridge owner when
        the frame is bridged between two ports of a node's bridge (br_netfilter)."""
        seg = self.segment
        assert seg is not None
        if self.generation != seg.generation:
            self.neighbours.clear()
            self.generation = seg.generation
        peer = seg.resolve(next_hop)
        if peer is None:
            return None
        owner = None
        if (
            seg.kind == "bridge"
            and seg.bridge_nf
            and seg.owner is not None
            and ns.name != seg.owner
            and peer[0] != seg.owner
        ):
            owner = world.namespaces[seg.owner]
        found = self.neighbours[next_hop] = (world.namespaces[peer[0]], peer[1], owner)
        return found


def frames_of(pkt: Packet) -> int:
    """How many MTU-sized frames carry ``pkt`` on the wire (1 for ordinary packets)."""
    length = pkt.length
    if length <= FRAME_MTU:
        return 1
    header = HEADER_BYTES.get(pkt.proto, 28)
    per_frame = FRAME_MTU - header
    return -(-(length - header) // per_frame)


class Simulation:
    """A run over a :class:`~k8snet_sim.sim.world.World`."""

    def __init__(
        self,
        world: World,
        *,
        seed: int = 0,
        chooser: Chooser | None = None,
        costs: CostModel | None = None,
        start: float = 0.0,
    ) -> None:
        self.world = world
        self.seed = seed
        self.env = Clock(initial_time=start)
        self.rng = random.Random(seed)
        self.chooser: Chooser = chooser or SeededChooser(self.rng)
        self.costs = costs or world.costs
        self.recorder: Recorder | None = None
        self._states = _States(self._new_state)
        self._conn_seq = 0
        self.tx_queues: dict[tuple[str, str], TxQueue] = {}
        self._ports: dict[tuple[Namespace, str], _Port] = {}
        # CPU seconds charged to processes other than the kernel, by (CPU owner, process).
        self.cpu_process: dict[tuple[str, str], float] = {}

    @property
    def link_drops(self) -> dict[str, int]:
        """Tail drops per egress link (``ns:iface``)."""
        return {q.name: q.drops for q in self.tx_queues.values() if q.drops}

    @property
    def link_bytes(self) -> dict[str, int]:
        """Bytes sent per egress link (``ns:iface``)."""
        return {q.name: q.bytes for q in self.tx_queues.values()}

    # ------------------------------------------------------------------ state

    def ns(self, name: str) -> Namespace:
        return self.world.namespaces[name]

    def state(self, name: str) -> NsState:
        return self._states[name]

    def peek_state(self, name: str) -> NsState | None:
        """The namespace's dynamic state if the run has touched it (never creates it)."""
        return self._states.get(name)

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
            conntrack=st.conntrack.copy(),
            nf=st.nf.copy(),
            sockets=sockets,
            counters=dict(st.counters),
            apps=copy.deepcopy(st.apps),
        )

    def sockets_of(self, name: str) -> SocketTable:
        sockets: SocketTable = self.state(name).sockets
        return sockets

    def fork(self, *, chooser: Chooser | None = None, seed: int | None = None) -> Simulation:
        """An independent continuation of this simulation from its current time and state."""
        child = Simulation(
            self.world,
            seed=self.seed if seed is None else seed,
            chooser=chooser,
            costs=self.costs,
            start=self.env.now,
        )
        child.rng.setstate(self.rng.getstate())
        child._conn_seq = self._conn_seq
        # Namespaces this run has touched are copied now; untouched ones start fresh in the
        # child exactly as they would here.
        child._states.update((name, self._copy_state(st)) for name, st in self._states.items())
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
        if kwargs:
            event = self.env.timeout(delay)
            event.callbacks.append(lambda _e: fn(*args, **kwargs))
            return
        if delay < 0:
            raise ValueError(f"Negative delay {delay}")
        self.env.call_later(delay, fn, args)

    def timer(self, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        """Like :meth:`later`, for a timer whose length many share (retransmission and
        response timeouts): the same order of events, kept pending more cheaply."""
        self.env.call_timer(delay, fn, args)

    def run(self, until: float | simpy.Event | None = None) -> None:
        self.env.run(until=until)

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` (> 0) of simulated time pass (timeouts expire, affinity lapses)."""
        if not seconds > 0:
            raise ValueError(f"advance({seconds!r}): simulated time only moves forward; pass > 0")
        self.env.run(until=self.env.now + seconds)

    def charge(self, ns: Namespace, cost: float, process: str = KERNEL) -> float:
        """Queue ``cost`` CPU seconds on the namespace's CPU owner (FIFO over its cores).
        Returns the delay until the work is done. ``process`` names who does the work
        (``kernel`` for packet processing, ``kube-proxy``, ``ingress``, ``app``) for the
        per-process CPU account."""
        owner_name = ns.cpu_owner
        st = self._states[owner_name]
        cores = st.cpu_free_at
        if not cores:
            owner = self.world.namespaces.get(owner_name, ns)
            cores.extend([0.0] * max(1, owner.cores))
        now = self.env._now
        # The least busy core takes the work: a FIFO run queue per core. The cores are a heap
        # of the times they fall idle (which core is which does not matter, only when each
        # is free), so the least busy is the first. (datapath._charge inlines this for the
        # kernel: change both together.)
        free_at = cores[0]
        end = (now if now >= free_at else free_at) + cost  # max(now, free_at) + cost
        heapreplace(cores, end)
        st.cpu_busy_s += cost
        if process is not KERNEL:
            key = (owner_name, process)
            self.cpu_process[key] = self.cpu_process.get(key, 0.0) + cost
        return end - now

    def count(self, ns: Namespace, what: str) -> None:
        counters = self.state(ns.name).counters
        counters[what] = counters.get(what, 0) + 1

    # ------------------------------------------------------------------ packets

    def send(self, ns_name: str, pkt: Packet) -> None:
        """A socket or kernel component of ``ns_name`` sends ``pkt``."""
        datapath.local_out(self, self.world.namespaces[ns_name], pkt)

    def transmit(
        self,
        ns: Namespace,
        iface_name: str,
        next_hop: int,
        pkt: Packet,
        delay: float = 0.0,
        skb: Skb | None = None,
        in_iface: str | None = None,
    ) -> None:
        """Put ``pkt`` on the wire of ``iface_name`` toward ``next_hop`` once the CPU work of
        ``delay`` seconds is done: a packet joins the egress queue when its processing ends,
        so a first packet walking thousands of rules does not hold up packets other cores
        finish earlier. ``skb`` and ``in_iface`` are as for :meth:`_enqueue`."""
        if delay > 0.0:
            self.env.call_later(
                delay, self._enqueue, (ns, iface_name, next_hop, pkt, skb, in_iface)
            )
        else:
            self._enqueue(ns, iface_name, next_hop, pkt, skb, in_iface)

    def _enqueue(
        self,
        ns: Namespace,
        iface_name: str,
        next_hop: int,
        pkt: Packet,
        skb: Skb | None,
        in_iface: str | None = None,
    ) -> None:
        """Put ``pkt`` in the egress queue of ``iface_name`` toward ``next_hop``. ``skb`` is
        None for a packet of a namespace without netfilter, which did not build one:
        ``in_iface`` then says where a forwarded packet came in (None: sent from here)."""
        port = self._ports.get((ns, iface_name))
        if port is None:
            port = self._ports[(ns, iface_name)] = _Port(self.world, ns, iface_name)
        seg = port.segment
        if seg is None:  # not on a segment: a VXLAN device, or an interface left unplugged
            if port.vxlan:
                self._vxlan_encap(ns, iface_name, next_hop, pkt, 0.0)
            else:
                if skb is None:
                    skb = datapath.plain_skb(self, ns, pkt, iface_name, in_iface)
                datapath.unreachable_neighbour(self, ns, skb, pkt, next_hop, iface_name)
            return
        neighbour = port.neighbours.get(next_hop) if port.generation == seg.generation else None
        if neighbour is None:
            neighbour = port.resolve(self.world, ns, next_hop)
            if neighbour is None:
                if skb is None:
                    skb = datapath.plain_skb(self, ns, pkt, iface_name, in_iface)
                datapath.unreachable_neighbour(self, ns, skb, pkt, next_hop, seg.name)
                return
        peer_ns, peer_iface, bridge_owner = neighbour
        if bridge_owner is not None and not datapath.bridge_netfilter(
            self, bridge_owner, seg.owner_iface or "cni0", pkt
        ):
            return
        queue = port.queue
        if queue is None:
            queue = port.queue = self.tx_queues.get((ns.name, iface_name)) or self.tx_queue(
                ns.name, iface_name
            )
        now = self.env._now
        backlog = queue.backlog
        free_at = queue.free_at
        if free_at <= now:
            # The wire is idle: everything queued has left (departures are in order and the
            # last one is ``free_at``), which the loop below would find one by one.
            if backlog:
                backlog.clear()
            queued = 0
        else:
            queued = queue.frames
            while backlog and backlog[0][0] <= now:
                queued -= backlog.popleft()[1]
        length = pkt.length
        frames = 1 if length <= FRAME_MTU else frames_of(pkt)
        if queued and queued + frames > seg.buffer_packets:
            queue.frames = queued
            queue.drops += 1
            self.count(ns, "tx-queue-drop")
            return
        # A segment train pays one header and one Ethernet framing per frame it stands for.
        wire_length = (
            length
            if frames == 1
            else (
                length + (frames - 1) * (HEADER_BYTES.get(pkt.proto, 28) + ETHERNET_OVERHEAD_BYTES)
            )
        )
        start = now if now >= free_at else free_at  # max(now, free_at), the same float
        serialization = (wire_length + ETHERNET_OVERHEAD_BYTES) * 8 / seg.bandwidth_bps
        depart = start + serialization
        queue.free_at = depart
        backlog.append((depart, frames))
        queue.frames = queued + frames
        queue.bytes += length
        queue.packets += 1
        queue.busy_s += serialization
        probe = pkt.probe
        if probe is not None:
            probe.on_link(queue, wire_length + ETHERNET_OVERHEAD_BYTES)
        self.env.call_later(
            depart + seg.latency_s - now, datapath.receive, (self, peer_ns, peer_iface, pkt)
        )

    def tx_queue(self, ns_name: str, iface_name: str) -> TxQueue:
        """The egress queue of ``iface_name`` in ``ns_name`` (created on first use)."""
        key = (ns_name, iface_name)
        queue = self.tx_queues.get(key)
        if queue is None:
            iface = self.world.namespaces[ns_name].interfaces[iface_name]
            bandwidth = self.world.segments[iface.segment].bandwidth_bps if iface.segment else 0.0
            queue = self.tx_queues[key] = TxQueue(f"{ns_name}:{iface_name}", bandwidth)
        return queue

    def _vxlan_encap(
        self, ns: Namespace, iface: str, next_hop: int, inner: Packet, delay: float
    ) -> None:
        vx = self.world.vxlans[ns.name]
        remote = vx.fdb.get(next_hop)
        if remote is None:
            datapath.unreachable_neighbour(self, ns, None, inner, next_hop, f"{iface} fdb")
            return
        # The outer UDP source port is a hash of the inner flow (udp_flow_src_port).
        sport = 32768 + hash((inner.src, inner.dst, inner.sport, inner.dport, inner.proto)) % 28232
        outer = Packet(
            src=vx.local_underlay,
            dst=remote,
            proto=UDP,
            sport=sport,
            dport=datapath.VXLAN_PORT,
            length=inner.length + 50,
            payload=inner,
            conn_id=inner.conn_id,
            label=f"VXLAN({inner.label})",
            meta=dict(inner.meta),
            probe=inner.probe,
        )
        self.later(delay, datapath.local_out, self, ns, outer)

    # ------------------------------------------------------------------ sockets

    def _endpoint_for_sent(self, ns_name: str, pkt: Packet) -> Any:
        return self.sockets_of(ns_name).conns.get(
            (pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport)
        )

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
        ep = self.sockets_of(ns_name).conns.get(
            (orig.proto, orig.src, orig.sport, orig.dst, orig.dport)
        )
        if ep is None:
            return f"ICMP error about {orig}: no such connection here, ignored"
        self.sockets_of(ns_name).unregister(ep)
        ep.state = "CLOSED"
        ep.error = f"icmp {pkt.icmp.type}/{pkt.icmp.code} from {ip_str(pkt.src)}"
        ep.meta["icmp"] = pkt
        ep.app.on_closed(self, ep, ep.error)
        return f"ICMP type {pkt.icmp.type} code {pkt.icmp.code} to socket: {ep.error}"
