"""Which connections to try, how many times, and what the kernel answered.

A :class:`Probe` is one cell: a source reference and a target reference, from the scenario's
``expect:`` list or from the cells of ``k8snet-sim reach`` (every pod, node, host and router ×
every Service frontend). :func:`attempt_plan` sizes the number of attempts so that every
endpoint the simulator says is possible gets a fair chance to show up (up to 12 × n, stopping
early once all were seen). :class:`KernelResult` reads the attempts the way the simulator's
verdicts read: reachable / partial / unreachable, the endpoints that answered and the source
address each backend saw.

Example
-------
>>> plan = attempt_plan([{"ip": "10.0.0.2", "port": 80, "reachable": True},
...                      {"ip": "10.0.0.3", "port": 80, "reachable": False}])
>>> plan.min, plan.max, plan.batch, plan.want, plan.want_failure, plan.give_up
(4, 24, 4, ('10.0.0.2:80',), True, 24)
>>> r = KernelResult((
...     {"ok": True, "pod": "default/web-0", "peer": "10.0.0.9:4000", "address": "10.0.0.2:80"},
...     {"ok": False, "error": "TIMEOUT"}))
>>> r.verdict, sorted(r.endpoints), r.source_seen
('partial', ['default/web-0'], {'default/web-0': ('10.0.0.9',)})
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from k8snet_sim.cluster.model import ClusterState

PER_ENDPOINT_ATTEMPTS = 12  # a missed endpoint: n·(1-1/n)^(12n) ≈ n·e^-12
MIN_PER_ENDPOINT = 2
MAX_ATTEMPTS = 64
PROBE_TIMEOUT_S = 2.0
MAX_BATCH = 8


@dataclass(frozen=True)
class Probe:
    """One cell: a connection from ``source`` to ``target`` (the references users write)."""

    source: str
    target: str
    origin: str  # "expect[2]" or "reach"

    @property
    def cell(self) -> str:
        return f"{self.source} → {self.target}"


@dataclass(frozen=True)
class AttemptPlan:
    """How many attempts a probe makes (see ``probe_client.py``)."""

    min: int
    max: int
    batch: int
    want: tuple[str, ...]  # "ip:port" of endpoints expected to answer
    want_failure: bool
    give_up: int = MAX_ATTEMPTS  # stop after this many attempts if none answered
    stop_on_failure: bool = False  # one failure settles it (the simulator expects none)
    timeout: float = PROBE_TIMEOUT_S

    def spec(self, ip: str, port: int, proto: str) -> dict[str, Any]:
        return {
            "ip": ip,
            "port": port,
            "proto": proto,
            "min": self.min,
            "max": self.max,
            "batch": self.batch,
            "timeout": self.timeout,
            "want": list(self.want),
            "wantFailure": self.want_failure,
            "giveUp": self.give_up,
            "stopOnFailure": self.stop_on_failure,
        }

    def budget_s(self) -> float:
        """An upper bound on the probe's wall time (each attempt: connect + read timeouts)."""
        batches = -(-self.max // self.batch)
        return batches * (2 * self.timeout + 1.0) + 10.0


def attempt_plan(
    rows: list[dict[str, Any]] | None, *, endpoints: tuple[str, ...] = ()
) -> AttemptPlan:
    """Attempts for a cell whose possible outcomes are ``rows`` (the simulator's
    ``possibleEndpoints``), or — without the simulator — whose candidate backends are
    ``endpoints`` ("ip:port").

    With the simulator's rows, a cell it calls (partly) reachable is tried up to 12 × n times
    until every endpoint it names has answered; a cell it calls unreachable stops after 2 × n
    failures. Without them, a cell stops once every candidate answered, or after 4 × n
    attempts if none did."""
    if rows:
        n = len(rows)
        want = tuple(
            sorted(
                f"{r['ip']}:{r['port']}"
                for r in rows
                if r.get("reachable") and r.get("ip") is not None
            )
        )
        want_failure = any(not r.get("reachable") for r in rows)
    else:
        n, want, want_failure = max(1, len(endpoints)), tuple(sorted(endpoints)), False
    most = min(PER_ENDPOINT_ATTEMPTS * n, MAX_ATTEMPTS)
    least = min(MIN_PER_ENDPOINT * n, most)
    give_up = (most if want else least) if rows else min(4 * n, most)
    # Attempts of a batch run concurrently: an unanswered batch costs one timeout.
    batch = min(least if rows else give_up, MAX_BATCH)
    settled_by_a_failure = bool(rows) and not want_failure  # the simulator says "all answer"
    return AttemptPlan(least, most, batch, want, want_failure, give_up, settled_by_a_failure)


@dataclass(frozen=True)
class KernelResult:
    """The attempts of one probe on the real kernel, read like a simulator verdict."""

    attempts: tuple[dict[str, Any], ...]
    skipped: str | None = None  # why the cell was not probed
    affinity: bool = False  # ClientIP affinity: attempts come in rounds (see Emulation.probe)

    @property
    def verdict(self) -> str:
        ok = sum(1 for a in self.attempts if a.get("ok"))
        if self.skipped or not self.attempts:
            return "skipped"
        return "reachable" if ok == len(self.attempts) else "unreachable" if ok == 0 else "partial"

    @property
    def endpoints(self) -> frozenset[str]:
        return frozenset(_label(a) for a in self.attempts if a.get("ok"))

    @property
    def source_seen(self) -> dict[str, tuple[str, ...]]:
        seen: dict[str, set[str]] = {}
        for a in self.attempts:
            if a.get("ok") and a.get("peer"):
                seen.setdefault(_label(a), set()).add(str(a["peer"]).rpartition(":")[0])
        return {k: tuple(sorted(v)) for k, v in sorted(seen.items())}

    @property
    def affinity_broken(self) -> bool:
        """A round of a ClientIP-affinity probe reached more than one endpoint."""
        rounds: dict[int, set[str]] = {}
        for a in self.attempts:
            if a.get("ok") and "round" in a:
                rounds.setdefault(int(a["round"]), set()).add(_label(a))
        return any(len(eps) > 1 for eps in rounds.values())

    @property
    def errors(self) -> dict[str, int]:
        return dict(Counter(str(a.get("error")) for a in self.attempts if not a.get("ok")))

    def summary(self) -> str:
        if self.skipped:
            return f"not probed: {self.skipped}"
        ok = sum(1 for a in self.attempts if a.get("ok"))
        text = f"{self.verdict} ({ok}/{len(self.attempts)})"
        if self.endpoints:
            text += " " + ", ".join(
                f"{e} saw {'/'.join(self.source_seen.get(e, ()))}" for e in sorted(self.endpoints)
            )
        if self.errors:
            text += " " + ", ".join(f"{k}×{v}" for k, v in sorted(self.errors.items()))
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "attempts": len(self.attempts),
            "answered": sum(1 for a in self.attempts if a.get("ok")),
            "endpoints": sorted(self.endpoints),
            "sourceSeenByBackend": self.source_seen,
            "errors": self.errors,
            "skipped": self.skipped,
            "affinity": {
                "rounds": len({a.get("round") for a in self.attempts}),
                "held": not self.affinity_broken,
            }
            if self.affinity
            else None,
        }


