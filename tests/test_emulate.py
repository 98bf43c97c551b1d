"""Kernel emulation: the plan (pure), the probe arithmetic, the comparison, and — as root — the
real thing: every bundled scenario in iptables, nftables and userspace mode on Linux network
namespaces, cell by cell against the simulator, plus proof that nothing is left behind.

Kernel tests are marked ``kernel``; they skip with a reason when the machine cannot create
network namespaces, unless ``K8SNET_KERNEL_TESTS=1`` (CI), which turns the skip into a failure.
``K8SNET_KERNEL_FULL=1`` probes the whole reachability matrix of every scenario (minutes).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from k8snet_sim.api import load
from k8snet_sim.emulate import datapath as dp
from k8snet_sim.emulate import session
from k8snet_sim.emulate.compare import SimVerdict, differences, judge_cell
from k8snet_sim.emulate.janitor import EmulationError, Janitor, leftovers, list_namespaces
from k8snet_sim.emulate.plan import IFNAMSIZ, PREFIX, Step, check_run_id, netns_name, plan_world
from k8snet_sim.emulate.probes import (
    KernelResult,
    Probe,
    attempt_plan,
    expect_probes,
    reach_probes,
    unique,
)
from k8snet_sim.emulate.session import new_run_id

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "scenarios"
BUNDLED = sorted(p.stem for p in SCENARIOS.glob("*.yaml"))
MODES = ("iptables", "nftables", "userspace")
RUN_IDS: list[str] = []  # every run id the kernel tests used, checked at the end
SMALL_MATRIX = 20  # scenarios with at most this many matrix cells get it probed in every mode
MATRIX_SAMPLE = 10  # cells probed from a larger matrix (all of it with K8SNET_KERNEL_FULL=1)


# ---------------------------------------------------------------------------- the plan (pure)


def _world(name: str, mode: str | None = None):
    return load(SCENARIOS / f"{name}.yaml", mode=mode).world


@pytest.mark.parametrize("name", BUNDLED)
def test_plan_only_touches_our_namespaces(name: str) -> None:
    plan = plan_world(_world(name), "t1")
    prefix = f"{PREFIX}t1-"
    assert all(n.startswith(prefix) for n in plan.names())
    for step in plan.steps():
        if step.ns is None:  # only `ip netns add` of our own names outside a namespace
            assert step.argv[:3] == ("ip", "netns", "add") and step.argv[3].startswith(prefix)
        else:
            assert step.ns.startswith(prefix)
            if step.argv[0] in ("ip", "bridge"):
                assert step.argv[1:3] == ("-n", step.ns)
    for veth in plan.veths:
        assert veth.a_ns.startswith(prefix) and veth.b_ns.startswith(prefix)
        assert len(veth.a_name) <= IFNAMSIZ and len(veth.b_name) <= IFNAMSIZ


def test_plan_mirrors_the_simulated_wiring() -> None:
    plan = plan_world(_world("two-node-host-gw"), "t2")
    by_key = {n.key: n for n in plan.namespaces}
    node1 = by_key["node/node1"]
    assert node1.bridges == ("cni0",)
    assert ("cni0", "10.244.0.1/24") in node1.addresses
    assert "10.244.1.0/24 via 192.168.10.12 dev eth0" in node1.routes  # host-gw
    assert ("net.ipv4.ip_forward", "1") in node1.sysctls
    assert ("net.ipv4.conf.all.rp_filter", "0") in node1.sysctls
    assert node1.bridge_nf
    pod = by_key["pod/default/client-0"]
    assert pod.routes == ("0.0.0.0/0 via 10.244.0.1 dev eth0",)
    assert ("net.ipv4.ip_forward", "0") in pod.sysctls
    pod_veth = next(v for v in plan.veths if v.a_ns == pod.name)
    assert (pod_veth.b_ns, pod_veth.master, pod_veth.hairpin) == (node1.name, "cni0", True)
    lan = by_key["segment/lan"]
    assert lan.kind == "segment" and not lan.bridge_nf
    assert sum(1 for v in plan.veths if v.b_ns == lan.name) == 3  # router, node1, node2
    assert plan.unsupported == ()


def test_plan_builds_flannel_style_vxlan() -> None:
    plan = plan_world(_world("two-node-vxlan"), "t3")
    vx = {x.local: x for x in plan.vxlans}
    node1 = vx["192.168.10.11"]
    assert (node1.name, node1.mtu, node1.dev) == ("flannel.1", 1450, "eth0")
    assert node1.peers == (("10.244.1.0", vx["192.168.10.12"].mac, "192.168.10.12"),)
    routes = next(n for n in plan.namespaces if n.key == "node/node1").routes
    assert "10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink" in routes
    text = "\n".join(s.render() for s in plan.steps())
    assert "type vxlan id 1 dstport 8472 local 192.168.10.11 dev eth0 nolearning" in text
    assert f"fdb append {vx['192.168.10.12'].mac} dev flannel.1 dst 192.168.10.12" in text


def test_plan_announces_metallb_addresses_with_static_neighbours() -> None:
    plan = plan_world(_world("loadbalancer-metallb"), "t4")
    router = next(n for n in plan.namespaces if n.key == "router/core")
    assert len(router.neighbours) == 1
    address, _, mac, _, dev, *_ = router.neighbours[0].split()
    assert (address, dev) == ("192.168.10.200", "eth0")
    speaker = next(v for v in plan.veths if v.a_mac == mac)
    assert speaker.a_ns.startswith(f"{PREFIX}t4-node-")


def test_plan_leaves_out_what_it_cannot_build() -> None:
    plan = plan_world(_world("loadbalancer-cloud"), "t5")
    assert any("kind 'lb'" in u for u in plan.unsupported)
    assert not any(n.kind == "lb" for n in plan.namespaces)


@pytest.mark.parametrize(
    ("run_id", "ok"),
    [
        ("ab12cd", True),
        ("x", True),
        ("AB12", False),
        ("a-b", False),
        ("", False),
        ("a" * 13, False),
    ],
)
def test_run_ids_are_short_and_safe(run_id: str, ok: bool) -> None:
    if ok:
        assert check_run_id(run_id) == run_id
    else:
        with pytest.raises(ValueError):
            check_run_id(run_id)


def test_netns_names_are_file_names() -> None:
    assert netns_name("r1", "pod", "pod/shop/web 0") == "k8ns-r1-pod-shop-web-0"
    assert new_run_id() != new_run_id()


# ---------------------------------------------------------------------------- janitor (pure)


@pytest.mark.parametrize(
    "step",
    [
        Step(None, ("ip", "link", "add", "x", "type", "dummy")),  # root namespace
        Step(None, ("ip", "netns", "add", "k8ns-other-x")),  # another run's name
        Step(None, ("ip", "netns", "add", "myns")),  # not ours at all
        Step("k8ns-other-node-a", ("sysctl", "-w", "a=b")),  # another run's namespace
        Step("k8ns-j1-node-a", ("ip", "link", "show")),  # ip without -n
        Step("k8ns-j1-node-a", ("ip", "-n", "k8ns-j1-node-b", "link", "show")),  # -n elsewhere
    ],
)
def test_janitor_refuses_anything_outside_its_namespaces(step: Step) -> None:
    with pytest.raises(EmulationError):
        Janitor("j1").run(step)


# ---------------------------------------------------------------------------- probes (pure)

ROW_OK = {
    "ip": "10.0.0.2",
    "port": 80,
    "pod": "default/a",
    "reachable": True,
    "disposition": "DELIVERED",
    "sourceSeenByBackend": "10.0.0.9",
    "node": "n1",
}
ROW_LOST = {
    "ip": "10.0.0.3",
    "port": 80,
    "pod": "default/b",
    "reachable": False,
    "disposition": "REPLY_LOST",
    "sourceSeenByBackend": "10.0.0.9",
    "node": "n2",
}
ROW_NONE = {
    "ip": None,
    "port": None,
    "pod": None,
    "reachable": False,
    "disposition": "NO_ROUTE",
    "sourceSeenByBackend": None,
}


@pytest.mark.parametrize(
    ("rows", "endpoints", "expected"),
    [
        # (min, max, batch, want, want_failure, give_up, stop_on_failure)
        # reachable: the first failure already disagrees, so it ends the probe
        ([ROW_OK], (), (2, 12, 2, ("10.0.0.2:80",), False, 12, True)),
        ([ROW_OK, ROW_LOST], (), (4, 24, 4, ("10.0.0.2:80",), True, 24, False)),
        ([ROW_NONE], (), (2, 12, 2, (), True, 2, False)),  # unreachable: stop after 2 failures
        (
            None,
            ("10.0.0.2:80", "10.0.0.3:80"),
            (4, 24, 8, ("10.0.0.2:80", "10.0.0.3:80"), False, 8, False),
        ),
        (None, (), (2, 12, 4, (), False, 4, False)),
    ],
)
def test_attempt_plan(rows, endpoints, expected) -> None:
    p = attempt_plan(rows, endpoints=endpoints)
    got = (p.min, p.max, p.batch, p.want, p.want_failure, p.give_up, p.stop_on_failure)
    assert got == expected
    assert p.max <= 64 and p.timeout <= 2.0 and p.budget_s() < 300


def _ok(pod: str, peer: str, rnd: int | None = None) -> dict:
    out = {"ok": True, "pod": pod, "peer": f"{peer}:4000", "address": "10.0.0.2:80"}
    return out if rnd is None else {**out, "round": rnd}


FAIL = {"ok": False, "error": "TIMEOUT"}


@pytest.mark.parametrize(
    ("attempts", "verdict", "endpoints"),
    [
        ((_ok("default/a", "10.0.0.9"),) * 3, "reachable", {"default/a"}),
        ((_ok("default/a", "10.0.0.9"), FAIL), "partial", {"default/a"}),
        ((FAIL, FAIL), "unreachable", set()),
        ((), "skipped", set()),
    ],
)
def test_kernel_result_reads_like_a_verdict(attempts, verdict, endpoints) -> None:
    r = KernelResult(attempts)
    assert (r.verdict, set(r.endpoints)) == (verdict, endpoints)


def test_kernel_result_detects_broken_affinity() -> None:
    held = KernelResult(
        (
            _ok("default/a", "x", 0),
            _ok("default/a", "x", 0),
            _ok("default/b", "x", 1),
            _ok("default/b", "x", 1),
        ),
        affinity=True,
    )
    broken = KernelResult((_ok("default/a", "x", 0), _ok("default/b", "x", 0)), affinity=True)
    assert not held.affinity_broken and broken.affinity_broken
    assert differences(SimVerdict.from_rows([ROW_OK, {**ROW_OK, "pod": "default/b"}]), broken)


# ---------------------------------------------------------------------------- compare (pure)


@pytest.mark.parametrize(
    ("rows", "attempts", "want"),
    [
        ([ROW_OK], (_ok("default/a", "10.0.0.9"),), []),
        ([ROW_OK], (FAIL,), ["reachability", "endpoints"]),
        ([ROW_OK], (_ok("default/a", "10.0.0.1"),), ["source seen by default/a"]),
        ([ROW_OK, ROW_LOST], (_ok("default/a", "10.0.0.9"), FAIL), []),
        ([ROW_OK, ROW_LOST], (_ok("default/a", "10.0.0.9"),), ["reachability"]),
        ([ROW_NONE], (FAIL, FAIL), []),
        ([ROW_NONE], (_ok("default/a", "10.0.0.9"),), ["reachability", "endpoints"]),
    ],
)
def test_differences(rows, attempts, want) -> None:
    got = differences(SimVerdict.from_rows(rows), KernelResult(attempts))
    assert [d.split(":")[0] for d in got] == want


def test_missing_br_netfilter_marks_instead_of_disagreeing() -> None:
    probe = Probe("pod/default/c", "service/default/web:80", "test")
    sim = SimVerdict.from_rows([ROW_OK])
    kernel = KernelResult((FAIL,))
    assert judge_cell(probe, kernel, sim).status == "DISAGREE"
    marked = judge_cell(probe, kernel, sim, br_netfilter_affected=True)
    assert marked.status == "kernel lacks br_netfilter" and marked.differences


def test_cells_from_expectations_and_matrix() -> None:
    sim = load(SCENARIOS / "external-clusterip.yaml")
    scenario = sim.world.info["scenario"]
    expect = expect_probes(scenario)
    # iptables without clusterCIDR: the userspace and with-clusterCIDR entries do not apply.
    assert [p.origin for p in expect] == ["expect[1]", "expect[3]"]
    matrix = reach_probes(sim.world, sim.world.info["state"], sim)
    assert {p.target for p in matrix} == {"service/default/web:80"}
    assert {p.source for p in matrix} >= {"host/office", "node/master", "pod/default/web-0"}
    fallback = reach_probes(sim.world, sim.world.info["state"])
    assert {p.target for p in fallback} == {"service/default/web:80"}


def test_ipvs_is_refused_with_the_reason() -> None:
    problem = dp.support_problem("ipvs", proc_ip_vs="/nonexistent/ip_vs")
    assert problem is not None and "ip_vs" in problem and "never loads" in problem


def test_cli_refuses_non_root(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from k8snet_sim.cli import app

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    result = CliRunner().invoke(app, ["emulate", str(SCENARIOS / "two-node-host-gw.yaml")])
    assert result.exit_code == 2
    assert "needs root" in result.output


# ---------------------------------------------------------------------------- the kernel


def _kernel_problem() -> str | None:
    if sys.platform != "linux":
        return "kernel emulation needs Linux"
    if os.geteuid() != 0:
        return "kernel emulation needs root"
    for tool in ("ip", "iptables-restore", "nft", "sysctl", "bridge"):
        if shutil.which(tool) is None:
            return f"kernel emulation needs {tool}"
    name = f"{PREFIX}{new_run_id()}-check"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create network namespaces: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


@pytest.fixture(scope="module")
def kernel() -> None:
    problem = _kernel_problem()
    if problem is not None:
        if os.environ.get("K8SNET_KERNEL_TESTS") == "1":
            pytest.fail(f"K8SNET_KERNEL_TESTS=1 but {problem}")
        pytest.skip(problem)


@pytest.fixture
def run_id() -> Iterator[str]:
    """A fresh run id, and proof afterwards that nothing of it is left."""
    rid = new_run_id()
    RUN_IDS.append(rid)
    yield rid
    assert leftovers(rid) == []


def _root_view() -> dict[str, str]:
    """What an emulation must never change: the root namespace's links, addresses, routes,
    policy rules and the sysctls we set inside namespaces."""

    def out(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True).stdout

    keys = (
        "net.ipv4.ip_forward",
        "net.ipv4.conf.all.rp_filter",
        "net.ipv4.conf.all.send_redirects",
        "net.bridge.bridge-nf-call-iptables",
    )
    return {
        "links": out("ip", "-o", "link", "show"),
        "addrs": out("ip", "-o", "addr", "show"),
        "routes": out("ip", "route", "show", "table", "all"),
        "rules": out("ip", "rule"),
        "sysctl": out("sysctl", *keys),
    }


def _cells(name: str, mode: str) -> list[Probe]:
    """The scenario's expectations and its reachability matrix — the whole matrix when it is
    small (or with K8SNET_KERNEL_FULL=1), else an even sample of it, to keep the suite short."""
    sim = load(SCENARIOS / f"{name}.yaml", mode=mode)
    matrix = reach_probes(sim.world, sim.world.info["state"], sim)
    if len(matrix) > SMALL_MATRIX and os.environ.get("K8SNET_KERNEL_FULL") != "1":
        picked = sorted(random.Random(name).sample(range(len(matrix)), MATRIX_SAMPLE))
        matrix = [matrix[i] for i in picked]
    return unique([*expect_probes(sim.world.info["scenario"]), *matrix])


@pytest.mark.kernel
@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", BUNDLED)
def test_kernel_agrees_with_simulator(kernel: None, run_id: str, name: str, mode: str) -> None:
    from k8snet_sim.emulate import emulate
    from k8snet_sim.scenario.loader import load_scenario

    scenario = load_scenario(SCENARIOS / f"{name}.yaml", mode=mode)
    report = emulate(scenario, compare=True, run_id=run_id, probes=_cells(name, mode))
    probed = [c for c in report.cells if c.status != "skipped"]
    assert probed or not report.cells, "no cell could be probed"
    problems = [
        f"{c.probe.cell}: {'; '.join(c.differences)} (simulator: "
        f"{c.simulator.summary() if c.simulator else '?'}; kernel: {c.kernel.summary()})"
        for c in report.disagreements
    ]
    assert not problems, "\n".join(problems)
    for cell in report.cells:  # only the documented gaps are skipped
        if cell.status == "skipped":
            assert any(
                k in (cell.kernel.skipped or "")
                for k in ("ingress controller", "cloud load balancer", "only TCP and UDP")
            ), cell.kernel.skipped


@pytest.mark.kernel
def test_emulation_leaves_the_root_namespace_alone(kernel: None, run_id: str) -> None:
    before = _root_view()
    sim = load(SCENARIOS / "two-node-vxlan.yaml")
    with session.emulation(sim.world, run_id=run_id) as emu:
        assert sorted(leftovers(run_id)) == sorted(emu.plan.names())
        assert emu.br_netfilter  # this CI kernel has br_netfilter; a test of the marking is above
        result = emu.probe(Probe("pod/default/client-0", "service/default/web:80", "test"))
        assert result.verdict == "reachable"
        assert _root_view() == before
    assert _root_view() == before


@pytest.mark.kernel
def test_helper_scripts_inside_a_namespace(kernel: None, run_id: str) -> None:
    """Pod server, userspace proxy (round-robin, affinity) and probe client, on loopback inside
    a namespace of ours."""
    janitor = Janitor(run_id)
    ns = f"{PREFIX}{run_id}-scripts"
    with janitor.guard():
        janitor.run(Step(None, ("ip", "netns", "add", ns)))
        janitor.run(Step(ns, ("ip", "-n", ns, "link", "set", "lo", "up")))
        for name, port in (("default/a", 8081), ("default/b", 8082)):
            proc = janitor.spawn(
                ns,
                [
                    *session.python_script("podserver.py"),
                    "--name",
                    name,
                    "--tcp",
                    str(port),
                    "--udp",
                    str(port),
                    "--lifetime",
                    "60",
                ],
            )
            assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        config = {
            "ports": [
                {
                    "name": "rr",
                    "proto": "TCP",
                    "port": 40000,
                    "endpoints": ["127.0.0.1:8081", "127.0.0.1:8082"],
                },
                {
                    "name": "sticky",
                    "proto": "TCP",
                    "port": 40001,
                    "affinitySeconds": 60,
                    "endpoints": ["127.0.0.1:8081", "127.0.0.1:8082"],
                },
                {"name": "udp", "proto": "UDP", "port": 40002, "endpoints": ["127.0.0.1:8082"]},
            ]
        }
        proxy = janitor.spawn(
            ns,
            [
                *session.python_script("userspace_proxy.py"),
                "--config",
                json.dumps(config),
                "--lifetime",
                "60",
            ],
        )
        assert proxy.stdout is not None and proxy.stdout.readline() == b"ready\n"

        def probe(port: int, proto: str = "TCP", n: int = 4) -> list[dict]:
            spec = {
                "ip": "127.0.0.1",
                "port": port,
                "proto": proto,
                "min": n,
                "max": n,
                "batch": 1,
                "timeout": 2.0,
            }
            done = janitor.exec(ns, [*session.python_script("probe_client.py"), json.dumps(spec)])
            return json.loads(done.stdout)["attempts"]

        assert [a["pod"] for a in probe(40000)] == ["default/a", "default/b"] * 2
        sticky = {a["pod"] for a in probe(40001)}
        assert len(sticky) == 1
        os.kill(proxy.pid, signal.SIGUSR1)  # forget affinities: the round-robin moves on
        time.sleep(0.2)
        assert {a["pod"] for a in probe(40001, n=1)} != sticky
        assert [a["pod"] for a in probe(40002, "UDP", 2)] == ["default/b"] * 2
        direct = probe(8081, n=1)[0]
        assert direct["ok"] and direct["peer"].startswith("127.0.0.1:")
        closed = probe(9, n=1)[0]
        assert not closed["ok"] and closed["error"] == "ECONNREFUSED"
        pids = [p.pid for p in janitor.processes]
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.kernel
@pytest.mark.parametrize("where", ["plan steps", "after the servers started"])
def test_cleanup_after_an_exception_while_building(
    kernel: None, run_id: str, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[int] = []
    if where == "plan steps":
        real_run = Janitor.run
        calls = {"n": 0}

        def failing_run(self: Janitor, step: Step, *, check: bool = True):
            calls["n"] += 1
            if calls["n"] == 20:  # namespaces exist, devices half made
                raise RuntimeError("injected failure")
            return real_run(self, step, check=check)

        monkeypatch.setattr(Janitor, "run", failing_run)
    else:
        real_start = session._start_processes

        def failing_start(emu, datapaths, **kwargs) -> None:
            real_start(emu, datapaths, **kwargs)
            started.extend(p.pid for p in emu.janitor.processes)
            raise RuntimeError("injected failure")

        monkeypatch.setattr(session, "_start_processes", failing_start)
    sim = load(SCENARIOS / "two-node-host-gw.yaml", mode="userspace")
    with pytest.raises(RuntimeError, match="injected"), session.emulation(sim.world, run_id=run_id):
        pass
    assert leftovers(run_id) == []
    assert started or where == "plan steps"
    assert not [pid for pid in started if _alive(pid)]


@pytest.mark.kernel
def test_a_run_never_adopts_a_namespace_it_did_not_create(kernel: None, run_id: str) -> None:
    sim = load(SCENARIOS / "two-node-host-gw.yaml")
    plan = plan_world(sim.world, run_id)
    other = Janitor(run_id)  # e.g. a kept run that used the same id
    with other.guard():
        taken = plan.names()[3]
        other.run(Step(None, ("ip", "netns", "add", taken)))
        with (
            pytest.raises(EmulationError, match="already exists"),
            session.emulation(sim.world, run_id=run_id),
        ):
            pass
        assert leftovers(run_id) == [taken]  # the failed run removed only its own
    assert leftovers(run_id) == []


SIGNAL_CHILD = """
import json, sys, time
from k8snet_sim.api import load
from k8snet_sim.emulate.session import emulation
sim = load(sys.argv[1])
with emulation(sim.world, run_id=sys.argv[2]) as emu:
    print(json.dumps([p.pid for p in emu.janitor.processes]), flush=True)
    time.sleep(120)
