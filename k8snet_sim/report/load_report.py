"""Rendering a load run: rich tables for the terminal, matplotlib pictures for ``--plot DIR``.

Pictures: the latency CDF of every traffic entry, throughput over time, requests per endpoint,
and CPU per node split by process (plus CPU over time). Every file is written atomically.

Example
-------
>>> fmt_rate(2.5e9), fmt_rate(1234.0)
('2.50 Gbit/s', '1.23 kbit/s')
"""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from k8snet_sim.report.files import atomic_write_bytes
from k8snet_sim.report.terminal import fmt_time

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from k8snet_sim.analysis.load import LoadResult

PROCESS_COLORS = {
    "kernel": "#6baed6",
    "kube-proxy": "#fd8d3c",
    "ingress": "#74c476",
    "app": "#9e9ac8",
}


def fmt_rate(bps: float) -> str:
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= scale:
            return f"{bps / scale:.2f} {unit}"
    return f"{bps:.0f} bit/s"


def load_view(result: LoadResult) -> Group:
    """Traffic, CPU, links and drops as rich tables."""
    lo, hi = result.window
    head = Text(
        f"{result.scenario} — kube-proxy {result.mode}, seed {result.seed}, "
        f"measured {fmt_time(hi - lo)} (bulk model: {result.bulk_model})\n",
        style="bold",
    )
    traffic = Table(title="traffic", title_justify="left")
    for col in (
        "entry",
        "kind",
        "req/s",
        "throughput",
        "setup p50",
        "latency p50",
        "p90",
        "p99",
        "errors",
        "endpoints",
    ):
        traffic.add_column(
            col, justify="left" if col in ("entry", "kind", "errors", "endpoints") else "right"
        )
    for t in result.traffic:
        errors = ", ".join(f"{k} {v}" for k, v in t.errors.items()) or "—"
        spread = ", ".join(f"{k.rsplit('/', 1)[-1]} {v}" for k, v in t.per_endpoint.items())
        # No connection opened (keepalive) or nothing answered in the window: nothing to show.
        setup = fmt_time(t.setup["p50"]) if t.connections else "—"
        latency = [fmt_time(t.latency[q]) if t.latencies else "—" for q in ("p50", "p90", "p99")]
        traffic.add_row(
            t.name,
            t.kind,
            f"{t.requests_per_second:.1f}",
            fmt_rate(t.throughput_bps),
            setup,
            *latency,
            Text(errors, style="red" if t.errors else ""),
            spread or "—",
        )
    cpu = Table(title="CPU (share of all cores over the window)", title_justify="left")
    for col in ("node", "cores", "CPU", "by process"):
        cpu.add_column(col)
    for c in [*result.nodes, *result.hosts]:
        split = ", ".join(f"{k} {v:.1%}" for k, v in c.by_process.items() if v > 0)
        cpu.add_row(
            c.name if c.kind == "node" else f"{c.name} ({c.kind})",
            str(c.cores),
            f"{c.utilisation:.1%}",
            split,
        )
    links = Table(title="links (egress queues)", title_justify="left")
    for col in ("link", "bandwidth", "utilisation", "bytes", "drops"):
        links.add_column(col)
    for link in sorted(result.links, key=lambda x: -x.utilisation)[:12]:
        links.add_row(
            link.name,
            fmt_rate(link.bandwidth_bps),
            f"{link.utilisation:.1%}",
            f"{link.bytes:,}",
            Text(str(link.drops), style="red" if link.drops else ""),
        )
    drops = result.drops
    tail = Text(
        f"drops: link queues {drops['linkQueue']}, conntrack full {drops['conntrackFull']}",
        style="red" if drops["linkQueue"] or drops["conntrackFull"] else "dim",
    )
    return Group(head, traffic, cpu, links, tail)


def load_html(result: LoadResult) -> str:
    """The notebook view: the summary line and two small tables."""

    def us(value: float, measured: bool) -> str:
        # Nothing measured is "—", as in the terminal table, not a setup time of 0.0 µs.
        return f"{value * 1e6:.1f}" if measured else "—"

    rows = "".join(
        f"<tr><td>{html.escape(t.name)}</td><td>{t.kind}</td>"
        f"<td>{t.requests_per_second:.1f}</td><td>{t.throughput_bps / 1e6:.2f}</td>"
        f"<td>{us(t.setup['p50'], bool(t.connections))}</td>"
        f"<td>{us(t.latency['p50'], bool(t.latencies))}</td>"
        f"<td>{us(t.latency['p99'], bool(t.latencies))}</td><td>{sum(t.errors.values())}</td></tr>"
        for t in result.traffic
    )
    cpu = "".join(
        f"<tr><td>{html.escape(c.name)}</td><td>{c.utilisation:.1%}</td></tr>" for c in result.nodes
    )
    return (
        f"<p><b>{html.escape(result.summary())}</b></p>"
        "<table><tr><th>traffic</th><th>kind</th><th>req/s</th><th>Mbit/s</th>"
        "<th>setup p50 µs</th><th>latency p50 µs</th><th>p99 µs</th><th>errors</th></tr>"
        f"{rows}</table><table><tr><th>node</th><th>CPU</th></tr>{cpu}</table>"
    )


