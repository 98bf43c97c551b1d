"""check(): evaluate a scenario's ``expect:`` list — the assertions lessons and CI rely on.

Each expectation is traced on its own fork of the simulation (so one expectation's conntrack
or affinity state cannot change another's outcome) and judged over *every* branch of the random
choices, not one sampled connection: ``reachable: true`` means every possible endpoint is
reached and answers; ``false`` none; ``partial`` some but not all. An expectation applies only
when its ``when:`` conditions (dotted scenario keys, a value or a list of accepted values;
``null`` = absent) and its ``modes:`` match the scenario as run (after ``--mode``/``--set``).

Example
-------
>>> _as_set("10.244.0.1"), _as_set(["a", "b"])
(['10.244.0.1'], ['a', 'b'])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from k8snet_sim.analysis.trace import TraceResult, trace
from k8snet_sim.sim.simulation import Simulation


@dataclass
class ExpectationResult:
    index: int
    description: str
    source: str
    target: str
    applies: bool
    passed: bool
    failures: list[str] = field(default_factory=list)
    trace: TraceResult | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "description": self.description,
            "from": self.source,
            "to": self.target,
            "applies": self.applies,
            "passed": self.passed,
            "failures": self.failures,
            "summary": self.trace.summary() if self.trace else None,
            "possibleEndpoints": self.trace.possible_endpoints if self.trace else None,
        }


@dataclass
class CheckResult:
    scenario: str
    mode: str
    results: list[ExpectationResult]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results if r.applies)

    def summary(self) -> str:
        applied = [r for r in self.results if r.applies]
        failed = [r for r in applied if not r.passed]
        return (
            f"{self.scenario} ({self.mode}): {len(applied) - len(failed)}/{len(applied)} "
            f"expectations hold"
            + (
                f", {len(self.results) - len(applied)} not applicable"
                if len(applied) < len(self.results)
                else ""
            )
        )

    def _repr_html_(self) -> str:
        from k8snet_sim.report.html import check_html

        return check_html(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "mode": self.mode,
            "passed": self.passed,
            "summary": self.summary(),
            "results": [r.to_dict() for r in self.results],
        }


def _as_set(value: Any) -> list[str] | None:
    if value is None:
        return None
    return [str(v) for v in (value if isinstance(value, list) else [value])]


def _endpoint_names(row: dict[str, Any]) -> set[str]:
    names = set()
    if row.get("pod"):
        names.add(f"pod/{row['pod']}")
        names.add(str(row["pod"]))
    if row.get("ip"):
        names.add(f"{row['ip']}:{row['port']}")
        names.add(str(row["ip"]))
    return names


def judge(expectation: Any, result: TraceResult) -> list[str]:
    """Failures of one expectation against a trace (empty list = it holds)."""
    rows = result.branches()
    failures: list[str] = []
    ok = [r for r in rows if r["reachable"]]
    bad = [r for r in rows if not r["reachable"]]
    verdict = "true" if not bad else "false" if not ok else "partial"
    want = expectation.reachable
    if want is not None:
        want_text = str(want).lower()
        if want_text != verdict:
            detail = ", ".join(f"{r['pod'] or r['ip'] or '—'}: {r['disposition']}" for r in rows)
            failures.append(f"reachable: expected {want_text}, got {verdict} ({detail})")
    if expectation.disposition is not None:
        wanted = expectation.disposition
        got = {r["disposition"] for r in (rows if wanted == "DELIVERED" else bad)}
        if got != {wanted}:
            failures.append(
                f"disposition: expected {wanted}, got {', '.join(sorted(got)) or 'none'}"
            )
    allowed = _as_set(expectation.endpoint)
    if allowed is not None:
        for r in rows:
            if r["ip"] is not None and not (_endpoint_names(r) & set(allowed)):
                failures.append(
                    f"endpoint: {r['pod'] or r['ip']} is possible, expected one of "
                    f"{', '.join(allowed)}"
                )
    via = _as_set(getattr(expectation, "reachable_via", None))
    if via is not None:
        got_via = {(r["pod"] and f"pod/{r['pod']}") or f"{r['ip']}:{r['port']}" for r in ok}
        wanted_via = {v if v.startswith("pod/") or ":" in v else f"pod/{v}" for v in via}
        if got_via != wanted_via:
            failures.append(f"reachableVia: expected {sorted(wanted_via)}, got {sorted(got_via)}")
    seen = _as_set(expectation.source_seen_by_backend)
    if seen is not None:
        for r in ok:
            if r.get("sourceSeenByBackend") not in seen:
                failures.append(
                    f"sourceSeenByBackend: {r['pod'] or r['ip']} saw "
                    f"{r.get('sourceSeenByBackend')}, expected {' or '.join(seen)}"
                )
    return failures


def check(sim: Simulation, scenario: Any = None) -> CheckResult:
    """Evaluate every expectation of ``scenario`` (default: the one ``sim`` was built from) on
    forks of ``sim``."""
    if scenario is None:
        scenario = sim.world.info["scenario"]
    results = []
    for i, exp in enumerate(scenario.expect):
        base = ExpectationResult(i, exp.description, exp.source, exp.target, False, True)
        if not exp.applies_to(scenario):
            results.append(base)
            continue
        result = trace(sim.fork(), exp.source, exp.target)
        failures = judge(exp, result)
        results.append(
            ExpectationResult(
                i, exp.description, exp.source, exp.target, True, not failures, failures, result
            )
        )
    return CheckResult(scenario.name, scenario.mode, results)
