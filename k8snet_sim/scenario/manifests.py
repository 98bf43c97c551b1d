"""Turn YAML documents into typed Kubernetes objects, each knowing where it was written.

Understood kinds are listed once in :data:`k8snet_sim.scenario.kinds.KINDS`; ``kind: List``
(v1) is flattened. Unknown kinds and fields that are not interpreted go to the *ignored* list;
defaults that Kubernetes would fill in are applied and recorded in the *defaulted* list (as
``service default/web ports[0].protocol = TCP``: the path is relative to ``spec`` for spec
fields); static API validation (what the apiserver would reject) gives errors.

Paths in diagnostics are the dotted path from the root of the YAML document in the file
named: ``spec.ports[0].targetPort`` for a manifest file, ``items[2].spec…`` inside a List,
``manifests[3].spec…`` for an object written inline in the scenario.

Example
-------
>>> from k8snet_sim.scenario.yamlpos import load_yaml_documents
>>> text = "kind: Service\\napiVersion: v1\\nmetadata: {name: web}\\nspec: {ports: [{port: 80}]}"
>>> [doc], _ = load_yaml_documents(text, "web.yaml")
>>> out = ManifestSet()
>>> parse_document(doc, doc.data, (), out)
>>> [m.key for m in out.manifests]
['default/web']
>>> print("\\n".join(out.defaulted))
service default/web metadata.namespace = default
service default/web ports[0].protocol = TCP
service default/web ports[0].targetPort = 80
service default/web type = ClusterIP
service default/web sessionAffinity = None
service default/web internalTrafficPolicy = Cluster
>>> out.manifests[0].obj.spec.ports[0].target_port
80
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

from pydantic import BaseModel

from k8snet_sim.errors import Diagnostic
from k8snet_sim.scenario.kinds import (
    KINDS,
    DaemonSetObject,
    DeploymentObject,
    EndpointSliceObject,
    IngressObject,
    K8sObject,
    ServiceObject,
    StatefulSetObject,
)
from k8snet_sim.scenario.modelbase import (
    ValidationError,
    closest,
    describe,
    did_you_mean,
    ignored_diagnostic,
    is_likely_typo,
    unknown_fields,
    validation_diagnostics,
    without,
)
from k8snet_sim.scenario.yamlpos import YamlDocument, YamlPath

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass(frozen=True, eq=False)
class Manifest:
    """One understood Kubernetes object with its source location.

    ``path`` is where the object sits in its YAML document (``()`` for a whole document,
    ``("items", 2)`` inside a List, ``("manifests", 3)`` inline in the scenario).
    ``namespace`` is already defaulted (``""`` for cluster-scoped kinds).
    """

    kind: str
    namespace: str
    name: str
    obj: K8sObject
    doc: YamlDocument = field(repr=False)
    path: YamlPath = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    @property
    def file(self) -> str:
        return self.doc.file

    def locate(self, sub: YamlPath = ()) -> tuple[str, int, int]:
        return self.doc.where((*self.path, *sub))

    def diagnostic(self, sub: YamlPath, message: str, hint: str = "") -> Diagnostic:
        """A diagnostic at ``sub`` (a path inside this object, e.g. ``("spec", "ports", 0)``)."""
        return self.doc.diagnostic((*self.path, *sub), message, hint)


@dataclass
class ManifestSet:
    """Accumulates what parsing many documents produced."""

    manifests: list[Manifest] = field(default_factory=list)
    errors: list[Diagnostic] = field(default_factory=list)
    ignored: list[Diagnostic] = field(default_factory=list)
    defaulted: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def parse_document(doc: YamlDocument, data: Any, path: YamlPath, out: ManifestSet) -> None:
    """Parse the object ``data`` found at ``path`` in ``doc`` (flattening ``kind: List``)."""
    if not isinstance(data, dict):
        out.errors.append(
            doc.diagnostic(
                path,
                f"expected a Kubernetes object (a mapping), got {describe(data)}",
                "an object is a mapping with apiVersion, kind, metadata and spec",
            )
        )
        return
    kind, api_version = data.get("kind"), data.get("apiVersion")
    if not isinstance(kind, str) or not isinstance(api_version, str):
        missing = "kind" if not isinstance(kind, str) else "apiVersion"
        out.errors.append(
            doc.diagnostic(
                (*path, missing),
                f"required field is missing or not a string: {missing}",
                "every object needs `apiVersion:` and `kind:`",
            )
        )
        return
    if kind == "List" and api_version == "v1":
        items = data.get("items", [])
        if not isinstance(items, list):
            out.errors.append(
                doc.diagnostic(
                    (*path, "items"),
                    f"expected a list, got {describe(items)}",
                    "write `items: [...]`",
                )
            )
            return
        for i, item in enumerate(items):
            parse_document(doc, item, (*path, "items", i), out)
        return
    if kind not in KINDS:
        out.ignored.append(
            doc.diagnostic(
                (*path, "kind"),
                f"kind {kind} ({api_version}) is not modelled; the object is ignored",
                closest(kind, KINDS),
            )
        )
        return
    expected_version, model, namespaced = KINDS[kind]
    if api_version != expected_version:
        out.errors.append(
            doc.diagnostic(
                (*path, "apiVersion"),
                f"expected apiVersion {expected_version} for kind {kind}, got {api_version!r}",
                f"write `apiVersion: {expected_version}` (older API versions are not modelled)",
            )
        )
        return
    found = unknown_fields(model, data)
    unknown = [
        ignored_diagnostic(doc, (*path, *rel), (*path, *rel), did_you_mean(str(rel[-1]), owner))
        for rel, owner in found
    ]
    try:
        obj: Any = model.model_validate(without(data, [rel for rel, _ in found]))
    except ValidationError as err:
        out.errors.extend(validation_diagnostics(err, doc, path))
        # A misspelt field is often why a required one is missing: show it beside the error.
        out.errors.extend(d for d in unknown if is_likely_typo(d))
        return
    out.ignored.extend(unknown)
    namespace = (obj.metadata.namespace or "default") if namespaced else ""
    if not namespaced and obj.metadata.namespace:
        out.ignored.append(
            ignored_diagnostic(
                doc,
                (*path, "metadata", "namespace"),
                (*path, "metadata", "namespace"),
                f"{kind} is cluster-scoped",
            )
        )
    label = (
        f"{kind.lower()} {namespace}/{obj.metadata.name}"
        if namespaced
        else f"{kind.lower()} {obj.metadata.name}"
    )
    if namespaced and obj.metadata.namespace is None:
        out.defaulted.append(f"{label} metadata.namespace = default")
    manifest = Manifest(kind, namespace, obj.metadata.name, obj, doc, path)
    checker = _CHECKS.get(kind)
    if checker is not None:
        manifest = checker(manifest, label, out)
    out.manifests.append(manifest)


def _is_ipv4(text: str) -> bool:
    try:
        IPv4Address(text)
    except ValueError:
        return False
    return True


def _unset(model: BaseModel, name: str) -> bool:
    return name not in model.model_fields_set


def _service(m: Manifest, label: str, out: ManifestSet) -> Manifest:
    """Defaults and static validation of a Service, as the apiserver does on create."""
    assert isinstance(m.obj, ServiceObject)
    spec = m.obj.spec
    errors = out.errors
    headless = spec.cluster_ip == "None"
    if spec.cluster_ip not in (None, "", "None") and not _is_ipv4(spec.cluster_ip):
        errors.append(
            m.diagnostic(
                ("spec", "clusterIP"),
                f"expected an IPv4 address, None (headless) or nothing, got {spec.cluster_ip!r}",
                "omit clusterIP to have one allocated",
            )
        )
    if headless and spec.type != "ClusterIP":
        errors.append(
            m.diagnostic(
                ("spec", "clusterIP"),
                f'"None" (headless) is only valid for type ClusterIP, not {spec.type}',
                "remove `clusterIP: None` or use type ClusterIP",
            )
        )
    if spec.type == "ExternalName" and not spec.external_name:
        errors.append(
            m.diagnostic(
                ("spec", "externalName"),
                "required for type ExternalName",
                "add `externalName: host.example.com`",
            )
        )
    if spec.type != "ExternalName" and not headless and not spec.ports:
        errors.append(
            m.diagnostic(
                ("spec", "ports"), "a Service needs at least one port", "add `ports: [{port: 80}]`"
            )
        )
    names: dict[str, int] = {}
    seen: dict[tuple[int, str], int] = {}
    node_ports: dict[tuple[int, str], int] = {}
    for i, port in enumerate(spec.ports):
        where = ("spec", "ports", i)
        if len(spec.ports) > 1 and not port.name:
            errors.append(
                m.diagnostic(
                    (*where, "name"),
                    "required when the Service has more than one port",
                    "name every port, e.g. `name: http`",
                )
            )
        if port.name and port.name in names:
            errors.append(
                m.diagnostic(
                    (*where, "name"),
                    f"duplicate port name {port.name!r} (also ports[{names[port.name]}])",
                    "give every port its own name",
                )
            )
        names.setdefault(port.name, i)
        if (port.port, port.protocol) in seen:
            errors.append(
                m.diagnostic(
                    (*where, "port"),
                    f"duplicate port {port.port}/{port.protocol}"
                    f" (also ports[{seen[port.port, port.protocol]}])",
                    "remove the duplicate or change its port or protocol",
                )
            )
        seen.setdefault((port.port, port.protocol), i)
        if port.node_port is not None:
            if spec.type in ("ClusterIP", "ExternalName"):
                errors.append(
                    m.diagnostic(
                        (*where, "nodePort"),
                        f"may not be used when `type` is '{spec.type}'",
                        "use type NodePort or LoadBalancer, or remove nodePort",
                    )
                )
            elif (port.node_port, port.protocol) in node_ports:
                errors.append(
                    m.diagnostic(
                        (*where, "nodePort"),
                        f"duplicate nodePort {port.node_port}/{port.protocol}",
                        "give every port its own nodePort",
                    )
                )
            node_ports.setdefault((port.node_port, port.protocol), i)
    needs_hc = spec.type == "LoadBalancer" and spec.external_traffic_policy == "Local"
    if spec.health_check_node_port is not None and not needs_hc:
        errors.append(
            m.diagnostic(
                ("spec", "healthCheckNodePort"),
                "may only be set when `type` is 'LoadBalancer'"
                " and `externalTrafficPolicy` is 'Local'",
                "remove healthCheckNodePort",
            )
        )
    # Defaulting, recorded so that `validate` can show what was assumed.
    ports = []
    for i, port in enumerate(spec.ports):
        if _unset(port, "protocol"):
            out.defaulted.append(f"{label} ports[{i}].protocol = TCP")
        if port.target_port is None:
            out.defaulted.append(f"{label} ports[{i}].targetPort = {port.port}")
            port = port.model_copy(update={"target_port": port.port})
        ports.append(port)
    update: dict[str, Any] = {"ports": ports}
    for name, alias, applies in (
        ("type", "type", True),
        ("session_affinity", "sessionAffinity", spec.type != "ExternalName"),
        (
            "external_traffic_policy",
            "externalTrafficPolicy",
            spec.type in ("NodePort", "LoadBalancer"),
        ),
        ("internal_traffic_policy", "internalTrafficPolicy", spec.type != "ExternalName"),
        (
            "allocate_load_balancer_node_ports",
            "allocateLoadBalancerNodePorts",
            spec.type == "LoadBalancer",
        ),
    ):
        if applies and _unset(spec, name):
            value = getattr(spec, name)
            out.defaulted.append(
                f"{label} {alias} = {str(value).lower() if isinstance(value, bool) else value}"
            )
    if spec.session_affinity == "ClientIP" and (
        spec.session_affinity_config is None or spec.session_affinity_config.client_ip is None
    ):
        out.defaulted.append(f"{label} sessionAffinityConfig.clientIP.timeoutSeconds = 10800")
    new_spec = spec.model_copy(update=update)
    return Manifest(
        m.kind, m.namespace, m.name, m.obj.model_copy(update={"spec": new_spec}), m.doc, m.path
    )


def _workload(m: Manifest, label: str, out: ManifestSet) -> Manifest:
    assert isinstance(m.obj, DeploymentObject | StatefulSetObject | DaemonSetObject)
    spec = m.obj.spec
    if not isinstance(m.obj, DaemonSetObject) and _unset(spec, "replicas"):
        out.defaulted.append(f"{label} replicas = 1")
    selector = spec.selector.match_labels
    labels = spec.template.metadata.labels
    if not selector:
        out.errors.append(
            m.diagnostic(
                ("spec", "selector"),
                "expected non-empty matchLabels",
                "select the template's labels, e.g. `matchLabels: {app: web}`",
            )
        )
    elif any(labels.get(k) != v for k, v in selector.items()):
        out.errors.append(
            m.diagnostic(
                ("spec", "template", "metadata", "labels"),
                f"selector {selector} does not match template labels {labels}",
                "make spec.selector.matchLabels a subset of spec.template.metadata.labels",
            )
        )
    return m


def _ingress(m: Manifest, label: str, out: ManifestSet) -> Manifest:
    assert isinstance(m.obj, IngressObject)
    backends: list[tuple[YamlPath, Any]] = []
    if m.obj.spec.default_backend is not None:
        backends.append((("spec", "defaultBackend"), m.obj.spec.default_backend))
    for i, rule in enumerate(m.obj.spec.rules):
        for j, p in enumerate(rule.http.paths if rule.http else []):
            backends.append((("spec", "rules", i, "http", "paths", j, "backend"), p.backend))
    for where, backend in backends:
        if backend.service is None:
            out.ignored.append(
                m.diagnostic(
                    where, "backend without `service` (resource backends are not modelled)"
                )
            )
            continue
        port = backend.service.port
        if (port.number is None) == (port.name is None):
            out.errors.append(
                m.diagnostic(
                    (*where, "service", "port"),
                    "expected exactly one of `number` or `name`",
                    "write `port: {number: 80}` or `port: {name: http}`",
                )
            )
    return m


def _slice(m: Manifest, label: str, out: ManifestSet) -> Manifest:
    assert isinstance(m.obj, EndpointSliceObject)
    if m.obj.address_type != "IPv4":
        out.ignored.append(
            m.diagnostic(
                ("addressType",), f"addressType {m.obj.address_type} is not modelled; slice ignored"
            )
        )
    if SERVICE_NAME_LABEL not in m.obj.metadata.labels:
        out.ignored.append(
            m.diagnostic(
                ("metadata", "labels"),
                f"no {SERVICE_NAME_LABEL} label: the slice belongs to no Service",
                f"add the label `{SERVICE_NAME_LABEL}: <service name>`",
            )
        )
    return m


_CHECKS = {
    "Service": _service,
    "Deployment": _workload,
    "StatefulSet": _workload,
    "DaemonSet": _workload,
    "Ingress": _ingress,
    "EndpointSlice": _slice,
}


def check_duplicates(manifests: list[Manifest]) -> list[Diagnostic]:
    """Two objects of one kind with the same namespace and name: the later one is the error."""
    first: dict[tuple[str, str], Manifest] = {}
    problems = []
    for m in manifests:
        key = (m.kind, m.key)
        if key in first:
            other = first[key]
            _, line, _ = other.locate(("metadata", "name"))
            problems.append(
                m.diagnostic(
                    ("metadata", "name"),
                    f"duplicate {m.kind} {m.key} (first defined at {other.file}:{line})",
                    "rename one of them or put it in another namespace",
                )
            )
        else:
            first[key] = m
    return problems
