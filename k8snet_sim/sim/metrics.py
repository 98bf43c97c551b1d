"""Measurements of a load run: what each exchange saw, and what the resources did meanwhile.

Collectors are plain records filled by the traffic generators (:mod:`k8snet_sim.sim.traffic`)
and snapshots of the simulation's counters (CPU seconds per owner and process, bytes and
serialization time per egress link, conntrack-full drops). A window's usage is the difference
of two snapshots, so warm-up traffic never leaks into the figures.

Example
-------
>>> log = TrafficLog("browse", "requests", window=(0.0, 1.0))
>>> log.add(Exchange(started=0.1, finished=0.15, status="ok", size=1300, endpoint="web-0"))
>>> log.add(Exchange(started=0.2, finished=0.4, status="timeout"))
>>> log.completed(), log.errors()
(1, {'timeout': 1})
>>> percentiles([0.05, 0.05, 0.2])["p50"]
0.05
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:
    from k8snet_sim.sim.simulation import Simulation

QUANTILES = (50, 90, 99)
K = TypeVar("K", bound=Hashable)


def percentiles(values: list[float], quantiles: tuple[int, ...] = QUANTILES) -> dict[str, float]:
    """``{"p50": …, "p90": …, "p99": …}`` by linear interpolation; empty input gives NaN-free
    zeros (there is nothing to report, and JSON has no NaN)."""
    if not values:
        return {f"p{q}": 0.0 for q in quantiles}
    found = np.percentile(np.asarray(values, dtype=float), quantiles)
    return {f"p{q}": float(v) for q, v in zip(quantiles, found, strict=True)}


@dataclass(slots=True)
class Exchange:
    """One request/response (or one bulk flow) as its client saw it.

    ``setup`` is connect() → established when the exchange opened a connection (None when it
    reused a keepalive connection); ``finished - started`` is its latency (bulk: the flow
    completion time). ``size`` counts application bytes moved (request + response, or the
    flow's bytes).
    """

    started: float
    finished: float | None = None
    status: str = "pending"  # ok | timeout | connect-timeout | refused | reset | unreachable |
    # closed | http-NNN | incomplete
    setup: float | None = None
    size: int = 0
    endpoint: str | None = None

    @property
    def latency(self) -> float | None:
        return None if self.finished is None else self.finished - self.started


@dataclass
class TrafficLog:
    """Everything one traffic entry produced; only exchanges started inside ``window`` count."""

    name: str
    kind: str
    window: tuple[float, float]
    exchanges: list[Exchange] = field(default_factory=list)
    bins: dict[int, float] = field(default_factory=dict)  # bytes delivered per time bin
    bin_s: float = 0.01
    origin: float = 0.0

    def add(self, exchange: Exchange) -> None:
        self.exchanges.append(exchange)

    def delivered(self, t: float, nbytes: float) -> None:
        """``nbytes`` of application data arrived at ``t`` (for throughput over time)."""
        k = int((t - self.origin) / self.bin_s)
        self.bins[k] = self.bins.get(k, 0.0) + nbytes

    def measured(self) -> list[Exchange]:
        lo, hi = self.window
        return [e for e in self.exchanges if lo <= e.started < hi]

    def completed(self) -> int:
        return sum(1 for e in self.measured() if e.status == "ok")

    def errors(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.measured():
            if e.status not in ("ok", "pending"):
                out[e.status] = out.get(e.status, 0) + 1
        return dict(sorted(out.items()))

    def latencies(self) -> list[float]:
        return [
            e.finished - e.started
            for e in self.measured()
            if e.status == "ok" and e.finished is not None
        ]

    def setups(self) -> list[float]:
        return [e.setup for e in self.measured() if e.setup is not None]

    def per_endpoint(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.measured():
            if e.status == "ok" and e.endpoint:
                out[e.endpoint] = out.get(e.endpoint, 0) + 1
        return dict(sorted(out.items()))

    def series(self) -> list[tuple[float, float]]:
        """``(bin start, bits per second)`` over the whole run, empty bins included."""
        if not self.bins:
            return []
        last = max(self.bins)
        return [
            (self.origin + k * self.bin_s, self.bins.get(k, 0.0) * 8 / self.bin_s)
            for k in range(last + 1)
        ]


@dataclass(frozen=True)
class Snapshot:
    """Cumulative counters of a simulation at one instant."""

    t: float
    cpu: dict[str, float]  # CPU owner → busy seconds (all processes)
    cpu_process: dict[tuple[str, str], float]  # (owner, process) → busy seconds, non-kernel
    link_busy: dict[str, float]  # link → seconds of serialization booked
    link_bytes: dict[str, int]
    link_drops: dict[str, int]
    conntrack_drops: dict[str, int]  # namespace → new connections refused (table full)

    @classmethod
    def take(cls, sim: Simulation) -> Snapshot:
        cpu: dict[str, float] = {}
        conntrack: dict[str, int] = {}
        for name, ns in sim.world.namespaces.items():
            st = sim.peek_state(name)
            if st is None:
                continue
            if ns.cpu_owner == name and st.cpu_busy_s:
                cpu[name] = st.cpu_busy_s
            if st.conntrack.drops:
                conntrack[name] = st.conntrack.drops
        queues = sim.tx_queues.values()
        return cls(
            t=sim.env.now,
            cpu=cpu,
            cpu_process=dict(sim.cpu_process),
            link_busy={q.name: q.busy_s for q in queues},
            link_bytes={q.name: q.bytes for q in queues},
            link_drops={q.name: q.drops for q in queues},
            conntrack_drops=conntrack,
        )


def delta(before: dict[K, float], after: dict[K, float]) -> dict[K, float]:
    """``after - before`` per key (keys only in ``after`` count from zero)."""
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def delta_int(before: dict[K, int], after: dict[K, int]) -> dict[K, int]:
    return {k: v - before.get(k, 0) for k, v in after.items()}
