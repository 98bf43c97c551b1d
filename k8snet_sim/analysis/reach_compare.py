"""Comparing two reachability matrices: the cells whose answer changed, and why.

Two matrices of the same scenario under two kube-proxy modes, or of two scenarios, are compared
member source by member source over the targets both have; a change is a different verdict
(``partial (1/3, REPLY_LOST)`` vs ``reachable``) or, with the same verdict, a different address
seen by the backends (a proxy or a masquerade appeared).

Example
-------
>>> change = CellChange("host/office", "service/default/web:80", "verdict", "reachable",
...                     "unreachable (NO_ROUTE)")
>>> change.text("userspace", "iptables").split(": ", 1)[1]
'reachable under userspace, unreachable (NO_ROUTE) under iptables'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from k8snet_sim.analysis.reach_model import Cell, ReachResult


@dataclass(frozen=True)
class CellChange:
    """One source → target whose answer differs between two matrices."""

    source: str
    target: str
    kind: str  # "verdict" | "source" (same verdict, the backend sees another address)
    before: str
    after: str
    why: str = ""

    def text(self, before: str, after: str) -> str:
        head = f"{self.source} → {self.target}: "
        if self.kind == "source":  # ``why`` holds the common verdict
            return (
                head + f"{self.why} under both, but the backend sees {self.before} under "
                f"{before} and {self.after} under {after}"
            )
        return (
            head
            + f"{self.before} under {before}, {self.after} under {after}"
            + (f" — {self.why}" if self.why else "")
        )


@dataclass
class ReachDiff:
    """What changed from one matrix (``before``) to another (``after``)."""

    before: str
    after: str
    changes: list[CellChange]
    compared: int
    only_before: list[str] = field(default_factory=list)
    only_after: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.changes or self.only_before or self.only_after)

    def lines(self) -> list[str]:
        out = [c.text(self.before, self.after) for c in self.changes]
        out += [f"only under {self.before}: {r}" for r in self.only_before]
        out += [f"only under {self.after}: {r}" for r in self.only_after]
        return out

    def summary(self) -> str:
        if not self:
            return f"{self.before} vs {self.after}: no differences in {self.compared} cells"
        return (
            f"{self.before} vs {self.after}: {len(self.changes)} of {self.compared} cells "
            f"changed"
            + (
                f", {len(self.only_before) + len(self.only_after)} sources or "
                "targets on one side only"
                if self.only_before or self.only_after
                else ""
            )
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "before": self.before,
            "after": self.after,
            "compared": self.compared,
            "summary": self.summary(),
            "onlyBefore": self.only_before,
            "onlyAfter": self.only_after,
            "changes": [
                {
                    "from": c.source,
                    "to": c.target,
                    "kind": c.kind,
                    "before": c.before,
                    "after": c.after,
                    "why": c.why,
                    "text": c.text(self.before, self.after),
                }
                for c in self.changes
            ],
        }


def _change(a: Cell, b: Cell, labels: tuple[str, str]) -> tuple[str, str, str, str] | None:
    if a.verdict() != b.verdict():
        side, cell = (labels[1], b) if b.failures else (labels[0], a)
        disposition, reason = cell.failures[0]
        return "verdict", a.verdict(), b.verdict(), f"{side}: {disposition}: {reason}"
    if a.source_seen != b.source_seen:
        return (
            "source",
            " or ".join(a.source_seen) or "nothing",
            " or ".join(b.source_seen) or "nothing",
            a.verdict(),
        )
    return None


def compare_reach(
    before: ReachResult, after: ReachResult, *, labels: tuple[str, str] | None = None
) -> ReachDiff:
    """Every cell whose verdict (or the source address its backends see) differs, for the
    sources and targets both matrices have. Pods are compared one by one and reported by
    their row in ``before`` when the whole row changed the same way."""
    if labels is None:
        same_mode = before.mode == after.mode
        labels = (before.scenario, after.scenario) if same_mode else (before.mode, after.mode)
    a_members = {m.ref for m in before.members}
    b_members = {m.ref for m in after.members}
    a_targets = {t.ref for t in before.targets}
    b_targets = {t.ref for t in after.targets}
    targets = [t.ref for t in before.targets if t.ref in b_targets]
    changes: list[CellChange] = []
    compared = 0
    for row in before.rows:
        members = [m.ref for m in row.members if m.ref in b_members]
        for target in targets:
            found: list[tuple[str, tuple[str, str, str, str]]] = []
            for ref in members:
                compared += 1
                got = _change(
                    before.member_cell(ref, target), after.member_cell(ref, target), labels
                )
                if got is not None:
                    found.append((ref, got))
            whole = len(found) == len(row.members) > 1 and len({g[:3] for _, g in found}) == 1
            for ref, (kind, old, new, why) in found[:1] if whole else found:
                changes.append(CellChange(row.label if whole else ref, target, kind, old, new, why))
    only_a = sorted(a_members - b_members) + sorted(a_targets - b_targets)
    only_b = sorted(b_members - a_members) + sorted(b_targets - a_targets)
    return ReachDiff(labels[0], labels[1], changes, compared, only_a, only_b)
