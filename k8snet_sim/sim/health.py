"""kube-proxy's health servers on every node: ``/healthz`` on port 10256, and one
healthCheckNodePort server per LoadBalancer Service with ``externalTrafficPolicy: Local``.

A healthCheckNodePort answers ``200`` when the node has at least one ready local endpoint of the
Service and ``503`` otherwise (K28 ``pkg/proxy/healthcheck/service_health.go``), with the count
in ``localEndpoints`` — this is what a cloud load balancer probes to send traffic only to nodes
that can keep the client's address.

Example
-------
>>> HealthCheckServer("default/web", 2).status()
200
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from k8snet_sim.cluster.model import ClusterState
from k8snet_sim.net.packet import TCP
from k8snet_sim.proxy.topology import health_check_node_port
from k8snet_sim.sim.sockets import Endpoint, Listener, Message, send_message

if TYPE_CHECKING:
    from k8snet_sim.sim.simulation import Simulation
    from k8snet_sim.sim.world import World

HEALTHZ_PORT = 10256


class HealthCheckServer:
    """Answers HTTP health probes; stateless."""

    def __init__(self, service: str, local_endpoints: int) -> None:
        self.service = service
        self.local_endpoints = local_endpoints

    def status(self) -> int:
        return 200 if self.local_endpoints > 0 else 503

    def on_established(self, sim: Simulation, conn: Endpoint) -> None:
        return None

    def on_message(self, sim: Simulation, conn: Endpoint, message: Message) -> None:
        if message.kind != "request":
            return
        send_message(
            sim,
            conn,
            Message(
                "response",
                120,
                {
                    "status": self.status(),
                    "service": self.service,
                    "localEndpoints": self.local_endpoints,
                    "serviceProxyHealthy": True,
                },
            ),
        )

    def on_closed(self, sim: Simulation, conn: Endpoint, reason: str) -> None:
        return None


def install_health_servers(world: World, state: ClusterState, node: str) -> None:
    """kube-proxy's healthz and healthCheckNodePort listeners on ``node``."""
    ns = f"node/{node}"
    world.listen(
        ns,
        Listener(TCP, HEALTHZ_PORT, HealthCheckServer("kube-proxy", 1), name="kube-proxy healthz"),
    )
    for svc in state.services:
        hcnp = health_check_node_port(svc)
        if not hcnp:
            continue
        local = {
            e.ip
            for p in svc.ports
            for e in state.endpoints_for(svc, p)
            if e.node_name == node and e.ready
        }
        world.listen(
            ns,
            Listener(
                TCP,
                hcnp,
                HealthCheckServer(svc.key, len(local)),
                name=f"kube-proxy health check {svc.key}",
            ),
        )
