"""Engine speed: simulated packet events per second of CPU, next to a bare simpy loop.

A **packet event** is one packet processed by one network namespace's stack: a packet a socket
or the kernel sends (``datapath.local_out``), a packet arriving on an interface
(``datapath.receive``, loopback included), or a frame bridged through the owner's netfilter
hooks (``datapath.bridge_netfilter``). Each runs the netfilter hooks, conntrack, routing and the
CPU and queue accounting of that namespace. Link serializations, timers and application
callbacks are not counted. A fluid bulk flow moves bytes without packet events; this benchmark
has none.

The workload is request traffic only (``scenarios/load-iptables.yaml`` without its bulk
entry): new connections, keepalive connections and closed-loop clients, across two nodes, a
router and an outside host. It runs twice with the same seed: once with counting wrappers
around the three datapath entry points (to count the events), once bare (to time them). The
same run also times a bare simpy loop — timeouts with a callback each — and prints the ratio.

The figures depend on the interpreter as much as on the machine. On the development machine the
same code runs about 1.2× faster under Debian's CPython 3.11.2 (built with profile-guided and
link-time optimisation, as distributions ship it) than under pyenv's CPython 3.11.7 (built
without either, pyenv's default). The bare simpy rate, measured by the same interpreter, is
the yardstick; the ratio is the engine's own figure.

Run: ``python benchmarks/engine.py [--duration SECONDS] [--repeat N] [--profile]``
"""

from __future__ import annotations

import argparse
import cProfile
import platform
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import simpy

from k8snet_sim.analysis.load import load_run
from k8snet_sim.api import simulate
from k8snet_sim.scenario.loader import load_scenario
from k8snet_sim.sim import datapath

ROOT = Path(__file__).resolve().parents[1]
TARGET = 100_000  # packet events per second (issue 7)
# CPU time of this process: on a shared machine, wall time also counts other processes' turns.
# Both figures use the same clock, so their ratio holds either way.
CLOCK = time.process_time


def workload(duration: float) -> Any:
    scenario = load_scenario(ROOT / "scenarios" / "load-iptables.yaml")
    traffic = [t.model_copy(update={"duration": duration}) for t in scenario.traffic]
    return scenario, [t for t in traffic if t.kind != "bulk"]


def run_once(duration: float) -> tuple[float, int]:
    """CPU seconds of one load run (the world is built before the clock starts), and how many
    simpy events it scheduled."""
    scenario, traffic = workload(duration)
    sim = simulate(scenario, seed=1)
    start = CLOCK()
    load_run(sim, traffic)
    wall = CLOCK() - start
    return wall, next(sim.env._eid)  # simpy numbers every event it schedules


def count_events(duration: float) -> int:
    """Packet events of the workload, counted by wrapping the datapath's entry points."""
    counter = [0]
    originals: dict[str, Callable[..., Any]] = {}

    def counting(name: str) -> Callable[..., Any]:
        original = getattr(datapath, name)
        originals[name] = original

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            counter[0] += 1
            return original(*args, **kwargs)

        return wrapper

    for name in ("receive", "local_out", "bridge_netfilter"):
        setattr(datapath, name, counting(name))
    try:
        run_once(duration)
    finally:
        for name, original in originals.items():
            setattr(datapath, name, original)
    return counter[0]


def bare_simpy(events: int) -> float:
    """simpy events per second: a ring of timeouts, each scheduling the next from its callback."""
    env = simpy.Environment()
    done = [0]

    def tick(_event: simpy.Event) -> None:
        done[0] += 1
        if done[0] < events:
            env.timeout(1e-6).callbacks.append(tick)

    for i in range(64):
        env.timeout(i * 1e-8).callbacks.append(tick)
    start = CLOCK()
    env.run()
    return done[0] / (CLOCK() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=2.0, help="simulated seconds")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each; the best counts")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of one run")
    args = parser.parse_args(argv)
    events = count_events(args.duration)
    # Alternate the two measurements and keep the best of each: on a shared machine the
    # fastest run is the one least disturbed by others.
    runs, bares = [], []
    for _ in range(max(1, args.repeat)):
        runs.append(run_once(args.duration))
        bares.append(bare_simpy(max(events, 200_000)))
    wall, scheduled = min(runs)
    rate = events / wall
    bare = max(bares)
    print(
        f"workload: scenarios/load-iptables.yaml requests, {args.duration:g} s simulated, "
        f"best of {max(1, args.repeat)}"
    )
    print(f"interpreter:          Python {platform.python_version()} ({sys.executable})")
    print(f"packet events:        {events:,}")
    print(f"simpy events scheduled: {scheduled:,} ({scheduled / events:.2f} per packet event)")
    print(f"CPU time:             {wall:.2f} s ({scheduled / wall:,.0f} simpy events/s)")
    print(
        f"packet events/s:      {rate:,.0f}  (target {TARGET:,}: "
        f"{'met' if rate >= TARGET else 'NOT met'})"
    )
    print(f"bare simpy events/s:  {bare:,.0f}")
    print(
        f"ratio to bare simpy:  {rate / bare:.3f}  (bare simpy events per packet event: "
        f"{bare / rate:.1f})"
    )
    if args.profile:
        scenario, traffic = workload(args.duration)
        sim = simulate(scenario, seed=1)
        profiler = cProfile.Profile()
        profiler.runcall(load_run, sim, traffic)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
