"""load_run(): how much gets through, how fast, and where the bottleneck is.

A load run is the ordinary simulation with many connections (DESIGN principle 2): the
scenario's ``traffic:`` entries become generators (:mod:`k8snet_sim.sim.traffic`) in their source
namespaces, every connection crosses the same datapath a trace does, and CPU run queues and link
queues turn work into delay. The result reports, per traffic entry, throughput, latency and
connection-setup percentiles, errors and the spread over endpoints; per node, CPU utilisation by
process; per link, utilisation and tail drops; and drops by cause — all measured over the
window after the warm-up.

Example
-------
>>> from k8snet_sim import load                                            # doctest: +SKIP
>>> result = load_run(load("scenarios/load-iptables.yaml", seed=1))        # doctest: +SKIP
>>> result.traffic[0].latency["p50"] < 0.001                               # doctest: +SKIP
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from k8snet_sim.analysis.targets import resolve_source, resolve_target
from k8snet_sim.errors import K8sNetSimError
from k8snet_sim.scenario.schema import TrafficSpec
from k8snet_sim.sim.flows import FluidNetwork
from k8snet_sim.sim.metrics import (
    Snapshot,
    TrafficLog,
    delta,
    delta_int,
    percentiles,
)
from k8snet_sim.sim.simulation import KERNEL, Simulation
from k8snet_sim.sim.traffic import Destination, Generator, make_generator

BULK_MODELS = ("flow", "packet")
SAMPLES = 100  # progress steps and CPU-over-time samples per run


@dataclass
class TrafficResult:
    """What one traffic entry achieved inside its measurement window."""

    name: str
    kind: str
    source: str
    target: str
    window: tuple[float, float]
    started: int
    completed: int
    throughput_bps: float
    requests_per_second: float
    latency: dict[str, float]
    setup: dict[str, float]
    errors: dict[str, int]
    per_endpoint: dict[str, int]
    connections: int = 0  # connections opened by the measured exchanges (keepalive reuses)
    flows: list[dict[str, Any]] = field(default_factory=list)
    series: list[tuple[float, float]] = field(default_factory=list)  # (t, bits/s)
    latencies: list[float] = field(default_factory=list)  # every measured latency (CDF plots)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "source": self.source,
            "target": self.target,
            "throughputBps": self.throughput_bps,
            "requestsPerSecond": self.requests_per_second,
            "latency": self.latency,
            "setup": self.setup,
            "errors": self.errors,
            "perEndpoint": self.per_endpoint,
            "requests": {
                "started": self.started,
                "completed": self.completed,
                "failed": sum(self.errors.values()),
            },
            "connections": self.connections,
        }
        if self.kind == "bulk":
            data["flows"] = self.flows
        return data


@dataclass
class CpuResult:
    """CPU of one CPU owner (a node, or an outside host or router) over the window."""

    name: str
    kind: str
    cores: int
    utilisation: float  # busy core-seconds ÷ (window × cores)
    by_process: dict[str, float]  # the same, split by process


@dataclass
class LinkResult:
    name: str
    bandwidth_bps: float
    utilisation: float
    bytes: int
    drops: int


@dataclass
class LoadResult:
    """The answer to "how much gets through, how fast, at what cost?"."""

    scenario: str
    mode: str
    seed: int
    bulk_model: str
    window: tuple[float, float]
    traffic: list[TrafficResult]
    nodes: list[CpuResult]
    hosts: list[CpuResult]
    links: list[LinkResult]
    drops: dict[str, Any]
    cpu_series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    sim_time: float = 0.0  # simulated time when the run (and its drain) ended
    start: float = 0.0  # simulated time the traffic started (before any warm-up)

    def entry(self, name: str) -> TrafficResult:
        for t in self.traffic:
            if t.name == name:
                return t
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        def cpu(c: CpuResult) -> dict[str, Any]:
            return {
                "name": c.name,
                "cores": c.cores,
                "cpu": c.utilisation,
                "cpuByProcess": c.by_process,
            }

        return {
            "scenario": self.scenario,
            "mode": self.mode,
            "seed": self.seed,
            "bulkModel": self.bulk_model,
            "window": {
                "start": self.window[0],
                "end": self.window[1],
                "seconds": self.window[1] - self.window[0],
            },
            "traffic": [t.to_dict() for t in self.traffic],
            "nodes": [cpu(c) for c in self.nodes],
            "hosts": [cpu(c) for c in self.hosts],
            "links": [
                {
                    "name": link.name,
                    "bandwidthBps": link.bandwidth_bps,
                    "utilisation": link.utilisation,
                    "bytes": link.bytes,
                    "drops": link.drops,
                }
                for link in self.links
            ],
            "drops": self.drops,
        }

    def summary(self) -> str:
        parts = []
        for t in self.traffic:
            rate = (
                f"{t.throughput_bps / 1e6:.1f} Mbit/s"
                if t.kind == "bulk"
                else f"{t.requests_per_second:.0f} req/s"
            )
            errors = sum(t.errors.values())
            parts.append(
                f"{t.name} {rate} p50 {t.latency['p50'] * 1e3:.3g} ms "
                f"p99 {t.latency['p99'] * 1e3:.3g} ms" + (f" {errors} errors" if errors else "")
            )
        busiest = max(self.nodes, key=lambda c: c.utilisation, default=None)
        tail = f"; busiest node {busiest.name} {busiest.utilisation:.0%} CPU" if busiest else ""
        return f"{self.scenario} ({self.mode}, seed {self.seed}): " + "; ".join(parts) + tail

    def __str__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        from k8snet_sim.report.load_report import load_html

        return load_html(self)


def load_run(
    sim: Simulation,
    traffic: Sequence[TrafficSpec] | None = None,
    *,
    duration: float | None = None,
    progress: Callable[[float, float], None] | None = None,
    bulk_model: str = "flow",
    epoch: float = 1e-3,
) -> LoadResult:
    """Run ``traffic`` (default: the scenario's ``traffic:``) on ``sim`` from its current time.

    ``duration`` replaces every entry's duration. ``progress(done, total)`` is called with
    simulated seconds as the run advances. ``bulk_model`` is ``flow`` (fluid max-min, fast) or
    ``packet`` (every data train through the datapath); ``epoch`` is the fluid model's
    accounting interval.

    Raises :class:`~k8snet_sim.errors.UnknownEndpoint` for references that name nothing and
    :class:`~k8snet_sim.errors.K8sNetSimError` when there is no traffic to run.
    """
    if bulk_model not in BULK_MODELS:
        raise K8sNetSimError(f"unknown bulk model {bulk_model!r}", hint="use flow or packet")
    specs = list(traffic if traffic is not None else sim.world.info["scenario"].traffic)
    if not specs:
        raise K8sNetSimError(
            "the scenario has no traffic: entries",
            hint="add a `traffic:` list to the scenario (README: Throughput and scale), or pass "
            "traffic= to load_run",
        )
    if duration is not None:
        if not duration > 0:
            raise K8sNetSimError(f"duration {duration!r}: a run must last longer than 0")
        specs = [s.model_copy(update={"duration": float(duration)}) for s in specs]
    t0 = sim.env.now
    fluid = FluidNetwork(sim, epoch=epoch) if bulk_model == "flow" else None
    generators: list[Generator] = []
    for spec in specs:
        source_ns = resolve_source(sim.world, spec.source)
        target = resolve_target(sim.world, spec.target)
        dest = Destination(target.ip, target.port, target.proto, target.http_host, target.http_path)
        window = (t0 + spec.warmup, t0 + spec.warmup + spec.duration)
        log = TrafficLog(
            spec.name,
            spec.kind,
            window,
            origin=t0,
            bin_s=max((spec.warmup + spec.duration) / SAMPLES, 1e-4),
        )
        generators.append(make_generator(sim, spec, source_ns, dest, log, start=t0, fluid=fluid))
    for gen in generators:
        gen.launch()
    begin = min(g.begin for g in generators)
    end = max(g.until for g in generators)
    snapshots: dict[str, Snapshot] = {}
    if begin <= t0:
        snapshots["begin"] = Snapshot.take(sim)
    else:
        sim.later(begin - t0, lambda: snapshots.setdefault("begin", Snapshot.take(sim)))
    cpu_series = _run(sim, t0, end, progress)
    snapshots["end"] = Snapshot.take(sim)
    _drain(sim, generators, end)
    result = _assemble(sim, specs, generators, (begin, end), snapshots, cpu_series, bulk_model)
    result.start = t0
    return result


def _run(
    sim: Simulation, t0: float, end: float, progress: Callable[[float, float], None] | None
) -> dict[str, list[tuple[float, float]]]:
    """Advance to ``end`` in steps, sampling node CPU and reporting progress."""
    step = (end - t0) / SAMPLES
    series: dict[str, list[tuple[float, float]]] = {}
    last = Snapshot.take(sim).cpu
    t = t0
    while t < end and step > 0:
        t = min(end, t + step)
        if t > sim.env.now:
            sim.run(until=t)
        now = Snapshot.take(sim).cpu
        for owner, busy in delta(last, now).items():
            ns = sim.ns(owner)
            if ns.kind == "node":
                series.setdefault(str(ns.labels.get("node", owner)), []).append(
                    (t - t0, busy / (step * max(1, ns.cores)))
                )
        last = now
        if progress is not None:
            progress(t - t0, end - t0)
    return series


def _drain(sim: Simulation, generators: list[Generator], end: float) -> None:
    """Let answers still on their way arrive (bounded by SYN retries and the response timeout)."""
    costs = sim.costs
    backoff = sum(costs.tcp_rto * 2**i for i in range(costs.syn_retries + 1))
    deadline = end + backoff + costs.response_timeout + 0.1
    while any(g.busy for g in generators) and sim.env.now < deadline:
        sim.run(until=min(deadline, sim.env.now + 0.05))


def _assemble(
    sim: Simulation,
    specs: list[TrafficSpec],
    generators: list[Generator],
    window: tuple[float, float],
    snapshots: dict[str, Snapshot],
    cpu_series: dict[str, list[tuple[float, float]]],
    bulk_model: str,
) -> LoadResult:
    begin_snap = snapshots.get("begin") or snapshots["end"]
    end_snap = snapshots["end"]
    seconds = max(window[1] - window[0], 1e-12)
    results = [_traffic_result(spec, gen) for spec, gen in zip(specs, generators, strict=True)]
    cpu = delta(begin_snap.cpu, end_snap.cpu)
    process = delta(begin_snap.cpu_process, end_snap.cpu_process)
    nodes: list[CpuResult] = []
    hosts: list[CpuResult] = []
    for owner in sorted(cpu):
        ns = sim.ns(owner)
        cores = max(1, ns.cores)
        capacity = seconds * cores
        split = {
            name: used / capacity
            for (who, name), used in process.items()
            if who == owner and used > 0
        }
        split[KERNEL] = max(cpu[owner] / capacity - sum(split.values()), 0.0)
        row = CpuResult(
            ns.labels.get("node", owner),
            ns.kind,
            cores,
            cpu[owner] / capacity,
            dict(sorted(split.items())),
        )
        (nodes if ns.kind == "node" else hosts).append(row)
    busy = delta(begin_snap.link_busy, end_snap.link_busy)
    sent = delta_int(begin_snap.link_bytes, end_snap.link_bytes)
    dropped = delta_int(begin_snap.link_drops, end_snap.link_drops)
    queues = {q.name: q for q in sim.tx_queues.values()}
    links = [
        LinkResult(
            name,
            queues[name].bandwidth_bps,
            busy[name] / seconds,
            sent.get(name, 0),
            dropped.get(name, 0),
        )
        for name in sorted(busy)
        if sent.get(name, 0) or dropped.get(name, 0)
    ]
    conntrack = {
        k: v
        for k, v in delta_int(begin_snap.conntrack_drops, end_snap.conntrack_drops).items()
        if v
    }
    drops = {
        "linkQueue": sum(dropped.values()),
        "conntrackFull": sum(conntrack.values()),
        "byLink": {k: v for k, v in sorted(dropped.items()) if v},
        "conntrackByNamespace": dict(sorted(conntrack.items())),
    }
    info = sim.world.info
    return LoadResult(
        scenario=info["scenario"].name,
        mode=info["state"].kube_proxy.mode,
        seed=sim.seed,
        bulk_model=bulk_model,
        window=window,
        traffic=results,
        nodes=nodes,
        hosts=hosts,
        links=links,
        drops=drops,
        cpu_series=cpu_series,
        sim_time=sim.env.now,
    )


def _traffic_result(spec: TrafficSpec, gen: Generator) -> TrafficResult:
    log = gen.log
    lo, hi = log.window
    seconds = max(hi - lo, 1e-12)
    measured = log.measured()
    ok = [e for e in measured if e.status == "ok"]
    latencies = log.latencies()
    flows: list[dict[str, Any]] = []
    if spec.kind == "bulk":
        moved = sum(e.size for e in measured)
        last = max((e.finished for e in measured if e.finished is not None), default=hi)
        span = max(last - lo, 1e-12)
        throughput = moved * 8 / span
        rps = len(ok) / span
        for e in measured:
            fct = (e.finished or last) - e.started
            flows.append(
                {
                    "bytes": e.size,
                    "status": e.status,
                    "endpoint": e.endpoint,
                    "setup": e.setup,
                    "completionTime": fct,
                    "throughputBps": e.size * 8 / fct if fct > 0 else 0.0,
                }
            )
    else:
        # Throughput counts every answer that arrived inside the window.
        done = [
            e
            for e in log.exchanges
            if e.status == "ok" and e.finished is not None and lo <= e.finished < hi
        ]
        throughput = sum(e.size for e in done) * 8 / seconds
        rps = len(done) / seconds
    latency = percentiles(latencies)
    latency["mean"] = sum(latencies) / len(latencies) if latencies else 0.0
    setups = log.setups()
    setup = percentiles(setups)
    setup["mean"] = sum(setups) / len(setups) if setups else 0.0
    return TrafficResult(
        name=spec.name,
        kind=spec.kind,
        source=spec.source,
        target=spec.target,
        window=log.window,
        started=len(measured),
        completed=len(ok),
        throughput_bps=throughput,
        requests_per_second=rps,
        latency=latency,
        setup=setup,
        errors=log.errors(),
        per_endpoint=log.per_endpoint(),
        connections=len(setups),
        flows=flows,
        series=log.series(),
        latencies=latencies,
    )
