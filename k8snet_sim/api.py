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

from k8snet_sim.cluster.build import build_cluster
from k8snet_sim.errors import Diagnostic, ScenarioError
from k8snet_sim.scenario.loader import load_scenario
from k8snet_sim.scenario.schema import Scenario
from k8snet_sim.sim.build import build_world
from k8snet_sim.sim.simulation import Simulation


def load_checked(
    path: str | Path, *, mode: str | None = None, overrides: Sequence[str] = ()
) -> Scenario:
    """:func:`load_scenario`; when that fails on a scenario whose objects all parsed, the
    control plane's checks run too (pod placement, references), so that every problem of both
    stages is reported in one :class:`ScenarioError`, not one stage per run."""
    try:
        return load_scenario(path, overrides=overrides, mode=mode)
    except ScenarioError as err:
        if err.partial is None:
            raise
        raise ScenarioError([*err.diagnostics, *_control_plane_problems(err.partial)]) from None


def _control_plane_problems(scenario: Scenario) -> list[Diagnostic]:
    try:
        build_cluster(scenario)
    except ScenarioError as err:
        return err.diagnostics
    return []


def simulate(scenario: Any, *, seed: int = 0) -> Simulation:
    """A fresh simulation of an already loaded scenario."""
    return Simulation(build_world(scenario), seed=seed)


def load(
    path: str | Path, *, seed: int = 0, mode: str | None = None, overrides: Sequence[str] = ()
) -> Simulation:
    """Load a scenario file (with ``--mode`` / ``--set`` style overrides) and build its world."""
    return simulate(load_checked(path, overrides=overrides, mode=mode), seed=seed)
