"""NodePort allocation as the apiserver does it, made deterministic.

One cluster-wide set of port numbers (no protocol: two Services never share a nodePort, even
TCP vs UDP). The range is split at ``offset = min(max(16, size // 32), 128)`` (0 when the
range has 16 ports or fewer) into a *static* lower band, meant for explicit requests, and an
upper band for automatic allocation (KEP-3668; 30000–30085 / 30086–32767 by default).

Where upstream starts at a random offset in the upper band, we take **the first free port of
the upper band scanning upward**, wrapping to the lower band when the upper one is full.
Explicit ``nodePort`` / ``healthCheckNodePort`` values of all Services are reserved first (in
manifest order), then automatic ones are handed out in manifest order, so the result depends
only on the scenario. Within one Service, ports with the same number share one nodePort (DNS
53/TCP + 53/UDP), as in upstream ``initNodePorts``. A LoadBalancer with
``externalTrafficPolicy: Local`` gets a ``healthCheckNodePort`` from the same allocator.

Example
-------
>>> ports = NodePortAllocator(30000, 32767)
>>> ports.offset, ports.allocate_next("default/web"), ports.allocate(30080, "default/shop")
(86, 30086, 30080)
>>> request = NodePortRequest("kube-system/dns", ports=((53, None), (53, None)), allocate=True)
>>> assign_node_ports([request], ports)[0].node_ports
(30087, 30087)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from k8snet_sim.cluster.ipam import AllocationError


class NodePortAllocator:
    """The cluster-wide NodePort bitmap of one ``--service-node-port-range``."""

    def __init__(self, low: int, high: int) -> None:
        self.low = low
        self.high = high
        self.owners: dict[int, str] = {}

    @property
    def size(self) -> int:
        return self.high - self.low + 1

    @property
    def offset(self) -> int:
        """Size of the static (lower) band reserved for explicit requests."""
        return 0 if self.size <= 16 else min(max(16, self.size // 32), 128)

    def allocate(self, port: int, owner: str) -> int:
        """Reserve an explicitly requested port. Raises :class:`AllocationError`."""
        if not self.low <= port <= self.high:
            raise AllocationError(
                "provided port is not in the valid range. "
                f"The range of valid ports is {self.low}-{self.high}"
            )
        if port in self.owners:
            raise AllocationError(f"provided port is already allocated (to {self.owners[port]})")
        self.owners[port] = owner
        return port

    def allocate_next(self, owner: str) -> int:
        """First free port of the upper band, then of the lower band."""
        start = self.low + self.offset
        for port in (*range(start, self.high + 1), *range(self.low, start)):
            if port not in self.owners:
                self.owners[port] = owner
                return port
        raise AllocationError("range is full")


@dataclass(frozen=True)
class NodePortRequest:
    """What one Service asks for: (port number, explicit nodePort or None) per service port."""

    service: str  # "namespace/name"
    ports: tuple[tuple[int, int | None], ...]
    allocate: bool  # type NodePort, or LoadBalancer with allocateLoadBalancerNodePorts
    needs_health_check: bool = False  # type LoadBalancer and externalTrafficPolicy Local
    health_check_node_port: int | None = None


@dataclass
class NodePortResult:
    node_ports: tuple[int, ...]  # 0 = none, per service port
    health_check_node_port: int = 0
    # (index of the service port or None for healthCheckNodePort, message) per problem
    problems: list[tuple[int | None, str]] = field(default_factory=list)


def assign_node_ports(
    requests: Sequence[NodePortRequest], allocator: NodePortAllocator
) -> list[NodePortResult]:
    """NodePorts of every Service: explicit ones first, then automatic ones, in order."""
    results = [NodePortResult(tuple(0 for _ in r.ports)) for r in requests]
    by_number: list[dict[int, int]] = [{} for _ in requests]
    for request, result, shared in zip(requests, results, by_number, strict=True):
        values = list(result.node_ports)
        for i, (number, wanted) in enumerate(request.ports):
            if wanted is None:
                continue
            if shared.get(number) == wanted:  # 53/TCP and 53/UDP asking for the same port
                values[i] = wanted
                continue
            try:
                values[i] = allocator.allocate(wanted, request.service)
                shared.setdefault(number, wanted)
            except AllocationError as err:
                result.problems.append((i, f"invalid value {wanted}: {err}"))
        result.node_ports = tuple(values)
        if request.health_check_node_port is not None:
            try:
                result.health_check_node_port = allocator.allocate(
                    request.health_check_node_port, request.service
                )
            except AllocationError as err:
                result.problems.append(
                    (None, f"invalid value {request.health_check_node_port}: {err}")
                )
    for request, result, shared in zip(requests, results, by_number, strict=True):
        values = list(result.node_ports)
        for i, (number, wanted) in enumerate(request.ports):
            if wanted is not None or not request.allocate:
                continue
            if number not in shared:
                try:
                    shared[number] = allocator.allocate_next(request.service)
                except AllocationError as err:
                    result.problems.append((i, f"cannot allocate a nodePort: {err}"))
                    continue
            values[i] = shared[number]
        result.node_ports = tuple(values)
        if request.needs_health_check and request.health_check_node_port is None:
            try:
                result.health_check_node_port = allocator.allocate_next(request.service)
            except AllocationError as err:
                result.problems.append((None, f"cannot allocate a healthCheckNodePort: {err}"))
    return results
