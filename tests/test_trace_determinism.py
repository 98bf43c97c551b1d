"""Same scenario, same seed: byte-identical `trace --json`; and the CLI's exit statuses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "k8snet_sim", *args],
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=300,
    )


def test_trace_json_is_byte_identical_for_a_seed() -> None:
    args = (
        "trace",
        "scenarios/external-clusterip.yaml",
        "--from",
        "host/office",
        "--to",
        "service/default/web:80",
        "--seed",
        "7",
        "--json",
    )
    first, second = _cli(*args), _cli(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    data = json.loads(first.stdout)
    for key in (
        "reachable",
        "disposition",
        "reason",
        "endpoint",
        "possibleEndpoints",
        "sourceSeenByBackend",
        "hops",
        "replyHops",
    ):
        assert key in data
    assert {"t", "node", "action", "packet"} <= set(data["hops"][0])


def test_bad_input_exits_2_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: k8snet-sim.io/v1alpha1\nkind: Scenario\nmetadata: {name: x}\n"
        "cluster: {serviceCIDR: 10.96.0.0/33, nodes: []}\n"
    )
    result = _cli("validate", str(bad))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{bad}:4:" in result.stderr


def test_unknown_endpoint_exits_2() -> None:
    result = _cli(
        "trace",
        "scenarios/two-node-host-gw.yaml",
        "--from",
        "pod/default/nope",
        "--to",
        "service/default/web:80",
    )
    assert result.returncode == 2 and "unknown endpoint pod/default/nope" in result.stderr


def test_check_exit_status_reflects_expectations() -> None:
    ok = _cli("check", "scenarios/two-node-host-gw.yaml")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    failing = _cli(
        "check", "scenarios/broken-return-route.yaml", "--set", "network.routers[0].routes=[]"
    )
    assert failing.returncode == 1
