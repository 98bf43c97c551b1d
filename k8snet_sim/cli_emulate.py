"""The ``emulate`` command (registered on the main Typer app by :func:`register`).

``k8snet-sim emulate SCENARIO [--reach] [--compare] [--json] [--keep]`` builds the scenario in
Linux network namespaces with the rules the simulator generated, probes it with real sockets
and, with ``--compare``, prints an agreement table (exit 1 on any disagreement). Root only.
``k8snet-sim emulate-cleanup RUN`` removes what a ``--keep`` run left behind.
"""

# No `from __future__ import annotations`: Typer evaluates the command's annotations, and the
# option types are imported inside register() (importing k8snet_sim.cli here would be circular).
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from k8snet_sim.emulate.compare import EmulationReport

STATUS_STYLE = {
    "agree": "green",
    "DISAGREE": "bold red",
    "skipped": "dim",
    "probed": "",
    "kernel lacks br_netfilter": "yellow",
}


def render(report: "EmulationReport", console: "Console") -> None:
    """The agreement table (or, without comparison, the kernel's answers)."""
    from rich.table import Table

    table = Table(
        title=f"{report.scenario} ({report.mode}) — kernel run {report.run_id}", show_lines=False
    )
    table.add_column("cell", overflow="fold")
    if report.compared:
        table.add_column("simulator", overflow="fold")
    table.add_column("kernel", overflow="fold")
    table.add_column("agree?" if report.compared else "status")
    for cell in report.cells:
        status = cell.status
        shown = {"agree": "yes", "DISAGREE": "NO"}.get(status, status)
        row = [cell.probe.cell]
        if report.compared:
            row.append(cell.simulator.summary() if cell.simulator else "—")
        row.append(cell.kernel.summary())
        row.append(
            f"[{STATUS_STYLE.get(status, '')}]{shown}[/]" if STATUS_STYLE.get(status) else shown
        )
        table.add_row(*row)
    console.print(table)
    for cell in report.cells:
        for diff in cell.differences:
            console.print(f"  {cell.probe.cell}: {diff}", markup=False, highlight=False)
    for note in report.notes:
        console.print(f"note: {note}", markup=False, highlight=False)
    console.print(report.summary(), markup=False, highlight=False)
    if report.kept:
        console.print(
            f"kept {len(report.namespaces)} namespaces (k8ns-{report.run_id}-*); "
            f"remove them with: k8snet-sim emulate-cleanup {report.run_id}",
            markup=False,
            highlight=False,
        )


def register(app: typer.Typer) -> None:
    """Add the ``emulate`` and ``emulate-cleanup`` commands to ``app``."""
    from k8snet_sim.cli import (
        JsonOpt,
        ModeOpt,
        ScenarioArg,
        SeedOpt,
        SetOpt,
        console,
        emit_json,
        handle_errors,
        warn_likely_typos,
    )

    @app.command()
    @handle_errors
    def emulate(
        scenario: ScenarioArg,
        mode: ModeOpt = None,
        set_: SetOpt = None,
        seed: SeedOpt = 0,
        reach: Annotated[
            bool,
            typer.Option(
                "--reach",
                help="Also probe the cells of `k8snet-sim reach`: every pod, node, host and "
                "router × every Service frontend.",
            ),
        ] = False,
        compare: Annotated[
            bool,
            typer.Option(
                "--compare", help="Run the simulator on the same cells; exit 1 on any disagreement."
            ),
        ] = False,
        as_json: JsonOpt = False,
        keep: Annotated[
            bool,
            typer.Option(
                "--keep",
                help="Leave the namespaces and servers running for inspection "
                "(remove them with emulate-cleanup).",
            ),
        ] = False,
        run_id: Annotated[
            str | None,
            typer.Option(
                "--run-id",
                help="Name part of this run's namespaces (k8ns-RUN-…); random if not given.",
            ),
        ] = None,
    ) -> None:
        """Build the scenario in Linux network namespaces with real iptables/nftables and
        probe it with real sockets (root only)."""
        from k8snet_sim.api import load_checked
        from k8snet_sim.emulate import emulate as run_emulation
        from k8snet_sim.emulate.janitor import require_root
        from k8snet_sim.emulate.plan import check_run_id
        from k8snet_sim.errors import K8sNetSimError

        require_root()
        if run_id is not None:
            try:
                check_run_id(run_id)
            except ValueError as err:
                raise K8sNetSimError(str(err)) from None
        loaded = load_checked(scenario, overrides=set_ or (), mode=mode)
        warn_likely_typos(loaded)
        report = run_emulation(
            loaded, seed=seed, reach=reach, compare=compare, run_id=run_id, keep=keep
        )
        if as_json:
            emit_json(report.to_dict())
        else:
            render(report, console)
        if compare and not report.passed:
            raise typer.Exit(1)

    @app.command("emulate-cleanup")
    @handle_errors
    def emulate_cleanup(
        run: Annotated[str, typer.Argument(help="Run id printed by emulate --keep, or 'all'.")],
    ) -> None:
        """Remove the namespaces (and the processes in them) of a kept emulate run."""
        from k8snet_sim.emulate.janitor import cleanup_run, leftovers, require_root
        from k8snet_sim.emulate.plan import check_run_id

        require_root()
        runs = {n.split("-")[1] for n in leftovers()} if run == "all" else {run}
        for r in runs:
            check_run_id(r)
        removed = [item for r in sorted(runs) for item in cleanup_run(r)]
        console.print(f"removed {len(removed)} namespaces and processes", highlight=False)
