"""Sockets: how a namespace's stack hands packets to applications, and TCP/UDP endpoints.

The model keeps the parts of TCP that decide reachability: the three-way handshake, RST on a
closed port, a reply accepted only when it matches the socket's own 5-tuple, SYN
retransmission, FIN teardown. Application data travels as :class:`Message` payloads, one
packet per message (a "segment train": its length is the message's bytes plus headers).

Example
-------
>>> table = SocketTable()
>>> table.ephemeral_port(6, 1, 2, 80)
32768
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from k8snet_sim.net.addr import ip_str
from k8snet_sim.net.packet import HEADER_BYTES, SCTP, TCP, UDP, Packet

if TYPE_CHECKING:
    from k8snet_sim.sim.simulation import Simulation

EPHEMERAL_LO, EPHEMERAL_HI = 32768, 60999  # net.ipv4.ip_local_port_range


@dataclass
class Message:
    """Application data: ``size`` bytes; ``data`` what the receiving app may read.

    A ``data`` message is a segment train of a bulk transfer (``data["seq"]`` numbers it): the
    receiving stack acknowledges it, and the sender's app hears of the ACK (``on_ack``).
    ``data["probe"]``, when present, rides along on every packet the message causes (see
    :mod:`k8snet_sim.sim.flows`).
    """

    kind: str  # "request" | "response" | "data"
    size: int
    data: dict[str, Any] = field(default_factory=dict)


class App(Protocol):
    """What an application does with a connection."""

    def on_established(self, sim: Simulation, conn: Endpoint) -> None: ...

    def on_message(self, sim: Simulation, conn: Endpoint, message: Message) -> None: ...

    def on_closed(self, sim: Simulation, conn: Endpoint, reason: str) -> None: ...


class Endpoint:
    """A connected socket (TCP) or a connected UDP socket, in one namespace."""

    def __init__(
        self,
        ns: str,
        proto: int,
        local: tuple[int, int],
        remote: tuple[int, int],
        app: App,
        *,
        conn_id: int,
        role: str,
    ) -> None:
        self.ns = ns
        self.proto = proto
        self.local = local
        self.remote = remote
        self.app = app
        self.conn_id = conn_id
        self.role = role  # "client" | "server"
        self.state = "CLOSED"
        self.error: str | None = None
        self.meta: dict[str, Any] = {}

    @property
    def key(self) -> tuple[int, int, int, int, int]:
        return (self.proto, self.local[0], self.local[1], self.remote[0], self.remote[1])

    def packet(self, flags: str = "", message: Message | None = None, label: str = "") -> Packet:
        size = message.size if message is not None else 0
        meta: dict[str, Any] = {"dir": 0 if self.role == "client" else 1}
        probe = message.data.get("probe") if message is not None else None
        proto, local, remote = self.proto, self.local, self.remote
        # Positional (src, dst, proto, sport, dport, flags, length, ttl, icmp, payload, mark,
        # conn_id, label, meta, probe): one packet per message or handshake segment.
        return Packet(
            local[0],
            remote[0],
            proto,
            local[1],
            remote[1],
            flags,
            HEADER_BYTES.get(proto, 28) + size,
            64,
            None,
            message,
            0,
            self.conn_id,
            label or flags,
            meta,
            probe,
        )

    def describe(self) -> str:
        return (
            f"{self.ns} {ip_str(self.local[0])}:{self.local[1]} ↔ "
            f"{ip_str(self.remote[0])}:{self.remote[1]} {self.state}"
        )


class Listener:
    """A listening socket: ``bind_address`` 0 means all addresses (0.0.0.0)."""

    def __init__(
        self,
        proto: int,
        port: int,
        app_factory: Any,
        *,
        bind_address: int = 0,
        name: str = "",
        pod: str | None = None,
    ) -> None:
        self.proto = proto
        self.port = port
        self.bind_address = bind_address
        self.app_factory = app_factory  # callable(sim, endpoint) -> App, or an App
        self.name = name
        self.pod = pod  # "namespace/name" when a pod's application owns the socket

    def note_accept(self, sim: Simulation, pkt: Packet) -> None:
        """Tell the recorder who accepted a traced connection (the endpoint it reached)."""
        if sim.recorder is not None and sim.recorder.wants(pkt):
            sim.recorder.note(
                pkt.conn_id,
                accepted={
                    "listener": self.name,
                    "pod": self.pod,
                    "address": f"{ip_str(pkt.dst)}:{pkt.dport}",
                    "peer": f"{ip_str(pkt.src)}:{pkt.sport}",
                },
            )

    def accept(self, sim: Simulation, ns: str, pkt: Packet, state: str) -> Endpoint:
        """The server side of a connection (or, for UDP, of one datagram's exchange) this
        listener accepts from ``pkt``, with its application attached."""
        server = Endpoint(
            ns,
            pkt.proto,
            (pkt.dst, pkt.dport),
            (pkt.src, pkt.sport),
            app=None,  # type: ignore[arg-type]  # attached just below
            conn_id=pkt.conn_id,
            role="server",
        )
        server.app = self.app_for(sim, server)
        server.meta["listener"] = self.name
        server.state = state
        self.note_accept(sim, pkt)
        return server

    def app_for(self, sim: Simulation, endpoint: Endpoint) -> App:
        factory = self.app_factory
        return (
            factory(sim, endpoint)
            if callable(factory) and not hasattr(factory, "on_message")
            else factory
        )


class SocketTable:
    """Listening and connected sockets of a namespace, and its ephemeral port allocator."""

    def __init__(self) -> None:
        self.listeners: dict[tuple[int, int], list[Listener]] = {}
        self.conns: dict[tuple[int, int, int, int, int], Endpoint] = {}
        self._next_port = EPHEMERAL_LO

    def listen(self, listener: Listener) -> None:
        self.listeners.setdefault((listener.proto, listener.port), []).append(listener)

    def listener_for(self, proto: int, address: int, port: int) -> Listener | None:
        """Most specific bound listener for ``address:port`` (exact address beats 0.0.0.0)."""
        candidates = self.listeners.get((proto, port))
        if not candidates:
            return None
        for lst in candidates:
            if lst.bind_address == address:
                return lst
        for lst in candidates:
            if lst.bind_address == 0:
                return lst
        return None

    def conn_for(self, pkt: Packet) -> Endpoint | None:
        return self.conns.get((pkt.proto, pkt.dst, pkt.dport, pkt.src, pkt.sport))

    def register(self, endpoint: Endpoint) -> None:
        self.conns[endpoint.key] = endpoint

    def unregister(self, endpoint: Endpoint) -> None:
        if self.conns.get(endpoint.key) is endpoint:
            del self.conns[endpoint.key]

    def ephemeral_port(self, proto: int, local: int, remote: int, rport: int) -> int:
        """Next free port in ip_local_port_range for this 4-tuple (sequential: deterministic)."""
        span = EPHEMERAL_HI - EPHEMERAL_LO + 1
        for _ in range(span):
            port = self._next_port
            self._next_port = EPHEMERAL_LO + (port - EPHEMERAL_LO + 1) % span
            if (proto, local, port, remote, rport) not in self.conns:
                return port
        raise RuntimeError("ephemeral ports exhausted")


def tcp_input(sim: Simulation, ns: str, sockets: SocketTable, pkt: Packet) -> str:
    """Deliver a TCP segment addressed to this namespace. Returns what happened (for traces)."""
    endpoint = sockets.conn_for(pkt)
    if endpoint is not None:
        return tcp_segment(sim, endpoint, pkt)
    if pkt.flags == "S":
        listener = sockets.listener_for(pkt.proto, pkt.dst, pkt.dport)
        if listener is not None:
            server = listener.accept(sim, ns, pkt, "SYN_RECV")
            sockets.register(server)
            sim.send(ns, server.packet("SA", label="SYN-ACK"))
            return f"accept SYN on {listener.name or 'listener'} {ip_str(pkt.dst)}:{pkt.dport}"
    if "R" in pkt.flags:
        return "RST for no socket: ignored"
    # No socket: answer with RST (tcp_v4_send_reset), the way Linux refuses a closed port or a
    # segment it does not recognise — including a SYN-ACK that is not the reply it expected.
    rst = Packet(
        src=pkt.dst,
        dst=pkt.src,
        proto=pkt.proto,
        sport=pkt.dport,
        dport=pkt.sport,
        flags="R" if "A" in pkt.flags else "RA",
        conn_id=pkt.conn_id,
        label="RST",
        meta={"dir": 1 - pkt.meta.get("dir", 0), "cause": "no-socket"},
    )
    sim.send(ns, rst)
    if pkt.flags == "S":
        return f"no listener on {ip_str(pkt.dst)}:{pkt.dport}: RST"
    return f"no socket for {pkt}: RST (not a reply to any connection of {ns})"


def tcp_segment(sim: Simulation, ep: Endpoint, pkt: Packet) -> str:
    """The TCP state machine of a connected socket (condensed)."""
    flags = pkt.flags
    if "R" in flags:
        sim.sockets_of(ep.ns).unregister(ep)
        ep.state, ep.error = "CLOSED", "reset"
        ep.meta["reset_by"] = pkt
        ep.app.on_closed(sim, ep, "reset")
        return "connection reset"
    if ep.state == "SYN_SENT":
        if "S" in flags and "A" in flags:
            ep.state = "ESTABLISHED"
            sim.send(ep.ns, ep.packet("A", label="ACK"))
            ep.app.on_established(sim, ep)
            return "SYN-ACK: connection established"
        return "unexpected segment in SYN_SENT"
    if ep.state == "SYN_RECV" and "A" in flags:
        ep.state = "ESTABLISHED"
        ep.app.on_established(sim, ep)
    note = "segment"
    message = pkt.payload
    if isinstance(message, Message):
        if message.kind == "data":
            _ack_data(sim, ep, message)
        ep.app.on_message(sim, ep, message)
        note = f"{message.kind} ({message.size} B) to application"
    elif "ack" in pkt.meta:
        # The peer's stack acknowledged a data train: the sending side's window opens.
        on_ack = getattr(ep.app, "on_ack", None)
        if on_ack is not None:
            on_ack(sim, ep, pkt.meta["ack"])
        probe = pkt.probe
        if probe is not None:
            probe.on_acked()
        note = "ACK of data"
    if "F" in flags:
        if ep.state in ("ESTABLISHED", "SYN_RECV"):
            ep.state = "LAST_ACK"
            sim.send(ep.ns, ep.packet("FA", label="FIN"))
            ep.app.on_closed(sim, ep, "closed by peer")
        elif ep.state == "FIN_WAIT":
            sim.send(ep.ns, ep.packet("A", label="ACK"))
            sim.sockets_of(ep.ns).unregister(ep)
            ep.state = "CLOSED"
            ep.app.on_closed(sim, ep, "closed")
        return "FIN"
    if ep.state == "LAST_ACK" and "A" in flags:
        sim.sockets_of(ep.ns).unregister(ep)
        ep.state = "CLOSED"
        ep.app.on_closed(sim, ep, "closed")
    return note


def _ack_data(sim: Simulation, ep: Endpoint, message: Message) -> None:
    """The receiving stack acknowledges a bulk data train (one ACK per train)."""
    ack = ep.packet("A", label="ACK")
    ack.meta["ack"] = message.data.get("seq", 0)
    probe = message.data.get("probe")
    if probe is not None:
        probe.on_receive(ep.ns)
        ack.probe = probe
    sim.send(ep.ns, ack)


def udp_input(sim: Simulation, ns: str, sockets: SocketTable, pkt: Packet) -> str | None:
    """Deliver a UDP datagram. Returns None when no socket wants it (→ ICMP port unreachable)."""
    endpoint = sockets.conn_for(pkt)
    if endpoint is not None:
        if isinstance(pkt.payload, Message):
            endpoint.app.on_message(sim, endpoint, pkt.payload)
        return "datagram to connected socket"
    listener = sockets.listener_for(UDP, pkt.dst, pkt.dport)
    if listener is None:
        return None
    # A UDP server answers from the address the request was sent to (IP_PKTINFO), through an
    # ephemeral endpoint object standing for the (address, peer) pair.
    server = listener.accept(sim, ns, pkt, "ESTABLISHED")
    if isinstance(pkt.payload, Message):
        server.app.on_message(sim, server, pkt.payload)
    return f"datagram to {listener.name or 'listener'} {ip_str(pkt.dst)}:{pkt.dport}"


def send_message(sim: Simulation, ep: Endpoint, message: Message) -> None:
    label = "REQ" if message.kind == "request" else "RESP"
    flags = "PA" if ep.proto != UDP else ""
    sim.send(ep.ns, ep.packet(flags, message, label=label))


def close(sim: Simulation, ep: Endpoint) -> None:
    """Active close: send FIN (TCP); forget the socket (UDP)."""
    if ep.proto in (TCP, SCTP) and ep.state == "ESTABLISHED":
        ep.state = "FIN_WAIT"
        sim.send(ep.ns, ep.packet("FA", label="FIN"))
        return
    sim.sockets_of(ep.ns).unregister(ep)
    ep.state = "CLOSED"
