"""Traffic generators: the scenario's ``traffic:`` entries as clients living in a namespace.

- ``requests`` — open loop: Poisson arrivals at ``rate``; each request opens a connection, or
  takes an idle keepalive connection from the generator's pool (a connection carries at most
  ``CostModel.keepalive_requests`` requests, NGINX's default 100, then closes).
- ``clients`` — closed loop: ``clients`` users, each sending a request, waiting for the answer
  (or the failure), thinking for an exponentially distributed ``thinkTime``, and again.
- ``bulk`` — ``flows`` transfers of ``size`` bytes each, client → server
  (:mod:`k8snet_sim.sim.bulk`): fluid (:mod:`k8snet_sim.sim.flows`, the default) or packet
  by packet (:mod:`k8snet_sim.sim.tcpstream`).

Every connection is an ordinary one through the datapath (``clients.connect``), so endpoint
choice, NAT, conntrack and the CPU and queues on the way are the same as in a trace. Requests
and bulk flows arrive during ``[start + warmup, start + warmup + duration)`` — requests also
during the warm-up, whose exchanges the measurements leave out. Arrival times and think times
come from the entry's own seeded stream (:func:`traffic_random`), so the same workload meets
every kube-proxy mode (common random numbers); the datapath's random choices still go through
the simulation's chooser.

Example
-------
>>> traffic_random(7, "browse").random() == traffic_random(7, "browse").random()
True
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from k8snet_sim.net.packet import SCTP, TCP
from k8snet_sim.sim.clients import connect
from k8snet_sim.sim.flows import FluidNetwork
from k8snet_sim.sim.metrics import Exchange, TrafficLog
from k8snet_sim.sim.sockets import Endpoint, Message, close, send_message

if TYPE_CHECKING:
    from k8snet_sim.scenario.schema import TrafficSpec
    from k8snet_sim.sim.simulation import Simulation


def traffic_random(seed: int, name: str) -> random.Random:
    """The arrival/think-time stream of one traffic entry (deterministic per seed and name)."""
    return random.Random(f"k8snet-sim traffic {seed} {name}")


@dataclass(frozen=True)
class Destination:
    """Where a generator's connections go (a resolved target reference)."""

    ip: int
    port: int
    proto: int
    http_host: str | None = None
    http_path: str | None = None


def close_reason_status(reason: str, established: bool) -> str:
    """The error kind a client reports for a connection that ended without an answer."""
    if reason.startswith("timeout: no answer to SYN"):
        return "connect-timeout"
    if reason.startswith("timeout"):
        return "timeout"
    if reason == "reset":
        return "reset" if established else "refused"
    if reason == "closed by peer":
        return "closed"
    if reason.startswith(("icmp", "unreachable")):
        return "unreachable"
    return "error"


class _Flag:
    """``done.triggered`` for the UDP retry logic of :func:`connect`."""

    __slots__ = ("triggered",)

    def __init__(self) -> None:
        self.triggered = False


class _Conn:
    """One client connection of a generator; carries one exchange at a time."""

    __slots__ = (
        "closed",
        "connect_at",
        "done",
        "endpoint",
        "established",
        "exchange",
        "gen",
        "request",
        "sent_at",
        "served",
    )

    def __init__(self, gen: Generator, exchange: Exchange, request: Message) -> None:
        self.gen = gen
        self.exchange: Exchange | None = exchange
        self.request = request
        self.endpoint: Endpoint | None = None
        self.connect_at = gen.sim.env.now
        self.sent_at: float | None = None
        self.served = 0
        self.established = False
        self.closed = False
        self.done = _Flag()

    def on_established(self, sim: Simulation, conn: Endpoint) -> None:
        self.endpoint = conn
        self.established = True
        if self.exchange is not None:
            self.exchange.setup = sim.env.now - self.connect_at
            self.sent_at = sim.env.now
            send_message(sim, conn, self.request)

    def on_message(self, sim: Simulation, conn: Endpoint, message: Message) -> None:
        if message.kind == "response" and self.exchange is not None:
            self.gen.answered(self, message)

    def on_closed(self, sim: Simulation, conn: Endpoint, reason: str) -> None:
        self.closed = True
        if self.exchange is not None and reason != "closed":
            self.gen.failed(self, close_reason_status(reason, self.established))


