"""Packets as the datapath sees them: an IPv4 header, an L4 header and an opaque payload.

Addresses are ints (see :mod:`k8snet_sim.net.addr`). A packet is mutated in place as NAT rewrites
it; the hop log keeps rendered snapshots, never references.

Example
-------
>>> from k8snet_sim.net.addr import ip
>>> p = Packet(src=ip("172.16.0.50"), dst=ip("10.96.0.80"), proto=TCP, sport=40000, dport=80,
...            flags="S")
>>> str(p)
'TCP 172.16.0.50:40000 > 10.96.0.80:80 [S]'
>>> p.tuple().reply()
FiveTuple(proto=6, src=174063696, sport=80, dst=2886729778, dport=40000)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from k8snet_sim.net.addr import ip_str

ICMP = 1
TCP = 6
UDP = 17
SCTP = 132

PROTO_NAMES: dict[int, str] = {ICMP: "icmp", TCP: "tcp", UDP: "udp", SCTP: "sctp"}
PROTO_NUMBERS: dict[str, int] = {name: num for num, name in PROTO_NAMES.items()}

# ICMP types and codes the datapath emits (RFC 792).
ICMP_ECHO_REPLY = 0
ICMP_DEST_UNREACH = 3
ICMP_ECHO_REQUEST = 8
ICMP_TIME_EXCEEDED = 11
ICMP_NET_UNREACH = 0
ICMP_HOST_UNREACH = 1
ICMP_PORT_UNREACH = 3
ICMP_NET_PROHIBITED = 9
ICMP_HOST_PROHIBITED = 10
ICMP_ADMIN_PROHIBITED = 13

HEADER_BYTES = {TCP: 40, UDP: 28, SCTP: 32, ICMP: 28}  # IPv4 header + L4 header


class FiveTuple(NamedTuple):
    """The connection-identifying part of a packet, as conntrack keys it."""

    proto: int
    src: int
    sport: int
    dst: int
    dport: int

    def reply(self) -> FiveTuple:
        return FiveTuple(self.proto, self.dst, self.dport, self.src, self.sport)

    def __str__(self) -> str:
        name = PROTO_NAMES.get(self.proto, str(self.proto)).upper()
        return f"{name} {ip_str(self.src)}:{self.sport} > {ip_str(self.dst)}:{self.dport}"


@dataclass(slots=True)
class IcmpError:
    """An ICMP error's type/code and the header of the packet that caused it (RFC 792 quoting)."""

    type: int
    code: int
    original: FiveTuple
    reporter: str = ""  # simulation metadata: the namespace that generated the error


@dataclass(slots=True, init=False)
class Packet:
    """An IPv4 packet. ``flags`` holds TCP flags as letters (S, A, F, R, P). A packet built
    without a ``length`` is as long as its headers."""

    src: int
    dst: int
    proto: int
    sport: int = 0
    dport: int = 0
    flags: str = ""
    length: int = 0
    ttl: int = 64
    icmp: IcmpError | None = None
    payload: Any = None  # application data, or the inner Packet of a VXLAN frame
    mark: int = 0  # skb->mark: meaningful only inside one network namespace
    # Simulation metadata, never consulted by the datapath's decisions: which simulated
    # connection this packet belongs to and what it is, so traces can be assembled.
    conn_id: int = 0
    label: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    # A bulk flow's path probe (``sim.flows``) riding on the packet: told what every hop
    # charges. An attribute rather than a ``meta`` key because every hop looks for it.
    probe: Any = field(default=None, compare=False, repr=False)

    # Written out (the dataclass would call __post_init__ for the length): every packet a
    # socket sends is built here.
    def __init__(
        self,
        src: int,
        dst: int,
        proto: int,
        sport: int = 0,
        dport: int = 0,
        flags: str = "",
        length: int = 0,
        ttl: int = 64,
        icmp: IcmpError | None = None,
        payload: Any = None,
        mark: int = 0,
        conn_id: int = 0,
        label: str = "",
        meta: dict[str, Any] | None = None,
        probe: Any = None,
    ) -> None:
        self.src = src
        self.dst = dst
        self.proto = proto
        self.sport = sport
        self.dport = dport
        self.flags = flags
        self.length = length or HEADER_BYTES.get(proto, 28)
        self.ttl = ttl
        self.icmp = icmp
        self.payload = payload
        self.mark = mark
        self.conn_id = conn_id
        self.label = label
        self.meta = {} if meta is None else meta
        self.probe = probe

    def tuple(self) -> FiveTuple:
        return FiveTuple(self.proto, self.src, self.sport, self.dst, self.dport)

    def copy(self) -> Packet:
        return Packet(
            self.src,
            self.dst,
            self.proto,
            self.sport,
            self.dport,
            self.flags,
            self.length,
            self.ttl,
            self.icmp,
            self.payload,
            self.mark,
            self.conn_id,
            self.label,
            dict(self.meta),
            self.probe,
        )

    def __str__(self) -> str:
        name = PROTO_NAMES.get(self.proto, str(self.proto)).upper()
        if self.proto == ICMP:
            text = f"ICMP {ip_str(self.src)} > {ip_str(self.dst)}"
            if self.icmp is not None:
                text += f" type {self.icmp.type} code {self.icmp.code} [{self.icmp.original}]"
            return text
        text = f"{name} {ip_str(self.src)}:{self.sport} > {ip_str(self.dst)}:{self.dport}"
        if self.flags:
            text += f" [{self.flags}]"
        if isinstance(self.payload, Packet):
            text += f" ⟨{self.payload}⟩"
        return text
