"""The ``load`` command (registered on the main Typer app by :func:`register`).

``k8snet-sim load SCENARIO`` runs the scenario's ``traffic:`` in simulated time and prints
throughput, latency and setup percentiles, errors, the spread over endpoints, CPU per node and
link use; ``--json`` prints the result as JSON, ``--plot DIR`` writes the pictures,
``--duration S`` replaces every entry's duration. A progress bar of simulated time shows on a
terminal. Exit status: 0, or 2 on bad input.

Example
-------
>>> _seconds("250ms"), _seconds("2")
(0.25, 2.0)
"""

# No `from __future__ import annotations`: Typer reads the option annotations at runtime.
from pathlib import Path
from typing import Annotated

import typer


def _seconds(text: str) -> float:
    """A duration option: seconds, or a value with a unit (``500ms``, ``2s``, ``2min``)."""
    from k8snet_sim.scenario.units import parse_duration

    try:
        seconds = float(parse_duration(text))
    except ValueError as err:
        message, _, hint = str(err).partition(" | hint: ")
        raise typer.BadParameter(
            f"{message} ({hint})" if hint else message, param_hint="--duration"
        ) from None
    if seconds <= 0:
        raise typer.BadParameter(
            f"{text!r}: a run must last longer than 0", param_hint="--duration"
        )
    return seconds


def register(app: typer.Typer) -> None:
    """Add the ``load`` command to ``app``."""
    from k8snet_sim.cli import (
        JsonOpt,
        ModeOpt,
        ScenarioArg,
        SeedOpt,
        SetOpt,
        _load,
        check_output_dir,
        console,
        emit_json,
        handle_errors,
    )

    plot_help = "Write pictures (latency CDF, throughput, endpoints, CPU) into DIR."
    duration_help = "Run every traffic entry for this long (e.g. 2s, 500ms)."
    model_help = "Bulk transfers: flow (fluid max-min, fast) or packet (every data train)."

    @app.command()
    @handle_errors
    def load(
        scenario: ScenarioArg,
        plot: Annotated[Path | None, typer.Option("--plot", help=plot_help)] = None,
        duration: Annotated[str | None, typer.Option("--duration", help=duration_help)] = None,
        bulk_model: Annotated[str, typer.Option("--bulk-model", help=model_help)] = "flow",
        mode: ModeOpt = None,
        set_: SetOpt = None,
        seed: SeedOpt = 0,
        as_json: JsonOpt = False,
    ) -> None:
        """Run the scenario's traffic: in simulated time: throughput, latency, CPU, drops."""
        import sys

        from k8snet_sim.analysis.load import load_run
        from k8snet_sim.report.load_report import print_load, write_plots

        seconds = _seconds(duration) if duration is not None else None
        if plot is not None:
            check_output_dir(plot, "--plot")
        _, sim = _load(scenario, mode, set_, seed)
        if sys.stdout.isatty() and not as_json:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            columns = (
                TextColumn("simulated {task.completed:.3f} / {task.total:.3f} s"),
                BarColumn(),
                TimeElapsedColumn(),
            )
            with Progress(*columns, console=console, transient=True) as bar:
                task = bar.add_task("load", total=1.0)

                def tick(done: float, total: float) -> None:
                    bar.update(task, completed=done, total=total)

                result = load_run(sim, duration=seconds, progress=tick, bulk_model=bulk_model)
        else:
            result = load_run(sim, duration=seconds, bulk_model=bulk_model)
        written = write_plots(result, plot) if plot is not None else []
        if as_json:
            emit_json(result.to_dict())
            return
        print_load(result, console)
        for path in written:
            console.print(f"picture written to {path}")
