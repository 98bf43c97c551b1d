"""The command line on bad input: a clear message, exit status 2, no traceback, and nothing the
user wrote is overwritten. Misspelt manifest fields are named on stderr by every command."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from k8snet_sim.cli import app

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "external-clusterip.yaml"
RULES = ROOT / "examples" / "node1-iptables.rules"
LAPTOP = ["--from", "host/office", "--to", "service/default/web:80"]

runner = CliRunner()


def _run(*args: str) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def _bad_input(result: Any, message: str) -> None:
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # not a traceback
    assert message in result.stderr, result.stderr


def test_a_misspelt_manifest_field_is_named_on_stderr(tmp_path: Path) -> None:
    text = SCENARIO.read_text()
    assert text.count("      selector: {app: web}\n") == 1  # the Service's selector
    typo = tmp_path / "typo.yaml"
    typo.write_text(text.replace("      selector: {app: web}\n", "      selecter: {app: web}\n"))
    result = _run("trace", typo, *LAPTOP)
    assert result.exit_code == 0, result.output
    assert "warning: " in result.stderr and "spec.selecter: field not interpreted" in result.stderr
    assert "hint: did you mean `selector`?" in result.stderr
    clean = _run("trace", SCENARIO, *LAPTOP)
    assert clean.exit_code == 0 and "warning" not in clean.stderr
    twice = _run("reach", typo, "--compare-mode", "ipvs")  # the same file, loaded twice
    assert twice.exit_code == 0 and twice.stderr.count("warning: ") == 1, twice.stderr


def test_pictures_and_reports_are_checked_before_the_run(tmp_path: Path) -> None:
    _bad_input(_run("trace", SCENARIO, *LAPTOP, "--plot", tmp_path / "t.txt"), "picture")
    _bad_input(_run("trace", SCENARIO, *LAPTOP, "--plot", tmp_path), "is a directory")
    a_file = tmp_path / "plots"
    a_file.write_text("mine\n")
    _bad_input(_run("load", SCENARIO, "--plot", a_file), "not a directory")
    assert a_file.read_text() == "mine\n"
    missing = tmp_path / "no" / "such" / "dir"  # made on the way, as `load --plot` makes DIR
    written = _run("reach", SCENARIO, "-f", "csv", "-o", missing / "r.csv")
    assert written.exit_code == 0 and (missing / "r.csv").read_text().startswith("from,to,")


def test_a_report_never_overwrites_an_input(tmp_path: Path) -> None:
    copy = tmp_path / "s.yaml"
    shutil.copy(SCENARIO, copy)
    before = copy.read_bytes()
    _bad_input(_run("reach", copy, "-f", "csv", "-o", copy), "is an input of this run")
    _bad_input(_run("trace", copy, *LAPTOP, "--plot", copy), "cannot write a .yaml picture")
    assert copy.read_bytes() == before
    # A manifest file the scenario names is an input too.
    shutil.copy(ROOT / "scenarios" / "two-node-host-gw.yaml", tmp_path / "two.yaml")
    shutil.copytree(ROOT / "scenarios" / "manifests", tmp_path / "manifests")
    manifest = tmp_path / "manifests" / "web.yaml"
    before = manifest.read_bytes()
    _bad_input(_run("reach", tmp_path / "two.yaml", "-f", "md", "-o", manifest), "input of this")
    assert manifest.read_bytes() == before


def test_iptables_trace_rejects_bad_addresses() -> None:
    base = ["iptables-trace", "--rules", RULES]
    _bad_input(_run(*base, "--src", "10.0.0.300", "--dst", "10.96.0.10:80"), "--src")
    _bad_input(_run(*base, "--src", "10.0.0.3", "--dst", "10.96.0.999:80"), "--dst")
    _bad_input(_run(*base, "--src", "10.0.0.3", "--dst", "10.96.0.10:0"), "--dst")
    _bad_input(
        _run(*base, "--src", "10.0.0.3", "--dst", "10.96.0.10:80", "--local-ip", "foo"),
        "--local-ip",
    )


def test_modes_lists_are_checked() -> None:
    _bad_input(_run("compare", SCENARIO, *LAPTOP, "--modes", ""), "no mode given")
    _bad_input(_run("compare", SCENARIO, *LAPTOP, "--modes", "iptables,ipvs2"), "'ipvs2'")
    twice = _run("compare", SCENARIO, *LAPTOP, "--modes", "iptables, iptables", "--json")
    assert twice.exit_code == 0 and twice.stdout.count('"mode": "iptables"') == 1
    _bad_input(_run("reach", SCENARIO, "--compare-mode", "ipvs2"), "--compare-mode")
    two = _run("reach", SCENARIO, "--compare-mode", "ipvs,nftables")
    assert two.exit_code == 2 and "one mode to compare with" in two.output


def test_load_duration_must_be_positive() -> None:
    result = _run("load", SCENARIO, "--duration", "0s")
    assert result.exit_code == 2 and "longer than 0" in result.output
    units = _run("load", SCENARIO, "--duration", "10 parsecs")
    assert units.exit_code == 2 and "one of the units" in units.output


def test_a_reader_that_goes_away_ends_the_command_quietly() -> None:
    """`k8snet-sim rules … | head -1`: no traceback, no error message."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "k8snet_sim", "rules", str(SCENARIO), "--node", "master"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first line is written
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, stderr
    assert "Traceback" not in stderr and "error" not in stderr, stderr


def test_special_files_are_not_replaced_by_a_report() -> None:
    _bad_input(_run("reach", SCENARIO, "-f", "csv", "-o", "/dev/null"), "not a regular file")
    assert Path("/dev/null").is_char_device()
