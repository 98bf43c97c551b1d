"""Reachability reports as text: the terminal grid (rich), Markdown, CSV and JSON.

Every format shows the same three things: the targets (numbered columns), the matrix (✓
reachable, ◐ k/n partial, ✗ unreachable, ``#n`` = reason n), and the reasons, deduplicated
and numbered in order of first appearance. A comparison (:class:`ReachDiff`) is appended when
given. JSON keys are sorted wherever their order carries no meaning; lists keep the matrix
order (rows, then targets).

Example
-------
>>> cell_text("partial", 1, 3, [2])
'◐ 1/3 #2'
>>> cell_text("reachable", 2, 2, [])
'✓'
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from k8snet_sim.analysis.reach import SYMBOLS
from k8snet_sim.analysis.reach_model import Cell, status_of

if TYPE_CHECKING:
    from k8snet_sim.analysis.reach import ReachDiff, ReachResult

FORMATS = ("table", "md", "html", "json", "csv")
LEGEND = (
    "✓ reachable (every possible endpoint answers)   ◐ k/n partial (k of n endpoints "
    "answer)   ✗ unreachable   #n reason n below"
)
STYLES = {"reachable": "bold green", "partial": "bold yellow", "unreachable": "bold red"}
COLUMNS_PER_TABLE = 16  # wider grids are cut into several tables of targets


def cell_text(status: str, reachable: int, total: int, reasons: Sequence[int]) -> str:
    """The compact text of one cell: symbol, k/n when partial, reason numbers."""
    text = SYMBOLS[status]
    if status == "partial":
        text += f" {reachable}/{total}"
    if reasons:
        text += " #" + ",".join(str(r) for r in reasons)
    return text


def _matrix(result: ReachResult) -> tuple[list[tuple[str, str]], list[list[tuple[str, str]]]]:
    """Reasons, and for every row the (status, text) of each cell."""
    reasons = result.reasons()
    ids = {r: i + 1 for i, r in enumerate(reasons)}
    grid = []
    for i in range(len(result.rows)):
        line = []
        for t in range(len(result.targets)):
            c = result.cell(i, t)
            line.append(
                (c.status, cell_text(c.status, c.reachable, c.total, [ids[f] for f in c.failures]))
            )
        grid.append(line)
    return reasons, grid


def _heading(result: ReachResult) -> str:
    return f"{result.scenario} — mode {result.mode}, seed {result.seed}"


# ---------------------------------------------------------------------------- terminal


def reach_view(result: ReachResult, diff: ReachDiff | None = None) -> Group:
    """The terminal report: heading, target legend, grid(s), reasons, comparison."""
    reasons, grid = _matrix(result)
    parts: list[Any] = [Text(_heading(result), style="bold"), Text(LEGEND, style="dim")]
    for start in range(0, max(1, len(result.targets)), COLUMNS_PER_TABLE):
        cols = range(start, min(start + COLUMNS_PER_TABLE, len(result.targets)))
        legend = Text()
        for t in cols:
            col = result.targets[t]
            legend.append(f"{t + 1:>4}  ", style="bold")
            legend.append(f"{col.ref}", style="cyan")
            legend.append(f"  {col.address} {col.protocol}\n", style="dim")
        table = Table(show_edge=False, pad_edge=False, header_style="bold")
        table.add_column("source", no_wrap=True)
        for t in cols:
            table.add_column(str(t + 1), justify="center", no_wrap=True)
        for row, line in zip(result.rows, grid, strict=True):
            label = row.label + (f" ({len(row.members)} pods)" if len(row.members) > 1 else "")
            table.add_row(label, *(Text(line[t][1], style=STYLES[line[t][0]]) for t in cols))
        parts += [legend, table]
    if reasons:
        text = Text("\nreasons\n", style="bold underline")
        for i, (disposition, reason) in enumerate(reasons, 1):
            text.append(f"#{i:<3} ", style="bold")
            text.append(f"{disposition}", style="red" if disposition != "DELIVERED" else "")
            text.append(f"  {reason}\n")
        parts.append(text)
    parts.append(Text(result.summary(), style="bold"))
    if diff is not None:
        parts.append(diff_view(diff))
    return Group(*parts)


def diff_view(diff: ReachDiff) -> Text:
    text = Text(f"\ncomparison: {diff.summary()}\n", style="bold")
    for line in diff.lines():
        text.append(f"  • {line}\n")
    return text


def print_reach(
    result: ReachResult, console: Console | None = None, diff: ReachDiff | None = None
) -> None:
    (console or Console()).print(reach_view(result, diff))


def render_table(result: ReachResult, diff: ReachDiff | None = None, *, width: int = 160) -> str:
    """The terminal report as plain text (for ``-o FILE --format table``)."""
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(reach_view(result, diff))
    return console.export_text()


# ---------------------------------------------------------------------------- markdown


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(result: ReachResult, diff: ReachDiff | None = None) -> str:
    reasons, grid = _matrix(result)
    out = [
        f"# Reachability: {_md(_heading(result))}",
        "",
        result.summary(),
        "",
        LEGEND,
        "",
        "## Targets",
        "",
    ]
    out += [
        f"{t + 1}. `{col.ref}` — {col.address} {col.protocol}"
        for t, col in enumerate(result.targets)
    ]
    out += [
        "",
        "## Matrix",
        "",
        "| source | " + " | ".join(str(t + 1) for t in range(len(result.targets))) + " |",
        "| --- |" + " :-: |" * len(result.targets),
    ]
    for row, line in zip(result.rows, grid, strict=True):
        label = row.label + (f" ({len(row.members)} pods)" if len(row.members) > 1 else "")
        out.append(f"| `{_md(label)}` | " + " | ".join(_md(t) for _, t in line) + " |")
    if reasons:
        out += ["", "## Reasons", ""]
        out += [f"{i}. **{d}** — {_md(r)}" for i, (d, r) in enumerate(reasons, 1)]
    if diff is not None:
        out += ["", "## Comparison", "", diff.summary(), ""]
        out += [f"- {_md(line)}" for line in diff.lines()]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------- csv / json

CSV_FIELDS = (
    "from",
    "to",
    "status",
    "reachable",
    "total",
    "probability",
    "dispositions",
    "reasons",
    "sourceSeenByBackend",
    "endpoints",
    "members",
    "computedFrom",
)


def _field(value: object) -> str:
    """One CSV field as ``csv.writer`` (QUOTE_MINIMAL) writes it."""
    text = str(value)
    if "," in text or '"' in text or "\n" in text or "\r" in text:
        return '"' + text.replace('"', '""') + '"'
    return text


def write_csv(result: ReachResult, stream: IO[str], *, jobs: int = 1) -> None:
    """One line per cell (rows × targets), streamed: large matrices never sit in memory.

    A computation answers many cells: what relabelling cannot change (status, counts,
    probability, dispositions, endpoints) is formatted once per computation, row and column
    labels once each, and only the reasons and the source seen by the backend per cell.
    ``jobs`` > 1 formats ranges of rows in forked processes; the lines come out in the same
    order either way.
    """
    stream.write(",".join(_field(f) for f in CSV_FIELDS) + "\n")
    rows = len(result.rows)
    jobs = max(1, min(jobs, rows)) if hasattr(os, "fork") else 1
    if jobs == 1:
        _write_rows(result, range(rows), stream)
        return
    bounds = [rows * j // jobs for j in range(jobs + 1)]
    with tempfile.TemporaryDirectory(prefix="k8snet-reach-csv-") as tmp:
        children: dict[int, str] = {}
        try:
            for j in range(1, jobs):
                path = os.path.join(tmp, f"{j}.csv")
                pid = os.fork()
                if pid == 0:  # pragma: no cover - runs in the child
                    code = 1
                    try:
                        with open(path, "w", encoding="utf-8") as fh:
                            _write_rows(result, range(bounds[j], bounds[j + 1]), fh)
                        code = 0
                    finally:
                        os._exit(code)
                children[pid] = path
            _write_rows(result, range(bounds[0], bounds[1]), stream)
            for pid, path in list(children.items()):
                _, status = os.waitpid(pid, 0)
                del children[pid]
                if status != 0:
                    raise RuntimeError(f"CSV worker {pid} failed (wait status {status})")
                _append(path, stream)
        finally:
            for pid in children:  # only after a failure: stop our own workers, then reap them
                os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)


def _append(path: str, stream: IO[str]) -> None:
    """Copy a worker's UTF-8 output to ``stream``: as bytes when the stream is a text file
    over a binary one (no decoding and re-encoding of hundreds of megabytes)."""
    raw = getattr(stream, "buffer", None)
    if (
        raw is not None
        and (getattr(stream, "encoding", "") or "").lower().replace("-", "") == "utf8"
    ):
        stream.flush()
        with open(path, "rb") as fh:
            shutil.copyfileobj(fh, raw, 1 << 20)
        return
    with open(path, encoding="utf-8") as fh:
        shutil.copyfileobj(fh, stream, 1 << 20)


def _write_rows(result: ReachResult, indices: range, stream: IO[str]) -> None:
    columns = [_field(c.ref) for c in result.targets]
    # Per computation: (status..dispositions joined, endpoints + ",", failures, seen, rep).
    fixed: dict[int, tuple[str, str, list[tuple[str, str]], list[str], str]] = {}
    for i in indices:
        row = result.rows[i]
        label = _field(row.label)
        members = _field(" ".join(m.ref for m in row.members))
        first = row.members[0]
        m = result.member_index(first.ref)
        lines = []
        for t, column in enumerate(columns):
            k = result.table[t][m]
            cached = fixed.get(k)
            if cached is None:
                comp = result.computations[k]
                own = Cell(comp.rep.ref, "", status_of(comp.rows), comp.rows, comp.rep.ref)
                endpoints = ";".join(
                    f"{e['pod'] or '-'}@{e['ip']}:{e['port']}={e['disposition']}"
                    if e["ip"]
                    else f"-={e['disposition']}"
                    for e in own.endpoints
                )
                head = ",".join(
                    _field(x)
                    for x in (
                        own.status,
                        own.reachable,
                        own.total,
                        f"{own.probability:.6g}",
                        " ".join(sorted({d for d, _ in own.failures})),
                    )
                )
                cached = fixed[k] = (
                    head,
                    _field(endpoints),
                    own.failures,
                    own.source_seen,
                    _field(comp.rep.ref),
                )
            head, endpoints, failures, seen, rep = cached
            relabel = result.text_map(m, t)
            if relabel is not None:  # the texts as this row's first member would have got them
                failures = list(dict.fromkeys((d, relabel(r)) for d, r in failures))
                seen = sorted({relabel(x) for x in seen})
            reasons = _field(" | ".join(r for _, r in failures))
            lines.append(
                f"{label},{column},{head},{reasons},{_field(' '.join(seen))},"
                f"{endpoints},{members},{rep}\n"
            )
        stream.write("".join(lines))


def render_csv(result: ReachResult) -> str:
    buf = io.StringIO()
    write_csv(result, buf)
    return buf.getvalue()


def reach_json(result: ReachResult, diff: ReachDiff | None = None) -> dict[str, Any]:
    data = result.to_dict()
    if diff is not None:
        data["comparison"] = diff.to_dict()
    return data


def render_json(result: ReachResult, diff: ReachDiff | None = None) -> str:
    """The documented JSON report (docs/reach.md), keys sorted, stable byte for byte."""
    return json.dumps(reach_json(result, diff), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render(
    result: ReachResult, fmt: str, diff: ReachDiff | None = None, *, world: Any = None
) -> str:
    """The report in ``fmt`` (one of :data:`FORMATS`) as text."""
    if fmt == "table":
        return render_table(result, diff)
    if fmt == "md":
        return render_markdown(result, diff)
    if fmt == "csv":
        return render_csv(result)
    if fmt == "json":
        return render_json(result, diff)
    if fmt == "html":
        from k8snet_sim.report.reach_html import render_html

        return render_html(result, world=world, diff=diff)
    raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
