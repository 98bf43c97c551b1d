"""The short path from a scenario file to a running simulation.

Example
-------
>>> sim = load("scenarios/two-node-host-gw.yaml", seed=1)            # doctest: +SKIP
>>> trace(sim, "pod/default/client-0", "service/default/web:80").reachable  # doctest: +SKIP
True
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from k8snet_sim.scenario.loader import load_scenario
from k8snet_sim.sim.build import build_world
from k8snet_sim.sim.simulation import Simulation


def simulate(scenario: Any, *, seed: int = 0) -> Simulation:
    """A fresh simulation of an already loaded scenario."""
    return Simulation(build_world(scenario), seed=seed)


def load(
    path: str | Path, *, seed: int = 0, mode: str | None = None, overrides: Sequence[str] = ()
) -> Simulation:
    """Load a scenario file (with ``--mode`` / ``--set`` style overrides) and build its world."""
    return simulate(load_scenario(path, overrides=overrides, mode=mode), seed=seed)
