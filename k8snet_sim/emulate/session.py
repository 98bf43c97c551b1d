"""One emulation: build the world in namespaces, load kube-proxy's rules, start the servers,
probe, and tear everything down.

:func:`emulation` is a context manager; the built :class:`Emulation` answers :meth:`probe`
calls until the block ends, so all cells of a scenario share one build.

Example
-------
>>> from k8snet_sim.api import load                                  # doctest: +SKIP
>>> sim = load("scenarios/two-node-host-gw.yaml")                     # doctest: +SKIP
>>> with emulation(sim.world) as emu:                                 # doctest: +SKIP
...     emu.probe(Probe("pod/default/client-0", "service/default/web:80", "doc")).verdict
'reachable'
"""

from __future__ import annotations

import json
import secrets
import select
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from k8snet_sim.analysis.targets import Target, resolve_source, resolve_target
from k8snet_sim.cluster.model import ClusterState
from k8snet_sim.emulate import datapath as dp
from k8snet_sim.emulate.janitor import EmulationError, Janitor, require_root
from k8snet_sim.emulate.plan import EmulationPlan, Step, plan_world
from k8snet_sim.emulate.probes import (
    MAX_ATTEMPTS,
    AttemptPlan,
    KernelResult,
    Probe,
    attempt_plan,
)
from k8snet_sim.errors import K8sNetSimError
from k8snet_sim.net.addr import ip_str
from k8snet_sim.net.packet import TCP, UDP

HERE = Path(__file__).resolve().parent
READY_TIMEOUT_S = 15.0
FORWARDING_TIMEOUT_S = 10.0
SERVER_LIFETIME_S = 900.0
KEPT_LIFETIME_S = 4 * 3600.0


def python_script(name: str) -> list[str]:
    """Run one of our stdlib-only helper scripts: isolated, no site packages, fast start."""
    return [sys.executable, "-I", "-S", str(HERE / name)]


def new_run_id() -> str:
    return secrets.token_hex(3)


