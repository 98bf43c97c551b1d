"""The ``k8snet-sim`` command line: a thin Typer front end over the library.

Exit status: 0 fine, 1 an expectation or comparison failed, 2 bad input. Every command takes
``--mode``, ``--set dotted.key=value`` and ``--seed``; ``--json`` where it prints results.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from k8snet_sim.errors import K8sNetSimError, ScenarioError

app = typer.Typer(
    name="k8snet-sim",
    help="Simulate Kubernetes service networking: trace packets, check reachability, measure load.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped output gets a wide console: hop lines carry rule comments and packets. Diagnostics are
# printed with soft_wrap: a ``file:line:col: path: message`` line is never broken.
console = Console(width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)

F = TypeVar("F", bound=Callable[..., Any])

ModeOpt = Annotated[str | None, typer.Option("--mode", help="Override the kube-proxy mode.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a scenario field: dotted.key=value (repeatable)."),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the simulation's random generator.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
ScenarioArg = Annotated[Path, typer.Argument(help="Scenario file (YAML).", show_default=False)]


def handle_errors(fn: F) -> F:
    """Bad input → a clear message on stderr and exit status 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ScenarioError as err:
            err_console.print(err.render(), markup=False, highlight=False, soft_wrap=True)
            err_console.print(f"{len(err.diagnostics)} error(s).", style="bold red")
            raise typer.Exit(2) from None
        except K8sNetSimError as err:
            err_console.print(f"error: {err}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except BrokenPipeError:  # the reader went away (`| head`): nothing left to say
            # Point stdout at /dev/null so that the flush at exit does not fail again (the
            # recipe of Python's signal module documentation).
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(0) from None
        except OSError as err:  # a report or picture that cannot be written where asked
            where = f"{err.filename}: " if err.filename else ""
            err_console.print(
                f"error: {where}{err.strerror or err}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def check_output_file(path: Path, option: str, inputs: Any = ()) -> None:
    """Refuse, before any work, an output that is a directory or one of the run's inputs
    (a scenario or a manifest file it names): nothing the user wrote is ever overwritten.
    ``inputs`` are loaded scenarios."""
    if path.is_dir():
        raise K8sNetSimError(f"{option} {path}: is a directory", hint="name a file to write")
    if path.exists() and not path.is_file():
        # The report is written to a temporary file and renamed over the target: that would
        # replace a device or a pipe (/dev/stdout) with a plain file.
        raise K8sNetSimError(
            f"{option} {path}: is not a regular file (a device or a pipe)",
            hint=f"leave out {option} to print to standard output",
        )
    target = path.resolve()
    for loaded in inputs:
        files = {loaded.path, *(m.doc.file for m in loaded.manifests)} - {None}
        if any(Path(f).resolve() == target for f in files):
            raise K8sNetSimError(
                f"{option} {path}: is an input of this run; refusing to overwrite it",
                hint="write the output to another file",
            )


def check_output_dir(path: Path, option: str) -> None:
    """Refuse, before any work, an output directory that is an existing file."""
    if path.exists() and not path.is_dir():
        raise K8sNetSimError(
            f"{option} {path}: exists and is not a directory", hint="name a directory to write into"
        )


def check_picture_file(path: Path, option: str, inputs: Any = ()) -> None:
    """:func:`check_output_file`, and the suffix must be a format matplotlib writes."""
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    suffix = path.suffix.lstrip(".").lower()
    if suffix and suffix not in formats:
        raise K8sNetSimError(
            f"{option} {path}: cannot write a .{suffix} picture",
            hint="use one of " + ", ".join(f".{f}" for f in sorted(formats)),
        )
    check_output_file(path, option, inputs)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def parse_modes(text: str, option: str = "--modes") -> list[str]:
    """Comma-separated kube-proxy modes, each once, in the order given.

    >>> parse_modes("ipvs, iptables,ipvs")
    ['ipvs', 'iptables']
    """
    from k8snet_sim.sim.kubeproxy import MODES

    wanted = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    unknown = [m for m in wanted if m not in MODES]
    if unknown or not wanted:
        what = f"unknown mode {', '.join(map(repr, unknown))}" if unknown else "no mode given"
        raise K8sNetSimError(f"{option} {text!r}: {what}", hint="modes: " + ", ".join(MODES))
    return wanted


def warn_likely_typos(loaded: Any) -> None:
    """Name on stderr what the simulator skipped that looks misspelt (``selecter:``,
    ``kind: Servcie``): a typo would otherwise change results without a word. ``validate``
    lists everything skipped."""
    from k8snet_sim.scenario.modelbase import is_likely_typo

    for diagnostic in loaded.ignored:
        if is_likely_typo(diagnostic):
            err_console.print(
                f"warning: {diagnostic.render()}", markup=False, highlight=False, soft_wrap=True
            )


def _load(
    scenario: Path, mode: str | None, sets: list[str] | None, seed: int, *, warn: bool = True
) -> Any:
    from k8snet_sim.api import load_checked, simulate

    loaded = load_checked(scenario, overrides=sets or (), mode=mode)
    if warn:
        warn_likely_typos(loaded)
    return loaded, simulate(loaded, seed=seed)


@app.command()
@handle_errors
def validate(
    scenario: ScenarioArg,
    mode: ModeOpt = None,
    set_: SetOpt = None,
    seed: SeedOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Load and check a scenario; show what the control plane made of it and what is ignored."""
    from k8snet_sim.report.scenario import validate_report, validate_view

    loaded, sim = _load(scenario, mode, set_, seed, warn=False)
    report = validate_report(loaded, sim.world)
    if as_json:
        emit_json(report)
    else:
        console.print(validate_view(report))


@app.command()
@handle_errors
def trace(
    scenario: ScenarioArg,
    source: Annotated[
        str, typer.Option("--from", help="Source: pod/NS/NAME, node/N, host/N, router/N.")
    ],
    target: Annotated[str, typer.Option("--to", help="Target: service/NS/NAME:PORT, IP:PORT, …")],
    mode: ModeOpt = None,
    set_: SetOpt = None,
    seed: SeedOpt = 0,
    as_json: JsonOpt = False,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write the topology with the path (PNG/SVG).")
    ] = None,
    log: Annotated[
        bool, typer.Option("--log", help="Also show every packet of the connection.")
    ] = False,
) -> None:
    """Trace one connection hop by hop: request, reply, and every endpoint it could reach."""
    from k8snet_sim.analysis.trace import trace as run_trace
    from k8snet_sim.report.terminal import print_trace

    loaded, sim = _load(scenario, mode, set_, seed)
    if plot is not None:
        check_picture_file(plot, "--plot", [loaded])
    result = run_trace(sim, source, target)
    if plot is not None:
        from k8snet_sim.report.plot import save_topology

        save_topology(sim.world, plot, result)
    if as_json:
        emit_json(result.to_dict(log=log))
    else:
        print_trace(result, console, log=log)
        if plot is not None:
            console.print(f"picture written to {plot}")


@app.command()
@handle_errors
def rules(
    scenario: ScenarioArg,
    node: Annotated[str, typer.Option("--node", help="Node whose kube-proxy datapath to print.")],
    mode: ModeOpt = None,
    set_: SetOpt = None,
    seed: SeedOpt = 0,
) -> None:
    """Print the datapath configuration kube-proxy would write on a node."""
    from k8snet_sim.errors import UnknownEndpoint

    _, sim = _load(scenario, mode, set_, seed)
    configs = sim.world.info.get("rules", {})
    if node not in configs:
        raise UnknownEndpoint(f"node/{node}", hint="nodes: " + ", ".join(sorted(configs)))
    for _, text in configs[node].items():
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


@app.command("iptables-trace")
@handle_errors
def iptables_trace_cmd(
    rules_file: Annotated[
        Path, typer.Option("--rules", help="An iptables-save dump (or - for stdin).")
    ],
    src: Annotated[str, typer.Option("--src", help="Source IP of the packet.")],
    dst: Annotated[str, typer.Option("--dst", help="Destination IP:PORT.")],
    proto: Annotated[str, typer.Option("--proto", help="tcp, udp or sctp.")] = "tcp",
    local_ip: Annotated[
        list[str] | None, typer.Option("--local-ip", help="An address of the node (repeatable).")
    ] = None,
    as_json: JsonOpt = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show the rules each branch hit.")
    ] = False,
) -> None:
    """Trace a packet through a real iptables-save dump, as upstream's packet-flow tests do."""
    from k8snet_sim.analysis.iptables_trace import iptables_trace
    from k8snet_sim.errors import K8sNetSimError
    from k8snet_sim.net.addr import is_ip
    from k8snet_sim.report.terminal import print_iptables_trace

    host, _, port = dst.rpartition(":")
    if not host or not port.isdigit() or not is_ip(host) or not 1 <= int(port) <= 65535:
        raise K8sNetSimError(f"--dst {dst!r}: expected IP:PORT", hint="e.g. --dst 10.96.0.10:80")
    for option, value in [("--src", src), *(("--local-ip", a) for a in local_ip or ())]:
        if not is_ip(value):
            raise K8sNetSimError(
                f"{option} {value!r}: expected an IPv4 address", hint="e.g. 10.244.1.5"
            )
    try:
        text = sys.stdin.read() if str(rules_file) == "-" else rules_file.read_text()
    except OSError as err:
        raise K8sNetSimError(f"cannot read {rules_file}: {err.strerror}") from None
    result = iptables_trace(
        text,
        src=src,
        dst=host,
        dport=int(port),
        proto=proto,
        local_ips=local_ip or (),
        file=str(rules_file),
    )
    if as_json:
        emit_json(result.to_dict())
    else:
        print_iptables_trace(result, console, verbose=verbose)


@app.command()
@handle_errors
def check(
    scenario: ScenarioArg,
    mode: ModeOpt = None,
    set_: SetOpt = None,
    seed: SeedOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Evaluate the scenario's expect: list; exit 1 if any expectation fails."""
    from k8snet_sim.analysis.check import check as run_check
    from k8snet_sim.report.terminal import print_check

    loaded, sim = _load(scenario, mode, set_, seed)
    result = run_check(sim, loaded)
    if as_json:
        emit_json(result.to_dict())
    else:
        print_check(result, console)
    if not result.passed:
        raise typer.Exit(1)


@app.command()
@handle_errors
def compare(
    scenario: ScenarioArg,
    source: Annotated[str, typer.Option("--from", help="Source reference.")],
    target: Annotated[str, typer.Option("--to", help="Target reference.")],
    modes: Annotated[
        str, typer.Option("--modes", help="Comma-separated kube-proxy modes.")
    ] = "userspace,iptables,ipvs,nftables",
    set_: SetOpt = None,
    seed: SeedOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """The same connection under each kube-proxy mode, one row per mode."""
    from k8snet_sim.analysis.compare import compare_modes
    from k8snet_sim.api import load_checked
    from k8snet_sim.report.terminal import print_comparison

    wanted = parse_modes(modes)
    warn_likely_typos(load_checked(scenario, overrides=set_ or ()))
    result = compare_modes(scenario, source, target, modes=wanted, overrides=set_ or (), seed=seed)
    if as_json:
        emit_json(result.to_dict())
    else:
        print_comparison(result, console)


def _register_plugins() -> None:
    from k8snet_sim import cli_emulate, cli_reach

    cli_reach.register(app)
    cli_emulate.register(app)
    __import__("k8snet_sim.cli_load", fromlist=["register"]).register(app)


_register_plugins()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
