"""k8snet_sim: a discrete-event simulator and teaching lab for Kubernetes service networking.

Example
-------
>>> import k8snet_sim
>>> sorted(n for n in k8snet_sim.__all__ if n[0].islower())[:3]
['load', 'load_scenario', 'simulate']
"""

from k8snet_sim.analysis.trace import TraceResult, trace
from k8snet_sim.api import load, simulate
from k8snet_sim.errors import K8sNetSimError, ScenarioError, UnknownEndpoint
from k8snet_sim.scenario.loader import load_scenario
from k8snet_sim.sim.simulation import Simulation

__all__ = [
    "K8sNetSimError",
    "ScenarioError",
    "Simulation",
    "TraceResult",
    "UnknownEndpoint",
    "load",
    "load_scenario",
    "simulate",
    "trace",
]
__version__ = "0.1.0"
