"""Packet-level bulk TCP: a sender that pushes data trains through the datapath under a window.

The reference the flow-level model (:mod:`k8snet_sim.sim.flows`) is checked against, and the
model of choice for small transfers. Every data train is a real packet through every namespace
and link; the receiving stack acknowledges each train (:func:`k8snet_sim.sim.sockets.tcp_segment`)
and the ACKs clock the sender. Congestion control is Reno-like: slow start from an initial
window of 10 segments, additive increase of one train per window, halving when three later
trains are acknowledged before a missing one (fast retransmit), back to one train after a
retransmission timeout (200 ms minimum, as Linux). The window never exceeds the receive window
(``CostModel.tcp_window``). Fair sharing of a bottleneck queue is not programmed here: it emerges
from the FIFO queues and the windows.

Example
-------
>>> s = WindowedSender(size=10 * 65536, train=65536, window=1 << 20, on_done=print)
>>> s.cwnd == 10 * 1448, s.next_seq
(True, 0)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from k8snet_sim.sim.sockets import Endpoint, Message, close, send_message

if TYPE_CHECKING:
    from k8snet_sim.sim.simulation import Simulation

MSS = 1448  # Linux MSS with TCP timestamps on a 1500-byte MTU
INITIAL_WINDOW = 10 * MSS  # RFC 6928
RTO_MIN = 0.2  # Linux TCP_RTO_MIN
DUP_THRESHOLD = 3


class WindowedSender:
    """The client app of one packet-level bulk flow: send ``size`` bytes, then close."""

    def __init__(
        self,
        *,
        size: int,
        train: int,
        window: float,
        on_done: Callable[[WindowedSender], Any],
        on_established: Callable[[Simulation, Endpoint], Any] | None = None,
        on_closed: Callable[[Simulation, str], Any] | None = None,
        on_progress: Callable[[float, float], Any] | None = None,
        first_data: dict[str, Any] | None = None,
    ) -> None:
        self.size = size
        self.train = train
        self.window = window
        self.cwnd = float(INITIAL_WINDOW)
        self.ssthresh = float(window)
        self.next_seq = 0  # next new train number
        self.acked = 0  # bytes acknowledged
        self.inflight: dict[int, list[float]] = {}  # seq → [bytes, sent at, times passed over]
        self.recover_until = -1  # no window cut again before this seq is acknowledged
        self.retransmits = 0
        self.srtt: float | None = None
        self.finished = False
        self._conn: Endpoint | None = None
        self._timer = 0
        self._on_done = on_done
        self._on_established = on_established
        self._on_closed = on_closed
        self._on_progress = on_progress
        self._first_data = first_data or {}

    # -- App protocol -------------------------------------------------------------------------

    def on_established(self, sim: Simulation, conn: Endpoint) -> None:
        self._conn = conn
        if self._on_established is not None:
            self._on_established(sim, conn)
        self._pump(sim)

    def on_message(self, sim: Simulation, conn: Endpoint, message: Message) -> None:
        return None

    def on_closed(self, sim: Simulation, conn: Endpoint, reason: str) -> None:
        if not self.finished and reason not in ("closed",):
            self.finished = True
            if self._on_closed is not None:
                self._on_closed(sim, reason)

    def on_ack(self, sim: Simulation, conn: Endpoint, seq: int) -> None:
        entry = self.inflight.pop(seq, None)
        if entry is None or self.finished:
            return  # a duplicate ACK of a retransmitted train
        nbytes, sent_at, _ = entry
        self.acked += int(nbytes)
        if self._on_progress is not None:
            self._on_progress(sim.env.now, nbytes)
        sample = sim.env.now - sent_at
        self.srtt = sample if self.srtt is None else 0.875 * self.srtt + 0.125 * sample
        for earlier, other in self.inflight.items():
            # Only a train sent after this one (was last sent) is evidence that it was lost.
            if earlier < seq and other[1] < sent_at:
                other[2] += 1
                if other[2] == DUP_THRESHOLD:
                    self._lost(sim, earlier, timeout=False)
        if self.cwnd < self.ssthresh:
            self.cwnd += nbytes  # slow start
        else:
            self.cwnd += self.train * nbytes / self.cwnd  # one train per window
        self.cwnd = min(self.cwnd, self.window)
        if self.acked >= self.size:
            self.finished = True
            close(sim, conn)
            self._on_done(self)
            return
        self._pump(sim)

    # -- sending ------------------------------------------------------------------------------

    def _bytes_in_flight(self) -> float:
        return sum(e[0] for e in self.inflight.values())

    def _pump(self, sim: Simulation) -> None:
        limit = min(self.cwnd, self.window)
        flight = self._bytes_in_flight()
        while self.next_seq * self.train < self.size:
            nbytes = min(self.train, self.size - self.next_seq * self.train)
            if flight > 0 and flight + nbytes > limit:
                break
            self._send(sim, self.next_seq, nbytes)
            flight += nbytes
            self.next_seq += 1
        self._arm(sim)

    def _send(self, sim: Simulation, seq: int, nbytes: int) -> None:
        assert self._conn is not None
        data: dict[str, Any] = {"seq": seq}
        if seq == 0:
            data.update(self._first_data)
        self.inflight[seq] = [float(nbytes), sim.env.now, 0.0]
        send_message(sim, self._conn, Message("data", nbytes, data))

    def _lost(self, sim: Simulation, seq: int, *, timeout: bool) -> None:
        entry = self.inflight.get(seq)
        if entry is None:
            return
        self.retransmits += 1
        if timeout:
            self.ssthresh = max(self._bytes_in_flight() / 2, 2 * self.train)
            self.cwnd = float(self.train)
        elif seq > self.recover_until:
            self.ssthresh = max(self.cwnd / 2, 2 * self.train)
            self.cwnd = self.ssthresh
            self.recover_until = self.next_seq
        self._send(sim, seq, int(entry[0]))

    def _arm(self, sim: Simulation) -> None:
        self._timer += 1
        rto = max(RTO_MIN, 2 * (self.srtt or 0.0))
        sim.later(rto, self._on_timer, sim, self._timer)

    def _on_timer(self, sim: Simulation, token: int) -> None:
        if token != self._timer or self.finished or not self.inflight:
            return
        self._lost(sim, min(self.inflight), timeout=True)
        self._arm(sim)
