"""Load runs: every traffic kind, drops on a full buffer, CPU saturation, fair sharing of a
bottleneck, conntrack exhaustion, determinism, and the ``load`` command's JSON and pictures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from k8snet_sim.analysis.load import LoadResult, load_run
from k8snet_sim.api import simulate
from k8snet_sim.scenario.loader import load_scenario_text
from k8snet_sim.sim.flows import max_min_rates
from k8snet_sim.sim.metrics import percentiles
from k8snet_sim.sim.simulation import Simulation

ROOT = Path(__file__).resolve().parents[1]

# One node for the servers, one for the clients, a LAN between them; {lan}, {buffer}, {cpus},
# {costs} and {traffic} are filled in per test.
TEMPLATE = """
apiVersion: k8snet-sim.io/v1alpha1
kind: Scenario
metadata: {{name: load-test}}
cluster:
  kubeProxy: {{mode: iptables, clusterCIDR: 10.244.0.0/16}}
  nodes:
    - {{name: node1, address: 192.168.10.11, subnet: lan, cpus: {cpus}}}
    - {{name: node2, address: 192.168.10.12, subnet: lan, cpus: {cpus}}}
network:
  subnets:
    - {{name: lan, cidr: 192.168.10.0/24, bandwidth: {lan}, latency: 50us,
       bufferPackets: {buffer}}}
costs: {costs}
manifests:
  - apiVersion: apps/v1
    kind: Deployment
    metadata: {{name: web}}
    spec:
      replicas: 3
      selector: {{matchLabels: {{app: web}}}}
      template:
        metadata: {{labels: {{app: web}}}}
        spec:
          nodeSelector: {{kubernetes.io/hostname: node2}}
          containers: [{{name: web, image: nginx, ports: [{{containerPort: 8080}}]}}]
  - apiVersion: v1
    kind: Service
    metadata: {{name: web}}
    spec: {{selector: {{app: web}}, ports: [{{port: 80, targetPort: 8080}}]}}
  - apiVersion: apps/v1
    kind: Deployment
    metadata: {{name: client}}
    spec:
      replicas: 4
      selector: {{matchLabels: {{app: client}}}}
      template:
        metadata: {{labels: {{app: client}}}}
        spec:
          nodeSelector: {{kubernetes.io/hostname: node1}}
          containers: [{{name: c, image: busybox}}]
