"""Calibration: the published shapes of Kubernetes service networking, reproduced in one run.

Prints four figures (performance.md §6 names the published shapes):

(a) connection-setup time against the number of Services (1 → 10,000): linear under iptables,
    flat under nftables (and IPVS, when that mode is installed);
(b) the same with keepalive (NGINX's 100 requests per connection): request latency no longer
    depends on the number of Services;
(c) bulk throughput of one flow through the userspace proxy, against iptables mode, on the same
    single-node path (published: ~36 % of direct, iptables ~96 %);
(d) spread of requests over five endpoints: uniform under iptables' random choice (chi-square
    p-value), even under round-robin (userspace, and IPVS ``rr`` when installed).

``--fidelity`` prints instead (e): per-flow throughput of the fluid bulk model against
packet-level TCP on shared cases (the table of docs/fidelity.md, "Throughput model").

Everything is simulated time; nothing here measures the wall clock. The functions are also
the cases ``tests/test_shapes.py`` runs small.

Run: ``python benchmarks/shapes.py [--quick | --fidelity]``
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
from dataclasses import dataclass

from k8snet_sim.analysis.load import load_run
from k8snet_sim.api import simulate
from k8snet_sim.errors import NotSupported
from k8snet_sim.scenario.loader import load_scenario_text
from k8snet_sim.scenario.schema import TrafficSpec
from k8snet_sim.sim.simulation import Simulation
from k8snet_sim.sim.world import World

BASE = """
apiVersion: k8snet-sim.io/v1alpha1
kind: Scenario
metadata: {{name: shapes}}
cluster:
  serviceCIDR: 10.96.0.0/16
  kubeProxy: {{mode: {mode}, clusterCIDR: 10.244.0.0/16}}
  nodes:
    - {{name: node1, address: 192.168.10.11, subnet: lan, cpus: 4}}
network:
  subnets:
    - {{name: lan, cidr: 192.168.10.0/24}}
manifests:
  - apiVersion: apps/v1
    kind: Deployment
    metadata: {{name: web}}
    spec:
      replicas: {replicas}
      selector: {{matchLabels: {{app: web}}}}
      template:
        metadata: {{labels: {{app: web}}}}
        spec: {{containers: [{{name: web, image: nginx, ports: [{{containerPort: 8080}}]}}]}}
  - apiVersion: v1
    kind: Pod
    metadata: {{name: client}}
    spec: {{containers: [{{name: c, image: busybox}}]}}
{services}
"""

SERVICE = """  - apiVersion: v1
    kind: Service
    metadata: {{name: svc-{i:05d}}}
    spec: {{selector: {{app: web}}, ports: [{{port: 80, targetPort: 8080}}]}}
"""


def scenario_text(mode: str, services: int, replicas: int = 2) -> str:
    """One node; a client pod; ``replicas`` web pods behind ``services`` ClusterIP Services
    (``svc-00000`` … in KUBE-SERVICES order)."""
    body = "".join(SERVICE.format(i=i) for i in range(services))
    return BASE.format(mode=mode, replicas=replicas, services=body)


def _spec(**fields: object) -> TrafficSpec:
    return TrafficSpec.model_validate(fields)


@dataclass(frozen=True)
class SetupPoint:
    mode: str
    services: int
    setup_mean: float  # connect() → established, new connections
    latency_mean: float  # request → answer
    keepalive: bool


def setup_point(
    mode: str,
    services: int,
    *,
    keepalive: bool = False,
    samples: int = 8,
    per_sample: int = 25,
    seed: int = 1,
) -> SetupPoint:
    """Mean setup time and request latency to ``samples`` Services spread evenly over the
    KUBE-SERVICES chain (so the mean position is the middle of the chain)."""
    sim = Simulation(_world(mode, services), seed=seed)
    picks = sorted({int((k + 0.5) * services / samples) for k in range(samples)})
    rate = 200.0
    specs = [
        _spec(
            name=f"s{i}",
            **{"from": "pod/default/client", "to": f"service/default/svc-{i:05d}:80"},
            rate=rate,
            duration=per_sample / rate,
            keepalive=keepalive,
        )
        for i in picks
    ]
    result = load_run(sim, specs)
    setups = [t.setup["mean"] for t in result.traffic]
    latencies = [t.latency["mean"] for t in result.traffic]
    return SetupPoint(
        mode, services, statistics.fmean(setups), statistics.fmean(latencies), keepalive
    )


@functools.lru_cache(maxsize=1)
def _world(mode: str, services: int) -> World:
    """Built once per mode and size: with 10,000 Services, building is most of the work.
    A world is static, so every simulation of it starts from the same state."""
    return simulate(load_scenario_text(scenario_text(mode, services)), seed=0).world


def slope(points: list[SetupPoint], attr: str = "setup_mean") -> tuple[float, float]:
    """Least-squares slope (seconds per Service) and R² of ``attr`` against the Service count."""
    xs = [float(p.services) for p in points]
    ys = [getattr(p, attr) for p in points]
    fit = statistics.linear_regression(xs, ys)
    mean = statistics.fmean(ys)
    total = sum((y - mean) ** 2 for y in ys)
    residual = sum((y - (fit.slope * x + fit.intercept)) ** 2 for x, y in zip(xs, ys, strict=True))
    return fit.slope, (1 - residual / total) if total > 0 else 1.0


BULK = """
apiVersion: k8snet-sim.io/v1alpha1
kind: Scenario
metadata: {{name: bulk-ratio}}
cluster:
  kubeProxy: {{mode: {mode}, clusterCIDR: 10.244.0.0/16}}
  nodes:
    - {{name: node1, address: 192.168.10.11, subnet: lan, cpus: 4}}
