"""The values of a reachability matrix: sources, rows, target columns, cells, the result.

A :class:`ReachResult` keeps one :class:`Computation` per distinct question and, for every
member source and target, the index of the computation that answers it; a :class:`Cell` is
built on demand, with the representative's address and name replaced by the member's own
(:func:`substitute_row`), so very large matrices never materialise every cell at once.

Example
-------
>>> status_of([{"reachable": True}, {"reachable": False}])
'partial'
>>> brace_label("pod/default/", ["web-0", "web-1", "web-3"])
'pod/default/web-{0,1,3}'
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, cast

from k8snet_sim.analysis.targets import Target
from k8snet_sim.errors import UnknownEndpoint

SYMBOLS = {"reachable": "✓", "partial": "◐", "unreachable": "✗"}


def status_of(rows: Sequence[dict[str, Any]]) -> str:
    """``reachable`` when every possible-endpoint row answers, ``unreachable`` when none does."""
    ok = sum(1 for r in rows if r["reachable"])
    return "reachable" if ok == len(rows) and rows else "unreachable" if not ok else "partial"


def brace_label(prefix: str, names: Sequence[str]) -> str:
    """``prefix`` + the names, their common stem written once: ``web-{0,1,3}``."""
    if len(names) == 1:
        return prefix + names[0]
    stem = names[0]
    for name in names[1:]:
        while not name.startswith(stem):
            stem = stem[:-1]
    tails = [n[len(stem) :] for n in names]
    shown = tails if len(tails) <= 4 else [*tails[:3], "…", tails[-1]]
    return f"{prefix}{stem}{{{','.join(shown)}}}"


# ---------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Source:
    """One source: a pod, node, outside host or router."""

    ref: str
    ns: str  # the network namespace it sends from (a hostNetwork pod: its node's)
    kind: str
    node: str | None = None
    owner: str | None = None  # "Deployment/web" (pods)
    address: str | None = None


@dataclass(frozen=True)
class SourceRow:
    """A row of the matrix: one source, or pods of one workload on one node with identical
    cells (``members``; the cells shown are the first member's)."""

    label: str
    kind: str
    node: str | None
    owner: str | None
    members: tuple[Source, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.label,
            "kind": self.kind,
            "node": self.node,
            "owner": self.owner,
            "members": [m.ref for m in self.members],
            "addresses": [m.address for m in self.members],
        }


@dataclass(frozen=True)
class TargetColumn:
    """A column: a Service frontend (or any target reference given)."""

    ref: str
    kind: str
    address: str
    protocol: str
    service: str | None
    target: Target = field(compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.ref,
            "kind": self.kind,
            "address": self.address,
            "protocol": self.protocol,
            "service": self.service,
        }


@dataclass(frozen=True)
class Cell:
    """One answer: ``source`` (a row label or member ref) → ``target``."""

    source: str
    target: str
    status: str
    endpoints: tuple[dict[str, Any], ...]  # the possible-endpoint rows, one per branch outcome
    computed_from: str  # the source whose computation this is (itself, or an equivalent one)
    sample: dict[str, Any] | None = None  # the seeded trace (hops), when samples were asked for

    @property
    def symbol(self) -> str:
        return SYMBOLS[self.status]

    @property
    def reachable(self) -> int:
        return sum(1 for r in self.endpoints if r["reachable"])

    @property
    def total(self) -> int:
        return len(self.endpoints)

    @property
    def probability(self) -> float:
        """Probability that a new connection completes."""
        return round(sum(r["probability"] for r in self.endpoints if r["reachable"]), 10)

    @property
    def failures(self) -> list[tuple[str, str]]:
        """(disposition, reason) of each failing branch outcome, without repeats."""
        return list(
            dict.fromkeys(
                (r["disposition"], r["reason"]) for r in self.endpoints if not r["reachable"]
            )
        )

    @property
    def source_seen(self) -> list[str]:
        return sorted(
            {
                r["sourceSeenByBackend"]
                for r in self.endpoints
                if r["reachable"] and r.get("sourceSeenByBackend")
            }
        )

    def verdict(self) -> str:
        """``reachable``, ``partial (1/3, REPLY_LOST)``, ``unreachable (REJECTED)``."""
        if self.status == "reachable":
            return "reachable"
        kinds = ", ".join(sorted({d for d, _ in self.failures}))
        if self.status == "partial":
            return f"partial ({self.reachable}/{self.total}, {kinds})"
        return f"unreachable ({kinds})"

    def to_dict(self, reason_ids: dict[tuple[str, str], int] | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "from": self.source,
            "to": self.target,
            "status": self.status,
            "reachable": self.reachable,
            "total": self.total,
            "probability": self.probability,
            "sourceSeenByBackend": self.source_seen,
            "endpoints": list(self.endpoints),
            "computedFrom": self.computed_from,
        }
        if reason_ids is not None:
            data["reasons"] = [reason_ids[f] for f in self.failures]
        if self.sample is not None:
            data["sample"] = self.sample
        return data


@dataclass
class Computation:
    """One question actually run: ``rep`` (the representative source) → target ``target``;
    ``rows`` are its possible-endpoint rows, ``sample`` its seeded trace (HTML reports)."""

    rep: Source
    target: int
    rows: tuple[dict[str, Any], ...] = ()
    sample: dict[str, Any] | None = None


# ---------------------------------------------------------------------------- result


@dataclass
class ReachResult:
    """The matrix. ``rows`` × ``targets``; :meth:`cell` and :attr:`cells` give the answers."""

    scenario: str
    mode: str
    seed: int
    rows: list[SourceRow]
    targets: list[TargetColumn]
    members: list[Source]
    computations: list[Computation] = field(repr=False)
    table: list[list[int]] = field(repr=False)  # [target][member] -> computation index
    shared: bool = True
    # Node name -> role -> address text: answers shared across interchangeable nodes are
    # relabelled from the representative's node to the member's (reach_nodes).
    node_tokens: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)
    # Target index -> (column answered for, its node, this column's node, member -> member):
    # a NodePort column answered as the mirror image of the same Service's NodePort on an
    # interchangeable node (reach_nodes), with the two nodes swapped in the texts.
    swaps: dict[int, tuple[int, str, str, dict[int, int]]] = field(default_factory=dict, repr=False)

    def member_cell(self, member: int | str, target: int | str) -> Cell:
        """The cell of one member source (a pod of a grouped row too)."""
        m = member if isinstance(member, int) else self._member_index(member)
        t = target if isinstance(target, int) else self._target_index(target)
        comp = self.computations[self.table[t][m]]
        src = self.members[m]
        relabel = self.text_map(m, t)
        rows = comp.rows if relabel is None else tuple(_mapped(r, relabel) for r in comp.rows)
        sample = comp.sample
        if sample is not None and comp.rep != src:
            nodes = self.relabel_nodes(comp.rep.node, src.node)
            sample = substitute_obj(sample, comp.rep, src, nodes)
        return Cell(src.ref, self.targets[t].ref, status_of(rows), rows, comp.rep.ref, sample)

    def text_map(self, m: int, t: int) -> Callable[[str], str] | None:
        """How the texts of cell (member ``m``, target ``t``)'s computation become the
        member's own: the representative's address, name and node replaced by the member's,
        and for a mirrored NodePort column the two nodes swapped. None: unchanged."""
        swap = self.swaps.get(t)
        if swap is not None:
            t0, a, b, sigma = swap
            m2 = sigma.get(m, m)
            inner = self.text_map(m2, t0)
            swap_text = self._swapper(a, b)
            # The swap already exchanges the two nodes' tokens (a node source's whole
            # identity); what is left is a pod's own address and name.
            skip = {*self.node_tokens.get(a, {}).values(), *self.node_tokens.get(b, {}).values()}
            pairs = [(x, y) for x, y in _pairs(self.members[m2], self.members[m]) if x not in skip]

            def relabel(text: str) -> str:
                text = swap_text(inner(text) if inner is not None else text)
                for x, y in pairs:
                    if x in text:
                        text = _pattern(x).sub(y, text)
                return text

            return relabel
        comp = self.computations[self.table[t][m]]
        src = self.members[m]
        if comp.rep is src:  # representatives are member objects
            return None
        rep = comp.rep
        nodes = self.relabel_nodes(rep.node, src.node)
        return lambda text: _replace(text, rep, src, nodes)

    def _swapper(self, a: str, b: str) -> Callable[[str], str]:
        """Swaps the tokens of nodes ``a`` and ``b`` in one pass."""
        cache = self.__dict__.setdefault("_swappers", {})
        fn = cache.get((a, b))
        if fn is None:
            ta, tb = self.node_tokens.get(a, {}), self.node_tokens.get(b, {})
            pairs = {}
            for role in ta.keys() & tb.keys():
                pairs[ta[role]], pairs[tb[role]] = tb[role], ta[role]
            fn = cache[(a, b)] = _swapper(tuple(sorted(pairs.items())))
        return cast(Callable[[str], str], fn)

    def relabel_nodes(self, old: str | None, new: str | None) -> dict[str, str]:
        """Address texts of node ``old`` -> the same roles' on node ``new`` (empty when the
        nodes are the same or unknown)."""
        if old == new or old not in self.node_tokens or new not in self.node_tokens:
            return {}
        cache = self.__dict__.setdefault("_relabels", {})
        out = cache.get((old, new))
        if out is None:
            a, b = self.node_tokens[old], self.node_tokens[new]
            out = cache[(old, new)] = {a[r]: b[r] for r in a if r in b and a[r] != b[r]}
        return cast(dict[str, str], out)

    def cell(self, row: int | str, target: int | str) -> Cell:
        """The cell of a row (by index, label, or the ref of one of its members)."""
        r = self.rows[row] if isinstance(row, int) else self._row(row)
        inner = self.member_cell(r.members[0].ref, target)
        return Cell(
            r.label, inner.target, inner.status, inner.endpoints, inner.computed_from, inner.sample
        )

    def iter_cells(self) -> Iterator[Cell]:
        """Row-major, without building the whole list (large matrices)."""
        for i in range(len(self.rows)):
            for t in range(len(self.targets)):
                yield self.cell(i, t)

    @property
    def cells(self) -> list[Cell]:
        return list(self.iter_cells())

    def reasons(self) -> list[tuple[str, str]]:
        """Every distinct (disposition, reason) of the matrix, in order of first appearance;
        reason *n* in the reports is ``reasons()[n - 1]``."""
        seen: dict[tuple[str, str], None] = {}
        for c in self.iter_cells():
            for f in c.failures:
                seen.setdefault(f, None)
        return list(seen)

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(SYMBOLS, 0)
        status = [status_of(c.rows) for c in self.computations]  # substitution keeps status
        firsts = [self._member_index(row.members[0].ref) for row in self.rows]
        for column in self.table:
            for m in firsts:
                out[status[column[m]]] += 1
        return out

    def summary(self) -> str:
        c = self.counts()
        return (
            f"{self.scenario} ({self.mode}, seed {self.seed}): {len(self.rows)} sources × "
            f"{len(self.targets)} targets — {c['reachable']} reachable, {c['partial']} "
            f"partial, {c['unreachable']} unreachable ({len(self.computations)} "
            "computations)"
        )

    def to_dict(self) -> dict[str, Any]:
        reasons = self.reasons()
        ids = {r: i + 1 for i, r in enumerate(reasons)}
        return {
            "format": "k8snet-sim/reach/v1",
            "scenario": self.scenario,
            "mode": self.mode,
            "seed": self.seed,
            "summary": self.summary(),
            "counts": self.counts(),
            "computations": len(self.computations),
            "shared": self.shared,
            "sources": [r.to_dict() for r in self.rows],
            "targets": [t.to_dict() for t in self.targets],
            "reasons": [{"id": ids[r], "disposition": r[0], "text": r[1]} for r in reasons],
            "cells": [c.to_dict(ids) for c in self.iter_cells()],
        }

    def _repr_html_(self) -> str:
        from k8snet_sim.report.reach_html import matrix_fragment

        return matrix_fragment(self)

    def __str__(self) -> str:
        return self.summary()

    def _row(self, ref: str) -> SourceRow:
        for r in self.rows:
            if r.label == ref or any(m.ref == ref for m in r.members):
                return r
        raise UnknownEndpoint(ref, hint="not a source of this reachability result")

    def member_index(self, ref: str) -> int:
        """Position of the member source ``ref`` in :attr:`members`."""
        return self._member_index(ref)

    def _member_index(self, ref: str) -> int:
        index = self.__dict__.get("_members_by_ref")
        if index is None:
            index = self.__dict__["_members_by_ref"] = {
                m.ref: i for i, m in enumerate(self.members)
            }
        if ref not in index:
            raise UnknownEndpoint(ref, hint="not a source of this reachability result")
        return int(index[ref])

    def _target_index(self, ref: str) -> int:
        for i, t in enumerate(self.targets):
            if t.ref == ref:
                return i
        raise UnknownEndpoint(ref, hint="not a target of this reachability result")