traffic:
{traffic}
"""


def build(
    traffic: str,
    *,
    lan: str = "10Gbps",
    buffer: int = 1000,
    cpus: int = 4,
    costs: str = "{}",
    seed: int = 1,
) -> Simulation:
    text = TEMPLATE.format(traffic=traffic, lan=lan, buffer=buffer, cpus=cpus, costs=costs)
    return simulate(load_scenario_text(text), seed=seed)


def run(traffic: str, **kw: object) -> LoadResult:
    model = str(kw.pop("bulk_model", "flow"))
    return load_run(build(traffic, **kw), bulk_model=model)  # type: ignore[arg-type]


WEB = 'to: "service/default/web:80"'


# ----------------------------------------------------------------------------- traffic kinds


@pytest.mark.parametrize(
    ("entry", "expected_rps"),
    [
        (f"- {{name: t, from: pod/default/client-0, {WEB}, rate: 200/s, duration: 1s}}", 200),
        (
            f"- {{name: t, from: pod/default/client-0, {WEB}, rate: 200/s, duration: 1s, "
            "keepalive: true}",
            200,
        ),
        (
            f"- {{name: t, from: pod/default/client-0, {WEB}, kind: clients, clients: 4, "
            "thinkTime: 10ms, duration: 1s}",
            4 / 0.0105,
        ),
    ],
    ids=["open-loop", "open-loop-keepalive", "closed-loop"],
)
def test_request_kinds_complete_and_spread(entry: str, expected_rps: float) -> None:
    result = run(entry)
    t = result.traffic[0]
    assert t.errors == {} and t.completed == t.started > 100
    assert t.requests_per_second == pytest.approx(expected_rps, rel=0.2)
    endpoints = {"default/web-0", "default/web-1", "default/web-2"}
    # A keepalive connection stays with the endpoint its first packet chose.
    assert set(t.per_endpoint) <= endpoints
    assert len(t.per_endpoint) >= (1 if "keepalive" in entry else 3)
    assert t.throughput_bps == pytest.approx(t.requests_per_second * (100 + 1024) * 8, rel=0.01)
    assert 100e-6 < t.setup["p50"] < t.latency["p50"] < 5e-3  # one LAN round trip or more
    assert t.latency["p50"] <= t.latency["p90"] <= t.latency["p99"]


def test_keepalive_opens_one_connection_per_hundred_requests() -> None:
    keepalive = run(
        f"- {{name: t, from: pod/default/client-0, {WEB}, rate: 100/s, "
        "duration: 3s, keepalive: true}"
    ).traffic[0]
    fresh = run(
        f"- {{name: t, from: pod/default/client-0, {WEB}, rate: 100/s, duration: 3s}}"
    ).traffic[0]
    assert fresh.connections == fresh.completed > 250
    # Low concurrency: requests take turns on a few connections, each retired after 100.
    assert keepalive.completed > 250
    assert keepalive.completed // 100 <= keepalive.connections <= keepalive.completed // 100 + 4
    # Without the handshake a request is one round trip instead of two.
    assert keepalive.latency["p50"] < 0.8 * fresh.latency["p50"]


@pytest.mark.parametrize("model", ["flow", "packet"])
def test_bulk_flow_moves_its_bytes_at_the_link_rate(model: str) -> None:
    result = run(
        f"- {{name: b, from: pod/default/client-0, {WEB}, kind: bulk, size: 20MB, duration: 2s}}",
        lan="1Gbps",
        bulk_model=model,
    )
    t = result.traffic[0]
    assert t.errors == {} and t.completed == 1
    flow = t.flows[0]
    assert flow["bytes"] == 20_000_000 and flow["endpoint"].startswith("default/web-")
    # One flow alone on a 1 Gbit/s LAN: the link is the bottleneck (framing costs ~5 %).
    assert 0.85e9 < flow["throughputBps"] < 0.96e9
    lan = next(link for link in result.links if link.name == "node/node1:eth0")
    assert lan.bytes >= 20_000_000


def test_bulk_window_end_cuts_a_long_transfer() -> None:
    t = run(
        f"- {{name: b, from: pod/default/client-0, {WEB}, kind: bulk, size: 10GB, "
        "duration: 200ms}",
        lan="1Gbps",
    ).traffic[0]
    assert t.errors == {"incomplete": 1}
    assert 0.85e9 < t.throughput_bps < 0.96e9  # what did get through, per second


def test_bulk_needs_a_tcp_target() -> None:
    from k8snet_sim.errors import K8sNetSimError
    from k8snet_sim.net.packet import UDP
    from k8snet_sim.sim.metrics import TrafficLog
    from k8snet_sim.sim.traffic import Destination, make_generator

    sim = build(f"- {{name: b, from: pod/default/client-0, {WEB}, kind: bulk, size: 1MB}}")
    spec = sim.world.info["scenario"].traffic[0]
    with pytest.raises(K8sNetSimError, match="TCP target"):
        make_generator(
            sim,
            spec,
            "pod/default/client-0",
            Destination(1, 53, UDP),
            TrafficLog("b", "bulk", (0.0, 1.0)),
            start=0.0,
            fluid=None,
        )


# ----------------------------------------------------------------------------- resources


def test_full_buffer_drops_and_retransmitted_syns_show_in_setup_time() -> None:
    # A 10 Mbit/s LAN with room for 3 frames, 20 KiB answers at 300/s: far more than it carries.
    result = run(
        f"- {{name: t, from: pod/default/client-0, {WEB}, rate: 300/s, duration: 1s, "
        "responseBytes: 20KiB}",
        lan="10Mbps",
        buffer=3,
    )
    t = result.traffic[0]
    assert result.drops["linkQueue"] > 0
    assert sum(result.drops["byLink"].values()) == result.drops["linkQueue"]
    assert any(link.drops for link in result.links)
    # Lost SYNs come back after the 1 s retransmission timeout; lost answers time out.
    assert t.setup["p99"] >= 1.0 or t.errors


def test_cpu_saturation_raises_latency() -> None:
    def p99(rate: int) -> tuple[float, float]:
        result = run(
            f"- {{name: t, from: pod/default/client-0, {WEB}, rate: {rate}/s, duration: 1s}}",
            cpus=1,
            costs="{appService: 1ms}",
        )
        node2 = next(c for c in result.nodes if c.name == "node2")
        return result.traffic[0].latency["p99"], node2.utilisation

    light, light_cpu = p99(100)
    heavy, heavy_cpu = p99(900)
    assert light_cpu < 0.3 < 0.8 < heavy_cpu
    assert heavy > 5 * light  # queueing for the one core


def test_cpu_is_accounted_by_process() -> None:
    result = run(
        f"- {{name: t, from: pod/default/client-0, {WEB}, rate: 200/s, duration: 1s}}",
        costs="{appService: 100us}",
    )
    node2 = next(c for c in result.nodes if c.name == "node2")
    # Every request costs 100 µs of application time, on a node of 4 cores, over 1 s.
    t = result.traffic[0]
    assert node2.by_process["app"] == pytest.approx(t.completed * 100e-6 / 4, rel=0.02)
    assert node2.by_process["kernel"] > 0
    assert node2.utilisation == pytest.approx(sum(node2.by_process.values()))


def test_conntrack_full_drops_new_connections() -> None:
    sim = build(f"- {{name: t, from: pod/default/client-0, {WEB}, rate: 100/s, duration: 500ms}}")
    sim.world.namespaces["node/node1"].conntrack_max = 20  # before its state exists
    result = load_run(sim)
    t = result.traffic[0]
    assert result.drops["conntrackFull"] > 0
    assert result.drops["conntrackByNamespace"].get("node/node1", 0) > 0
    assert t.completed < t.started  # new flows beyond the table's size cannot start


# ----------------------------------------------------------------------------- fair sharing


def test_max_min_rates_fill_progressively() -> None:
    usage = [{"lan": 1.0}, {"lan": 1.0}, {"lan": 1.0, "cpu": 2.0}]
    rates = max_min_rates(usage, [10.0, 0.1, 10.0], {"lan": 1.0, "cpu": 0.5})
    assert rates == pytest.approx([0.65, 0.1, 0.25])
    assert max_min_rates([{"a": 1.0}] * 4, [9.0] * 4, {"a": 2.0}) == pytest.approx([0.5] * 4)


def _shared(model: str) -> list[float]:
    entries = "\n".join(
        f"- {{name: f{i}, from: pod/default/client-{i}, {WEB}, kind: bulk, size: 30MB, "
        "duration: 5s}"
        for i in range(4)
    )
    result = run(entries, lan="1Gbps", bulk_model=model)
    return [t.flows[0]["throughputBps"] for t in result.traffic]


def test_flows_sharing_a_bottleneck_get_fair_shares() -> None:
    fluid = _shared("flow")
    packet = _shared("packet")
    # The fluid model gives four equal shares of the 1 Gbit/s link (less framing).
    assert max(fluid) / min(fluid) == pytest.approx(1.0, abs=0.01)
    assert 0.9e9 < sum(fluid) < 0.96e9
    # Packet by packet, fairness emerges from one FIFO queue and the windows (Jain's index).
    jain = sum(packet) ** 2 / (len(packet) * sum(x * x for x in packet))
    assert jain > 0.98
    # The documented agreement: within 10 % per flow.
    for a, b in zip(fluid, packet, strict=True):
        assert abs(a - b) / b < 0.10


# ----------------------------------------------------------------------------- results


def test_warm_up_is_excluded() -> None:
    result = run(
        f"- {{name: t, from: pod/default/client-0, {WEB}, rate: 200/s, duration: 1s, "
        "warmup: 500ms}"
    )
    t = result.traffic[0]
    assert t.window == (0.5, 1.5) and result.window == (0.5, 1.5)
    assert t.started == pytest.approx(200, rel=0.2)


def test_same_seed_same_numbers() -> None:
    entries = (
        f"- {{name: a, from: pod/default/client-0, {WEB}, rate: 300/s, duration: 500ms}}\n"
        f"- {{name: b, from: pod/default/client-1, {WEB}, kind: bulk, size: 5MB}}"
    )
    first = run(entries, seed=3).to_dict()
    second = run(entries, seed=3).to_dict()
    other = run(entries, seed=4).to_dict()
    assert json.dumps(first) == json.dumps(second)
    assert json.dumps(first) != json.dumps(other)


def test_percentiles_of_nothing_are_zero() -> None:
    assert percentiles([]) == {"p50": 0.0, "p90": 0.0, "p99": 0.0}
    assert percentiles([1.0, 2.0, 3.0, 4.0])["p50"] == 2.5


def test_load_command_json_and_plots(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "k8snet_sim",
            "load",
            "scenarios/load-iptables.yaml",
            "--json",
            "--duration",
            "300ms",
            "--plot",
            str(tmp_path),
            "--seed",
            "2",
        ],
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert [t["name"] for t in data["traffic"]] == ["browse", "api", "shoppers", "backup"]
    for t in data["traffic"]:
        assert {
            "name",
            "throughputBps",
            "requestsPerSecond",
            "latency",
            "setup",
            "errors",
            "perEndpoint",
        } <= set(t)
        assert set(t["latency"]) >= {"p50", "p90", "p99"} <= set(t["setup"])
    assert {n["name"] for n in data["nodes"]} == {"node1", "node2"}
    assert all(0.0 <= n["cpu"] <= 1.0 for n in data["nodes"])
    assert {"linkQueue", "conntrackFull"} <= set(data["drops"])
    pictures = sorted(p.name for p in tmp_path.iterdir())
    assert pictures == ["cpu.png", "endpoints.png", "latency-cdf.png", "throughput.png"]
    assert all((tmp_path / p).read_bytes().startswith(b"\x89PNG") for p in pictures)


def test_load_command_rejects_a_scenario_without_traffic() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "k8snet_sim", "load", "scenarios/two-node-host-gw.yaml"],
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=300,
    )
    assert out.returncode == 2 and "no traffic" in out.stderr


def test_throughput_plot_uses_a_log_axis_when_entries_differ_a_hundredfold() -> None:
    from types import SimpleNamespace

    from k8snet_sim.report.load_report import _throughput

    def result(*peaks: float) -> Any:
        traffic = [
            SimpleNamespace(name=f"t{i}", series=[(0.1, p / 2), (0.2, p)])
            for i, p in enumerate(peaks)
        ]
        return SimpleNamespace(
            traffic=traffic, window=(0.0, 1.0), start=0.0, scenario="s", mode="m"
        )

    assert _throughput(result(5e6, 9.4e9)).axes[0].get_yscale() == "log"
    assert _throughput(result(5e6, 50e6)).axes[0].get_yscale() == "linear"


def test_cost_overrides_name_their_unit_and_typos() -> None:
    from k8snet_sim.errors import K8sNetSimError
    from k8snet_sim.sim.costs import CostModel

    assert CostModel.from_overrides({"ruleCost": "25ns"}).rule_cost == pytest.approx(25e-9)
    assert CostModel.from_overrides({"tcpRto": 3}).tcp_rto == 3.0  # a timeout in seconds
    for forgotten in (25, "25", 0.5):  # 25 s per rule: a forgotten unit
        with pytest.raises(K8sNetSimError) as bare:
            CostModel.from_overrides({"ruleCost": forgotten})
        assert bare.value.hint == f"write a unit, e.g. ruleCost: {forgotten}ns or {forgotten}us"
    with pytest.raises(K8sNetSimError, match="bad cost value True"):
        CostModel.from_overrides({"ruleCost": True})
    with pytest.raises(K8sNetSimError) as typo:
        CostModel.from_overrides({"rulecost": "2ns"})
    assert typo.value.hint == "did you mean `ruleCost`?"


def test_simulated_time_only_moves_forward() -> None:
    from k8snet_sim import load

    sim = load(ROOT / "scenarios" / "external-clusterip.yaml")
    sim.advance(1.5)
    assert sim.env.now == pytest.approx(1.5)
    for bad in (0, -5):
        with pytest.raises(ValueError, match="only moves forward"):
            sim.advance(bad)


def test_load_run_refuses_a_run_of_no_time() -> None:
    from k8snet_sim import load
    from k8snet_sim.errors import K8sNetSimError

    sim = load(ROOT / "scenarios" / "load-iptables.yaml")
    with pytest.raises(K8sNetSimError, match="longer than 0"):
        load_run(sim, duration=0)


def test_notebook_view_shows_no_time_for_what_was_not_measured() -> None:
    from types import SimpleNamespace

    from k8snet_sim.report.load_report import load_html

    zero = {"p50": 0.0, "p90": 0.0, "p99": 0.0}
    entry = SimpleNamespace(
        name="t", kind="requests", requests_per_second=0.0, throughput_bps=0.0, setup=zero,
        latency=zero, errors={"connect-timeout": 57}, connections=0, latencies=[],
    )  # fmt: skip
    result = SimpleNamespace(traffic=[entry], nodes=[], summary=lambda: "s")
    cells = load_html(result)  # type: ignore[arg-type]
    assert "<td>0.00</td><td>—</td><td>—</td><td>—</td><td>57</td>" in cells
