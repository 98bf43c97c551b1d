"""The kube-proxy process of userspace mode: accept on the proxy socket, dial an endpoint,
copy bytes both ways.

Two connections per flow: client → proxy socket (REDIRECTed or DNATed by the portal rules), and
node → endpoint. The backend therefore sees the node's address. Endpoint choice is round-robin
per Service port, with ClientIP affinity when asked (K19 ``roundrobin.go``); a failed dial moves
on to the next endpoint after 250 ms, 500 ms, 1 s, 2 s (``EndpointDialTimeouts``). Every
accepted connection, and every byte relayed, costs CPU on the node.

Example
-------
>>> DIAL_TIMEOUTS
(0.25, 0.5, 1.0, 2.0)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from k8snet_sim.net.addr import ip
from k8snet_sim.net.packet import PROTO_NUMBERS, TCP
from k8snet_sim.sim.clients import connect
from k8snet_sim.sim.sockets import Endpoint, Message, close, send_message

if TYPE_CHECKING:
    from k8snet_sim.proxy.userspace import ProxyPort
    from k8snet_sim.sim.simulation import Simulation

DIAL_TIMEOUTS = (0.25, 0.5, 1.0, 2.0)
PROCESS = "kube-proxy"  # the CPU account of the userspace proxy's work


class UserspaceProxy:
    """Listener application of one proxy port on one node."""

    def __init__(self, node_ns: str, port: ProxyPort) -> None:
        self.node_ns = node_ns
        self.port = port
        self.key = f"userspace {port.name}"

    # -- load balancing (LoadBalancerRR) ------------------------------------------------

    def _balancer(self, sim: Simulation) -> dict[str, Any]:
        apps = sim.state(self.node_ns).apps
        return apps.setdefault(self.key, {"index": 0, "affinity": {}})

    def next_endpoint(self, sim: Simulation, client_ip: int, reset_affinity: bool) -> int | None:
        endpoints = self.port.endpoints
        if not endpoints:
            return None
        state = self._balancer(sim)
        now = sim.env.now
        if self.port.session_affinity and not reset_affinity:
            hit = state["affinity"].get(client_ip)
            if hit is not None and now - hit[1] < self.port.affinity_timeout:
                state["affinity"][client_ip] = (hit[0], now)
                return int(hit[0])
        index = sim.chooser.pick(
            len(endpoints), state["index"] % len(endpoints), f"{self.key} round-robin"
        )
        state["index"] = (index + 1) % len(endpoints)
        if self.port.session_affinity:
            state["affinity"][client_ip] = (index, now)
        return index

    # -- the client side --------------------------------------------------------------

    def on_established(self, sim: Simulation, conn: Endpoint) -> None:
        delay = sim.charge(sim.ns(self.node_ns), sim.costs.userspace_accept, PROCESS)
        conn.meta["pending"] = []
        sim.later(delay, self._dial, sim, conn, 0)

    def _dial(self, sim: Simulation, conn: Endpoint, attempt: int) -> None:
        if conn.state == "CLOSED":
            return
        index = self.next_endpoint(sim, conn.remote[0], reset_affinity=attempt > 0)
        if index is None or attempt >= len(DIAL_TIMEOUTS):
            why = (
                f"{self.port.name} has no endpoints"
                if index is None
                else f"no endpoint of {self.port.name} answered"
            )
            self._note(sim, conn, f"kube-proxy (userspace) closed the connection: {why}", "closed")
            if sim.recorder is not None:
                sim.recorder.note(conn.conn_id, refused_by=f"node {self.node_ns}: {why}")
            close(sim, conn)
            return
        ep = self.port.endpoints[index]
        leg = BackendLeg(self, conn, attempt)
        self._note(
            sim,
            conn,
            f"kube-proxy (userspace) {self.port.name}: accepted on "
            f":{self.port.proxy_port}, dialing endpoint {ep.address} "
            f"({'retry ' + str(attempt) if attempt else 'round-robin'})",
            "proxy",
        )
        backend = connect(
            sim,
            self.node_ns,
            ip(ep.ip),
            ep.port,
            PROTO_NUMBERS[self.port.protocol.lower()],
            leg,
            parent=conn.conn_id,
        )
        conn.meta["backend"] = backend
        sim.later(DIAL_TIMEOUTS[attempt], leg.dial_timeout, sim)

    def _note(self, sim: Simulation, conn: Endpoint, action: str, verdict: str) -> None:
        if sim.recorder is not None:
            sim.recorder.proxy_hop(sim.env.now, self.node_ns, conn.conn_id, action, verdict)

    def on_message(self, sim: Simulation, conn: Endpoint, message: Message) -> None:
        probe = message.data.get("probe")
        if probe is not None:
            probe.outstanding += 1  # a bulk flow's probe train: one more leg to acknowledge
        backend: Endpoint | None = conn.meta.get("backend")
        if conn.proto != TCP and "pending" not in conn.meta:
            # UDP: each datagram from a client is relayed on a fresh backend socket.
            conn.meta["pending"] = [message]
            self._dial(sim, conn, 0)
            return
        if backend is not None and backend.state == "ESTABLISHED":
            relay(sim, self.node_ns, backend, message)
        else:
            conn.meta.setdefault("pending", []).append(message)

    def on_closed(self, sim: Simulation, conn: Endpoint, reason: str) -> None:
        backend: Endpoint | None = conn.meta.get("backend")
        if backend is not None and backend.state == "ESTABLISHED":
            close(sim, backend)


class BackendLeg:
    """The proxy's connection to the chosen endpoint."""

    def __init__(self, proxy: UserspaceProxy, client: Endpoint, attempt: int) -> None:
        self.proxy = proxy
        self.client = client
        self.attempt = attempt
        self.done = False
        self.request: Message | None = None

    def dial_timeout(self, sim: Simulation) -> None:
        backend: Endpoint | None = self.client.meta.get("backend")
        if self.done or backend is None or backend.state == "ESTABLISHED":
            return
        self.done = True
        sim.sockets_of(self.proxy.node_ns).unregister(backend)
        backend.state = "CLOSED"
        self.proxy._dial(sim, self.client, self.attempt + 1)

    def on_established(self, sim: Simulation, conn: Endpoint) -> None:
        if self.done:
            return
        conn.meta["established_once"] = True
        for message in self.client.meta.pop("pending", []):
            relay(sim, self.proxy.node_ns, conn, message)
        self.client.meta["pending"] = []

    def on_message(self, sim: Simulation, conn: Endpoint, message: Message) -> None:
        relay(sim, self.proxy.node_ns, self.client, message)
        if self.client.proto != TCP:
            close(sim, conn)

    def on_closed(self, sim: Simulation, conn: Endpoint, reason: str) -> None:
        if self.done:
            return
        if conn.meta.get("established_once") or reason in ("closed", "closed by peer"):
            close(sim, self.client)
            return
        # The dial failed (refused, unreachable): try the next endpoint at once.
        self.done = True
        self.proxy._dial(sim, self.client, self.attempt + 1)


def relay(sim: Simulation, node_ns: str, to: Endpoint, message: Message) -> None:
    """Copy one message through user space: wake-up and per-byte copy cost on the node."""
    per_byte = message.size * sim.costs.userspace_byte
    cost = sim.costs.userspace_packet + per_byte
    ns = sim.ns(node_ns)
    delay = sim.charge(ns, cost, PROCESS)
    probe = message.data.get("probe")
    if probe is not None:
        probe.on_cpu(ns, cost, per_byte, process=PROCESS)
    sim.later(delay, send_message, sim, to, message)
