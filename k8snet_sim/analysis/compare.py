"""compare_modes(): the same connection under each kube-proxy mode, one row per mode.

Each mode is a separate simulation of the same scenario (``--mode`` override), traced with
every branch explored, so the row says whether the connection works for all, some or none of
the endpoints, which endpoints, what source address the backend saw, how much rule or table
work the first packet cost, and how many hops and connections it took.

Example
-------
>>> MODES
('userspace', 'iptables', 'ipvs', 'nftables')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from k8snet_sim.analysis.trace import TraceResult, trace
from k8snet_sim.api import simulate
from k8snet_sim.errors import K8sNetSimError
from k8snet_sim.scenario.loader import load_scenario

MODES = ("userspace", "iptables", "ipvs", "nftables")


@dataclass
class ModeRow:
    mode: str
    reachable: str  # "all" | "partial" | "none" | "error"
    # Every branch of the random choices: (endpoint, probability, whether it completes).
    branches: list[tuple[str, float, bool]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    source_seen: list[str] = field(default_factory=list)
    rules_walked: int = 0
    map_lookups: int = 0
    hops: int = 0
    connections: int = 0
    reason: str = ""
    trace: TraceResult | None = None
    # The endpoint of the seeded sample that the rules/lookups, hops and connections describe.
    sampled: str = ""

    @property
    def endpoints(self) -> list[str]:
        """``"pod (probability)"`` per endpoint, in order."""
        return [f"{name} ({p:.2f})" for name, p, _ in self.branches]

    @property
    def failing(self) -> list[str]:
        """The endpoints whose branch does not complete: which ones work is often the lesson."""
        return [name for name, _, ok in self.branches if not ok]

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "reachable": self.reachable,
            "endpoints": self.endpoints,
            "failingEndpoints": self.failing,
            "failures": self.failures,
            "sourceSeenByBackend": self.source_seen,
            "rulesWalked": self.rules_walked,
            "mapLookups": self.map_lookups,
            "hops": self.hops,
            "connections": self.connections,
            "sampledEndpoint": self.sampled or None,
            "reason": self.reason,
        }


# The columns of a comparison table, in the terminal and in notebooks.
COLUMNS = (
    "mode",
    "reachable",
    "endpoints (p; ✗ fails)",
    "source seen by backend",
    "sample",
    "rules / lookups",
    "hops",
    "connections",
)


@dataclass
class ModeComparison:
    scenario: str
    source: str
    target: str
    rows: list[ModeRow]

    def summary(self) -> str:
        return f"{self.source} → {self.target}: " + ", ".join(
            f"{r.mode} {r.reachable}" for r in self.rows
        )

    def _repr_html_(self) -> str:
        from k8snet_sim.report.html import comparison_html

        return comparison_html(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "from": self.source,
            "to": self.target,
            "modes": [r.to_dict() for r in self.rows],
        }


def _row(mode: str, result: TraceResult) -> ModeRow:
    rows = result.possible_endpoints
    ok = [r for r in rows if r["reachable"]]
    verdict = "none" if not ok else "all" if len(ok) == len(rows) else "partial"
    return ModeRow(
        mode=mode,
        reachable=verdict,
        branches=[(r["pod"] or r["ip"], r["probability"], r["reachable"]) for r in rows if r["ip"]],
        failures=sorted({f"{r['disposition']}: {r['reason']}" for r in rows if not r["reachable"]}),
        source_seen=sorted({r["sourceSeenByBackend"] for r in ok if r.get("sourceSeenByBackend")}),
        rules_walked=result.rules_walked,
        map_lookups=result.map_lookups,
        hops=len(result.hops),
        connections=len(result.connections),
        reason=result.reason,
        trace=result,
        sampled=(result.endpoint["pod"] or result.endpoint["ip"]) if result.endpoint else "",
    )


def compare_modes(
    path: str | Path,
    source: str,
    target: str,
    *,
    modes: Sequence[str] = MODES,
    overrides: Sequence[str] = (),
    seed: int = 0,
) -> ModeComparison:
    """Trace ``source`` → ``target`` in each mode of ``modes``."""
    rows = []
    name = str(path)
    for mode in modes:
        scenario = load_scenario(path, overrides=overrides, mode=mode)
        name = scenario.name
        try:
            sim = simulate(scenario, seed=seed)
        except K8sNetSimError as err:
            rows.append(ModeRow(mode, "error", reason=str(err)))
            continue
        rows.append(_row(mode, trace(sim, source, target)))
    return ModeComparison(name, source, target, rows)
