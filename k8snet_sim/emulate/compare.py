"""Hold the simulator to the kernel: the same cell, both verdicts, agree or not.

Agreement is judged on three things (issue 8): reachability (reachable / partial /
unreachable over every possible endpoint), the set of endpoints that answered, and the source
address each of them saw. Dispositions (why a connection failed) are shown but not compared:
the kernel only tells a client "refused", "unreachable" or "timed out".

Example
-------
>>> sim = SimVerdict.from_rows([{"ip": "10.0.0.2", "port": 80, "pod": "default/web-0",
...     "reachable": True, "disposition": "DELIVERED", "sourceSeenByBackend": "10.0.0.9"}])
>>> from k8snet_sim.emulate.probes import KernelResult
>>> kernel = KernelResult(({"ok": True, "pod": "default/web-0", "peer": "10.0.0.9:5",
...                         "address": "10.0.0.2:80"},))
>>> differences(sim, kernel)
[]
>>> for line in differences(sim, KernelResult(({"ok": False, "error": "TIMEOUT"},))):
...     print(line)
reachability: simulator reachable, kernel unreachable
endpoints: simulator default/web-0, kernel none
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from k8snet_sim.emulate.probes import KernelResult, Probe

BR_NETFILTER_NOTE = "kernel lacks br_netfilter"


@dataclass(frozen=True)
class SimVerdict:
    """The simulator's answer for a cell, over every branch of its random choices."""

    verdict: str  # reachable | partial | unreachable
    endpoints: frozenset[str]  # endpoints that answered (pod key, or ip:port)
    source_seen: dict[str, tuple[str, ...]]
    dispositions: tuple[str, ...]
    rows: tuple[dict[str, Any], ...] = ()

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]]) -> SimVerdict:
        ok = [r for r in rows if r.get("reachable")]
        verdict = (
            "reachable" if len(ok) == len(rows) and rows else "unreachable" if not ok else "partial"
        )
        seen: dict[str, tuple[str, ...]] = {}
        for r in ok:
            if r.get("sourceSeenByBackend"):
                seen[_label(r)] = (str(r["sourceSeenByBackend"]),)
        return cls(
            verdict,
            frozenset(_label(r) for r in ok),
            dict(sorted(seen.items())),
            tuple(sorted({str(r.get("disposition")) for r in rows})),
            tuple(rows),
        )

    def summary(self) -> str:
        text = self.verdict
        if self.endpoints:
            text += " " + ", ".join(
                f"{e} saw {'/'.join(self.source_seen.get(e, ()))}" for e in sorted(self.endpoints)
            )
        failed = [d for d in self.dispositions if d != "DELIVERED"]
        if failed:
            text += " " + ", ".join(failed)
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "endpoints": sorted(self.endpoints),
            "sourceSeenByBackend": self.source_seen,
            "dispositions": list(self.dispositions),
            "possibleEndpoints": list(self.rows),
        }


def _label(row: dict[str, Any]) -> str:
    return str(row.get("pod") or f"{row.get('ip')}:{row.get('port')}")


def differences(sim: SimVerdict, kernel: KernelResult) -> list[str]:
    """How the kernel's answer differs from the simulator's (empty: they agree)."""
    out = []
    if sim.verdict != kernel.verdict:
        out.append(f"reachability: simulator {sim.verdict}, kernel {kernel.verdict}")
    if sim.endpoints != kernel.endpoints:
        out.append(
            f"endpoints: simulator {', '.join(sorted(sim.endpoints)) or 'none'}, "
            f"kernel {', '.join(sorted(kernel.endpoints)) or 'none'}"
        )
    for ep in sorted(sim.endpoints & kernel.endpoints):
        want, got = sim.source_seen.get(ep, ()), kernel.source_seen.get(ep, ())
        if set(want) != set(got):
            out.append(
                f"source seen by {ep}: simulator {'/'.join(want) or '?'}, "
                f"kernel {'/'.join(got) or '?'}"
            )
    if kernel.affinity_broken:
        out.append("ClientIP affinity: the kernel sent one client to several endpoints")
    return out


@dataclass(frozen=True)
class CellResult:
    """One probed cell: the kernel's answer, the simulator's (when compared), the verdict."""

    probe: Probe
    kernel: KernelResult
    simulator: SimVerdict | None = None
    differences: tuple[str, ...] = ()
    note: str | None = None

    @property
    def status(self) -> str:
        """``agree``, ``DISAGREE``, ``kernel lacks br_netfilter``, ``skipped`` or ``probed``."""
        if self.kernel.skipped:
            return "skipped"
        if self.simulator is None:
            return "probed"
        if self.differences:
            return BR_NETFILTER_NOTE if self.note == BR_NETFILTER_NOTE else "DISAGREE"
        return "agree"

    def to_dict(self) -> dict[str, Any]:
        return {
            "cell": self.probe.cell,
            "from": self.probe.source,
            "to": self.probe.target,
            "origin": self.probe.origin,
            "status": self.status,
            "agree": None
            if self.simulator is None or self.kernel.skipped
            else not self.differences,
            "kernel": self.kernel.to_dict(),
            "simulator": self.simulator.to_dict() if self.simulator else None,
            "differences": list(self.differences),
            "note": self.note,
        }


def judge_cell(
    probe: Probe,
    kernel: KernelResult,
    sim: SimVerdict | None,
    *,
    br_netfilter_affected: bool = False,
) -> CellResult:
    """Compare one cell; a disagreement the missing br_netfilter explains is marked so."""
    if sim is None or kernel.skipped:
        return CellResult(probe, kernel, sim)
    diffs = tuple(differences(sim, kernel))
    note = BR_NETFILTER_NOTE if diffs and br_netfilter_affected else None
    return CellResult(probe, kernel, sim, diffs, note)


@dataclass
class EmulationReport:
    """Everything one ``emulate`` run found."""

    scenario: str
    mode: str
    run_id: str
    compared: bool
    br_netfilter: bool
    cells: list[CellResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    kept: bool = False

    @property
    def disagreements(self) -> list[CellResult]:
        return [c for c in self.cells if c.status == "DISAGREE"]

    @property
    def passed(self) -> bool:
        return not self.disagreements

    def summary(self) -> str:
        probed = [c for c in self.cells if c.status != "skipped"]
        text = f"{self.scenario} ({self.mode}) on the kernel: {len(probed)} cells probed"
        if self.compared:
            agree = sum(1 for c in probed if c.status == "agree")
            text += f", {agree} agree with the simulator, {len(self.disagreements)} disagree"
            marked = sum(1 for c in probed if c.status == BR_NETFILTER_NOTE)
            if marked:
                text += f", {marked} explained by the missing br_netfilter"
        skipped = len(self.cells) - len(probed)
        return text + (f", {skipped} not probed" if skipped else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "mode": self.mode,
            "runId": self.run_id,
            "compared": self.compared,
            "passed": self.passed,
            "brNetfilter": self.br_netfilter,
            "summary": self.summary(),
            "notes": self.notes,
            "kept": self.kept,
            "namespaces": self.namespaces if self.kept else [],
            "cells": [c.to_dict() for c in self.cells],
        }

    def __str__(self) -> str:
        return self.summary()