"""


@pytest.mark.kernel
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cleanup_on_signal(kernel: None, run_id: str, sig: signal.Signals) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", SIGNAL_CHILD, str(SCENARIOS / "two-node-host-gw.yaml"), run_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line, child.stderr.read() if child.stderr else ""
        pids = json.loads(line)
        assert pids and leftovers(run_id)
        child.send_signal(sig)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode != 0
    assert leftovers(run_id) == []
    assert not [pid for pid in pids if _alive(pid)]


@pytest.mark.kernel
def test_cli_compare_keep_and_cleanup(kernel: None, run_id: str) -> None:
    from typer.testing import CliRunner

    from k8snet_sim.cli import app

    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "emulate",
            str(SCENARIOS / "lesson-01-kube-proxy-modes.yaml"),
            "--compare",
            "--json",
            "--keep",
            "--run-id",
            run_id,
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["passed"] and data["compared"] and data["kept"]
    assert data["cells"] and all(c["agree"] for c in data["cells"])
    assert sorted(leftovers(run_id)) == sorted(data["namespaces"])
    cleaned = runner.invoke(app, ["emulate-cleanup", run_id])
    assert cleaned.exit_code == 0, cleaned.output
    assert leftovers(run_id) == []


@pytest.mark.kernel
def test_a_disagreement_exits_1(kernel: None, run_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hold the kernel to a wrong simulator: drop every packet on node1's forward path only in
    the kernel (an extra rule the simulator does not have) and the comparison must fail."""
    from typer.testing import CliRunner

    from k8snet_sim.cli import app

    real_load = dp.load

    def load_and_break(janitor: Janitor, plan, datapaths) -> None:
        real_load(janitor, plan, datapaths)
        ns = plan.netns["node/node1"]
        janitor.run(Step(ns, ("iptables", "-I", "FORWARD", "-j", "DROP"), why="test"))

    monkeypatch.setattr(dp, "load", load_and_break)
    result = CliRunner().invoke(
        app, ["emulate", str(SCENARIOS / "two-node-host-gw.yaml"), "--compare", "--run-id", run_id]
    )
    assert result.exit_code == 1, result.output
    assert "NO" in result.output and "disagree" in result.output


@pytest.mark.kernel
def test_nothing_of_ours_is_left(kernel: None) -> None:
    """Runs last in this module: none of this module's runs left a namespace (each kernel test
    also checks its own run id), and in CI — where nothing else emulates — no k8ns-* at all."""
    if not RUN_IDS:
        pytest.skip("no emulation ran in this session")
    ours = [n for n in list_namespaces() if any(n.startswith(f"{PREFIX}{r}-") for r in RUN_IDS)]
    assert ours == []
    alone = os.environ.get("K8SNET_KERNEL_TESTS") == "1" and not os.environ.get(
        "PYTEST_XDIST_WORKER"
    )
    if alone:
        assert [n for n in list_namespaces() if n.startswith(PREFIX)] == []
