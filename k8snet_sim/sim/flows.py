"""Flow-level model of bulk transfers: max-min fair rates over the resources a real probe crossed.

Moving a bulk transfer packet by packet costs one simulated event per packet per namespace, far
too many for gigabytes (performance.md §4). A bulk flow therefore opens a real connection
through the datapath (handshake, conntrack, NAT, endpoint choice) and sends one real data
train with a :class:`FlowPath` probe riding on it and on its ACK. The probe records what that
train cost: CPU seconds per (CPU owner, process) — every namespace visit, the userspace proxy's
relay — and wire bytes per egress link. From then on the flow is *fluid*: the
:class:`FluidNetwork` gives every active flow its max-min fair rate (progressive filling) under

- each link: the wire time its flows book per second ≤ 1;
- each CPU owner: the CPU seconds its flows need per second ≤ its cores, minus what the packet
  traffic used in the last epoch;
- each flow on each CPU owner: ≤ 1 core — one flow's work on a machine is serialized (RSS
  pins it to a core; a proxy's copies wait for the same bytes);
- each flow: ≤ TCP window ÷ RTT.

Every epoch the fluid flows book their CPU work and wire time on the same per-core run queues
and egress queues the packets use, so request traffic sharing a node or a link with a bulk
transfer waits behind it. docs/fidelity.md ("Throughput model") compares this model with
packet-level TCP on a shared bottleneck.

Example
-------
>>> usage = [{"lan": 1.0}, {"lan": 1.0}, {"lan": 1.0, "cpu": 2.0}]
>>> [round(r, 3) for r in max_min_rates(usage, [10.0, 0.1, 10.0], {"lan": 1.0, "cpu": 0.5})]
[0.65, 0.1, 0.25]
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

from k8snet_sim.sim.simulation import KERNEL, TxQueue

if TYPE_CHECKING:
    from k8snet_sim.sim.namespace import Namespace
    from k8snet_sim.sim.simulation import Simulation

R = TypeVar("R", bound=Hashable)

MIN_SHARE = 0.05  # fluid flows keep at least this share of a resource the packets crowd
Resource = tuple[str, str]  # ("cpu", owner namespace) or ("link", "ns:iface")


class FlowPath:
    """What one probe train (and the ACK it caused) cost on its way through the datapath."""

    def __init__(self, size: int) -> None:
        self.size = size  # application bytes of the probe train
        self.cpu: dict[tuple[str, str], float] = {}  # (CPU owner, process) → CPU seconds
        self.links: dict[str, tuple[TxQueue, float]] = {}  # link → (queue, wire bytes)
        self.visits: list[str] = []  # namespaces in the order the probe's packets met them
        self.receivers: list[str] = []  # namespaces whose sockets acknowledged the train
        # Legs of the train not yet acknowledged: the sender's, plus one per proxy relaying it.
        self.outstanding = 0
        self.complete = False
        self._on_complete: Callable[[FlowPath], None] | None = None

    def sent(self, on_complete: Callable[[FlowPath], None]) -> None:
        """The sender hands the probe train to its socket; ``on_complete`` runs once every leg
        of it has been acknowledged."""
        self.outstanding += 1
        self._on_complete = on_complete

    def on_acked(self) -> None:
        self.outstanding -= 1
        if self.outstanding <= 0 and not self.complete:
            self.complete = True
            if self._on_complete is not None:
                self._on_complete(self)

    def on_cpu(self, ns: Namespace, cost: float, per_byte: float, process: str = KERNEL) -> None:
        key = (ns.cpu_owner, process)
        self.cpu[key] = self.cpu.get(key, 0.0) + cost
        self.visits.append(ns.name)

    def on_link(self, queue: TxQueue, wire_bytes: float) -> None:
        previous = self.links.get(queue.name)
        self.links[queue.name] = (queue, wire_bytes + (previous[1] if previous else 0.0))

    def on_receive(self, ns_name: str) -> None:
        self.receivers.append(ns_name)

    @property
    def receiver(self) -> str | None:
        """The namespace the data finally reached (past any proxy)."""
        return self.receivers[-1] if self.receivers else None

    def serialization_s(self) -> float:
        """Seconds the probe's packets spent being serialized, summed over the links."""
        return sum(wire * 8 / q.bandwidth_bps for q, wire in self.links.values() if q.bandwidth_bps)

    def usage_per_byte(self) -> tuple[dict[Resource, float], dict[tuple[str, str], float]]:
        """Shared-resource use per byte moved — ``{("cpu", owner): s, ("link", name): s}``
        (seconds of CPU or of wire per byte) — and CPU seconds per byte by (owner, process)."""
        usage: dict[Resource, float] = {}
        by_process = {key: cost / self.size for key, cost in self.cpu.items()}
        for (owner, _), per_byte in by_process.items():
            usage[("cpu", owner)] = usage.get(("cpu", owner), 0.0) + per_byte
        for name, (queue, wire) in self.links.items():
            if queue.bandwidth_bps > 0:
                usage[("link", name)] = wire * 8 / queue.bandwidth_bps / self.size
        return usage, by_process


