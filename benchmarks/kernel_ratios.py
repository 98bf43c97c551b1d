"""Throughput on the real kernel: direct pod-to-pod, via an iptables ClusterIP, via the
userspace proxy — and the simulator's figures for the same paths when it has a load model.

Builds ``scenarios/lesson-01-kube-proxy-modes.yaml`` (a client pod on node1, one web pod on
node2, Service web:80 → 8080) twice in network namespaces — iptables mode and userspace mode —
runs ``iperf3 -s -p 8080`` in the web pod and ``iperf3 -c`` from the client for a few seconds
per path, and prints the throughputs and their ratios to the direct path. One backend only:
iperf3 opens a control and a data connection, and both must reach the same server. Reported,
not asserted. Needs root and iperf3; every namespace and process is removed afterwards.

Run: ``sudo python benchmarks/kernel_ratios.py [seconds per run] [runs per path]``
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import time
from typing import Any

from k8snet_sim.api import load
from k8snet_sim.emulate.session import Emulation, emulation
from k8snet_sim.net.addr import ip_str

SCENARIO = "scenarios/lesson-01-kube-proxy-modes.yaml"
CLIENT, SERVER, SERVICE = "pod/default/client", "pod/default/web", "service/default/web:80"
MAX_SECONDS = 10
MAX_REPEAT = 9


def iperf(emu: Emulation, ip: str, port: int, seconds: int) -> float:
    """Bits per second received by the server, measured by iperf3 from the client pod."""
    server = emu.janitor.spawn(emu.netns(SERVER), ["iperf3", "-s", "-4", "-p", "8080"])
    try:
        argv = ["iperf3", "-4", "-c", ip, "-p", str(port), "-t", str(seconds), "-J",
                "--connect-timeout", "2000"]  # fmt: skip
        deadline = time.monotonic() + 15  # the server needs a moment to listen
        while True:
            done = emu.janitor.exec(emu.netns(CLIENT), argv, check=False, timeout=seconds + 20)
            # iperf3 -J may exit 0 on "connection refused": the JSON's "error" tells.
            data = json.loads(done.stdout or "{}")
            if done.returncode == 0 and "error" not in data and "end" in data:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(data.get("error") or done.stderr.strip() or "iperf3 failed")
            if server.poll() is not None:
                raise RuntimeError(f"iperf3 server exited: {emu.janitor.stderr_of(server)}")
            time.sleep(0.2)
        return float(data["end"]["sum_received"]["bits_per_second"])
    finally:
        server.terminate()
        server.wait(timeout=5)  # the next path's server needs the port


def kernel_figures(seconds: int, repeat: int) -> dict[str, float]:
    """Median of ``repeat`` runs per path, the paths interleaved so that a busy moment of the
    machine does not land on one path only."""
    runs: dict[str, list[float]] = {}
    sim = load(SCENARIO, mode="iptables")
    pod_ip = next(p.ip for p in sim.world.info["state"].pods if p.key == "default/web")
    cluster_ip = ip_str(_service_ip(sim))
    with emulation(sim.world, pod_servers=False) as emu:
        for _ in range(repeat):
            runs.setdefault("direct pod → pod", []).append(iperf(emu, pod_ip, 8080, seconds))
            runs.setdefault("iptables ClusterIP", []).append(iperf(emu, cluster_ip, 80, seconds))
    sim = load(SCENARIO, mode="userspace")
    with emulation(sim.world, pod_servers=False) as emu:
        for _ in range(repeat):
            runs.setdefault("userspace proxy", []).append(iperf(emu, cluster_ip, 80, seconds))
    return {label: statistics.median(values) for label, values in runs.items()}


def _service_ip(sim: Any) -> int:
    from k8snet_sim.analysis.targets import resolve_target

    return resolve_target(sim.world, SERVICE).ip


def simulator_figures(seconds: int) -> dict[str, float] | str:
    """The simulator's bulk throughput for the same three paths (if it has a load model)."""
    try:
        from k8snet_sim.analysis.load import load_run
        from k8snet_sim.scenario.schema import TrafficSpec
    except ImportError as err:
        return f"no load model ({err})"
    out: dict[str, float] = {}
    paths = (("direct pod → pod", "iptables", "pod/default/web:8080"),
             ("iptables ClusterIP", "iptables", SERVICE),
             ("userspace proxy", "userspace", SERVICE))  # fmt: skip
    for label, mode, target in paths:
        spec = TrafficSpec.model_validate(
            {
                "name": "bulk",
                "from": CLIENT,
                "to": target,
                "kind": "bulk",
                "size": 1e12,
                "duration": seconds,
            }
        )
        try:
            result = load_run(load(SCENARIO, mode=mode), [spec])
        except Exception as err:  # a benchmark reports, it does not stop
            return f"simulator load run failed: {err}"
        out[label] = result.traffic[0].throughput_bps
    return out


def _table(title: str, figures: dict[str, float]) -> None:
    base = figures.get("direct pod → pod") or 1.0
    print(title)
    for label, bps in figures.items():
        print(f"  {label:<20} {bps / 1e9:8.2f} Gbit/s   ratio to direct {bps / base:6.3f}")


def main() -> None:
    seconds = min(int(sys.argv[1]) if len(sys.argv) > 1 else 3, MAX_SECONDS)
    repeat = min(int(sys.argv[2]) if len(sys.argv) > 2 else 3, MAX_REPEAT)
    if shutil.which("iperf3") is None:
        sys.exit("iperf3 is not installed")
    figures = kernel_figures(seconds, repeat)
    _table(f"kernel (iperf3, one TCP stream, median of {repeat} × {seconds} s):", figures)
    sim = simulator_figures(seconds)
    if isinstance(sim, str):
        print(f"simulator: {sim}")
    else:
        _table(f"simulator (bulk flow, {seconds} s simulated):", sim)


if __name__ == "__main__":
    main()
