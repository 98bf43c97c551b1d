"""The reachability report as one self-contained HTML file.

Everything is inline — CSS, a small script, the topology picture as SVG (matplotlib) and the
data as JSON — so the file opens anywhere without fetching anything. The matrix is a heatmap
(colour = probability that a new connection completes); clicking a cell shows its trace
summary: every possible endpoint with its verdict and reason, the source address the backend
saw, and the hops of the sampled (seeded) connection. Opening the file with ``#selftest``
clicks every cell and records the outcome in ``<body data-selftest>`` (used by the tests).

Example
-------
>>> heat(1.0), heat(0.0)
('#1a9850', '#d73027')
"""

from __future__ import annotations

import html
import io
import json
from itertools import pairwise
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from k8snet_sim.analysis.reach import ReachDiff, ReachResult

TOPOLOGY_MAX_NAMESPACES = 150  # beyond this the picture is unreadable: left out, with a note
_STOPS = ((0.0, (0xD7, 0x30, 0x27)), (0.5, (0xFE, 0xE0, 0x8B)), (1.0, (0x1A, 0x98, 0x50)))


def esc(text: object) -> str:
    return html.escape(str(text))


def heat(p: float) -> str:
    """Red (0) → yellow (½) → green (1)."""
    p = min(1.0, max(0.0, p))
    for (x0, c0), (x1, c1) in pairwise(_STOPS):
        if p <= x1:
            f = (p - x0) / (x1 - x0)
            return "#" + "".join(
                f"{round(a + (b - a) * f):02x}" for a, b in zip(c0, c1, strict=True)
            )
    return "#1a9850"


def topology_svg(world: Any) -> str:
    """The topology as inline SVG (deterministic ids, glyphs as paths, no date)."""
    import matplotlib
    import matplotlib.pyplot as plt

    from k8snet_sim.report.plot import draw_topology

    with matplotlib.rc_context({"svg.hashsalt": "k8snet-sim", "svg.fonttype": "path"}):
        fig, ax = plt.subplots(figsize=(9, 5.5))
        draw_topology(world, ax=ax)
        fig.tight_layout()
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
        plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg") :]


def _cell_title(result: ReachResult, c: Any) -> str:
    title = f"{c.source} → {c.target}: {c.verdict()}"
    if c.failures:
        title += f"\n{c.failures[0][0]}: {c.failures[0][1]}"
    return title


def _matrix(result: ReachResult, *, clickable: bool) -> str:
    head = "".join(f"<th title='{esc(t.ref)}'>{i + 1}</th>" for i, t in enumerate(result.targets))
    rows = []
    for i, row in enumerate(result.rows):
        tds = []
        for t in range(len(result.targets)):
            c = result.cell(i, t)
            text = c.symbol + (
                f"<small>{c.reachable}/{c.total}</small>" if c.status == "partial" else ""
            )
            attrs = f" data-r='{i}' data-t='{t}' tabindex='0'" if clickable else ""
            tds.append(
                f"<td class='c {c.status}' style='background:{heat(c.probability)}'"
                f" title='{esc(_cell_title(result, c))}'{attrs}>{text}</td>"
            )
        count = f" <small>({len(row.members)} pods)</small>" if len(row.members) > 1 else ""
        rows.append(
            f"<tr><th class='src' title='{esc(' '.join(m.ref for m in row.members))}'>"
            f"{esc(row.label)}{count}</th>{''.join(tds)}</tr>"
        )
    targets = "".join(
        f"<li><code>{esc(t.ref)}</code> <span class='dim'>{esc(t.address)} "
        f"{esc(t.protocol)}</span></li>"
        for t in result.targets
    )
    return (
        f"<table class='matrix'><thead><tr><th>source</th>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        f"<h3>targets</h3><ol class='targets'>{targets}</ol>"
    )


