"""Endpoints of every Service port, with EndpointSlice semantics, as kube-proxy receives them.

* A Service **with a selector** gets every pod of its namespace whose labels match (the
  EndpointSlice controller): ``ready`` = pod Ready and not terminating, ``serving`` = pod Ready
  (or as overridden), ``terminating`` as given; ``publishNotReadyAddresses`` makes every
  endpoint ready. A named ``targetPort`` is looked up in each pod's container ports (same name
  and protocol); pods without that port are skipped, as the controller does.
* A Service **without a selector** takes the EndpointSlices labelled
  ``kubernetes.io/service-name: <service>`` in its namespace; a slice port serves the Service
  port with the same name and protocol. Conditions left out mean ready (as kube-proxy reads
  them), serving = ready, not terminating. Slices given for a Service *with* a selector are
  merged in, as kube-proxy would see them.

Each list is sorted by the ``"ip:port"`` string (what kube-proxy iterates) and de-duplicated.

Example
-------
>>> from k8snet_sim.cluster.model import ContainerPort, Pod, Service, ServicePort
>>> svc = Service("default", "web", "ClusterIP", "10.96.0.2",
...               (ServicePort("", "TCP", 80, "http"),), selector={"app": "web"})
>>> pods = [Pod("default", "web-0", "n1", "10.244.1.2", {"app": "web"},
...             (ContainerPort(8080, name="http"),)),
...         Pod("default", "web-1", "n2", "10.244.2.2", {"app": "web"}, ready=False)]
>>> eps = compute_endpoints([svc], pods, {}, [])[("default/web", "")]
>>> [(e.address, e.ready, e.pod) for e in eps]
[('10.244.1.2:8080', True, 'default/web-0')]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from k8snet_sim.cluster.model import Endpoint, Pod, Service, ServicePort


@dataclass(frozen=True)
class PodCondition:
    """Readiness of a pod beyond ``Pod.ready``: serving and terminating (EndpointSlice v1)."""

    serving: bool
    terminating: bool = False


@dataclass(frozen=True)
class SliceEndpointInfo:
    addresses: tuple[str, ...]
    ready: bool | None = None
    serving: bool | None = None
    terminating: bool | None = None
    node_name: str | None = None
    pod: str | None = None  # "namespace/name" when targetRef is a Pod


@dataclass(frozen=True)
class SliceInfo:
    """An EndpointSlice given in the manifests (addressType IPv4)."""

    namespace: str
    service: str  # value of the kubernetes.io/service-name label
    ports: tuple[tuple[str, int | None, str], ...]  # (name, port, protocol)
    endpoints: tuple[SliceEndpointInfo, ...]


def target_port_of(pod: Pod, port: ServicePort) -> int | None:
    """The pod port a Service port sends to; None if a named port is not on the pod."""
    if isinstance(port.target_port, int):
        return port.target_port
    for container_port in pod.ports:
        if container_port.name == port.target_port and container_port.protocol == port.protocol:
            return container_port.port
    return None


def _selected(service: Service, pod: Pod) -> bool:
    selector = service.selector or {}
    return pod.namespace == service.namespace and all(
        pod.labels.get(k) == v for k, v in selector.items()
    )


def compute_endpoints(
    services: Sequence[Service],
    pods: Sequence[Pod],
    conditions: dict[str, PodCondition],
    slices: Sequence[SliceInfo],
    *,
    publish_not_ready: frozenset[str] = frozenset(),
) -> dict[tuple[str, str], tuple[Endpoint, ...]]:
    """Endpoints per (service key, service port name).

    ``conditions`` holds serving/terminating per pod key (default: serving = ready);
    ``publish_not_ready`` names the Services with ``publishNotReadyAddresses: true``.
    """
    out: dict[tuple[str, str], tuple[Endpoint, ...]] = {}
    for service in services:
        if service.type == "ExternalName":
            continue
        for port in service.ports:
            found: dict[str, Endpoint] = {}
            if service.selector:
                for pod in pods:
                    if not _selected(service, pod):
                        continue
                    number = target_port_of(pod, port)
                    if number is None:
                        continue
                    endpoint = _pod_endpoint(
                        pod, number, conditions.get(pod.key), service.key in publish_not_ready
                    )
                    found.setdefault(endpoint.address, endpoint)
            for s in slices:
                if s.namespace == service.namespace and s.service == service.name:
                    for endpoint in _slice_endpoints(s, port):
                        found.setdefault(endpoint.address, endpoint)
            out[(service.key, port.name)] = tuple(found[k] for k in sorted(found))
    return out


def _pod_endpoint(pod: Pod, number: int, condition: PodCondition | None, publish: bool) -> Endpoint:
    serving = condition.serving if condition is not None else pod.ready
    terminating = condition.terminating if condition is not None else False
    ready = pod.ready and not terminating
    if publish:
        ready = serving = True
    return Endpoint(
        ip=pod.ip,
        port=number,
        node_name=pod.node,
        pod=pod.key,
        ready=ready,
        serving=serving,
        terminating=terminating,
    )


def _slice_endpoints(s: SliceInfo, port: ServicePort) -> list[Endpoint]:
    out = []
    for name, number, protocol in s.ports:
        if name != port.name or protocol != port.protocol or number is None:
            continue
        for e in s.endpoints:
            ready = True if e.ready is None else e.ready
            serving = ready if e.serving is None else e.serving
            terminating = bool(e.terminating)
            for address in e.addresses:
                out.append(
                    Endpoint(address, number, e.node_name, e.pod, ready, serving, terminating)
                )
    return out
