"""Client side of a connection: connect(), SYN retransmission, one request/response exchange.

Example
-------
>>> outcome = Outcome()
>>> outcome.ok
False
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import simpy

from k8snet_sim.net.addr import ip_str
from k8snet_sim.net.packet import SCTP, TCP, UDP
from k8snet_sim.sim.sockets import Endpoint, Message, close, send_message

if TYPE_CHECKING:
    from k8snet_sim.sim.simulation import Simulation


@dataclass
class Outcome:
    """What the client saw. ``status``: ok | refused | unreachable | timeout | reset | error."""

    status: str = "pending"
    detail: str = ""
    response: Message | None = None
    connected_at: float | None = None
    finished_at: float | None = None
    endpoint: Endpoint | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class RequestClient:
    """Connect, send one request, wait for one response, close."""

    def __init__(self, sim: Simulation, request: Message, *, keep_open: bool = False) -> None:
        self.request = request
        self.keep_open = keep_open
        self.outcome = Outcome()
        self.done: simpy.Event = sim.env.event()

    def _finish(self, sim: Simulation, status: str, detail: str = "") -> None:
        if self.done.triggered:
            return
        self.outcome.status = status
        self.outcome.detail = detail
        self.outcome.finished_at = sim.env.now
        self.done.succeed(self.outcome)

    def on_established(self, sim: Simulation, conn: Endpoint) -> None:
        self.outcome.connected_at = sim.env.now
        send_message(sim, conn, self.request)
        sim.timer(sim.costs.response_timeout, self._response_timeout, sim, conn)

    def _response_timeout(self, sim: Simulation, conn: Endpoint) -> None:
        if not self.done.triggered:
            self._finish(sim, "timeout", "connected, but no response arrived")
            close(sim, conn)

    def on_message(self, sim: Simulation, conn: Endpoint, message: Message) -> None:
        if message.kind != "response" or self.done.triggered:
            return
        self.outcome.response = message
        self._finish(sim, "ok")
        if not self.keep_open:
            close(sim, conn)

    def on_closed(self, sim: Simulation, conn: Endpoint, reason: str) -> None:
        if reason == "closed":
            return
        if reason == "closed by peer":
            self._finish(sim, "closed", "the peer closed the connection without a response")
        elif reason == "reset":
            self._finish(sim, "reset", "connection reset by peer")
        elif reason.startswith("timeout"):
            self._finish(sim, "timeout", reason)
        elif reason.startswith("icmp") or reason.startswith("unreachable"):
            self._finish(sim, "unreachable", reason)
        else:
            self._finish(sim, "error", reason)


def connect(
    sim: Simulation,
    ns_name: str,
    dst: int,
    dport: int,
    proto: int,
    app: Any,
    *,
    conn_id: int | None = None,
    parent: int | None = None,
    src: int | None = None,
) -> Endpoint | None:
    """Open a connection from ``ns_name`` (TCP/SCTP handshake; UDP: a connected socket that
    sends the request at once). Returns the endpoint, or None when there is no route (the app
    is told through ``on_closed``)."""
    ns = sim.ns(ns_name)
    cid = conn_id if conn_id is not None else sim.next_conn_id()
    if sim.recorder is not None and (parent is None or parent in sim.recorder.conn_ids):
        sim.recorder.watch(cid, parent=parent)
    if src is None:
        route = ns.routes.lookup(dst) if not ns.is_local(dst) else None
        if route is None and not ns.is_local(dst):
            ep = Endpoint(ns_name, proto, (0, 0), (dst, dport), app, conn_id=cid, role="client")
            ep.error = f"no route to {ip_str(dst)} from {ns_name}"
            if sim.recorder is not None:
                sim.recorder.note(cid, no_route_at=ns_name, reason=ep.error)
            sim.later(0.0, app.on_closed, sim, ep, f"unreachable: {ep.error}")
            return None
        src = dst if route is None else ns.source_for(route, dst)
    sockets = sim.sockets_of(ns_name)
    sport = sockets.ephemeral_port(proto, src or 0, dst, dport)
    ep = Endpoint(ns_name, proto, (src or 0, sport), (dst, dport), app, conn_id=cid, role="client")
    sockets.register(ep)
    if proto in (TCP, SCTP):
        ep.state = "SYN_SENT"
        _send_syn(sim, ep, attempt=0)
    else:
        ep.state = "ESTABLISHED"
        app.on_established(sim, ep)
        if proto == UDP:
            sim.timer(sim.costs.tcp_rto, _udp_retry, sim, ep, app, 1)
    return ep


def _send_syn(sim: Simulation, ep: Endpoint, attempt: int) -> None:
    if ep.state != "SYN_SENT":
        return
    if attempt > sim.costs.syn_retries:
        sim.sockets_of(ep.ns).unregister(ep)
        ep.state, ep.error = "CLOSED", "timeout"
        ep.app.on_closed(sim, ep, "timeout: no answer to SYN")
        return
    sim.send(ep.ns, ep.packet("S", label="SYN" if attempt == 0 else f"SYN (retry {attempt})"))
    sim.timer(sim.costs.tcp_rto * (2**attempt), _send_syn, sim, ep, attempt + 1)


def _udp_retry(sim: Simulation, ep: Endpoint, app: Any, attempt: int) -> None:
    done = getattr(app, "done", None)
    if done is not None and done.triggered:
        return
    if attempt > sim.costs.syn_retries:
        sim.sockets_of(ep.ns).unregister(ep)
        app.on_closed(sim, ep, "timeout: no UDP response")
        return
    request = getattr(app, "request", None)
    if request is not None:
        send_message(sim, ep, request)
    sim.timer(sim.costs.tcp_rto * (2**attempt), _udp_retry, sim, ep, app, attempt + 1)
