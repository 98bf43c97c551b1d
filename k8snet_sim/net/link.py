"""Interfaces and the L2 segments they attach to (a LAN, a node's cni0 bridge, a veth pair).

A :class:`Segment` is a broadcast domain: sending to a next-hop address means finding, by ARP,
the interface on the segment that owns (or answers for) that address. Bandwidth and latency
belong to the segment; the simulation charges serialization and propagation per frame.

Example
-------
>>> from k8snet_sim.net.addr import ip
>>> lan = Segment("lan", bandwidth_bps=10e9, latency_s=50e-6)
>>> lan.attach("node/node1", "eth0", [ip("192.168.10.11")])
>>> lan.resolve(ip("192.168.10.11"))
('node/node1', 'eth0')
>>> lan.resolve(ip("192.168.10.99")) is None
True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from k8snet_sim.net.addr import Cidr, ip_str

# Ethernet framing on the wire: 14 B header + 4 B FCS + 8 B preamble + 12 B inter-frame gap.
ETHERNET_OVERHEAD_BYTES = 38


@dataclass
class Interface:
    """A network interface of a namespace. The first address is the primary one.

    ``kind``: ``ether`` (on a segment), ``loopback``, ``dummy`` (addresses only, e.g.
    kube-ipvs0), ``vxlan`` (encapsulates to a remote VTEP), ``bridge`` (a node's cni0: the node's
    port on the pod segment).
    """

    name: str
    addresses: list[tuple[int, int]] = field(default_factory=list)  # (address, prefix length)
    segment: str | None = None
    kind: str = "ether"
    mtu: int = 1500

    @property
    def primary(self) -> int | None:
        return self.addresses[0][0] if self.addresses else None

    def address_toward(self, peer: int | None) -> int | None:
        """The address the kernel picks on this interface to talk to ``peer``."""
        if peer is not None:
            for address, prefix in self.addresses:
                mask = Cidr(0, prefix).mask
                if prefix < 32 and (address & mask) == (peer & mask):
                    return address
        return self.primary

    def describe(self) -> str:
        addrs = ", ".join(f"{ip_str(a)}/{p}" for a, p in self.addresses) or "no address"
        return f"{self.name} ({self.kind}) {addrs}" + (
            f" on {self.segment}" if self.segment else ""
        )


@dataclass
class Segment:
    """An L2 broadcast domain with its members and ARP answers.

    ``owner`` is the namespace that owns the segment when it is a bridge (a node's cni0): with
    ``bridge_nf`` (``net.bridge.bridge-nf-call-iptables=1``) frames bridged between two ports
    traverse the owner's iptables, which is what lets conntrack un-DNAT a reply from one pod to
    another on the same node.
    """

    name: str
    bandwidth_bps: float = 10e9
    latency_s: float = 50e-6
    buffer_packets: int = 1000
    kind: str = "lan"  # "lan" | "bridge" | "veth"
    owner: str | None = None
    owner_iface: str | None = None
    bridge_nf: bool = True
    members: list[tuple[str, str]] = field(default_factory=list)
    _arp: dict[int, tuple[str, str]] = field(default_factory=dict)
    _claims: dict[int, tuple[str, str]] = field(default_factory=dict)
    # Bumped whenever an ARP answer may change: senders that cache what ``resolve`` found
    # (the simulation does, per interface) look again.
    generation: int = field(default=0, compare=False)

    def attach(self, host: str, iface: str, addresses: list[int]) -> None:
        self.members.append((host, iface))
        for address in addresses:
            self._arp.setdefault(address, (host, iface))
        self.generation += 1

    def claim(self, address: int, host: str, iface: str) -> None:
        """Answer ARP for an address not configured on the interface (e.g. MetalLB's elected
        speaker announcing a LoadBalancer IP, or proxy ARP)."""
        self._claims[address] = (host, iface)
        self.generation += 1

    @property
    def claims(self) -> Mapping[int, tuple[str, str]]:
        """Address -> (host, interface) of every claim (read-only)."""
        return MappingProxyType(self._claims)

    def resolve(self, address: int) -> tuple[str, str] | None:
        """ARP: which (host, interface) answers for ``address`` on this segment."""
        return self._arp.get(address) or self._claims.get(address)

    def serialization_s(self, length_bytes: int) -> float:
        return (length_bytes + ETHERNET_OVERHEAD_BYTES) * 8 / self.bandwidth_bps
