"""Connection tracking, as nf_conntrack does it.

A :class:`ConntrackEntry` holds the connection's *original* tuple (as the first packet looked
when it arrived) and its *reply* tuple (what a reply is expected to look like, after any NAT
bindings). Both tuples index the entry in the :class:`ConntrackTable` once it is confirmed (at
the end of POSTROUTING or INPUT, like ``__nf_conntrack_confirm``). NAT changes the reply tuple;
later packets are translated from the two tuples, never by consulting the nat table again
(:mod:`k8snet_sim.netfilter.nat`).

Example
-------
>>> from k8snet_sim.net.packet import FiveTuple, TCP
>>> table = ConntrackTable(max_entries=10)
>>> ct = ConntrackEntry.new(FiveTuple(TCP, 1, 40000, 2, 80), now=0.0)
>>> table.confirm(ct, now=0.0)
True
>>> table.lookup(FiveTuple(TCP, 2, 80, 1, 40000), now=1.0)[1]  # the reply direction
1
"""

from __future__ import annotations

from dataclasses import dataclass, field

from k8snet_sim.net.packet import ICMP, SCTP, TCP, UDP, FiveTuple

ORIGINAL = 0
REPLY = 1

# Timeouts in seconds: Linux defaults (nf_conntrack_proto_tcp.c / _udp.c), except the two that
# kube-proxy sets (--conntrack-tcp-timeout-established 24h, -close-wait 1h).
TCP_TIMEOUTS: dict[str, float] = {
    "SYN_SENT": 120.0,
    "SYN_RECV": 60.0,
    "ESTABLISHED": 86400.0,
    "FIN_WAIT": 120.0,
    "CLOSE_WAIT": 3600.0,
    "LAST_ACK": 30.0,
    "TIME_WAIT": 120.0,
    "CLOSE": 10.0,
}
UDP_TIMEOUT_UNREPLIED = 30.0
UDP_TIMEOUT_STREAM = 120.0
GENERIC_TIMEOUT = 600.0
ICMP_TIMEOUT = 30.0


@dataclass(slots=True)
class ConntrackEntry:
    """One tracked connection. ``dnat``/``snat`` say which NAT bindings exist; ``*_done`` say
    whether the nat table has been consulted for that manipulation type (a "null binding" is
    done without translation)."""

    orig: FiveTuple
    reply: FiveTuple
    expires: float
    id: int = 0
    state: str = "NEW"  # protocol state: TCP states above; "UNREPLIED"/"REPLIED" for UDP
    seen_reply: bool = False
    assured: bool = False
    confirmed: bool = False
    dnat: bool = False
    snat: bool = False
    dst_done: bool = False
    src_done: bool = False
    mark: int = 0
    fin_seen: list[bool] = field(default_factory=lambda: [False, False])

    @classmethod
    def new(cls, tup: FiveTuple, now: float) -> ConntrackEntry:
        ct = cls(orig=tup, reply=tup.reply(), expires=now)
        ct.state = "SYN_SENT" if tup.proto in (TCP, SCTP) else "UNREPLIED"
        ct.expires = now + timeout_for(ct)
        return ct

    def copy(self) -> ConntrackEntry:
        dup = ConntrackEntry(
            self.orig,
            self.reply,
            self.expires,
            self.id,
            self.state,
            self.seen_reply,
            self.assured,
            self.confirmed,
            self.dnat,
            self.snat,
            self.dst_done,
            self.src_done,
            self.mark,
            list(self.fin_seen),
        )
        return dup

    def describe(self) -> str:
        """``conntrack -L``-like one-liner."""
        flags = []
        if not self.seen_reply:
            flags.append("[UNREPLIED]")
        if self.assured:
            flags.append("[ASSURED]")
        nat = "/".join(n for n, on in (("DNAT", self.dnat), ("SNAT", self.snat)) if on)
        return (
            f"{self.state} orig {self.orig} reply {self.reply}"
            + (f" {' '.join(flags)}" if flags else "")
            + (f" {nat}" if nat else "")
        )


def timeout_for(ct: ConntrackEntry) -> float:
    """How long ``ct`` lives without traffic in its current state."""
    proto = ct.orig.proto
    if proto in (TCP, SCTP):
        return TCP_TIMEOUTS.get(ct.state, GENERIC_TIMEOUT)
    if proto == UDP:
        return UDP_TIMEOUT_STREAM if ct.seen_reply else UDP_TIMEOUT_UNREPLIED
    if proto == ICMP:
        return ICMP_TIMEOUT
    return GENERIC_TIMEOUT


