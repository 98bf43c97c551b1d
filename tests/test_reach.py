"""reach(): matrices checked against trace, partial cells, a reason for each kind of failure,
grouped-vs-brute-force equivalence, comparisons, formats and the CLI's exit statuses."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from k8snet_sim.analysis import reach as reach_module
from k8snet_sim.analysis.reach import ReachResult, compare_reach, default_target_refs, reach
from k8snet_sim.analysis.trace import trace
from k8snet_sim.api import load
from k8snet_sim.cli import app
from k8snet_sim.errors import UnknownEndpoint
from k8snet_sim.report.reach_formats import render, render_json, render_table, write_csv

ROOT = Path(__file__).resolve().parents[1]
EQUIV = ROOT / "tests/data/reach-equivalence.yaml"
SCENARIOS = sorted((ROOT / "scenarios").glob("*.yaml"))


@pytest.fixture(scope="module")
def equiv() -> Any:
    """The equivalence world in iptables mode (reach() never runs the sim it is given)."""
    return load(EQUIV)


@pytest.fixture(scope="module")
def equiv_shared(equiv: Any) -> ReachResult:
    return reach(equiv)


@pytest.fixture(scope="module")
def equiv_brute(equiv: Any) -> ReachResult:
    return reach(equiv, share=False)


def _reach(path: Path | str, **kw: Any) -> ReachResult:
    mode = kw.pop("mode", None)
    sets = kw.pop("sets", ())
    return reach(load(ROOT / path, mode=mode, overrides=sets), **kw)


# ---------------------------------------------------------------------------- against trace


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_every_cell_of_a_bundled_scenario_matches_trace(path: Path) -> None:
    sim = load(path)
    result = reach(sim, expand_pods=True)
    assert result.members and result.targets
    for member in result.members:
        for column in result.targets:
            cell = result.member_cell(member.ref, column.ref)
            # A fresh fork per trace: trace() runs its sampled connection on the sim it gets.
            traced = trace(sim.fork(), member.ref, column.ref)
            assert list(cell.endpoints) == traced.possible_endpoints, (member.ref, column.ref)
            if cell.status != "partial":
                assert traced.reachable == (cell.status == "reachable"), (member.ref, column.ref)


def test_userspace_matrix_matches_trace() -> None:
    sim = load(ROOT / "scenarios/external-clusterip.yaml", mode="userspace")
    result = reach(sim)
    for member in result.members:
        for column in result.targets:
            traced = trace(sim.fork(), member.ref, column.ref)
            assert list(result.member_cell(member.ref, column.ref).endpoints) == (
                traced.possible_endpoints
            )
    assert result.counts() == {"reachable": 8, "partial": 0, "unreachable": 0}


# ---------------------------------------------------------------------------- partial cells


def test_founding_lesson_is_a_partial_cell() -> None:
    result = _reach("scenarios/external-clusterip.yaml")
    cell = result.cell("host/office", "service/default/web:80")
    assert cell.status == "partial" and cell.symbol == "◐"
    assert (cell.reachable, cell.total) == (1, 3)
    assert cell.probability == pytest.approx(1 / 3)
    assert [e["pod"] for e in cell.endpoints if e["reachable"]] == ["default/web-master"]
    assert {d for d, _ in cell.failures} == {"REPLY_LOST"}
    assert cell.source_seen == ["172.16.0.50"]
    assert cell.verdict() == "partial (1/3, REPLY_LOST)"
    assert result.cell("pod/default/web-0", "service/default/web:80").status == "reachable"


# ---------------------------------------------------------------------------- reasons

REASONS = [
    # (scenario, source, target, disposition, words the reason must contain)
    (
        "scenarios/broken-return-route.yaml",
        "host/laptop",
        "pod/default/web-1:8080",
        "NO_ROUTE",
        ["router/core", "10.244.1.2"],
    ),
    (
        "scenarios/external-clusterip.yaml",
        "host/office",
        "service/default/web:80",
        "REPLY_LOST",
        ["un-NATed", "node/master"],
    ),
    (
        "tests/data/reach-equivalence.yaml",
        "pod/default/client-0",
        "service/default/empty:80",
        "REJECTED",
        ["default/empty", "no endpoints"],
    ),
    (
        "tests/data/reach-equivalence.yaml",
        "host/laptop",
        "nodeport/node1/default/api-local:9090",
        "DROPPED",
        ["node/node1", "no local endpoints"],
    ),
    (
        "tests/data/reach-equivalence.yaml",
        "pod/default/client-0",
        "service/default/deaf:80",
        "NO_LISTENER",
        ["7777"],
    ),
]


@pytest.mark.parametrize(
    ("path", "source", "target", "disposition", "words"), REASONS, ids=[r[3] for r in REASONS]
)
def test_each_kind_of_failure_carries_its_mechanism(
    path: str, source: str, target: str, disposition: str, words: list[str]
) -> None:
    result = _reach(path, sources=[source], targets=[target])
    cell = result.cell(source, target)
    assert cell.status in ("unreachable", "partial")
    assert disposition in {d for d, _ in cell.failures}
    reason = next(r for d, r in cell.failures if d == disposition)
    for word in words:
        assert word in reason, reason
    assert (disposition, reason) in result.reasons()


# ---------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"mode": "userspace"},
        {"sets": ["cluster.kubeProxy.clusterCIDR=10.244.0.0/16"]},
    ],
    ids=["iptables", "userspace", "iptables-clusterCIDR"],
)
def test_grouped_matrix_equals_brute_force(
    variant: dict[str, Any], equiv_shared: ReachResult, equiv_brute: ReachResult
) -> None:
    if variant:
        sim = load(EQUIV, mode=variant.get("mode"), overrides=variant.get("sets", ()))
        shared, brute = reach(sim), reach(sim, share=False)
    else:
        shared, brute = equiv_shared, equiv_brute
    cells = len(brute.members) * len(brute.targets)
    assert cells >= 200
    assert len(brute.computations) == cells
    assert len(shared.computations) < cells
    for member in brute.members:
        for column in brute.targets:
            a = shared.member_cell(member.ref, column.ref)
            b = brute.member_cell(member.ref, column.ref)
            assert (a.status, a.endpoints) == (b.status, b.endpoints), (member.ref, column.ref)


def test_the_equivalence_test_catches_a_wrong_key(
    monkeypatch: pytest.MonkeyPatch, equiv: Any, equiv_brute: ReachResult
) -> None:
    """Ignore the hairpin (a pod that backs the target shares with its neighbours) and the
    grouped matrix goes wrong: the comparison above would fail."""
    sim, brute = equiv, equiv_brute
    monkeypatch.setattr(reach_module, "target_addresses", lambda _w, target, _c: {target.ip})
    wrong = reach(sim)
    differing = [
        (m.ref, t.ref)
        for m in brute.members
        for t in brute.targets
        if wrong.member_cell(m.ref, t.ref).endpoints != brute.member_cell(m.ref, t.ref).endpoints
    ]
    assert differing


def test_rows_group_only_identical_pods(equiv: Any, equiv_shared: ReachResult) -> None:
    result = equiv_shared
    rows = {r.label: r for r in result.rows}
    clients = rows["pod/default/client-{2,5}"]
    assert clients.node == "node1" and [m.ref for m in clients.members] == [
        "pod/default/client-2",
        "pod/default/client-5",
    ]
    # web-0 and web-3 share node1 but each backs the web Services (hairpin): separate rows.
    assert "pod/default/web-0" in rows and "pod/default/web-3" in rows
    # A grouped row's cell is its first member's; the others differ only by their address.
    cell = result.cell("pod/default/client-{2,5}", "service/default/web:80")
    other = result.member_cell("pod/default/client-5", "service/default/web:80")
    assert cell.status == other.status
    assert "10.244.0.5" in other.source_seen and "10.244.0.4" in cell.source_seen
    expanded = reach(equiv, expand_pods=True)
    assert len(expanded.rows) == len(expanded.members) == len(result.members)


def test_jobs_do_not_change_the_answer(equiv: Any, equiv_shared: ReachResult) -> None:
    assert reach(equiv, jobs=2).to_dict() == equiv_shared.to_dict()


def test_default_targets_cover_every_frontend(equiv: Any) -> None:
    refs = default_target_refs(equiv)
    assert "service/default/web:80" in refs
    assert {f"nodeport/node{i}/default/web-np:80" for i in (1, 2, 3)} <= set(refs)
    assert "loadbalancer/default/web-lb:80" in refs
    assert "192.168.10.250:8081" in refs
    assert not any("headless" in r for r in refs)
    ingress = default_target_refs(load(ROOT / "scenarios/ingress.yaml"))
    assert "http://shop.example/cart" in ingress


def test_sources_and_targets_accept_globs_and_refuse_nonsense() -> None:
    result = _reach(
        "scenarios/external-clusterip.yaml", sources=["host/*", "pod/web-0"], targets=["service/*"]
    )
    assert [m.ref for m in result.members] == ["host/office", "pod/default/web-0"]
    with pytest.raises(UnknownEndpoint):
        _reach("scenarios/external-clusterip.yaml", sources=["pod/default/nope"])
    with pytest.raises(UnknownEndpoint):
        _reach("scenarios/external-clusterip.yaml", targets=["loadbalancer/*"])


# ---------------------------------------------------------------------------- comparison


def test_mode_comparison_names_the_changed_cells() -> None:
    before = _reach("scenarios/external-clusterip.yaml", mode="userspace")
    after = _reach("scenarios/external-clusterip.yaml")
    diff = compare_reach(before, after)
    lines = diff.lines()
    assert (
        "host/office → service/default/web:80: reachable under userspace, partial (1/3, "
        "REPLY_LOST) under iptables — iptables: REPLY_LOST: the reply from"
    ) in "\n".join(lines)
    assert any(c.kind == "source" for c in diff.changes)  # the proxy vs. the client address
    assert diff and diff.summary().startswith("userspace vs iptables:")
    same = compare_reach(after, _reach("scenarios/external-clusterip.yaml"))
    assert not same and same.lines() == [] and "no differences" in same.summary()


def test_scenario_comparison_reports_the_fixed_route() -> None:
    before = _reach("scenarios/broken-return-route.yaml", targets=["pod/default/web-1:8080"])
    after = _reach("scenarios/two-node-host-gw.yaml", targets=["pod/default/web-1:8080"])
    diff = compare_reach(before, after)
    change = next(c for c in diff.changes if c.source == "host/laptop")
    assert (change.before, change.after) == ("unreachable (NO_ROUTE)", "reachable")
    assert "pod/default/client-0" in diff.only_after
    assert diff.to_dict()["changes"][0]["text"].startswith(diff.changes[0].source)


# ---------------------------------------------------------------------------- formats


def test_terminal_grid_has_symbols_legend_and_numbered_reasons(
    equiv_shared: ReachResult,
) -> None:
    result = equiv_shared
    text = render_table(result)
    assert "✓ reachable" in text and "◐ k/n partial" in text and "✗ unreachable" in text
    assert re.search(r"◐ \d+/\d+ #\d", text) and re.search(r"✗ #\d", text)
    assert "#1   " in text and "pod/default/client-{2,5} (2 pods)" in text
    assert len(result.targets) > 16 and text.count("source ") >= 2  # cut into several tables


def test_json_is_stable_sorted_and_documented() -> None:
    result = _reach("scenarios/external-clusterip.yaml")
    text = render_json(result)
    assert text == render_json(_reach("scenarios/external-clusterip.yaml"))
    data = json.loads(text)
    assert list(data) == sorted(data)
    assert data["format"] == "k8snet-sim/reach/v1"
    cell = data["cells"][6]
    assert (cell["from"], cell["status"], cell["reasons"]) == ("host/office", "partial", [1, 2])
    assert data["reasons"][0]["disposition"] == "REPLY_LOST"
    doc = (ROOT / "docs/reach.md").read_text()
    keys = set(data) | set(cell) | set(data["sources"][0]) | set(data["targets"][0])
    keys |= set(cell["endpoints"][0]) | set(data["reasons"][0]) | set(data["counts"])
    missing = sorted(k for k in keys if f"`{k}`" not in doc)
    assert not missing, f"docs/reach.md does not document {missing}"


def test_markdown_and_csv() -> None:
    result = _reach("scenarios/external-clusterip.yaml")
    md = render(result, "md")
    assert "## Matrix" in md and "| `host/office` | ◐ 1/3 #1,2 |" in md
    lines = render(result, "csv").splitlines()
    assert lines[0].startswith("from,to,status,reachable,total")
    assert len(lines) == 1 + len(result.rows) * len(result.targets)
    office = next(line for line in lines if line.startswith("host/office,"))
    assert ",partial,1,3," in office and "REPLY_LOST" in office


# ---------------------------------------------------------------------------- CLI

runner = CliRunner()


def _cli(*args: str) -> Any:
    return runner.invoke(app, ["reach", *args])


def test_cli_exit_statuses(tmp_path: Path) -> None:
    scenario = str(ROOT / "scenarios/external-clusterip.yaml")
    plain = _cli(scenario)
    assert plain.exit_code == 0, plain.output
    assert "◐ 1/3 #1,2" in plain.output
    differs = _cli(scenario, "--compare-mode", "userspace")
    assert differs.exit_code == 0 and "partial (1/3, REPLY_LOST) under iptables" in differs.output
    assert _cli(scenario, "--compare-mode", "userspace", "--fail-on-diff").exit_code == 1
    assert _cli(scenario, "--compare-mode", "iptables", "--fail-on-diff").exit_code == 0
    other = str(ROOT / "scenarios/two-node-host-gw.yaml")
    broken = str(ROOT / "scenarios/broken-return-route.yaml")
    fixed = _cli(broken, "--compare", other, "--to", "pod/default/web-1:8080", "--fail-on-diff")
    assert fixed.exit_code == 1 and "under broken-return-route" in fixed.output
    assert _cli(scenario, "--from", "pod/default/nope").exit_code == 2
    assert _cli(scenario, "--format", "xml").exit_code == 2
    assert _cli(str(tmp_path / "missing.yaml")).exit_code == 2


def test_cli_writes_reports_atomically(tmp_path: Path) -> None:
    scenario = str(ROOT / "scenarios/external-clusterip.yaml")
    out = tmp_path / "r.json"
    result = _cli(scenario, "--json", "-o", str(out))
    assert result.exit_code == 0 and "written to" in result.output
    assert json.loads(out.read_text())["scenario"] == "external-clusterip"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left
    printed = _cli(scenario, "--format", "json")
    assert printed.output == out.read_text()


def test_csv_is_the_same_in_parallel_and_streamed_atomically(
    tmp_path: Path, equiv_shared: ReachResult
) -> None:
    one = render(equiv_shared, "csv")
    for jobs in (2, 3):
        buf = io.StringIO()
        write_csv(equiv_shared, buf, jobs=jobs)
        assert buf.getvalue() == one
    out = tmp_path / "r.csv"
    result = _cli(str(EQUIV), "--format", "csv", "-o", str(out), "--jobs", "2")
    assert result.exit_code == 0 and "written to" in result.output
    assert out.read_text(encoding="utf-8") == one
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left
