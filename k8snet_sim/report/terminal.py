"""Terminal views (rich): a trace as a hop table, with times, rules and rewrites.

Example
-------
>>> fmt_time(0.000123456)
'123.5µs'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from k8snet_sim.analysis.check import CheckResult
    from k8snet_sim.analysis.compare import ModeComparison
    from k8snet_sim.analysis.iptables_trace import IptablesTraceResult
    from k8snet_sim.analysis.trace import TraceResult
    from k8snet_sim.sim.recorder import Hop

VERDICT_STYLE = {
    "DELIVERED": "bold green",
    "REPLY_LOST": "bold yellow",
}


def fmt_time(t: float) -> str:
    if t < 1e-3:
        return f"{t * 1e6:.1f}µs"
    if t < 1:
        return f"{t * 1e3:.3f}ms"
    return f"{t:.3f}s"


def _hop_lines(title: str, hops: list[Hop], t0: float, *, details: bool = True) -> Text:
    """One block per hop: time, namespace and what it did; then rules, rewrites, the packet."""
    out = Text(f"{title}\n", style="bold underline")
    for h in hops:
        style = {
            "drop": "red",
            "reject": "red",
            "no-route": "red",
            "stray": "yellow",
            "refused": "red",
            "ttl": "red",
            "proxy": "bold cyan",
        }.get(h.verdict, "")
        out.append(f"{fmt_time(h.t - t0):>10}  ", style="dim")
        out.append(f"{h.node}", style="cyan")
        out.append(f"  {h.action}\n", style=style)
        if details:
            for rule in h.rules:
                out.append(f"{'':12}· {rule}\n", style="magenta")
            for rw in h.rewrites:
                out.append(f"{'':12}⇒ {rw}\n", style="bold blue")
        if h.packet:
            out.append(f"{'':12}{h.label}: {h.packet}\n", style="dim")
    return out


def trace_view(result: TraceResult, *, details: bool = True, log: bool = False) -> Group:
    """The renderable for a trace: verdict line, request hops, reply hops, endpoints."""
    t0 = result.started_at
    style = VERDICT_STYLE.get(result.disposition, "bold red")
    head = Text()
    head.append(f"{result.source} → {result.target}", style="bold")
    head.append(
        f"  ({result.destination} {result.protocol}, mode {result.mode}, seed {result.seed})\n",
        style="dim",
    )
    head.append(f"{result.disposition}", style=style)
    head.append(f"  reachable={str(result.reachable).lower()}  ")
    head.append(result.reason)
    parts: list = [head]
    branches = _other_branches(result)
    if branches:
        parts.append(Text(branches, style="bold yellow"))
    if result.service:
        sv = result.service
        mapping = (
            f"service {sv['name']} ({sv['type']}): "
            f"port {sv['port']} → targetPort {sv['targetPort']}"
        )
        if sv.get("nodePort"):
            mapping += (
                f", nodePort {sv['nodePort']} (externalTrafficPolicy {sv['externalTrafficPolicy']})"
            )
        if result.http_status is not None:
            mapping += f"; HTTP {result.http_status}"
        parts.append(Text(mapping, style="dim"))
    if result.endpoint:
        ep = result.endpoint
        seen = (
            f", source seen by backend {result.source_seen_by_backend}"
            if result.source_seen_by_backend
            else ""
        )
        parts.append(
            Text(f"endpoint: {ep['pod']} {ep['ip']}:{ep['port']} on node {ep['node']}{seen}")
        )
    parts.append(_hop_lines("request (first packet)", result.hops, t0, details=details))
    if result.reply_hops:
        parts.append(
            _hop_lines("reply (first packet back)", result.reply_hops, t0, details=details)
        )
    if log:
        parts.append(_hop_lines("every packet", result.log, t0, details=details))
    if result.possible_endpoints:
        table = Table(
            title="possible endpoints (every branch of the random choices)", title_justify="left"
        )
        for col in ("endpoint", "pod", "probability", "verdict", "source seen"):
            table.add_column(col)
        for row in result.possible_endpoints:
            where = f"{row['ip']}:{row['port']}" if row["ip"] else "—"
            table.add_row(
                where,
                row["pod"] or "—",
                f"{row['probability']:.4f}",
                Text(row["disposition"], style=VERDICT_STYLE.get(row["disposition"], "red")),
                row.get("sourceSeenByBackend") or "—",
            )
        parts.append(table)
    return Group(*parts)


def _other_branches(result: TraceResult) -> str:
    """A warning under the verdict when other branches of the random choices end differently:
    the headline is one seeded sample, and a reader skimming it must not miss the rest.

    >>> from types import SimpleNamespace
    >>> rows = [{"disposition": "DELIVERED", "probability": 1 / 3},
    ...         {"disposition": "REPLY_LOST", "probability": 2 / 3}]
    >>> r = SimpleNamespace(disposition="DELIVERED", seed=0, possible_endpoints=rows)
    >>> print(_other_branches(r))  # doctest: +NORMALIZE_WHITESPACE
    seed 0 took one branch; every branch: REPLY_LOST p=0.667, DELIVERED p=0.333
    (see possible endpoints below)
    """
    shares: dict[str, float] = {}
    for row in result.possible_endpoints:
        shares[row["disposition"]] = shares.get(row["disposition"], 0.0) + row["probability"]
    if set(shares) <= {result.disposition}:
        return ""
    listed = ", ".join(f"{d} p={p:.3f}" for d, p in sorted(shares.items(), key=lambda kv: -kv[1]))
    return (
        f"seed {result.seed} took one branch; every branch: {listed} (see possible endpoints below)"
    )


def print_trace(result: TraceResult, console: Console | None = None, **kw: bool) -> None:
    (console or Console()).print(trace_view(result, **kw))


def print_check(result: CheckResult, console: Console | None = None) -> None:
    """One line per expectation (✓ / ✗ / skipped), failures with their trace summary."""
    console = console or Console()
    for r in result.results:
        label = r.description or f"{r.source} → {r.target}"
        if not r.applies:
            console.print(Text(f"  –  {label} (not for this mode/settings)", style="dim"))
            continue
        if r.passed:
            console.print(Text("  ✓  ", style="bold green") + Text(label))
            continue
        console.print(Text("  ✗  ", style="bold red") + Text(label))
        for failure in r.failures:
            console.print(Text(f"       {failure}", style="red"))
        if r.trace is not None:
            console.print(Text(f"       trace: {r.trace.summary()}", style="dim"))
    style = "bold green" if result.passed else "bold red"
    console.print(Text(result.summary(), style=style))


def print_comparison(result: ModeComparison, console: Console | None = None) -> None:
    """One row per kube-proxy mode, then the reasons for failures."""
    console = console or Console()
    table = Table(
        title=f"{result.scenario}: {result.source} → {result.target}", title_justify="left"
    )
    from k8snet_sim.analysis.compare import COLUMNS

    for col in COLUMNS:
        table.add_column(col)
    style = {"all": "bold green", "partial": "bold yellow", "none": "bold red", "error": "red"}
    for r in result.rows:
        table.add_row(
            r.mode,
            Text(r.reachable, style=style.get(r.reachable, "")),
            "\n".join(f"{n} ({p:.2f}){'' if ok else ' ✗'}" for n, p, ok in r.branches) or "—",
            ", ".join(r.source_seen) or "—",
            r.sampled or "—",
            f"{r.rules_walked} / {r.map_lookups}",
            str(r.hops),
            str(r.connections),
        )
    console.print(table)
    for r in result.rows:
        # One line per kind of failure: the first reason, and how many endpoints share it.
        kinds: dict[str, list[str]] = {}
        for failure in r.failures:
            kinds.setdefault(failure.split(":", 1)[0], []).append(failure)
        for kind, failures in kinds.items():
            more = f" (×{len(failures)} endpoints, e.g.)" if len(failures) > 1 else ""
            console.print(
                Text(f"  {r.mode}: {kind}{more}{failures[0].split(':', 1)[1]}", style="yellow")
            )
        if r.reachable == "error":
            console.print(Text(f"  {r.mode}: {r.reason}", style="red"))
    if any(f.startswith("REPLY_LOST") for r in result.rows for f in r.failures):
        console.print(Text(REPLY_LOST_FIX, style="dim"))


# What a reader of a lost reply wants to know next (the lesson of scenarios/external-clusterip).
REPLY_LOST_FIX = (
    "  a reply that bypasses the node that did the DNAT is never un-NATed: masquerade sources "
    "from outside the cluster there (cluster.kubeProxy.clusterCIDR set to the pod range, or "
    "masqueradeAll: true), or route the replies back through that node"
)


def print_iptables_trace(
    result: IptablesTraceResult, console: Console | None = None, *, verbose: bool = False
) -> None:
    console = console or Console()
    console.print(Text(result.summary(), style="bold"))
    console.print(f"output: {', '.join(result.output) or '(nothing matched)'}")
    console.print(f"masquerade: {str(result.masquerade).lower()}")
    if result.added_jumps:
        console.print(
            Text(
                f"(added {len(result.added_jumps)} jump rules kube-proxy installs in the "
                "builtin chains: the dump had none)",
                style="dim",
            )
        )
    for i, b in enumerate(result.branches, 1):
        outcome = b.verdict or (
            f"DNAT → {b.destination}" if b.destination else "accepted, not translated"
        )
        line = Text(
            f"  branch {i} (p={b.probability:.4f}): {outcome}"
            + (", masqueraded" if b.masquerade else "")
            + f"  [{' → '.join(b.path)}]"
        )
        console.print(line)
        if verbose:
            for event in b.events:
                console.print(Text(f"      · {event}", style="magenta"))