network:
  subnets:
    - {{name: lan, cidr: 192.168.10.0/24}}
manifests:
  - apiVersion: v1
    kind: Pod
    metadata: {{name: store, labels: {{app: store}}}}
    spec: {{containers: [{{name: s, image: minio, ports: [{{containerPort: 9000}}]}}]}}
  - apiVersion: v1
    kind: Pod
    metadata: {{name: client}}
    spec: {{containers: [{{name: c, image: busybox}}]}}
  - apiVersion: v1
    kind: Service
    metadata: {{name: store}}
    spec: {{selector: {{app: store}}, ports: [{{port: 9000}}]}}
traffic:
  - {{name: bulk, from: pod/default/client, to: "{target}", kind: bulk, size: {size},
     duration: 10s}}
"""


def bulk_throughput(
    mode: str, target: str = "service/default/store:9000", size: str = "1GB"
) -> float:
    """Bits per second of one bulk flow from a client pod to a store pod on the same node."""
    text = BULK.format(mode=mode, target=target, size=size)
    result = load_run(simulate(load_scenario_text(text), seed=1))
    return result.traffic[0].throughput_bps


def spread(mode: str, requests: int = 5000, endpoints: int = 5, seed: int = 1) -> list[int]:
    """Requests per endpoint for new connections to one Service arriving at 1000/s for
    ``requests`` ms (so about ``requests`` of them: Poisson arrivals)."""
    sim = simulate(load_scenario_text(scenario_text(mode, 1, replicas=endpoints)), seed=seed)
    rate = 1000.0
    ends = {"from": "pod/default/client", "to": "service/default/svc-00000:80"}
    spec = _spec(name="spread", **ends, rate=rate, duration=requests / rate)
    per = load_run(sim, [spec]).traffic[0].per_endpoint
    return [per.get(f"default/web-{i}", 0) for i in range(endpoints)]


SHARED = """
apiVersion: k8snet-sim.io/v1alpha1
kind: Scenario
metadata: {{name: shared-bottleneck}}
cluster:
  kubeProxy: {{mode: iptables, clusterCIDR: 10.244.0.0/16}}
  nodes:
    - {{name: node1, address: 192.168.10.11, subnet: lan, cpus: {cpus}}}
    - {{name: node2, address: 192.168.10.12, subnet: lan, cpus: {cpus}}}
network:
  subnets:
    - {{name: lan, cidr: 192.168.10.0/24, bandwidth: {lan}, latency: {latency}}}
costs: {{tcpWindow: {window}}}
manifests:
  - apiVersion: v1
    kind: Pod
    metadata: {{name: store, labels: {{app: store}}}}
    spec:
      nodeName: node2
      containers: [{{name: s, image: minio, ports: [{{containerPort: 9000}}]}}]
  - apiVersion: apps/v1
    kind: Deployment
    metadata: {{name: client}}
    spec:
      replicas: {flows}
      selector: {{matchLabels: {{app: client}}}}
      template:
        metadata: {{labels: {{app: client}}}}
        spec:
          nodeSelector: {{kubernetes.io/hostname: node1}}
          containers: [{{name: c, image: busybox}}]
  - apiVersion: v1
    kind: Service
    metadata: {{name: store}}
    spec: {{selector: {{app: store}}, ports: [{{port: 9000}}]}}