# ---------------------------------------------------------------------------- substitution


@lru_cache(maxsize=8192)  # a pure memo: one pattern per source address or name
def _pattern(token: str) -> re.Pattern[str]:
    # Whole tokens only: 10.244.1.2 must not match inside 10.244.1.23, web-1 not inside web-10.
    return re.compile(rf"(?<![\w.\-/]){re.escape(token)}(?![\w\-]|\.\w)")


def _replace(text: str, old: Source, new: Source, nodes: dict[str, str] | None = None) -> str:
    if text == old.address and new.address:  # the commonest text: the source's own address
        return new.address
    if old.address and new.address and old.address in text:
        text = _pattern(old.address).sub(new.address, text)
    if old.ref in text:
        text = _pattern(old.ref).sub(new.ref, text)
    if old.ns != old.ref and old.ns in text and old.ns != new.ns:
        text = _pattern(old.ns).sub(new.ns, text)
    # The representative's node's addresses and name, when it stands on another node. Keys are
    # that node's tokens only, so one replacement never feeds another.
    for token, other in (nodes or {}).items():
        if token in text:
            text = _pattern(token).sub(other, text)
    return text


def _mapped(row: dict[str, Any], relabel: Callable[[str], str]) -> dict[str, Any]:
    out = dict(row)
    for key in ("reason", "sourceSeenByBackend"):
        if isinstance(out.get(key), str):
            out[key] = relabel(out[key])
    return out


