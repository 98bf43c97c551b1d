"""Kernel emulation: build a scenario in Linux network namespaces and hold the simulator to it.

The scenario's nodes, pods, routers and outside hosts become network namespaces wired with
veth pairs and bridges exactly as the simulator wires them (:mod:`.plan`); each node gets the
rules kube-proxy's proxier generated for the simulator (:mod:`.datapath`); pods run a tiny
server that names itself and the peer it saw (``podserver.py``); userspace mode runs a real
proxy (``userspace_proxy.py``). Probes are real sockets with bounded attempts and timeouts
(``probe_client.py``, :mod:`.probes`); :mod:`.compare` judges the simulator cell by cell.
Everything is created under ``k8ns-<run>-`` and removed by the :class:`~.janitor.Janitor`.

Example
-------
>>> from k8snet_sim.emulate import emulate, leftovers           # doctest: +SKIP
>>> from k8snet_sim.scenario.loader import load_scenario        # doctest: +SKIP
>>> scenario = load_scenario("scenarios/external-clusterip.yaml")  # doctest: +SKIP
>>> report = emulate(scenario, compare=True)                    # doctest: +SKIP
>>> report.passed, len(report.disagreements)                    # doctest: +SKIP
(True, 0)
"""

from k8snet_sim.emulate.compare import CellResult, EmulationReport, SimVerdict
from k8snet_sim.emulate.janitor import EmulationError, Janitor, cleanup_run, leftovers
from k8snet_sim.emulate.plan import EmulationPlan, plan_world
from k8snet_sim.emulate.probes import KernelResult, Probe
from k8snet_sim.emulate.runner import emulate, probe_cells, probes_for
from k8snet_sim.emulate.session import Emulation, emulation

__all__ = [
    "CellResult",
    "Emulation",
    "EmulationError",
    "EmulationPlan",
    "EmulationReport",
    "Janitor",
    "KernelResult",
    "Probe",
    "SimVerdict",
    "cleanup_run",
    "emulate",
    "emulation",
    "leftovers",
    "plan_world",
    "probe_cells",
    "probes_for",
]