def print_load(result: LoadResult, console: Console | None = None) -> None:
    (console or Console()).print(load_view(result))


def _save(fig: Figure, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(
        buf,
        format=path.suffix.lstrip(".") or "png",
        dpi=110,
        bbox_inches="tight",
        metadata={"Software": None} if path.suffix in ("", ".png") else None,
    )
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def write_plots(result: LoadResult, directory: str | Path, *, fmt: str = "png") -> list[Path]:
    """Write the pictures of ``result`` into ``directory``; returns the files written."""
    out = Path(directory)
    written = [
        _save(_latency_cdf(result), out / f"latency-cdf.{fmt}"),
        _save(_throughput(result), out / f"throughput.{fmt}"),
        _save(_endpoints(result), out / f"endpoints.{fmt}"),
        _save(_cpu(result), out / f"cpu.{fmt}"),
    ]
    return written


def _title(result: LoadResult, what: str) -> str:
    return f"{what} — {result.scenario} ({result.mode})"


def _latency_cdf(result: LoadResult) -> Figure:
    fig, ax = plt.subplots(figsize=(7, 4))
    for t in result.traffic:
        if not t.latencies:
            continue
        xs = sorted(x * 1e3 for x in t.latencies)
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        ax.step(xs, ys, where="post", label=f"{t.name} ({t.kind})")
    ax.set_xscale("log")
    ax.set_xlabel(
        "latency (ms, log scale)"
        + (" — bulk: flow completion time" if any(t.kind == "bulk" for t in result.traffic) else "")
    )
    ax.set_ylabel("fraction of requests")
    ax.set_ylim(0, 1.01)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title(_title(result, "latency CDF"))
    return fig


def _throughput(result: LoadResult) -> Figure:
    fig, ax = plt.subplots(figsize=(7, 4))
    peaks = []
    for t in result.traffic:
        if t.series:
            ax.plot([x for x, _ in t.series], [y / 1e6 for _, y in t.series], label=t.name)
            peaks.append(max(y for _, y in t.series))
    # Request streams of a few Mbit/s beside a bulk transfer of Gbit/s would lie flat on zero:
    # a log axis shows both once the entries differ by more than a factor of 100.
    if len(peaks) > 1 and min(peaks) > 0 and max(peaks) > 100 * min(peaks):
        ax.set_yscale("log")
    if result.window[0] > result.start:
        ax.axvspan(result.start, result.window[0], color="#dddddd", alpha=0.6, label="warm-up")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("throughput (Mbit/s)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    ax.set_title(_title(result, "throughput over time"))
    return fig


def _endpoints(result: LoadResult) -> Figure:
    entries = [t for t in result.traffic if t.per_endpoint]
    fig, axes = plt.subplots(
        1, max(1, len(entries)), figsize=(3.5 * max(1, len(entries)), 3.6), squeeze=False
    )
    for ax, t in zip(axes[0], entries, strict=False):
        names = list(t.per_endpoint)
        ax.bar(range(len(names)), [t.per_endpoint[n] for n in names], color="#6baed6")
        ax.set_xticks(
            range(len(names)),
            [n.rsplit("/", 1)[-1] for n in names],
            rotation=45,
            ha="right",
            fontsize="small",
        )
        ax.set_title(t.name, fontsize="medium")
        ax.set_ylabel("requests" if t.kind != "bulk" else "flows")
    if not entries:
        axes[0][0].text(0.5, 0.5, "no completed requests", ha="center", va="center")
    fig.suptitle(_title(result, "requests per endpoint"))
    fig.tight_layout()
    return fig


def _cpu(result: LoadResult) -> Figure:
    fig, (bars, series) = plt.subplots(1, 2, figsize=(10, 4))
    owners = [*result.nodes, *result.hosts]
    processes = sorted({p for c in owners for p in c.by_process})
    bottom = [0.0] * len(owners)
    for process in processes:
        values = [c.by_process.get(process, 0.0) * 100 for c in owners]
        bars.bar(
            range(len(owners)),
            values,
            bottom=bottom,
            label=process,
            color=PROCESS_COLORS.get(process),
        )
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    bars.set_xticks(range(len(owners)), [c.name for c in owners], rotation=30, ha="right")
    bars.set_ylabel("CPU (% of all cores)")
    bars.set_title("CPU per node, by process")
    bars.legend(fontsize="small")
    for owner, points in sorted(result.cpu_series.items()):
        series.plot([t for t, _ in points], [u * 100 for _, u in points], label=owner)
    series.set_xlabel("simulated time (s)")
    series.set_ylabel("CPU (% of all cores)")
    series.set_title("CPU over time")
    series.grid(True, alpha=0.3)
    if result.cpu_series:
        series.legend(fontsize="small")
    fig.suptitle(_title(result, "CPU"))
    fig.tight_layout()
    return fig