traffic:
{traffic}
"""

# The comparison cases of docs/fidelity.md, "Throughput model": (label, flows, size, fields).
FIDELITY_CASES = (
    (
        "link-bound: 1 Gbit/s LAN",
        4,
        "100MB",
        {"lan": "1Gbps", "latency": "50us", "cpus": 8, "window": 6291456},
    ),
    (
        "window-bound: 256 KiB window, 10 ms RTT",
        3,
        "20MB",
        {"lan": "1Gbps", "latency": "5ms", "cpus": 8, "window": 262144},
    ),
    (
        "CPU-bound: 40 Gbit/s LAN, 1 core per node",
        2,
        "200MB",
        {"lan": "40Gbps", "latency": "50us", "cpus": 1, "window": 6291456},
    ),
)


def shared_bottleneck(model: str, flows: int, size: str, **fields: object) -> list[float]:
    """Per-flow bits per second of ``flows`` bulk transfers from node1's pods to one store pod
    on node2, with the fluid (``flow``) or the ``packet`` model."""
    traffic = "".join(
        f'  - {{name: f{i}, from: pod/default/client-{i}, to: "service/default/store:9000", '
        f"kind: bulk, size: {size}, duration: 60s}}\n"
        for i in range(flows)
    )
    text = SHARED.format(flows=flows, traffic=traffic, **fields)
    result = load_run(simulate(load_scenario_text(text), seed=1), bulk_model=model)
    return [t.flows[0]["throughputBps"] for t in result.traffic]


def fidelity() -> None:
    print("(e) flow-level (fluid max-min) against packet-level bulk TCP")
    for label, flows, size, fields in FIDELITY_CASES:
        fluid = shared_bottleneck("flow", flows, size, **fields)
        packet = shared_bottleneck("packet", flows, size, **fields)
        worst = max(abs(f - p) / p for f, p in zip(fluid, packet, strict=True))
        print(f"    {label}, {flows} × {size}")
        print(f"      flow   Mbit/s: {', '.join(f'{x / 1e6:.1f}' for x in fluid)}")
        print(f"      packet Mbit/s: {', '.join(f'{x / 1e6:.1f}' for x in packet)}")
        print(f"      worst per-flow error {worst:.1%}; total {sum(fluid) / sum(packet) - 1:+.1%}")


def available(mode: str) -> bool:
    try:
        simulate(load_scenario_text(scenario_text(mode, 1)), seed=0)
    except NotSupported:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller Service counts")
    parser.add_argument("--fidelity", action="store_true", help="only (e): flow vs packet level")
    args = parser.parse_args(argv)
    if args.fidelity:
        fidelity()
        return 0
    counts = [1, 300, 1000, 3000] if args.quick else [1, 1000, 3000, 10000]
    modes = [m for m in ("iptables", "ipvs", "nftables") if available(m)]
    missing = [m for m in ("ipvs", "nftables") if m not in modes]
    print("(a) connection setup vs number of Services (new connection per request)")
    if missing:
        print(f"    not installed yet, skipped: {', '.join(missing)}")
    table: dict[tuple[str, bool], list[SetupPoint]] = {}
    for n in counts:  # each world is built once and serves both passes
        for mode in modes:
            for keepalive in (False, True):
                # With keepalive, 100 requests per sample: one in a hundred opens a connection.
                point = setup_point(
                    mode, n, keepalive=keepalive, per_sample=100 if keepalive else 25
                )
                table.setdefault((mode, keepalive), []).append(point)
        print(f"    … {n} Services done", file=sys.stderr, flush=True)
    for keepalive in (False, True):
        if keepalive:
            print("\n(b) the same with keepalive (100 requests per connection)")
        print(
            f"    {'Services':>9}"
            + "".join(f"  {m + ' setup':>16}  {m + ' request':>17}" for m in modes)
        )
        for i, n in enumerate(counts):
            row = f"    {n:>9}"
            for mode in modes:
                point = table[(mode, keepalive)][i]
                row += f"  {point.setup_mean * 1e6:>13.1f} µs  {point.latency_mean * 1e6:>14.1f} µs"
            print(row)
        attr = "latency_mean" if keepalive else "setup_mean"
        what = "request latency" if keepalive else "setup"
        for mode in modes:
            points = table[(mode, keepalive)]
            s, r2 = slope(points, attr)
            growth = getattr(points[-1], attr) / getattr(points[0], attr)
            print(
                f"    {mode}: {what} slope {s * 1e9:.2f} ns per Service (R² {r2:.3f}); "
                f"{points[-1].services} vs {points[0].services} Services: {growth:.2f}×"
            )
    print("\n(c) bulk throughput, one flow, client pod → store pod on the same node")
    direct = bulk_throughput("iptables", "pod/default/store:9000")
    iptables = bulk_throughput("iptables")
    userspace = bulk_throughput("userspace")
    print(f"    direct (pod IP)      {direct / 1e9:6.2f} Gbit/s")
    print(
        f"    iptables (ClusterIP) {iptables / 1e9:6.2f} Gbit/s  "
        f"({iptables / direct:.0%} of direct; published 96 %)"
    )
    print(
        f"    userspace proxy      {userspace / 1e9:6.2f} Gbit/s  "
        f"({userspace / direct:.0%} of direct, {userspace / iptables:.2f}× iptables; "
        "published 36 %)"
    )
    print("\n(d) ~5000 new connections over 5 endpoints")
    from scipy.stats import chisquare

    counts_random = spread("iptables")
    p = chisquare(counts_random).pvalue
    print(f"    iptables (statistic --mode random): {counts_random}  chi-square p = {p:.3f}")
    for mode in ("ipvs", "userspace"):
        if available(mode):
            counts_rr = spread(mode)
            print(
                f"    {mode} (round-robin): {counts_rr}  max - min = "
                f"{max(counts_rr) - min(counts_rr)}"
            )
        else:
            print(f"    {mode}: not installed yet, skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