@dataclass
class Emulation:
    """A built emulation: the simulator's world, its namespaces on this machine, and facts."""

    world: Any
    state: ClusterState
    mode: str
    plan: EmulationPlan
    janitor: Janitor
    br_netfilter: bool = True
    notes: list[str] = field(default_factory=list)
    datapaths: list[dp.NodeDatapath] = field(default_factory=list)
    proxies: dict[str, int] = field(default_factory=dict)  # node → userspace proxy PID

    @property
    def run_id(self) -> str:
        return self.plan.run_id

    def netns(self, sim_ns: str) -> str:
        try:
            return self.plan.netns[sim_ns]
        except KeyError:
            raise EmulationError(f"{sim_ns} is not emulated") from None

    def unsupported(self, probe: Probe) -> str | None:
        """Why a cell cannot be probed on the kernel (None: it can)."""
        try:
            source = resolve_source(self.world, probe.source)
            target = resolve_target(self.world, probe.target)
        except K8sNetSimError as err:
            return str(err)
        return _unsupported(self, source, target)

    def probe(self, probe: Probe, rows: list[dict[str, Any]] | None = None) -> KernelResult:
        """Try the cell on the kernel. ``rows``: the simulator's possible endpoints, to size
        the attempts; without them every endpoint of a Service target is a candidate."""
        why = self.unsupported(probe)
        if why is not None:
            return KernelResult((), skipped=why)
        source = resolve_source(self.world, probe.source)
        target = resolve_target(self.world, probe.target)
        candidates: tuple[str, ...] = ()
        if target.service is not None and target.service_port is not None:
            candidates = tuple(
                e.address
                for e in self.state.endpoints_for(target.service, target.service_port)
                if e.ready
            )
        plan = attempt_plan(rows, endpoints=candidates)
        if target.service is not None and target.service.session_affinity == "ClientIP":
            return KernelResult(
                tuple(self._sticky_attempts(self.netns(source), target, plan)), affinity=True
            )
        return KernelResult(tuple(self._attempts(self.netns(source), target, plan)))

    def forget_affinity(self) -> None:
        """Forget ClientIP affinities on every node (see :func:`datapath.forget_affinity`)."""
        dp.forget_affinity(self.janitor, self.plan, self.datapaths, self.proxies)

    def _sticky_attempts(self, ns: str, target: Target, plan: AttemptPlan) -> list[dict[str, Any]]:
        """ClientIP affinity pins every attempt of one client to one endpoint, so each round
        starts from forgotten affinities (like the simulator's fresh fork per branch) and makes
        two attempts in a row: the second must reach the first's endpoint."""
        attempts: list[dict[str, Any]] = []
        one_round = AttemptPlan(2, 2, 1, (), False, 2, timeout=plan.timeout)
        # Each round is one draw: as many draws as attempts, within the attempt cap.
        rounds = max(1, min(plan.max, MAX_ATTEMPTS // 2))
        for index in range(rounds):
            self.forget_affinity()
            got = self._attempts(ns, target, one_round)
            attempts += [{**a, "round": index} for a in got]
            seen = {a.get("address") for a in attempts if a.get("ok")}
            failed = any(not a.get("ok") for a in attempts)
            if (
                len(attempts) >= plan.min
                and set(plan.want) <= seen
                and (failed or not plan.want_failure)
            ):
                break
            if not seen and len(attempts) >= plan.give_up:
                break
            if failed and plan.stop_on_failure:
                break
        return attempts

    def _attempts(self, ns: str, target: Target, plan: AttemptPlan) -> list[dict[str, Any]]:
        proto = "UDP" if target.proto == UDP else "TCP"
        spec = plan.spec(ip_str(target.ip), target.port, proto)
        done = self.janitor.exec(
            ns, [*python_script("probe_client.py"), json.dumps(spec)], timeout=plan.budget_s()
        )
        attempts: list[dict[str, Any]] = json.loads(done.stdout)["attempts"]
        return attempts


def _unsupported(emu: Emulation, source: str, target: Target) -> str | None:
    if source not in emu.plan.netns:
        return f"{source} is not emulated"
    if target.proto not in (TCP, UDP):
        return "only TCP and UDP are probed"
    if target.kind == "http" or target.http_host is not None:
        return "ingress controllers (HTTP routing) are not emulated"
    for ns in emu.world.namespaces.values():
        if ns.kind == "lb" and target.ip in ns.local_addresses:
            return "cloud load balancer devices are not emulated"
    controllers = set(emu.world.info.get("ingressControllers", {}))
    if target.service is not None and target.service_port is not None:
        eps = emu.state.endpoints_for(target.service, target.service_port)
        if any(e.pod in controllers for e in eps):
            return "the Service's endpoints are ingress controllers (not emulated)"
    return None


@contextmanager
def emulation(
    world: Any,
    *,
    mode: str | None = None,
    run_id: str | None = None,
    keep: bool = False,
    state: ClusterState | None = None,
    pod_servers: bool = True,
) -> Iterator[Emulation]:
    """Build ``world`` (a simulator World) in namespaces, load ``mode``'s rules, start pod
    servers (unless ``pod_servers`` is false: a benchmark brings its own) and userspace
    proxies; clean up when the block ends."""
    require_root()
    state = state or world.info["state"]
    assert state is not None
    mode = mode or state.kube_proxy.mode
    problem = dp.support_problem(mode)
    if problem is not None:
        raise EmulationError(problem)
    plan = plan_world(world, run_id or new_run_id())
    janitor = Janitor(plan.run_id, keep=keep)
    with janitor.guard():
        emu = Emulation(world, state, mode, plan, janitor, notes=list(plan.unsupported))
        _build(emu, pod_servers=pod_servers)
        yield emu


def _build(emu: Emulation, *, pod_servers: bool = True) -> None:
    janitor, plan = emu.janitor, emu.plan
    node_names = [n.name for n in plan.namespaces if n.kind == "node"]
    br_nf: bool | None = None
    for step in plan.steps():
        if step.why == "br_netfilter":
            if br_nf is None:
                br_nf = dp.has_br_netfilter(janitor, step.ns or "")
            if not br_nf:
                continue
        janitor.run(step)
    _wait_forwarding(emu)
    emu.br_netfilter = (
        bool(br_nf)
        if br_nf is not None
        else bool(node_names and dp.has_br_netfilter(janitor, node_names[0]))
    )
    if not emu.br_netfilter:
        emu.notes.append(
            "kernel lacks br_netfilter (net.bridge.bridge-nf-call-iptables): "
            "replies between pods on one node bypass iptables"
        )
    datapaths = emu.datapaths = dp.node_datapaths(emu.world, emu.state, emu.mode)
    dp.load(janitor, plan, datapaths)
    _start_processes(emu, datapaths, pod_servers=pod_servers)


def _wait_forwarding(emu: Emulation) -> None:
    """Wait until every bridge port forwards. A port joins its bridge "disabled" and is
    enabled only when the kernel's link watcher sees the carrier — up to a second later —
    and frames sent before then (a first ARP request) are lost."""
    deadline = time.monotonic() + FORWARDING_TIMEOUT_S
    pending = [n.name for n in emu.plan.namespaces if n.bridges]
    while pending:
        ns = pending[0]
        done = emu.janitor.run(
            Step(ns, ("bridge", "-n", ns, "-j", "link", "show"), why="bridge port states")
        )
        ports = json.loads(done.stdout or "[]")
        if all(p.get("state") == "forwarding" for p in ports):
            pending.pop(0)
            continue
        if time.monotonic() > deadline:
            stuck = [p.get("ifname") for p in ports if p.get("state") != "forwarding"]
            raise EmulationError(
                f"bridge ports {stuck} in {ns} do not forward after {FORWARDING_TIMEOUT_S}s"
            )
        time.sleep(0.05)


def _start_processes(
    emu: Emulation, datapaths: list[dp.NodeDatapath], *, pod_servers: bool = True
) -> None:
    lifetime = str(KEPT_LIFETIME_S if emu.janitor.keep else SERVER_LIFETIME_S)
    started = []
    for pod in emu.state.pods if pod_servers else ():
        ns_key = f"node/{pod.node}" if pod.host_network else f"pod/{pod.key}"
        if ns_key not in emu.plan.netns:
            continue
        tcp = [p.port for p in pod.ports if p.protocol.upper() == "TCP"]
        udp = [p.port for p in pod.ports if p.protocol.upper() == "UDP"]
        if not tcp and not udp:
            continue
        argv = [*python_script("podserver.py"), "--name", pod.key, "--lifetime", lifetime]
        argv += [a for p in tcp for a in ("--tcp", str(p))]
        argv += [a for p in udp for a in ("--udp", str(p))]
        started.append((f"pod server {pod.key}", emu.janitor.spawn(emu.plan.netns[ns_key], argv)))
    for d in datapaths:
        if d.proxy_ports:
            argv = [
                *python_script("userspace_proxy.py"),
                "--config",
                d.proxy_config(),
                "--lifetime",
                lifetime,
            ]
            proc = emu.janitor.spawn(emu.plan.netns[f"node/{d.node}"], argv)
            emu.proxies[d.node] = proc.pid
            started.append((f"userspace proxy on {d.node}", proc))
    deadline = time.monotonic() + READY_TIMEOUT_S
    for what, proc in started:
        assert proc.stdout is not None
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, left))
            if not ready:
                raise EmulationError(f"{what} did not start within {READY_TIMEOUT_S}s")
            chunk = proc.stdout.read1(64) if hasattr(proc.stdout, "read1") else b""
            if not chunk:
                err = emu.janitor.stderr_of(proc)
                raise EmulationError(f"{what} exited: {err.strip()[-500:]}")
            line += chunk