def _pairs(old: Source, new: Source) -> Iterator[tuple[str, str]]:
    """Text replacements of one source's identity by another's."""
    if old == new:
        return
    if old.address and new.address:
        yield old.address, new.address
    yield old.ref, new.ref
    if old.ns != old.ref and old.ns != new.ns:
        yield old.ns, new.ns


@lru_cache(maxsize=4096)
def _swapper(pairs: tuple[tuple[str, str], ...]) -> Callable[[str], str]:
    """A function replacing every whole token of ``pairs`` at once (so a ↔ b swaps)."""
    table = {k: v for k, v in pairs if k != v}
    if not table:
        return lambda text: text
    alternatives = "|".join(re.escape(k) for k in sorted(table, key=len, reverse=True))
    pattern = re.compile(rf"(?<![\w.\-/])(?:{alternatives})(?![\w\-]|\.\w)")

    def swap(text: str) -> str:
        return pattern.sub(lambda match: table[match.group(0)], text)

    return swap


def substitute_row(
    row: dict[str, Any], old: Source, new: Source, nodes: dict[str, str] | None = None
) -> dict[str, Any]:
    """``row`` as ``new`` would have got it: ``old``'s address, name and (``nodes``) node
    tokens replaced in its texts."""
    if old == new:
        return row
    out = dict(row)
    for key in ("reason", "sourceSeenByBackend"):
        if isinstance(out.get(key), str):
            out[key] = _replace(out[key], old, new, nodes)
    return out


def substitute_obj(obj: Any, old: Source, new: Source, nodes: dict[str, str] | None = None) -> Any:
    if isinstance(obj, str):
        return _replace(obj, old, new, nodes)
    if isinstance(obj, list):
        return [substitute_obj(x, old, new, nodes) for x in obj]
    if isinstance(obj, dict):
        return {k: substitute_obj(v, old, new, nodes) for k, v in obj.items()}
    return obj
