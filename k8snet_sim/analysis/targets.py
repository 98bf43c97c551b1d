"""Resolve the references users write (``pod/shop/web-0``, ``service/default/web:http`` …)
into namespaces and destination addresses of a built world.

Example
-------
>>> Target("service/default/web:80", "service", 0x0A600002, 80, TCP).address
'10.96.0.2:80'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from k8snet_sim.cluster.model import ClusterState, Service, ServicePort
from k8snet_sim.errors import UnknownEndpoint
from k8snet_sim.net.addr import ip
from k8snet_sim.net.packet import PROTO_NUMBERS, TCP
from k8snet_sim.scenario.refs import Ref, RefSyntaxError, parse_ref
from k8snet_sim.sim.world import World


@dataclass(frozen=True)
class Target:
    """Where a connection goes: an address, a port, a protocol, and what the user named."""

    ref: str
    kind: str
    ip: int
    port: int
    proto: int
    service: Service | None = None
    service_port: ServicePort | None = None
    node: str | None = None  # nodeport targets: the node whose address is used
    http_host: str | None = None
    http_path: str | None = None

    @property
    def address(self) -> str:
        from k8snet_sim.net.addr import ip_str

        return f"{ip_str(self.ip)}:{self.port}"


def _ref(text: str, role: str) -> Ref:
    try:
        return parse_ref(text, role=role)  # type: ignore[arg-type]
    except RefSyntaxError as err:
        raise UnknownEndpoint(text, hint=f"{err}; {err.hint}") from None


def _state(world: World) -> ClusterState:
    state: ClusterState = world.info["state"]
    return state


def resolve_source(world: World, text: str) -> str:
    """The namespace a source reference names."""
    ref = _ref(text, "source")
    if ref.kind == "pod":
        key = f"{ref.namespace}/{ref.name}"
        name = f"pod/{key}"
        if name in world.namespaces:
            return name
        for pod in _state(world).pods:
            if pod.key == key and pod.host_network:
                return f"node/{pod.node}"
        raise UnknownEndpoint(text, hint=_known(world, "pod"))
    name = f"{ref.kind}/{ref.name}"
    if name not in world.namespaces:
        raise UnknownEndpoint(text, hint=_known(world, ref.kind))
    return name


def _known(world: World, kind: str) -> str:
    names = sorted(n for n in world.namespaces if n.startswith(kind + "/"))
    shown = ", ".join(names[:8]) + (" …" if len(names) > 8 else "")
    return f"known {kind}s: {shown}" if names else f"the scenario has no {kind}s"


def _service(state: ClusterState, ref: Ref, text: str) -> tuple[Service, ServicePort]:
    svc = state.service(ref.namespace or "default", ref.name or "")
    if svc is None:
        names = ", ".join(s.key for s in state.services)
        raise UnknownEndpoint(text, hint=f"known Services: {names or 'none'}")
    port = svc.find_port(ref.port if ref.port is not None else "")
    if port is None:
        ports = ", ".join(f"{p.port}" + (f" ({p.name})" if p.name else "") for p in svc.ports)
        raise UnknownEndpoint(text, hint=f"{svc.key} has ports {ports}")
    return svc, port


def resolve_target(world: World, text: str) -> Target:
    """The destination a target reference names."""
    ref = _ref(text, "target")
    state = _state(world)
    if ref.kind == "ip":
        return Target(text, "ip", ip(ref.ip or ""), int(ref.port or 0), TCP)
    if ref.kind == "pod":
        key = f"{ref.namespace}/{ref.name}"
        pod = next((p for p in state.pods if p.key == key), None)
        if pod is None:
            raise UnknownEndpoint(text, hint=_known(world, "pod"))
        port_no, proto = _container_port(pod, ref.port, text)
        return Target(text, "pod", ip(pod.ip), port_no, proto)
    if ref.kind in ("node", "host"):
        ns = world.namespaces.get(f"{ref.kind}/{ref.name}")
        if ns is None or ns.primary_address() is None:
            raise UnknownEndpoint(text, hint=_known(world, ref.kind))
        return Target(text, ref.kind, ns.primary_address() or 0, int(ref.port or 0), TCP)
    if ref.kind == "service":
        svc, port = _service(state, ref, text)
        if svc.cluster_ip is None:
            raise UnknownEndpoint(
                text, hint=f"{svc.key} is headless (clusterIP: None): target its pods"
            )
        return Target(
            text,
            "service",
            ip(svc.cluster_ip),
            port.port,
            PROTO_NUMBERS[port.protocol.lower()],
            svc,
            port,
        )
    if ref.kind == "nodeport":
        svc, port = _service(state, ref, text)
        if not port.node_port:
            raise UnknownEndpoint(
                text, hint=f"{svc.key} ({svc.type}) has no nodePort for port {port.port}"
            )
        try:
            node = state.node(ref.node or "")
        except KeyError:
            raise UnknownEndpoint(text, hint=_known(world, "node")) from None
        return Target(
            text,
            "nodeport",
            ip(node.address),
            port.node_port,
            PROTO_NUMBERS[port.protocol.lower()],
            svc,
            port,
            node=node.name,
        )
    if ref.kind == "loadbalancer":
        svc, port = _service(state, ref, text)
        if not svc.load_balancer_ips:
            why = svc.load_balancer_pending or f"{svc.key} is type {svc.type}"
            raise UnknownEndpoint(text, hint=f"no LoadBalancer IP: {why}")
        return Target(
            text,
            "loadbalancer",
            ip(svc.load_balancer_ips[0]),
            port.port,
            PROTO_NUMBERS[port.protocol.lower()],
            svc,
            port,
        )
    if ref.kind == "http":
        return _http_target(world, ref, text)
    raise UnknownEndpoint(text)


def _http_target(world: World, ref: Ref, text: str) -> Target:
    """``http://HOST/PATH`` goes to the external address of the ingress controller that serves
    HOST: its Service's LoadBalancer IP, else a NodePort on the first node, else its ClusterIP."""
    scenario = world.info["scenario"]
    build = world.info["cluster"]
    state = _state(world)
    host = (ref.host or "").lower()
    classes = []
    for ing in build.ingresses:
        if any(r.matches(host, "/") or (r.host or "") == host for r in ing.routes) or not ing.hosts:
            classes.append(ing.class_name)
    for spec in scenario.ingress_controllers:
        if classes and spec.class_name not in classes:
            continue
        namespace, name = spec.service.split("/", 1)
        svc = state.service(namespace, name)
        if svc is None:
            continue
        port = svc.find_port(ref.port if ref.port is not None else 80)
        if port is None:
            continue
        proto = PROTO_NUMBERS[port.protocol.lower()]
        common: dict[str, Any] = {
            "service": svc,
            "service_port": port,
            "http_host": ref.host,
            "http_path": ref.path or "/",
        }
        if svc.load_balancer_ips:
            return Target(text, "http", ip(svc.load_balancer_ips[0]), port.port, proto, **common)
        if port.node_port and state.nodes:
            node = state.nodes[0]
            return Target(
                text, "http", ip(node.address), port.node_port, proto, node=node.name, **common
            )
        if svc.cluster_ip:
            return Target(text, "http", ip(svc.cluster_ip), port.port, proto, **common)
    raise UnknownEndpoint(
        text, hint=f"no ingress controller (scenario ingressControllers:) serves host {ref.host}"
    )


def _container_port(pod: object, port: int | str | None, text: str) -> tuple[int, int]:
    ports = getattr(pod, "ports", ())
    if port is None:
        raise UnknownEndpoint(text, hint="add :PORT")
    for cp in ports:
        if str(cp.port) == str(port) or (cp.name and cp.name == port):
            return cp.port, PROTO_NUMBERS[cp.protocol.lower()]
    if isinstance(port, int) or str(port).isdigit():
        return int(port), TCP
    raise UnknownEndpoint(text, hint=f"the pod has no container port named {port}")
