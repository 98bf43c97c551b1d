"""Bulk transfers: ``flows`` connections each moving ``size`` bytes, client → server.

A :class:`BulkFlow` opens a real connection through the datapath and sends one real data train
carrying a :class:`~k8snet_sim.sim.flows.FlowPath` probe. Once every leg of that train is
acknowledged (a userspace proxy relays it on a second connection), the probe knows the path's
CPU and wire costs and the flow turns fluid in the simulation's
:class:`~k8snet_sim.sim.flows.FluidNetwork`. With ``bulk_model="packet"`` the flow instead sends
every train itself under a congestion window (:class:`~k8snet_sim.sim.tcpstream.WindowedSender`).
Flows start at ``start + warmup``; the end of the entry's window cuts the ones still running
(status ``incomplete``, the bytes moved so far still count).

Example
-------
>>> Bulk.__mro__[1].__name__
'Generator'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from k8snet_sim.errors import K8sNetSimError
from k8snet_sim.net.packet import TCP
from k8snet_sim.sim.clients import connect
from k8snet_sim.sim.flows import FlowPath, FluidFlow, FluidNetwork
from k8snet_sim.sim.metrics import Exchange, TrafficLog
from k8snet_sim.sim.sockets import Endpoint, Message, close, send_message
from k8snet_sim.sim.tcpstream import WindowedSender
from k8snet_sim.sim.traffic import Destination, Generator, close_reason_status

if TYPE_CHECKING:
    from k8snet_sim.scenario.schema import TrafficSpec
    from k8snet_sim.sim.simulation import Simulation


class Bulk(Generator):
    """``flows`` bulk transfers of ``size`` bytes, client → server, from ``start + warmup``."""

    def __init__(
        self,
        sim: Simulation,
        spec: TrafficSpec,
        source_ns: str,
        dest: Destination,
        log: TrafficLog,
        *,
        start: float,
        fluid: FluidNetwork | None,
    ) -> None:
        super().__init__(sim, spec, source_ns, dest, log, start=start)
        if dest.proto != TCP or dest.http_host is not None:
            raise K8sNetSimError(
                f"traffic {spec.name}: bulk transfers need a TCP target",
                hint="use a service/, pod/ or IP:PORT target, not http:// or UDP",
            )
        self.fluid = fluid
        self.transfers: list[BulkFlow] = []

    @property
    def busy(self) -> bool:
        return any(not t.over for t in self.transfers)

    def launch(self) -> None:
        self.sim.later(self.begin - self.sim.env.now, self._open_all)
        self.sim.later(self.until - self.sim.env.now, self._cut)

    def _open_all(self) -> None:
        for _ in range(self.spec.flows):
            flow = BulkFlow(self, int(self.spec.size or 0))
            self.transfers.append(flow)
            flow.open()

    def _cut(self) -> None:
        for flow in self.transfers:
            flow.cut()


class BulkFlow:
    """One bulk transfer: real handshake and probe train, then fluid (or packet by packet)."""

    def __init__(self, gen: Bulk, size: int) -> None:
        self.gen = gen
        self.sim = gen.sim
        self.size = size
        self.exchange = Exchange(started=gen.sim.env.now)
        gen.log.add(self.exchange)
        self.moved = 0.0
        self.over = False
        self.endpoint: Endpoint | None = None
        self.path: FlowPath | None = None
        self.fluid_flow: FluidFlow | None = None
        self.sender: WindowedSender | None = None
        self.probes = 0
        self._connect_at = gen.sim.env.now

    def open(self) -> None:
        gen = self.gen
        if gen.fluid is None:  # packet level
            self.path = FlowPath(min(self.size, self.sim.costs.gso_bytes))
            self.sender = WindowedSender(
                size=self.size,
                train=self.sim.costs.gso_bytes,
                window=self.sim.costs.tcp_window,
                on_done=lambda _s: self._done(),
                on_established=self.on_established_packet,
                on_closed=lambda _sim, reason: self._failed(reason),
                on_progress=self._progress,
                first_data={"probe": self.path},
            )
            app: Any = self.sender
        else:
            app = self
        connect(self.sim, gen.source_ns, gen.dest.ip, gen.dest.port, gen.dest.proto, app)

    # -- both models ---------------------------------------------------------------------------

    def _progress(self, now: float, nbytes: float) -> None:
        self.moved += nbytes
        self.gen.log.delivered(now, nbytes)

    def _finish(self, status: str) -> None:
        if self.over:
            return
        self.over = True
        ex = self.exchange
        ex.finished = self.sim.env.now
        ex.status = status
        ex.size = round(self.moved)
        if self.path is not None and self.path.receiver is not None:
            ns = self.sim.ns(self.path.receiver)
            ex.endpoint = str(ns.labels.get("pod") or ns.name)
        if self.endpoint is not None and self.endpoint.state == "ESTABLISHED":
            close(self.sim, self.endpoint)

    def _done(self) -> None:
        self._finish("ok")

    def _failed(self, reason: str) -> None:
        established = self.endpoint is not None
        self._finish(close_reason_status(reason, established))

    def cut(self) -> None:
        """The run's window ended before the transfer did."""
        if self.over:
            return
        if self.fluid_flow is not None and self.gen.fluid is not None:
            self.gen.fluid.remove(self.fluid_flow)
        if self.sender is not None:
            self.sender.finished = True
        self._finish("incomplete")

    def on_established_packet(self, sim: Simulation, conn: Endpoint) -> None:
        self.endpoint = conn
        self.exchange.setup = sim.env.now - self._connect_at

    # -- fluid model: the App protocol of the connection --------------------------------------

    def on_established(self, sim: Simulation, conn: Endpoint) -> None:
        self.endpoint = conn
        self.exchange.setup = sim.env.now - self._connect_at
        self._probe()

    def _probe(self) -> None:
        """Send the probe train that learns the path (again after a loss, like a retransmit)."""
        if self.over or self.endpoint is None:
            return
        if self.probes > self.sim.costs.syn_retries:
            self._finish("timeout")
            return
        self.probes += 1
        path = self.path = FlowPath(min(self.size, self.sim.costs.gso_bytes))
        path.sent(self._probed)
        send_message(self.sim, self.endpoint, Message("data", path.size, {"seq": 0, "probe": path}))
        self.sim.later(self.sim.costs.tcp_rto * self.probes, self._probe_timeout, self.probes)

    def _probe_timeout(self, attempt: int) -> None:
        if self.fluid_flow is None and not self.over and attempt == self.probes:
            self._probe()

    def on_ack(self, sim: Simulation, conn: Endpoint, seq: int) -> None:
        return None  # the probe itself reports when every leg of its train is acknowledged

    def _probed(self, path: FlowPath) -> None:
        """Every leg of the probe train is acknowledged: its path and costs are known."""
        sim = self.sim
        if self.fluid_flow is not None or self.over or path is not self.path:
            return
        self._progress(sim.env.now, path.size)
        remaining = self.size - path.size
        if remaining <= 0:
            self._done()
            return
        # A window-full of trains comes back after the handshake's round trip plus one train's
        # serialization on every link of the path (store and forward) — without the queueing
        # the probes of flows starting together add to each other.
        rtt = max((self.exchange.setup or 0.0) + path.serialization_s(), 1e-6)
        fluid = self.gen.fluid
        assert fluid is not None
        self.fluid_flow = FluidFlow(
            path,
            remaining,
            sim.costs.tcp_window / rtt,
            on_progress=self._progress,
            on_done=lambda _f: self._done(),
        )
        fluid.add(self.fluid_flow)

    def on_message(self, sim: Simulation, conn: Endpoint, message: Message) -> None:
        return None

    def on_closed(self, sim: Simulation, conn: Endpoint, reason: str) -> None:
        if not self.over and reason != "closed":
            if self.fluid_flow is not None and self.gen.fluid is not None:
                self.gen.fluid.remove(self.fluid_flow)
            self._failed(reason)
