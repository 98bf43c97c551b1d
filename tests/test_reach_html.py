"""The HTML reachability report: self-contained, deterministic, and it works in a browser —
headless Chromium opens it with no console message, shows the matrix, and clicking every cell
(the page's ``#selftest``) opens its trace summary."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from k8snet_sim.analysis.reach import compare_reach, reach
from k8snet_sim.api import load
from k8snet_sim.report.files import atomic_write_text
from k8snet_sim.report.reach_html import render_html

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
    "--virtual-time-budget=10000",
]


def _report(path: str = "scenarios/external-clusterip.yaml") -> tuple[str, int]:
    sim = load(ROOT / path)
    result = reach(sim, samples=True)
    other = reach(load(ROOT / path, mode="userspace"))
    html = render_html(result, world=sim.world, diff=compare_reach(result, other))
    return html, len(result.rows) * len(result.targets)


def test_report_is_self_contained_and_deterministic() -> None:
    html, _ = _report()
    assert html == _report()[0]
    # Nothing to fetch: no external scripts, styles, images, fonts or frames.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html, re.I)
    assert not re.search(r"<link\b|@import|url\(\s*['\"]?(https?:|//)", html, re.I)
    assert "<svg" in html and "class='matrix'" in html
    assert (
        "external-clusterip" in html and "mode <b>iptables</b>" in html and "seed <b>0</b>" in html
    )
    assert "partial (1/3, REPLY_LOST) under iptables, reachable under userspace" in html
    assert '"hops":[{' in html  # the sampled trace of each cell is embedded


def test_script_cannot_be_closed_by_the_data() -> None:
    html, _ = _report()
    data = html.split("<script type='application/json' id='reach-data'>", 1)[1]
    data = data.split("</script>", 1)[0]
    assert "</" not in data


def _chromium_or_skip() -> Path:
    if CHROMIUM.exists():
        return CHROMIUM
    if os.environ.get("K8SNET_REQUIRE_CHROMIUM") == "1":
        pytest.fail(f"K8SNET_REQUIRE_CHROMIUM=1 but {CHROMIUM} is missing")
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")


@pytest.mark.parametrize(
    "scenario", ["scenarios/external-clusterip.yaml", "tests/data/reach-equivalence.yaml"]
)
def test_report_opens_in_headless_chromium(tmp_path: Path, scenario: str) -> None:
    chromium = _chromium_or_skip()
    html, cells = _report(scenario)
    page = atomic_write_text(tmp_path / "reach.html", html)
    profile = tempfile.mkdtemp(prefix="k8snet-chromium-")
    try:
        run = subprocess.run(
            [
                str(chromium),
                *FLAGS,
                f"--user-data-dir={profile}",
                "--dump-dom",
                page.resolve().as_uri() + "#selftest",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert run.returncode == 0, run.stderr[-2000:]
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, "\n".join(console)
    body = re.search(r"<body[^>]*>", run.stdout)
    assert body, run.stdout[:500]
    assert 'data-ready="yes"' in body.group(0)
    assert 'data-selftest="ok"' in body.group(0), body.group(0)
    assert f'data-clicked="{cells}"' in body.group(0)
    assert 'class="matrix"' in run.stdout and "every branch of the random choices" in run.stdout


def test_notebook_view_is_the_matrix() -> None:
    result = reach(load(ROOT / "scenarios/external-clusterip.yaml"))
    fragment = result._repr_html_()
    assert "class='matrix'" in fragment and "<script" not in fragment
    assert "REPLY_LOST" in fragment
