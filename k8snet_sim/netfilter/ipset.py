"""ipsets: kernel sets that one iptables rule tests in a single hash lookup (``-m set``).

kube-proxy's IPVS mode keeps its iptables rules constant by putting every Service address into
a few sets (``KUBE-CLUSTER-IP``, ``KUBE-NODE-PORT-TCP``…) and testing the sets. An
:class:`IpSet` is one such set: a type from :data:`SET_TYPES`, its members, and ``test`` as
``xt_set`` does it — each dimension of the set type takes its value from the packet's source or
destination, as the match's flags say (``dst,dst`` = destination address and destination port).

Sets are static configuration of a namespace here (kube-proxy rewrites them only on a sync); an
:class:`IpSetRegistry` maps names to sets and is handed to the iptables parser, which refuses a
rule naming a set that does not exist, as ``iptables-restore`` does.

Example
-------
>>> from k8snet_sim.net.addr import ip
>>> from k8snet_sim.net.packet import Packet, TCP
>>> s = IpSet.build("KUBE-CLUSTER-IP", "hash:ip,port", ["10.96.0.10,tcp:80"])
>>> pkt = Packet(src=ip("172.16.0.50"), dst=ip("10.96.0.10"), proto=TCP, sport=40000, dport=80)
>>> s.test(pkt, ("dst", "dst")), s.test(pkt, ("src", "dst"))
(True, False)
>>> print(s.render().splitlines()[1])
Type: hash:ip,port
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from k8snet_sim.errors import RulesError
from k8snet_sim.net.addr import Cidr, ip, ip_str
from k8snet_sim.net.packet import PROTO_NAMES, PROTO_NUMBERS, SCTP, TCP, UDP, Packet

# Each set type's dimensions, in order (ipset's "ip", "port", "net").
SET_TYPES: dict[str, tuple[str, ...]] = {
    "hash:ip": ("ip",),
    "hash:ip,port": ("ip", "port"),
    "hash:ip,port,ip": ("ip", "port", "ip"),
    "hash:ip,port,net": ("ip", "port", "net"),
    "bitmap:port": ("port",),
}
# ip_set_get_ip4_port: only these protocols carry ports a set can test (UDP-Lite too, not modelled).
_PORT_PROTOCOLS = frozenset({TCP, UDP, SCTP})
MAX_NAME = 31  # IPSET_MAXNAMELEN - 1

IpSetRegistry = Mapping[str, "IpSet"]
# A member's key: ints for addresses, (protocol, port) for ports, Cidr for nets.
Key = tuple[object, ...]


def _parse_port(text: str, what: str) -> tuple[int, int]:
    """``tcp:80`` → (6, 80); a bare port is TCP, as ipset reads it."""
    name, colon, number = text.rpartition(":")
    proto = PROTO_NUMBERS.get(name.lower(), -1) if colon else TCP
    if proto < 0 or not number.isdigit() or int(number) > 65535:
        raise RulesError(f"bad port `{text}` in ipset member `{what}`", hint="e.g. tcp:80")
    return proto, int(number)


def _parse_member(set_type: str, text: str) -> Key:
    parts = text.split(",")
    dims = SET_TYPES[set_type]
    if len(parts) != len(dims):
        raise RulesError(f"ipset member `{text}` does not fit type {set_type}")
    key: list[object] = []
    try:
        for dim, part in zip(dims, parts, strict=True):
            if dim == "ip":
                key.append(ip(part))
            elif dim == "net":
                key.append(Cidr.parse(part))
            elif set_type == "bitmap:port":
                if not part.isdigit() or int(part) > 65535:
                    raise ValueError(part)
                key.append(int(part))
            else:
                key.append(_parse_port(part, text))
    except ValueError:
        raise RulesError(f"bad ipset member `{text}` for type {set_type}") from None
    return tuple(key)


def _render_key(set_type: str, key: Key) -> str:
    out: list[str] = []
    for dim, value in zip(SET_TYPES[set_type], key, strict=True):
        if dim == "ip" and isinstance(value, int):
            out.append(ip_str(value))
        elif dim == "port" and isinstance(value, tuple):
            out.append(f"{PROTO_NAMES.get(value[0], str(value[0]))}:{value[1]}")
        else:
            out.append(str(value))
    return ",".join(out)


@dataclass(frozen=True)
class IpSet:
    """One ipset: ``name``, ``type`` (a key of :data:`SET_TYPES`), members as parsed keys.

    ``comment`` is what kube-proxy writes in the ``-m comment`` of the rules using the set
    (``ipset`` itself does not print it). ``hash:ip,port,net`` members are kept by their first
    two dimensions with the list of networks, so a test is one lookup and a short scan.
    """

    name: str
    type: str
    members: tuple[Key, ...] = ()
    comment: str = ""
    _keys: frozenset[Key] = field(default=frozenset(), repr=False, compare=False)
    _nets: Mapping[Key, tuple[Cidr, ...]] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def build(cls, name: str, set_type: str, members: Iterable[str], comment: str = "") -> IpSet:
        """A set from member texts as ``ipset add`` takes them (``10.96.0.1,tcp:443``)."""
        if set_type not in SET_TYPES:
            raise RulesError(f"ipset type `{set_type}` is not modelled",
                             hint=f"modelled types: {', '.join(SET_TYPES)}")  # fmt: skip
        if not name or len(name) > MAX_NAME:
            raise RulesError(f"bad ipset name `{name}` (1–{MAX_NAME} characters)")
        keys = tuple(dict.fromkeys(_parse_member(set_type, m) for m in members))
        nets: dict[Key, list[Cidr]] = {}
        if set_type == "hash:ip,port,net":
            for key in keys:
                net = key[2]
                assert isinstance(net, Cidr)
                nets.setdefault(key[:2], []).append(net)
        return cls(
            name,
            set_type,
            keys,
            comment,
            frozenset(keys),
            {k: tuple(v) for k, v in nets.items()},
        )

    @property
    def dimensions(self) -> int:
        return len(SET_TYPES[self.type])

    def __len__(self) -> int:
        return len(self.members)

    def entries(self) -> list[str]:
        """Members as ``ipset list`` prints them, in insertion order."""
        return [_render_key(self.type, k) for k in self.members]

    def test(self, packet: Packet, flags: tuple[str, ...]) -> bool:
        """``-m set --match-set NAME flags``: is the packet's tuple in the set?

        ``flags`` gives ``src`` or ``dst`` per dimension. With fewer flags than the set has
        dimensions the kernel never matches (``ip_set_test``); extra flags are ignored.
        """
        dims = SET_TYPES[self.type]
        if len(flags) < len(dims):
            return False
        key: list[object] = []
        for dim, flag in zip(dims, flags, strict=False):
            source = flag == "src"
            if dim == "ip":
                key.append(packet.src if source else packet.dst)
            elif dim == "port":
                if packet.proto not in _PORT_PROTOCOLS:
                    if self.type == "bitmap:port":
                        return False
                    key.append((packet.proto, 0))  # ICMP and friends: no port to test
                else:
                    port = packet.sport if source else packet.dport
                    key.append(port if self.type == "bitmap:port" else (packet.proto, port))
            else:  # "net": the last dimension of hash:ip,port,net
                address = packet.src if source else packet.dst
                return any(c.contains(address) for c in self._nets.get(tuple(key), ()))
        return tuple(key) in self._keys

    def render(self) -> str:
        """The set as ``ipset list NAME`` prints it (memory size and counters left out)."""
        header = "range 0-65535" if self.type == "bitmap:port" else (
            "family inet hashsize 1024 maxelem 65536")  # fmt: skip
        lines = [
            f"Name: {self.name}",
            f"Type: {self.type}",
            f"Header: {header}",
            f"Number of entries: {len(self.members)}",
            "Members:",
            *self.entries(),
        ]
        return "\n".join(lines) + "\n"


def parse_flags(text: str) -> tuple[str, ...]:
    """``dst,dst,src`` → ("dst", "dst", "src"); at most six dimensions (IPSET_DIM_MAX)."""
    flags = tuple(text.split(","))
    if not 1 <= len(flags) <= 6 or any(f not in ("src", "dst") for f in flags):
        raise RulesError(f"bad --match-set flags `{text}`", hint="src or dst per dimension")
    return flags


def render_sets(sets: Iterable[IpSet]) -> str:
    """``ipset list`` of several sets, separated by blank lines as ipset does."""
    return "\n".join(s.render() for s in sets)
