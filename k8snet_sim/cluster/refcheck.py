"""Do the sources and targets of ``expect:`` and ``traffic:`` name things that exist?

Syntax was checked when loading (:func:`k8snet_sim.scenario.refs.parse_ref`); existence needs
the control plane's output (generated pod names, allocated nodePorts, Ingress routes).
A headless Service has no ClusterIP to aim at; a ``nodeport/`` target needs a port that has a
nodePort; ``loadbalancer/`` needs type LoadBalancer; ``http://`` needs an ingress controller and
an Ingress rule matching host and path.

Example
-------
>>> from k8snet_sim.cluster.build import build_cluster
>>> from k8snet_sim.scenario.loader import load_scenario_text
>>> text = '''
... metadata: {name: demo}
... cluster: {nodes: [{name: n1, address: 192.168.10.11, subnet: lan}]}
... network: {subnets: [{name: lan, cidr: 192.168.10.0/24}]}
... expect: [{from: node/n1, to: "service/default/nope:80"}]
... '''
>>> scenario = load_scenario_text(text, file="demo.yaml")
>>> build = build_cluster(scenario, check_references=False)
>>> print(check_refs(scenario, build)[0].render())
demo.yaml:5:30: expect[0].to: unknown Service default/nope
    hint: check the namespace and name
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from k8snet_sim.cluster.model import Service
from k8snet_sim.errors import Diagnostic
from k8snet_sim.scenario.refs import Ref, RefSyntaxError, parse_ref, unknown_machine
from k8snet_sim.scenario.schema import Scenario
from k8snet_sim.scenario.yamlpos import YamlPath

if TYPE_CHECKING:
    from k8snet_sim.cluster.build import ClusterBuild


def check_refs(
    scenario: Scenario, build: ClusterBuild, failed: frozenset[tuple[str, str]] | None = None
) -> list[Diagnostic]:
    """Diagnostics for every reference in ``expect`` / ``traffic`` that names nothing.

    ``failed`` is given when the control plane reported problems of its own: it holds
    ``("pod" | "service" | "node", key)`` of what the scenario declares but was not made. A
    reference to one of those is not reported again, and only references to names that exist
    nowhere are: a Service whose ClusterIP or nodePort could not be allocated was made without
    one, and "has no ClusterIP" would repeat that problem."""
    problems: list[Diagnostic] = []
    fields: list[tuple[YamlPath, str]] = []
    for i, e in enumerate(scenario.expect):
        fields += [(("expect", i, "from"), e.source), (("expect", i, "to"), e.target)]
        # A single string is located at the field itself (the locator falls back to it).
        # ``endpoint`` lists what is allowed, so a pod that does not exist is harmless there: one
        # list covers a Deployment scaled down. ``reachableVia`` says which endpoints work, and
        # a pod that does not exist could never satisfy it.
        for j, value in enumerate(e.reachable_via or []):
            if value.startswith("pod/"):
                path: YamlPath = ("expect", i, "reachableVia", j)
                fields.append((path, value))
    for i, t in enumerate(scenario.traffic):
        fields += [(("traffic", i, "from"), t.source), (("traffic", i, "to"), t.target)]
    machines = {
        "node": [n.name for n in build.state.nodes],
        "host": [h.name for h in scenario.network.hosts],
        "router": [r.name for r in scenario.network.routers],
    }
    for path, text in fields:
        try:
            ref = parse_ref(text)
        except RefSyntaxError as err:  # pragma: no cover - the schema checked the syntax
            problems.append(scenario.diagnostic(path, str(err), err.hint))
            continue
        if failed is not None and not failed.isdisjoint(_depends_on(ref)):
            continue
        message = _missing(scenario, build, ref, machines, names_only=failed is not None)
        if message is not None:
            problems.append(scenario.diagnostic(path, message[0], message[1]))
    return problems


def _depends_on(ref: Ref) -> set[tuple[str, str]]:
    """The declared objects a reference needs to exist."""
    if ref.kind == "pod":
        return {("pod", ref.key)}
    if ref.kind in ("service", "loadbalancer"):
        return {("service", ref.key)}
    if ref.kind == "nodeport":
        return {("service", ref.key), ("node", ref.node or "")}
    if ref.kind == "node":
        return {("node", ref.name or "")}
    return set()


def _missing(
    scenario: Scenario,
    build: ClusterBuild,
    ref: Ref,
    machines: dict[str, list[str]],
    *,
    names_only: bool = False,
) -> tuple[str, str] | None:
    """(message, hint) when ``ref`` names nothing (or, unless ``names_only``, a Service
    without the ClusterIP, port or nodePort it needs), else None."""
    state = build.state
    if ref.kind == "pod":
        if not any(p.key == ref.key for p in state.pods):
            pods = ", ".join(p.key for p in state.pods) or "none"
            return f"unknown pod {ref.key}", f"pods: {pods}"
        return None
    machine = unknown_machine(ref, machines)
    if machine is not None or ref.kind in ("node", "host", "router"):
        return machine
    if ref.kind in ("service", "nodeport", "loadbalancer"):
        service = state.service(ref.namespace or "default", ref.name or "")
        if names_only and service is not None:
            return None
        return _service_target(service, ref)
    if ref.kind == "http":
        return _http_target(scenario, build, ref)
    return None


def _service_target(service: Service | None, ref: Ref) -> tuple[str, str] | None:
    if service is None:
        return f"unknown Service {ref.key}", "check the namespace and name"
    port = service.find_port(ref.port if ref.port is not None else "")
    if port is None:
        ports = ", ".join(p.name or str(p.port) for p in service.ports) or "none"
        return f"Service {ref.key} has no port {ref.port!r}", f"its ports: {ports}"
    if ref.kind == "service" and service.cluster_ip is None:
        return f"Service {ref.key} has no ClusterIP ({service.type}, headless?)", "target a pod"
    if ref.kind == "nodeport" and not port.node_port:
        return (
            f"Service {ref.key} port {ref.port} has no nodePort (type {service.type})",
            "use type NodePort or LoadBalancer",
        )
    if ref.kind == "loadbalancer" and service.type != "LoadBalancer":
        return (
            f"Service {ref.key} is type {service.type}, not LoadBalancer",
            "use type LoadBalancer",
        )
    return None


def _http_target(scenario: Scenario, build: ClusterBuild, ref: Ref) -> tuple[str, str] | None:
    if not scenario.ingress_controllers:
        return (
            f"{ref} goes through an ingress controller, but none is configured",
            "add ingressControllers: [{class: nginx, deployment: NS/NAME, service: NS/NAME}]",
        )
    # A request no rule matches is still a valid target: the controller answers 404.
    return None
