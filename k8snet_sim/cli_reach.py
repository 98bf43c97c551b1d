"""The ``reach`` command (registered on the main Typer app by :func:`register`).

``k8snet-sim reach SCENARIO`` prints the reachability matrix of a scenario; ``--format``
chooses table (default), md, html, json or csv, ``-o FILE`` writes it atomically instead.
``--compare-mode MODE`` / ``--compare OTHER.yaml`` add the cells that differ from the same
scenario under another kube-proxy mode / another scenario (same ``--set`` and ``--seed``).
Exit status: 0 (differences are information), 1 with ``--fail-on-diff`` when cells differ,
2 on bad input.

Example
-------
>>> _labels("iptables", "userspace", "a", "a", "a.yaml", "a.yaml")
('iptables', 'userspace')
"""

# No `from __future__ import annotations`: Typer reads the option annotations at runtime, and
# they name helpers imported inside register().
import sys
from pathlib import Path
from typing import Annotated

import typer


def _labels(
    mode_a: str, mode_b: str, name_a: str, name_b: str, file_a: str, file_b: str
) -> tuple[str, str]:
    """How the two sides of a comparison are called: modes, else scenario names, else files."""
    if mode_a != mode_b:
        return mode_a, mode_b
    if name_a != name_b:
        return name_a, name_b
    return file_a, file_b


def register(app: typer.Typer) -> None:
    """Add the ``reach`` command to ``app``."""
    from k8snet_sim.cli import (
        JsonOpt,
        ModeOpt,
        ScenarioArg,
        SeedOpt,
        SetOpt,
        _load,
        check_output_file,
        console,
        err_console,
        handle_errors,
        parse_modes,
    )

    @app.command()
    @handle_errors
    def reach(
        scenario: ScenarioArg,
        fmt: Annotated[
            str, typer.Option("--format", "-f", help="table, md, html, json or csv.")
        ] = "table",
        output: Annotated[
            Path | None,
            typer.Option("--output", "-o", help="Write the report to FILE (atomically)."),
        ] = None,
        sources: Annotated[
            list[str] | None,
            typer.Option(
                "--from",
                help="Source reference or glob, e.g. 'pod/default/*' (repeatable; default: "
                "every pod, node, host and router).",
            ),
        ] = None,
        targets: Annotated[
            list[str] | None,
            typer.Option(
                "--to",
                help="Target reference or glob (repeatable; default: every Service frontend "
                "and Ingress URL).",
            ),
        ] = None,
        expand_pods: Annotated[
            bool,
            typer.Option("--expand-pods", help="One row per pod instead of per workload and node."),
        ] = False,
        compare_mode: Annotated[
            str | None,
            typer.Option(
                "--compare-mode",
                help="Also compute under this kube-proxy mode and report the cells that differ.",
            ),
        ] = None,
        compare: Annotated[
            Path | None,
            typer.Option(
                "--compare",
                help="Also compute this other scenario and report the cells that differ.",
            ),
        ] = None,
        fail_on_diff: Annotated[
            bool,
            typer.Option("--fail-on-diff", help="Exit 1 when the comparison finds differences."),
        ] = False,
        jobs: Annotated[
            int, typer.Option("--jobs", "-j", help="Worker processes for the computations.", min=1)
        ] = 1,
        mode: ModeOpt = None,
        set_: SetOpt = None,
        seed: SeedOpt = 0,
        as_json: JsonOpt = False,
    ) -> None:
        """Reachability matrix: who can reach what, and if not, why not."""
        from k8snet_sim.analysis.reach import compare_reach
        from k8snet_sim.analysis.reach import reach as run_reach
        from k8snet_sim.report.files import atomic_write_text, atomic_write_with
        from k8snet_sim.report.reach_formats import (
            FORMATS,
            diff_view,
            print_reach,
            render,
            write_csv,
        )

        fmt = "json" if as_json else fmt
        if fmt not in FORMATS:
            raise typer.BadParameter(
                f"{fmt!r}: use one of {', '.join(FORMATS)}", param_hint="--format"
            )
        if compare_mode is not None:
            modes = parse_modes(compare_mode, "--compare-mode")
            if len(modes) > 1:
                raise typer.BadParameter(
                    f"{compare_mode!r}: one mode to compare with", param_hint="--compare-mode"
                )
            compare_mode = modes[0]
        loaded, sim = _load(scenario, mode, set_, seed)
        if output is not None:
            check_output_file(output, "--output", [loaded])
        result = run_reach(
            sim, sources, targets, expand_pods=expand_pods, samples=fmt == "html", jobs=jobs
        )
        diff = None
        if compare_mode is not None or compare is not None:
            other_file = compare or scenario
            # The same file again (another mode) has had its warnings printed already.
            again = compare is None or compare.resolve() == scenario.resolve()
            other_loaded, other_sim = _load(
                other_file, compare_mode or mode, set_, seed, warn=not again
            )
            if output is not None:
                check_output_file(output, "--output", [other_loaded])
            other = run_reach(other_sim, sources, targets, expand_pods=expand_pods, jobs=jobs)
            labels = _labels(
                result.mode,
                other.mode,
                loaded.name,
                other_loaded.name,
                str(scenario),
                str(other_file),
            )
            diff = compare_reach(result, other, labels=labels)
        if output is None and fmt == "table":
            print_reach(result, console, diff)
        else:
            if output is not None:
                if fmt == "csv":  # streamed: a large matrix's CSV need not fit in memory
                    atomic_write_with(output, lambda fh: write_csv(result, fh, jobs=jobs))
                else:
                    atomic_write_text(output, render(result, fmt, diff, world=sim.world))
                console.print(
                    f"{fmt} report written to {output}: {result.summary()}",
                    markup=False,
                    highlight=False,
                )
                if diff is not None:
                    console.print(diff_view(diff))
            else:
                sys.stdout.write(render(result, fmt, diff, world=sim.world))
                if diff is not None and fmt == "csv":
                    err_console.print(diff_view(diff))
        if fail_on_diff and diff:
            raise typer.Exit(1)
