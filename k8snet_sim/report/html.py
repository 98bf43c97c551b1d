"""HTML fragments for notebooks (``_repr_html_``) and self-contained reports.

Example
-------
>>> esc("<a>")
'&lt;a&gt;'
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from k8snet_sim.analysis.check import CheckResult
    from k8snet_sim.analysis.compare import ModeComparison
    from k8snet_sim.analysis.trace import TraceResult
    from k8snet_sim.sim.recorder import Hop


def esc(text: object) -> str:
    return html.escape(str(text))


COLORS = {"DELIVERED": "#2ca02c", "REPLY_LOST": "#b8860b"}


def _hops(title: str, hops: list[Hop], t0: float) -> str:
    rows = []
    for h in hops:
        extra = "".join(f"<div style='color:#7b3294'>· {esc(r)}</div>" for r in h.rules)
        extra += "".join(f"<div style='color:#1f4e99'><b>⇒ {esc(r)}</b></div>" for r in h.rewrites)
        rows.append(
            f"<tr><td style='text-align:right'>{(h.t - t0) * 1e6:.1f}µs</td><td>{esc(h.node)}</td>"
            f"<td>{esc(h.action)}{extra}</td>"
            f"<td><code>{esc(h.label)}: {esc(h.packet)}</code></td></tr>"
        )
    return (
        f"<h4>{esc(title)}</h4><table><tr><th>t</th><th>namespace</th><th>what happened</th>"
        f"<th>packet</th></tr>{''.join(rows)}</table>"
    )


def trace_html(result: TraceResult) -> str:
    color = COLORS.get(result.disposition, "#d62728")
    parts = [
        f"<div><b>{esc(result.source)} → {esc(result.target)}</b> "
        f"<span style='color:#888'>({esc(result.destination)}, mode {esc(result.mode)})</span><br>"
        f"<b style='color:{color}'>{esc(result.disposition)}</b> — {esc(result.reason)}</div>",
    ]
    if result.endpoint:
        ep = result.endpoint
        parts.append(
            f"<div>endpoint: {esc(ep['pod'])} {esc(ep['ip'])}:{ep['port']} on {esc(ep['node'])};"
            f" source seen by backend: {esc(result.source_seen_by_backend)}</div>"
        )
    parts.append(_hops("request", result.hops, result.started_at))
    if result.reply_hops:
        parts.append(_hops("reply", result.reply_hops, result.started_at))
    if result.possible_endpoints:
        rows = "".join(
            f"<tr><td>{esc(r['ip'])}:{esc(r['port'])}</td><td>{esc(r['pod'])}</td>"
            f"<td>{r['probability']:.4f}</td><td>{esc(r['disposition'])}</td></tr>"
            for r in result.possible_endpoints
        )
        parts.append(
            "<h4>possible endpoints</h4><table><tr><th>endpoint</th><th>pod</th>"
            f"<th>probability</th><th>verdict</th></tr>{rows}</table>"
        )
    return "\n".join(parts)


def check_html(result: CheckResult) -> str:
    """One row per expectation: ✓ holds, ✗ fails (with why), – not for this mode."""
    rows = []
    for r in result.results:
        label = esc(r.description or f"{r.source} → {r.target}")
        if not r.applies:
            mark, why = "<span style='color:#888'>–</span>", "not for this mode/settings"
        elif r.passed:
            mark, why = "<b style='color:#2ca02c'>✓</b>", ""
        else:
            mark, why = "<b style='color:#d62728'>✗</b>", "<br>".join(map(esc, r.failures))
        rows.append(f"<tr><td>{mark}</td><td>{label}</td><td>{why}</td></tr>")
    color = "#2ca02c" if result.passed else "#d62728"
    return (
        f"<div><b style='color:{color}'>{esc(result.summary())}</b></div>"
        f"<table><tr><th></th><th>expectation</th><th>failures</th></tr>{''.join(rows)}</table>"
    )


def comparison_html(result: ModeComparison) -> str:
    """One row per kube-proxy mode, as ``k8snet-sim compare`` prints it."""
    from k8snet_sim.analysis.compare import COLUMNS

    rows = []
    for r in result.rows:
        endpoints = "<br>".join(
            f"{esc(n)} ({p:.2f}){'' if ok else ' ✗'}" for n, p, ok in r.branches
        )
        failures = "<br>".join(map(esc, r.failures)) or esc(
            r.reason if r.reachable == "error" else ""
        )
        rows.append(
            f"<tr><td>{esc(r.mode)}</td><td>{esc(r.reachable)}</td><td>{endpoints or '—'}</td>"
            f"<td>{esc(', '.join(r.source_seen) or '—')}</td><td>{esc(r.sampled or '—')}</td>"
            f"<td>{r.rules_walked} / {r.map_lookups}</td><td>{r.hops}</td>"
            f"<td>{r.connections}</td><td>{failures}</td></tr>"
        )
    head = "".join(f"<th>{esc(h)}</th>" for h in (*COLUMNS, "why not"))
    return (
        f"<div><b>{esc(result.scenario)}: {esc(result.source)} → {esc(result.target)}</b></div>"
        f"<table><tr>{head}</tr>{''.join(rows)}</table>"
    )
