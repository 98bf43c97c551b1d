"""``emulate()``: build a scenario on the kernel, probe its cells, compare with the simulator.

One build serves every cell of the run. With ``compare`` each cell is first traced by the
simulator (on its own fork, exploring every branch of the random choices, exactly like
``check``); the simulator's possible endpoints also size the kernel attempts.

Example
-------
>>> from k8snet_sim.scenario.loader import load_scenario            # doctest: +SKIP
>>> scenario = load_scenario("scenarios/two-node-host-gw.yaml")    # doctest: +SKIP
>>> report = emulate(scenario, compare=True)                        # doctest: +SKIP
>>> report.passed                                                   # doctest: +SKIP
True
"""

from __future__ import annotations

from typing import Any

from k8snet_sim.emulate.compare import CellResult, EmulationReport, SimVerdict, judge_cell
from k8snet_sim.emulate.datapath import support_problem
from k8snet_sim.emulate.janitor import EmulationError, require_root
from k8snet_sim.emulate.probes import Probe, expect_probes, reach_probes, unique
from k8snet_sim.emulate.session import Emulation, emulation
from k8snet_sim.errors import K8sNetSimError


def probes_for(
    scenario: Any, world: Any, *, reach: bool = False, sim: Any | None = None
) -> list[Probe]:
    """The scenario's applicable ``expect:`` entries, then (with ``reach``) the matrix cells."""
    probes = expect_probes(scenario)
    if reach:
        probes += reach_probes(world, world.info["state"], sim)
    return unique(probes)


def simulate_cell(sim: Any, probe: Probe) -> SimVerdict | str:
    """The simulator's verdict for a cell, or why it could not trace it."""
    from k8snet_sim.analysis.trace import trace

    try:
        result = trace(sim.fork(), probe.source, probe.target)
    except K8sNetSimError as err:
        return str(err)
    rows = result.branches()
    return SimVerdict.from_rows(rows)


def _br_netfilter_affected(emu: Emulation, probe: Probe, sim: SimVerdict) -> bool:
    """Without br_netfilter a reply between two pods of one node is bridged past iptables:
    cells whose source pod shares a node with one of the possible endpoints."""
    if emu.br_netfilter or not probe.source.startswith("pod/"):
        return False
    key = probe.source.removeprefix("pod/")
    key = key if "/" in key else f"default/{key}"
    node = next((p.node for p in emu.state.pods if p.key == key), None)
    return any(r.get("node") == node for r in sim.rows)


def probe_cells(emu: Emulation, probes: list[Probe], sim: Any | None) -> list[CellResult]:
    """Probe every cell on a built emulation; compare with ``sim`` when given."""
    cells = []
    for probe in probes:
        verdict = simulate_cell(sim, probe) if sim is not None else None
        if isinstance(verdict, str):
            from k8snet_sim.emulate.probes import KernelResult

            cells.append(CellResult(probe, KernelResult((), skipped=f"simulator: {verdict}")))
            continue
        rows = list(verdict.rows) if verdict is not None else None
        kernel = emu.probe(probe, rows)
        affected = verdict is not None and _br_netfilter_affected(emu, probe, verdict)
        cells.append(judge_cell(probe, kernel, verdict, br_netfilter_affected=affected))
    return cells


def emulate(
    scenario: Any,
    *,
    seed: int = 0,
    reach: bool = False,
    compare: bool = False,
    run_id: str | None = None,
    keep: bool = False,
    probes: list[Probe] | None = None,
) -> EmulationReport:
    """Build ``scenario`` (a loaded Scenario) in network namespaces, probe its cells on the
    real kernel and, with ``compare``, judge the simulator against it. Needs root."""
    require_root()
    problem = support_problem(scenario.mode)
    if problem is not None:
        raise EmulationError(problem)
    from k8snet_sim.api import simulate

    sim = simulate(scenario, seed=seed)
    world = sim.world
    cells = probes if probes is not None else probes_for(scenario, world, reach=reach, sim=sim)
    with emulation(world, mode=scenario.mode, run_id=run_id, keep=keep) as emu:
        results = probe_cells(emu, cells, sim if compare else None)
        report = EmulationReport(
            scenario.name,
            scenario.mode,
            emu.run_id,
            compare,
            emu.br_netfilter,
            results,
            list(emu.notes),
            emu.plan.names(),
            kept=keep,
        )
    return report
