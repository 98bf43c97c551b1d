"""IPv4 addresses and prefixes as integers, because the datapath compares them millions of times.

Example
-------
>>> net = Cidr.parse("10.244.1.0/24")
>>> net.contains(ip("10.244.1.7")), str(net), ip_str(net.host(1))
(True, '10.244.1.0/24', '10.244.1.1')
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from ipaddress import IPv4Address, IPv4Network


@lru_cache(maxsize=65536)
def ip(text: str) -> int:
    """Parse a dotted-quad IPv4 address into an int. Raises ValueError on bad input."""
    return int(IPv4Address(text))


@lru_cache(maxsize=65536)  # traces, notes and server replies render the same few addresses
def ip_str(value: int) -> str:
    """Render an int IPv4 address as dotted quad."""
    return f"{(value >> 24) & 255}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"


def is_ip(text: str) -> bool:
    try:
        IPv4Address(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Cidr:
    """An IPv4 prefix. ``Cidr.parse("1.2.3.4")`` is the /32 host prefix."""

    network: int
    prefix: int

    @classmethod
    def parse(cls, text: str, *, strict: bool = False) -> Cidr:
        net = IPv4Network(text.strip(), strict=strict)
        return cls(int(net.network_address), net.prefixlen)

    @property
    def mask(self) -> int:
        return (0xFFFFFFFF << (32 - self.prefix)) & 0xFFFFFFFF if self.prefix else 0

    @property
    def size(self) -> int:
        return 1 << (32 - self.prefix)

    @property
    def broadcast(self) -> int:
        return self.network | (~self.mask & 0xFFFFFFFF)

    def contains(self, address: int) -> bool:
        return (address & self.mask) == self.network

    def overlaps(self, other: Cidr) -> bool:
        return self.contains(other.network) or other.contains(self.network)

    def host(self, index: int) -> int:
        """The address ``index`` positions into the prefix (0 is the network address)."""
        if not 0 <= index < self.size:
            raise ValueError(f"index {index} outside {self}")
        return self.network + index

    def subnet(self, new_prefix: int, index: int) -> Cidr:
        """The ``index``-th sub-prefix of length ``new_prefix``."""
        step = 1 << (32 - new_prefix)
        return Cidr(self.network + index * step, new_prefix)

    def __str__(self) -> str:
        return f"{ip_str(self.network)}/{self.prefix}"