def _label(attempt: dict[str, Any]) -> str:
    return str(attempt.get("pod") or attempt.get("address"))


def expect_probes(scenario: Any) -> list[Probe]:
    """The expectations of the scenario that apply to it (its mode and ``when``)."""
    return [
        Probe(e.source, e.target, f"expect[{i}]")
        for i, e in enumerate(scenario.expect)
        if e.applies_to(scenario)
    ]


def reach_probes(world: Any, state: ClusterState, sim: Any | None = None) -> list[Probe]:
    """The reachability matrix's cells. With a simulation, the matrix of
    :mod:`k8snet_sim.analysis.reach` (every pod, node, host and router × every Service
    frontend); without one, every pod, node and host × every ClusterIP port and NodePort."""
    if sim is not None:
        from k8snet_sim.analysis.reach import default_sources, default_target_refs

        targets = default_target_refs(sim)
        return [Probe(s.ref, t, "reach") for s in default_sources(sim) for t in targets]
    sources = [name for name, ns in world.namespaces.items() if ns.kind in ("pod", "node", "host")]
    refs: list[str] = []
    for svc in sorted(state.services, key=lambda s: s.key):
        for port in svc.ports:
            if svc.cluster_ip:
                refs.append(f"service/{svc.key}:{port.port}")
            if port.node_port:
                refs += [f"nodeport/{n.name}/{svc.key}:{port.port}" for n in state.nodes]
    return [Probe(s, t, "reach") for s in sources for t in refs]


def unique(probes: list[Probe]) -> list[Probe]:
    """Probes without repeats (first origin kept)."""
    seen: set[tuple[str, str]] = set()
    out = []
    for p in probes:
        if (p.source, p.target) not in seen:
            seen.add((p.source, p.target))
            out.append(p)
    return out