def tcp_advance(ct: ConntrackEntry, direction: int, flags: str, now: float) -> None:
    """Move a TCP entry's state on a packet's flags (a condensed nf_conntrack_proto_tcp)."""
    if ct.state == "ESTABLISHED" and (flags == "A" or flags == "PA"):
        # Data and ACKs of an established connection, most of what conntrack sees: the state
        # stays, the timeout restarts (what the branches below do for them).
        ct.expires = now + TCP_TIMEOUTS["ESTABLISHED"]
        return
    if "R" in flags:
        ct.state = "CLOSE"
    elif "S" in flags and "A" in flags and direction == REPLY:
        if ct.state == "SYN_SENT":
            ct.state = "SYN_RECV"
    elif "F" in flags:
        ct.fin_seen[direction] = True
        if all(ct.fin_seen):
            ct.state = "LAST_ACK"
        elif ct.state in ("ESTABLISHED", "SYN_RECV"):
            ct.state = "FIN_WAIT" if direction == ORIGINAL else "CLOSE_WAIT"
    elif "A" in flags:
        if ct.state == "SYN_RECV" and direction == ORIGINAL:
            ct.state = "ESTABLISHED"
            ct.assured = True
        elif ct.state == "LAST_ACK":
            ct.state = "TIME_WAIT"
    if ct.orig.proto in (TCP, SCTP):  # timeout_for(ct), inlined for the common case
        ct.expires = now + TCP_TIMEOUTS.get(ct.state, GENERIC_TIMEOUT)
    else:
        ct.expires = now + timeout_for(ct)


class ConntrackTable:
    """The namespace's conntrack table (``nf_conntrack_max`` bounded).

    ``drops`` counts connections refused because the table was full (the kernel logs
    "nf_conntrack: table full, dropping packet").
    """

    def __init__(self, max_entries: int = 262144) -> None:
        self.max_entries = max_entries
        self._by_tuple: dict[FiveTuple, ConntrackEntry] = {}
        self._count = 0
        self._next_id = 0
        self.drops = 0

    def __len__(self) -> int:
        return self._count

    def lookup(self, tup: FiveTuple, now: float) -> tuple[ConntrackEntry, int] | None:
        ct = self._by_tuple.get(tup)
        if ct is None:
            return None
        if ct.expires < now:
            self.remove(ct)
            return None
        return ct, (ORIGINAL if tup == ct.orig else REPLY)

    def reply_tuple_taken(self, tup: FiveTuple, now: float) -> bool:
        """Whether ``tup`` already identifies a live connection (for NAT port selection)."""
        return self.lookup(tup, now) is not None

    def confirm(self, ct: ConntrackEntry, now: float) -> bool:
        """Insert an unconfirmed entry. False (and a counted drop) if the table is full or a
        tuple clashes."""
        if ct.confirmed:
            return True
        if self._count >= self.max_entries:
            self.expire(now)
            if self._count >= self.max_entries:
                self.drops += 1
                return False
        if ct.orig in self._by_tuple or ct.reply in self._by_tuple:
            self.drops += 1
            return False
        ct.confirmed = True
        self._next_id += 1
        ct.id = self._next_id
        self._by_tuple[ct.orig] = ct
        self._by_tuple[ct.reply] = ct
        self._count += 1
        return True

    def remove(self, ct: ConntrackEntry) -> None:
        if self._by_tuple.pop(ct.orig, None) is not None:
            self._count -= 1
        self._by_tuple.pop(ct.reply, None)

    def expire(self, now: float) -> int:
        """Drop every expired entry; returns how many."""
        dead = {id(ct): ct for ct in self._by_tuple.values() if ct.expires < now}
        for ct in dead.values():
            self.remove(ct)
        return len(dead)

    def entries(self) -> list[ConntrackEntry]:
        seen: dict[int, ConntrackEntry] = {}
        for ct in self._by_tuple.values():
            seen.setdefault(ct.id, ct)
        return sorted(seen.values(), key=lambda c: c.id)

    def copy(self) -> ConntrackTable:
        dup = ConntrackTable(self.max_entries)
        dup.drops = self.drops
        dup._next_id = self._next_id
        for ct in self.entries():
            c2 = ct.copy()
            dup._by_tuple[c2.orig] = c2
            dup._by_tuple[c2.reply] = c2
            dup._count += 1
        return dup
