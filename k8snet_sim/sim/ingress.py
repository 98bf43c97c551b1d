"""The ingress controller in its pods: terminate the client's connection, route the HTTP
request by the Ingress rules, open a new connection to a backend, relay the response.

Like ingress-nginx by default, it connects straight to an endpoint of the backend Service
(round-robin), bypassing kube-proxy; with ``upstream: service`` it connects to the ClusterIP
and kube-proxy picks the endpoint. It answers ``404`` when no rule matches and ``503`` when the
backend Service has no ready endpoint. Routing a request costs ``l7_request`` CPU on the
controller pod's node.

Example
-------
>>> IngressController.__name__
'IngressController'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from k8snet_sim.cluster.ingress import IngressInfo
from k8snet_sim.cluster.model import ClusterState
from k8snet_sim.net.addr import ip
from k8snet_sim.net.packet import PROTO_NUMBERS
from k8snet_sim.proxy.ingress import choose_backend
from k8snet_sim.sim.clients import connect
from k8snet_sim.sim.sockets import Endpoint, Message, close, send_message

if TYPE_CHECKING:
    from k8snet_sim.sim.simulation import Simulation


class IngressController:
    """The L7 proxy of one controller pod (shared by all its connections)."""

    def __init__(
        self,
        pod: str,
        class_name: str,
        ingresses: list[IngressInfo],
        state: ClusterState,
        upstream: str,
    ) -> None:
        self.pod = pod
        self.ns = f"pod/{pod}"
        self.class_name = class_name
        self.ingresses = ingresses
        self.state = state
        self.upstream = upstream

    def on_established(self, sim: Simulation, conn: Endpoint) -> None:
        return None

    def on_message(self, sim: Simulation, conn: Endpoint, message: Message) -> None:
        if message.kind != "request":
            return
        delay = sim.charge(sim.ns(self.ns), sim.costs.l7_request, process="ingress")
        sim.later(delay, self._route, sim, conn, message)

    def _route(self, sim: Simulation, conn: Endpoint, message: Message) -> None:
        host = str(message.data.get("host", ""))
        path = str(message.data.get("path", "/"))
        method = str(message.data.get("method", "GET"))
        decision = choose_backend(self.ingresses, host, path)
        head = f"ingress ({self.class_name}) {self.pod}: {method} {host}{path}"
        if decision.status:
            self._answer(
                sim, conn, decision.status, f"{head} → HTTP {decision.status}: {decision.reason}"
            )
            return
        svc = self.state.service(*(decision.service or "/").split("/", 1))
        port = svc.find_port(decision.port if decision.port is not None else "") if svc else None
        if svc is None or port is None:
            self._answer(sim, conn, 503, f"{head} → HTTP 503: backend {decision.service} not found")
            return
        proto = PROTO_NUMBERS[port.protocol.lower()]
        if self.upstream == "service" and svc.cluster_ip:
            target, target_text = (
                (ip(svc.cluster_ip), port.port),
                f"ClusterIP {svc.cluster_ip}:{port.port}",
            )
        else:
            ready = [e for e in self.state.endpoints_for(svc, port) if e.ready]
            if not ready:
                self._answer(
                    sim,
                    conn,
                    503,
                    f"{head} matched {decision.reason} → HTTP 503: "
                    f"{svc.key} has no ready endpoints",
                )
                return
            apps = sim.state(self.ns).apps.setdefault(
                f"ingress {svc.key}:{port.port}", {"index": 0}
            )
            i = sim.chooser.pick(
                len(ready), apps["index"] % len(ready), f"ingress {svc.key} round-robin"
            )
            apps["index"] = (i + 1) % len(ready)
            target, target_text = (ip(ready[i].ip), ready[i].port), f"endpoint {ready[i].address}"
        self._note(
            sim,
            conn,
            f"{head} matched {decision.reason} → {svc.key}:{port.port} → {target_text}",
            "proxy",
        )
        leg = _Upstream(self, conn, message)
        connect(sim, self.ns, target[0], target[1], proto, leg, parent=conn.conn_id)

    def _answer(self, sim: Simulation, conn: Endpoint, status: int, action: str) -> None:
        self._note(sim, conn, action, "http-error")
        send_message(sim, conn, Message("response", 150, {"status": status, "via": self.pod}))

    def _note(self, sim: Simulation, conn: Endpoint, action: str, verdict: str) -> None:
        if sim.recorder is not None:
            sim.recorder.proxy_hop(sim.env.now, self.ns, conn.conn_id, action, verdict)
            sim.recorder.note(conn.conn_id, ingress=action)

    def on_closed(self, sim: Simulation, conn: Endpoint, reason: str) -> None:
        return None


class _Upstream:
    """The controller's connection to the backend for one request."""

    def __init__(self, controller: IngressController, client: Endpoint, request: Message) -> None:
        self.controller = controller
        self.client = client
        self.request = request
        self.answered = False

    def on_established(self, sim: Simulation, conn: Endpoint) -> None:
        send_message(sim, conn, self.request)

    def on_message(self, sim: Simulation, conn: Endpoint, message: Message) -> None:
        if message.kind != "response" or self.answered:
            return
        self.answered = True
        data: dict[str, Any] = dict(message.data)
        data.setdefault("status", 200)
        data["via"] = self.controller.pod
        send_message(sim, self.client, Message("response", message.size, data))
        close(sim, conn)

    def on_closed(self, sim: Simulation, conn: Endpoint, reason: str) -> None:
        if self.answered or reason == "closed":
            return
        self.answered = True
        # ingress-nginx answers 502 when the upstream connection fails.
        send_message(
            sim,
            self.client,
            Message(
                "response",
                150,
                {"status": 502, "via": self.controller.pod, "upstreamError": reason},
            ),
        )
