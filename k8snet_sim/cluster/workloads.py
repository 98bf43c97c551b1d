"""Pods as the controllers would create them, before scheduling.

Bare Pods are taken as written. A Deployment or StatefulSet makes ``replicas`` pods named
``NAME-0``, ``NAME-1`` … (deterministic, unlike a ReplicaSet's random suffix); a DaemonSet makes
``NAME-<node>`` on every node its template fits (nodeSelector, cordon/tolerations), bound to
that node. Labels, container ports, ``nodeName``, ``nodeSelector``, ``hostNetwork`` and
tolerations come from ``spec.template``. A pod is ready unless its manifest says
``status.conditions: [{type: Ready, status: "False"}]`` (a pod with no Ready condition is
taken as running and ready).

Example
-------
>>> from k8snet_sim.scenario.kinds import Toleration
>>> tolerates_unschedulable([Toleration(operator="Exists")]), tolerates_unschedulable([])
(True, False)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from k8snet_sim.cluster.model import ContainerPort
from k8snet_sim.cluster.scheduler import UNSCHEDULABLE_TAINTS, NodeInfo, PodRequest, fits
from k8snet_sim.errors import Diagnostic
from k8snet_sim.scenario.kinds import (
    DaemonSetObject,
    DeploymentObject,
    PodObject,
    PodSpec,
    StatefulSetObject,
    Toleration,
)
from k8snet_sim.scenario.manifests import Manifest
from k8snet_sim.scenario.schema import Scenario
from k8snet_sim.scenario.yamlpos import YamlPath


@dataclass
class PodDraft:
    """A pod before placement; readiness may still be changed by ``podStatus``."""

    namespace: str
    name: str
    labels: dict[str, str]
    ports: tuple[ContainerPort, ...]
    node_name: str | None
    node_selector: dict[str, str]
    host_network: bool
    tolerates_unschedulable: bool
    owner: str | None
    manifest: Manifest
    spec_path: YamlPath  # where the pod spec is in the manifest
    ready: bool = True
    serving: bool | None = None
    terminating: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def tolerates_unschedulable(tolerations: Sequence[Toleration]) -> bool:
    """Whether the tolerations let a pod onto a node marked ``schedulable: false``."""
    return any(
        (t.operator == "Exists" and t.key is None) or t.key in UNSCHEDULABLE_TAINTS
        for t in tolerations
    )


def _draft(
    m: Manifest,
    name: str,
    labels: dict[str, str],
    spec: PodSpec,
    spec_path: YamlPath,
    owner: str | None,
    node_name: str | None = None,
) -> PodDraft:
    ports = tuple(
        ContainerPort(p.container_port, p.protocol, p.name)
        for c in spec.containers
        for p in c.ports
    )
    return PodDraft(
        namespace=m.namespace,
        name=name,
        labels=dict(labels),
        ports=ports,
        node_name=node_name or spec.node_name,
        node_selector=dict(spec.node_selector),
        host_network=spec.host_network,
        tolerates_unschedulable=tolerates_unschedulable(spec.tolerations),
        owner=owner,
        manifest=m,
        spec_path=spec_path,
    )


def expand_pods(
    scenario: Scenario, nodes: Sequence[NodeInfo], problems: list[Diagnostic]
) -> list[PodDraft]:
    """Every pod of the scenario, in manifest order; duplicate pod names are errors."""
    drafts: list[PodDraft] = []
    template: YamlPath = ("spec", "template", "spec")
    for m in scenario.manifests:
        obj = m.obj
        if isinstance(obj, PodObject):
            draft = _draft(m, m.name, obj.metadata.labels, obj.spec, ("spec",), None)
            conditions = obj.status.conditions if obj.status else []
            ready = [c.status for c in conditions if c.type == "Ready"]
            draft.ready = not ready or ready[-1] == "True"
            drafts.append(draft)
        elif isinstance(obj, DeploymentObject | StatefulSetObject):
            labels, spec = obj.spec.template.metadata.labels, obj.spec.template.spec
            for i in range(obj.spec.replicas):
                drafts.append(
                    _draft(m, f"{m.name}-{i}", labels, spec, template, f"{m.kind}/{m.name}")
                )
        elif isinstance(obj, DaemonSetObject):
            labels, spec = obj.spec.template.metadata.labels, obj.spec.template.spec
            probe = PodRequest(
                m.key, None, dict(spec.node_selector), tolerates_unschedulable(spec.tolerations)
            )
            for node in nodes:
                if fits(probe, node):
                    drafts.append(
                        _draft(
                            m,
                            f"{m.name}-{node.name}",
                            labels,
                            spec,
                            template,
                            f"DaemonSet/{m.name}",
                            node_name=node.name,
                        )
                    )
    seen: dict[str, PodDraft] = {}
    unique = []
    for d in drafts:
        if d.key in seen:
            first = seen[d.key].manifest
            file, line, _ = first.locate(("metadata", "name"))
            problems.append(
                d.manifest.diagnostic(
                    ("metadata", "name"),
                    f"pod {d.key} already exists"
                    f" (made by {first.kind} {first.key} at {file}:{line})",
                    "rename one of them: workload pods are named NAME-0, NAME-1, …",
                )
            )
            continue
        seen[d.key] = d
        unique.append(d)
    return unique