def _reasons(result: ReachResult) -> str:
    items = "".join(f"<li><b>{esc(d)}</b> — {esc(r)}</li>" for d, r in result.reasons())
    return f"<h3>reasons</h3><ol class='reasons'>{items}</ol>" if items else ""


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em;margin:0} .dim{color:#777} code{font-size:.95em}
.legend span{margin-right:1.2em}
table.matrix{border-collapse:collapse;margin:1em 0}
table.matrix th{font-weight:600;padding:2px 6px;text-align:left;white-space:nowrap}
table.matrix thead th{text-align:center}
td.c{min-width:2.2em;text-align:center;border:1px solid #fff;cursor:pointer;color:#111}
td.c small{font-size:.7em;margin-left:2px} td.c:hover,td.c.sel{outline:2px solid #222}
#details{border:1px solid #ccc;padding:.8em;margin:1em 0;background:#fafafa;min-height:3em}
#details table{border-collapse:collapse} #details td,#details th{border-bottom:1px solid #ddd;
padding:2px 8px;text-align:left;vertical-align:top}
.ok{color:#1a7f37;font-weight:600} .bad{color:#c62828;font-weight:600}
.hop{margin:.2em 0} .hop .rw{color:#1f4e99} .hop .pk{color:#666;font-family:monospace}
.topology svg{max-width:100%;height:auto}
"""

JS = r"""
(function () {
  const DATA = JSON.parse(document.getElementById('reach-data').textContent);
  const panel = document.getElementById('details');
  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function table(headers, rows) {
    const t = el('table'), h = el('tr');
    headers.forEach(x => h.appendChild(el('th', x)));
    t.appendChild(h);
    rows.forEach(r => {
      const tr = el('tr');
      r.forEach(x => tr.appendChild(el('td', x)));
      t.appendChild(tr);
    });
    return t;
  }
  function hops(title, list) {
    const box = el('div');
    box.appendChild(el('h4', title));
    const ol = el('ol');
    list.forEach(h => {
      const li = el('li', null, 'hop');
      li.appendChild(el('b', h.node));
      li.appendChild(el('span', ' ' + h.action));
      (h.rewrites || []).forEach(r => {
        li.appendChild(el('br'));
        li.appendChild(el('span', '⇒ ' + r, 'rw'));
      });
      if (h.packet) { li.appendChild(el('br')); li.appendChild(el('span', h.packet, 'pk')); }
      ol.appendChild(li);
    });
    box.appendChild(ol);
    return box;
  }
  function show(r, t) {
    const c = DATA.cells[r][t];
    panel.replaceChildren();
    panel.appendChild(el('h3', c.from + ' → ' + c.to));
    const verdict = el('p');
    verdict.appendChild(el('span', c.status, c.status === 'reachable' ? 'ok' : 'bad'));
    verdict.appendChild(el('span', ' — ' + c.reachable + ' of ' + c.total +
      ' possible endpoint(s) answer; a new connection completes with probability ' +
      c.probability.toFixed(4)));
    panel.appendChild(verdict);
    if (c.sourceSeenByBackend.length)
      panel.appendChild(el('p', 'source seen by the backend: ' + c.sourceSeenByBackend.join(', ')));
    if (c.computedFrom !== c.from)
      panel.appendChild(el('p', 'computed for the equivalent source ' + c.computedFrom, 'dim'));
    panel.appendChild(el('h4', 'every branch of the random choices'));
    const columns = ['endpoint', 'pod', 'node', 'probability', 'verdict', 'reason', 'source seen'];
    panel.appendChild(table(columns,
      c.endpoints.map(e => [e.ip ? e.ip + ':' + e.port : '—', e.pod || '—', e.node || '—',
        e.probability.toFixed(4), e.disposition, e.reason, e.sourceSeenByBackend || '—'])));
    if (c.reasons.length) {
      const ul = el('ul');
      c.reasons.forEach(id => {
        const x = DATA.reasons[id - 1];
        ul.appendChild(el('li', '#' + id + ' ' + x.disposition + ' — ' + x.text));
      });
      panel.appendChild(el('h4', 'reasons'));
      panel.appendChild(ul);
    }
    if (c.sample) {
      panel.appendChild(el('h4', 'sampled connection (seed ' + DATA.seed + '): ' +
        c.sample.disposition + ' — ' + c.sample.reason));
      panel.appendChild(hops('request (first packet)', c.sample.hops));
      if (c.sample.replyHops.length)
        panel.appendChild(hops('reply (first packet back)', c.sample.replyHops));
    }
    document.querySelectorAll('td.c.sel').forEach(x => x.classList.remove('sel'));
    const td = document.querySelector('td.c[data-r="' + r + '"][data-t="' + t + '"]');
    if (td) td.classList.add('sel');
  }
  document.querySelectorAll('td.c[data-r]').forEach(td => {
    const open = () => show(+td.dataset.r, +td.dataset.t);
    td.addEventListener('click', open);
    td.addEventListener('keydown', ev => { if (ev.key === 'Enter') open(); });
  });
  document.body.dataset.ready = 'yes';
  if (location.hash === '#selftest') {
    let n = 0;
    try {
      document.querySelectorAll('td.c[data-r]').forEach(td => { td.click(); n += 1; });
      document.body.dataset.selftest = n > 0 && panel.textContent.length > 0 ? 'ok' : 'empty';
    } catch (err) {
      document.body.dataset.selftest = 'error: ' + err;
      throw err;
    }
    document.body.dataset.clicked = String(n);
  }
})();
"""


def _embed(data: Any) -> str:
    # Inside <script>, "</" could end the element early: escape it (valid JSON either way).
    text = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def _data(result: ReachResult) -> dict[str, Any]:
    reasons = result.reasons()
    ids = {r: i + 1 for i, r in enumerate(reasons)}
    return {
        "scenario": result.scenario,
        "mode": result.mode,
        "seed": result.seed,
        "reasons": [{"id": ids[r], "disposition": r[0], "text": r[1]} for r in reasons],
        "cells": [
            [result.cell(i, t).to_dict(ids) for t in range(len(result.targets))]
            for i in range(len(result.rows))
        ],
    }


def _diff(diff: ReachDiff) -> str:
    items = "".join(f"<li>{esc(line)}</li>" for line in diff.lines())
    return f"<h2>comparison</h2><p>{esc(diff.summary())}</p><ul>{items}</ul>"


def render_html(result: ReachResult, *, world: Any = None, diff: ReachDiff | None = None) -> str:
    """The whole report: one self-contained HTML document."""
    picture = ""
    if world is not None:
        if len(world.namespaces) <= TOPOLOGY_MAX_NAMESPACES:
            picture = f"<h2>topology</h2><div class='topology'>{topology_svg(world)}</div>"
        else:
            picture = (
                f"<p class='dim'>topology left out: {len(world.namespaces)} namespaces "
                "are too many for one picture</p>"
            )
    legend = (
        "<p class='legend'><span>✓ reachable</span><span>◐ k/n partial</span>"
        "<span>✗ unreachable</span><span class='dim'>colour: probability that a new "
        "connection completes · click a cell for its trace summary</span></p>"
    )
    return "\n".join(
        [
            "<!DOCTYPE html>",
            "<html lang='en'><head><meta charset='utf-8'>",
            f"<title>reach: {esc(result.scenario)} ({esc(result.mode)})</title>",
            f"<style>{CSS}</style></head><body>",
            f"<h1>Reachability — {esc(result.scenario)}</h1>",
            f"<p>mode <b>{esc(result.mode)}</b> · seed <b>{result.seed}</b> · "
            f"{esc(result.summary())}</p>",
            legend,
            _matrix(result, clickable=True),
            "<div id='details'>Click a cell to see how the connection went.</div>",
            _reasons(result),
            _diff(diff) if diff is not None else "",
            picture,
            f"<script type='application/json' id='reach-data'>{_embed(_data(result))}</script>",
            f"<script>{JS}</script>",
            "</body></html>",
            "",
        ]
    )


def matrix_fragment(result: ReachResult) -> str:
    """The notebook view (``_repr_html_``): the heatmap and the reasons, no script."""
    style = (
        "<style>table.matrix td.c{text-align:center;min-width:2em;border:1px solid #fff}"
        "table.matrix th{text-align:left;padding:0 6px}</style>"
    )
    return (
        f"{style}<div><b>{esc(result.summary())}</b></div>"
        f"{_matrix(result, clickable=False)}{_reasons(result)}"
    )
