"""The event log of a simulation: one :class:`Hop` per packet per namespace it crossed.

Recording is off by default (load runs must not pay for it); :meth:`Recorder.watch` turns it on
for the connections of a trace.

Example
-------
>>> h = Hop(t=0.000051, node="router/core", action="forward eth1 → eth0 via 192.168.10.10",
...         packet="TCP 172.16.0.50:32768 > 10.96.0.10:80 [S]")
>>> h.to_dict()["t"]
5.1e-05
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from k8snet_sim.net.packet import Packet


@dataclass
class Hop:
    """What one namespace did with one packet."""

    t: float
    node: str
    action: str
    packet: str
    packet_in: str = ""
    label: str = ""
    conn_id: int = 0
    direction: int = 0  # 0: client → server, 1: server → client
    verdict: str = ""  # forward | deliver | drop | reject | no-route | ttl | stray | send | proxy
    rules: list[str] = field(default_factory=list)
    rewrites: list[str] = field(default_factory=list)
    cost_s: float = 0.0
    rules_walked: int = 0
    map_lookups: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["packetIn"] = d.pop("packet_in")
        d["connId"] = d.pop("conn_id")
        d["costS"] = d.pop("cost_s")
        d["rulesWalked"] = d.pop("rules_walked")
        d["mapLookups"] = d.pop("map_lookups")
        return d


# Verdicts that end a packet's journey (the hop after which it went no further).
TERMINAL_VERDICTS = ("deliver", "stray", "drop", "reject", "no-route", "ttl", "refused")


class Recorder:
    """Collects hops of watched connections (or of all packets with ``everything=True``).

    A ``lean`` recorder keeps what a verdict is decided from — every hop's node, verdict,
    action, rewrites and counts, and the packet where it ended (``TERMINAL_VERDICTS``) — but
    not the rules each packet matched nor the packets of intermediate hops: exploring every
    branch of a reachability cell needs the verdicts, not the story of each branch.
    """

    def __init__(self, *, everything: bool = False, lean: bool = False) -> None:
        self.everything = everything
        self.lean = lean
        self.conn_ids: set[int] = set()
        self.hops: list[Hop] = []
        self.links: dict[int, int] = {}  # child connection → parent (proxies)
        self.notes: dict[int, dict[str, Any]] = {}

    def watch(self, conn_id: int, *, parent: int | None = None) -> None:
        self.conn_ids.add(conn_id)
        if parent is not None:
            self.links[conn_id] = parent

    def wants(self, pkt: Packet) -> bool:
        return self.everything or pkt.conn_id in self.conn_ids

    def add(self, hop: Hop) -> None:
        self.hops.append(hop)

    def note(self, conn_id: int, **facts: Any) -> None:
        self.notes.setdefault(conn_id, {}).update(facts)

    def proxy_hop(self, t: float, node: str, conn_id: int, action: str, verdict: str) -> None:
        """What a proxy (userspace kube-proxy, an ingress controller) did with a watched
        connection: a hop with no packet, labelled ``proxy``."""
        if conn_id in self.conn_ids:
            self.add(
                Hop(
                    t=t,
                    node=node,
                    action=action,
                    packet="",
                    label="proxy",
                    conn_id=conn_id,
                    direction=0,
                    verdict=verdict,
                )
            )