def max_min_rates(
    usage: Sequence[Mapping[R, float]], caps: Sequence[float], capacity: Mapping[R, float]
) -> list[float]:
    """Max-min fair rates by progressive filling.

    Flow ``i`` uses ``usage[i][r]`` units of resource ``r`` per unit of rate and may not exceed
    ``caps[i]``; resource ``r`` offers ``capacity[r]`` units. All unfrozen flows grow together
    until a resource fills (its flows freeze) or a flow reaches its own cap.
    """
    n = len(usage)
    rates = [0.0] * n
    active = {i for i in range(n) if caps[i] > 0}
    left = dict(capacity)
    while active:
        load: dict[R, float] = {}
        for i in active:
            for r, u in usage[i].items():
                if u > 0 and r in left:
                    load[r] = load.get(r, 0.0) + u
        step = min(caps[i] - rates[i] for i in active)
        for r, total in load.items():
            step = min(step, max(left[r], 0.0) / total)
        for i in active:
            rates[i] += step
        for r, total in load.items():
            left[r] -= step * total
        full = {r for r in load if left[r] <= capacity[r] * 1e-9}
        active = {
            i
            for i in active
            if rates[i] < caps[i] * (1 - 1e-9) and not any(r in full for r in usage[i])
        }
    return rates


class FluidFlow:
    """One bulk flow in its fluid phase."""

    def __init__(
        self,
        path: FlowPath,
        remaining: float,
        window_cap: float,
        on_progress: Callable[[float, float], None],
        on_done: Callable[[FluidFlow], None],
    ) -> None:
        self.path = path
        self.remaining = remaining
        self.usage, self.by_process = path.usage_per_byte()
        # One flow's work on one machine is serialized onto one core (RSS pins the flow; the
        # proxy's copies wait for the same data), so each CPU owner caps it at 1 core.
        own = [1.0 / u for (kind, _), u in self.usage.items() if kind == "cpu" and u > 0]
        self.cap = min([window_cap, *own])
        # What one byte books on each link: wire seconds, and bytes for the link's counters.
        self.wire = [
            (name, queue, self.usage[("link", name)], wire / path.size)
            for name, (queue, wire) in path.links.items()
            if ("link", name) in self.usage
        ]
        self.rate = 0.0
        self.on_progress = on_progress
        self.on_done = on_done