class Generator:
    """Common machinery: the connection pool, completions, failures and response timeouts."""

    def __init__(
        self,
        sim: Simulation,
        spec: TrafficSpec,
        source_ns: str,
        dest: Destination,
        log: TrafficLog,
        *,
        start: float,
    ) -> None:
        self.sim = sim
        self.spec = spec
        self.source_ns = source_ns
        self.dest = dest
        self.log = log
        self.begin = start + spec.warmup
        self.until = start + spec.warmup + spec.duration
        self.start = start
        self.rng = traffic_random(sim.seed, spec.name)
        self.keepalive = spec.keepalive and dest.proto in (TCP, SCTP)
        self.idle: list[_Conn] = []
        self.inflight: dict[int, _Conn] = {}
        self.sweeping = False

    @property
    def busy(self) -> bool:
        """Exchanges still waiting for an answer."""
        return bool(self.inflight)

    def launch(self) -> None:
        raise NotImplementedError

    def _message(self) -> Message:
        data: dict[str, Any] = {"responseBytes": int(self.spec.response_bytes)}
        if self.dest.http_host is not None:
            data.update(method="GET", host=self.dest.http_host, path=self.dest.http_path or "/")
        return Message("request", int(self.spec.request_bytes), data)

    def issue(self) -> Exchange:
        """Send one request now: on an idle keepalive connection, or on a new one."""
        sim = self.sim
        exchange = Exchange(started=sim.env.now)
        self.log.add(exchange)
        conn = None
        while self.idle:
            candidate = self.idle.pop()
            if (
                not candidate.closed
                and candidate.endpoint is not None
                and candidate.endpoint.state == "ESTABLISHED"
            ):
                conn = candidate
                break
        if conn is not None:
            conn.exchange = exchange
            conn.done = _Flag()
            conn.sent_at = sim.env.now
            self.inflight[id(conn)] = conn
            assert conn.endpoint is not None
            send_message(sim, conn.endpoint, conn.request)
        else:
            conn = _Conn(self, exchange, self._message())
            self.inflight[id(conn)] = conn
            connect(sim, self.source_ns, self.dest.ip, self.dest.port, self.dest.proto, conn)
        self._sweep_soon()
        return exchange

    def answered(self, conn: _Conn, message: Message) -> None:
        sim = self.sim
        exchange = conn.exchange
        assert exchange is not None
        conn.exchange = None
        conn.done.triggered = True
        self.inflight.pop(id(conn), None)
        status = message.data.get("status")
        exchange.finished = sim.env.now
        exchange.status = "ok" if status is None or int(status) < 400 else f"http-{status}"
        exchange.size = int(self.spec.request_bytes) + message.size
        pod = message.data.get("pod")
        exchange.endpoint = str(pod) if pod else message.data.get("address")
        if exchange.status == "ok":
            self.log.delivered(sim.env.now, exchange.size)
        conn.served += 1
        endpoint = conn.endpoint
        if (
            self.keepalive
            and endpoint is not None
            and endpoint.state == "ESTABLISHED"
            and conn.served < sim.costs.keepalive_requests
        ):
            self.idle.append(conn)
        elif endpoint is not None:
            close(sim, endpoint)
        self.finished(exchange)

    def failed(self, conn: _Conn, status: str) -> None:
        exchange = conn.exchange
        if exchange is None:
            return
        conn.exchange = None
        conn.done.triggered = True
        self.inflight.pop(id(conn), None)
        exchange.finished = self.sim.env.now
        exchange.status = status
        self.finished(exchange)

    def finished(self, exchange: Exchange) -> None:
        """Hook: an exchange is over (closed-loop clients think, then ask again)."""

    # -- response timeouts: one sweep for all connections, not a timer per request ----------

    def _sweep_soon(self) -> None:
        if not self.sweeping:
            self.sweeping = True
            self.sim.later(self.sim.costs.response_timeout / 4, self._sweep)

    def _sweep(self) -> None:
        self.sweeping = False
        now = self.sim.env.now
        limit = self.sim.costs.response_timeout
        for conn in list(self.inflight.values()):
            if conn.sent_at is not None and now - conn.sent_at >= limit:
                self.failed(conn, "timeout")
                if conn.endpoint is not None:
                    close(self.sim, conn.endpoint)
        if self.inflight:
            self._sweep_soon()


class OpenLoop(Generator):
    """Poisson arrivals at ``rate`` per second, whatever the answers do."""

    def launch(self) -> None:
        rate = float(self.spec.rate or 0.0)
        if rate > 0:
            self.sim.later(self.rng.expovariate(rate), self._arrive, rate)

    def _arrive(self, rate: float) -> None:
        if self.sim.env.now >= self.until:
            return
        self.issue()
        self.sim.later(self.rng.expovariate(rate), self._arrive, rate)


class ClosedLoop(Generator):
    """``clients`` users in a request → answer → think loop."""

    def launch(self) -> None:
        # Users start spread over the first think time, not as one burst of SYNs.
        spread = self.spec.think_time or 1e-3
        for _ in range(int(self.spec.clients or 0)):
            self.sim.later(self.rng.uniform(0.0, spread), self._next)

    def _next(self) -> None:
        if self.sim.env.now < self.until:
            self.issue()

    def finished(self, exchange: Exchange) -> None:
        think = self.spec.think_time
        delay = self.rng.expovariate(1.0 / think) if think > 0 else 0.0
        self.sim.later(delay, self._next)


GENERATORS: dict[str, type[Generator]] = {"requests": OpenLoop, "clients": ClosedLoop}


def make_generator(
    sim: Simulation,
    spec: TrafficSpec,
    source_ns: str,
    dest: Destination,
    log: TrafficLog,
    *,
    start: float,
    fluid: FluidNetwork | None,
) -> Generator:
    """The generator of one traffic entry (not yet launched)."""
    if spec.kind == "bulk":
        from k8snet_sim.sim.bulk import Bulk  # bulk builds on this module

        return Bulk(sim, spec, source_ns, dest, log, start=start, fluid=fluid)
    return GENERATORS[spec.kind](sim, spec, source_ns, dest, log, start=start)
