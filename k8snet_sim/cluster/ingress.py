"""Ingress objects resolved for the ingress controller model: routes to Service ports.

An Ingress's class is ``spec.ingressClassName``, else the legacy annotation
``kubernetes.io/ingress.class``, else the IngressClass marked
``ingressclass.kubernetes.io/is-default-class: "true"`` (None when there is none). Every backend
must name an existing Service of the Ingress's namespace and one of its ports; otherwise the
problem is reported at the backend field.

Example
-------
>>> route = IngressRoute("shop.example", "/cart", "Prefix", "shop/cart", 80)
>>> route.matches("shop.example", "/cart/items"), route.matches("shop.example", "/carts")
(True, False)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from k8snet_sim.cluster.model import Service
from k8snet_sim.errors import Diagnostic
from k8snet_sim.scenario.kinds import IngressBackend, IngressClassObject, IngressObject
from k8snet_sim.scenario.manifests import Manifest
from k8snet_sim.scenario.yamlpos import YamlPath

DEFAULT_CLASS_ANNOTATION = "ingressclass.kubernetes.io/is-default-class"
LEGACY_CLASS_ANNOTATION = "kubernetes.io/ingress.class"


@dataclass(frozen=True)
class IngressRoute:
    """One (host, path) of an Ingress and the Service port it goes to."""

    host: str | None  # None = any host; "*.example.com" wildcards allowed
    path: str
    path_type: str  # "Exact" | "Prefix" | "ImplementationSpecific" (treated as Prefix)
    service: str  # "namespace/name"
    port: int | str  # Service port number or name

    def matches(self, host: str, path: str) -> bool:
        """Whether a request for ``host`` + ``path`` uses this route (Kubernetes path rules)."""
        if self.host is not None:
            if self.host.startswith("*."):
                suffix = self.host[1:]
                head = host[: -len(suffix)] if host.endswith(suffix) else ""
                if not head or "." in head:
                    return False
            elif host != self.host:
                return False
        if self.path_type == "Exact":
            return path == self.path
        prefix = self.path.rstrip("/")
        return path == prefix or path.startswith(prefix + "/") or prefix == ""


@dataclass(frozen=True)
class IngressInfo:
    namespace: str
    name: str
    class_name: str | None
    routes: tuple[IngressRoute, ...]  # in manifest order
    default_backend: tuple[str, int | str] | None  # (service key, port)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.host for r in self.routes if r.host is not None))


@dataclass(frozen=True)
class IngressClassInfo:
    name: str
    controller: str | None
    is_default: bool


def resolve_ingress_classes(manifests: Sequence[Manifest]) -> tuple[IngressClassInfo, ...]:
    out = []
    for m in manifests:
        if isinstance(m.obj, IngressClassObject):
            default = m.obj.metadata.annotations.get(DEFAULT_CLASS_ANNOTATION) == "true"
            out.append(IngressClassInfo(m.name, m.obj.spec.controller, default))
    return tuple(out)


def resolve_ingresses(
    manifests: Sequence[Manifest],
    services: Sequence[Service],
    classes: Sequence[IngressClassInfo],
) -> tuple[tuple[IngressInfo, ...], list[Diagnostic]]:
    """Resolve every Ingress; problems are located at the offending backend field."""
    by_key = {s.key: s for s in services}
    default_class = next((c.name for c in classes if c.is_default), None)
    infos: list[IngressInfo] = []
    problems: list[Diagnostic] = []
    for m in manifests:
        if not isinstance(m.obj, IngressObject):
            continue
        spec = m.obj.spec
        class_name = (
            spec.ingress_class_name
            or m.obj.metadata.annotations.get(LEGACY_CLASS_ANNOTATION)
            or default_class
        )
        routes = []
        for i, rule in enumerate(spec.rules):
            for j, p in enumerate(rule.http.paths if rule.http else []):
                where: YamlPath = ("spec", "rules", i, "http", "paths", j, "backend")
                target = _backend(m, p.backend, where, by_key, problems)
                if target is not None:
                    routes.append(IngressRoute(rule.host, p.path, p.path_type, *target))
        default = None
        if spec.default_backend is not None:
            default = _backend(
                m, spec.default_backend, ("spec", "defaultBackend"), by_key, problems
            )
        infos.append(IngressInfo(m.namespace, m.name, class_name, tuple(routes), default))
    return tuple(infos), problems


def _backend(
    m: Manifest,
    backend: IngressBackend,
    where: YamlPath,
    services: dict[str, Service],
    problems: list[Diagnostic],
) -> tuple[str, int | str] | None:
    if backend.service is None:
        return None  # resource backends: listed in ignored by the loader
    key = f"{m.namespace}/{backend.service.name}"
    port: int | str | None = (
        backend.service.port.number
        if backend.service.port.number is not None
        else backend.service.port.name
    )
    if port is None:
        return None  # reported by the loader (needs exactly one of number / name)
    service = services.get(key)
    if service is None:
        known = sorted(s.name for s in services.values() if s.namespace == m.namespace)
        problems.append(
            m.diagnostic(
                (*where, "service", "name"),
                f"unknown Service {key} (an Ingress backend must be in the Ingress's namespace)",
                f"Services in {m.namespace}: {', '.join(known) or 'none'}",
            )
        )
        return None
    if service.find_port(port) is None:
        ports = ", ".join(p.name or str(p.port) for p in service.ports)
        problems.append(
            m.diagnostic(
                (*where, "service", "port"),
                f"Service {key} has no port {port!r}",
                f"its ports are: {ports or 'none'}",
            )
        )
        return None
    return key, port