class FluidNetwork:
    """The active fluid flows of a simulation, their rates, and their bookings on resources."""

    def __init__(self, sim: Simulation, *, epoch: float = 1e-3) -> None:
        self.sim = sim
        self.epoch = epoch
        self.flows: list[FluidFlow] = []
        self._last = sim.env.now
        self._token = 0
        self._seen_cpu: dict[str, float] = {}  # owner → busy seconds at the last recompute
        self._seen_link: dict[str, float] = {}  # link → busy seconds at the last recompute
        self._own_cpu: dict[str, float] = {}  # what the fluid flows booked since then
        self._own_link: dict[str, float] = {}
        self._background: dict[Resource, float] = {}  # resource → packet traffic's use per second
        self._measured_at = sim.env.now
        self.rate_changes = 0

    def add(self, flow: FluidFlow) -> None:
        self._advance()
        self.flows.append(flow)
        self._reschedule()

    def remove(self, flow: FluidFlow) -> None:
        """Stop ``flow`` now (the run's end cut it short)."""
        if flow in self.flows:
            self._advance()
            self.flows.remove(flow)
            self._reschedule()

    # -- time --------------------------------------------------------------------------------

    def _advance(self) -> None:
        """Move every flow forward at its current rate, booking its CPU and wire time."""
        now = self.sim.env.now
        dt = now - self._last
        self._last = now
        if dt <= 0:
            return
        sim = self.sim
        for flow in self.flows:
            moved = min(flow.rate * dt, flow.remaining)
            if moved <= 0:
                continue
            flow.remaining -= moved
            flow.on_progress(now, moved)
            for (owner, process), per_byte in flow.by_process.items():
                work = per_byte * moved
                sim.charge(sim.ns(owner), work, KERNEL if process == KERNEL else process)
                self._own_cpu[owner] = self._own_cpu.get(owner, 0.0) + work
            for name, queue, per_byte, share in flow.wire:
                busy = per_byte * moved
                queue.free_at = max(now, queue.free_at) + busy
                queue.busy_s += busy
                queue.bytes += int(moved * share)
                self._own_link[name] = self._own_link.get(name, 0.0) + busy

    def _capacity(self) -> dict[Resource, float]:
        """What each resource offers the fluid flows: its size minus what the packet traffic
        used since the last measurement (measured over at least half an epoch, not predicted)."""
        sim = self.sim
        now = sim.env.now
        span = now - self._measured_at
        measure = span >= self.epoch / 2
        capacity: dict[Resource, float] = {}
        for flow in self.flows:
            for key in flow.usage:
                if key in capacity:
                    continue
                kind, name = key
                if kind == "cpu":
                    size = float(max(1, sim.ns(name).cores))
                    state = sim.peek_state(name)
                    busy = state.cpu_busy_s if state is not None else 0.0
                    seen, own = self._seen_cpu, self._own_cpu
                else:
                    size = 1.0
                    busy = flow.path.links[name][0].busy_s
                    seen, own = self._seen_link, self._own_link
                if measure or name not in seen:
                    used = busy - seen.get(name, busy) - own.get(name, 0.0)
                    self._background[key] = max(used, 0.0) / span if measure else 0.0
                    seen[name] = busy
                capacity[key] = max(size * MIN_SHARE, size - self._background.get(key, 0.0))
        if measure:
            self._measured_at = now
            self._own_cpu.clear()
            self._own_link.clear()
        return capacity

    def _reschedule(self) -> None:
        self._token += 1
        if not self.flows:
            return
        rates = max_min_rates(
            [f.usage for f in self.flows], [f.cap for f in self.flows], self._capacity()
        )
        for flow, rate in zip(self.flows, rates, strict=True):
            if rate != flow.rate:
                self.rate_changes += 1
            flow.rate = rate
        wake = self.epoch
        for flow in self.flows:
            if flow.rate > 0:
                wake = min(wake, flow.remaining / flow.rate)
        self.sim.later(max(wake, 0.0), self._wake, self._token)

    def _wake(self, token: int) -> None:
        if token != self._token:
            return  # a flow came or went since: a newer wake-up is scheduled
        self._advance()
        done = [f for f in self.flows if f.remaining <= 0.5]
        for flow in done:
            self.flows.remove(flow)
        self._reschedule()
        for flow in done:
            flow.on_done(flow)
