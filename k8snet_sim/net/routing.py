"""Routing tables with longest-prefix match, as `ip route` shows them.

Example
-------
>>> from k8snet_sim.net.addr import ip
>>> t = RoutingTable()
>>> t.add(Route(Cidr.parse("192.168.10.0/24"), dev="eth0", src=ip("192.168.10.11")))
>>> t.add(Route(Cidr.parse("0.0.0.0/0"), dev="eth0", via=ip("192.168.10.1")))
>>> str(t.lookup(ip("10.96.0.10")))
'default via 192.168.10.1 dev eth0'
>>> str(t.lookup(ip("192.168.10.20")))
'192.168.10.0/24 dev eth0 scope link src 192.168.10.11'
"""

from __future__ import annotations

from dataclasses import dataclass

from k8snet_sim.net.addr import Cidr, ip_str


@dataclass(frozen=True, slots=True)
class Route:
    """One route. ``via`` None means the destination is on-link (directly reachable on ``dev``).

    ``kind`` is ``unicast``, ``blackhole`` or ``unreachable`` (as in ``ip route``).
    """

    dest: Cidr
    dev: str = ""
    via: int | None = None
    src: int | None = None
    kind: str = "unicast"
    onlink: bool = False
    origin: str = (
        ""  # who installed it ("kernel", "scenario", "cni host-gw", "flannel"): for traces
    )

    def __str__(self) -> str:
        dest = "default" if self.dest.prefix == 0 else str(self.dest)
        if self.kind != "unicast":
            return f"{self.kind} {dest}"
        text = dest
        if self.via is not None:
            text += f" via {ip_str(self.via)}"
        text += f" dev {self.dev}"
        if self.via is None:
            text += " scope link"
        if self.onlink:
            text += " onlink"
        if self.src is not None:
            text += f" src {ip_str(self.src)}"
        return text


_CACHE_MAX = 65536
_MISS = object()


class RoutingTable:
    """The main routing table of a network namespace.

    Lookup is longest-prefix match; ties go to the route added first (like a metric tie).
    Routes are bucketed by prefix length so a lookup costs at most 33 dict probes, and the
    answer per destination is remembered (a route cache) until the table changes.
    """

    def __init__(self) -> None:
        self._by_len: dict[int, dict[int, Route]] = {}
        self._lengths: list[int] = []
        self._cache: dict[int, Route | None] = {}

    def add(self, route: Route) -> None:
        bucket = self._by_len.setdefault(route.dest.prefix, {})
        bucket.setdefault(route.dest.network, route)
        self._lengths = sorted(self._by_len, reverse=True)
        self._cache.clear()

    def remove(self, dest: Cidr) -> None:
        bucket = self._by_len.get(dest.prefix)
        if bucket is not None:
            bucket.pop(dest.network, None)
        self._cache.clear()

    def lookup(self, address: int) -> Route | None:
        cache = self._cache
        found = cache.get(address, _MISS)
        if found is not _MISS:
            return found  # type: ignore[return-value]
        found = None
        for length in self._lengths:
            mask = (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF if length else 0
            route = self._by_len[length].get(address & mask)
            if route is not None:
                found = route
                break
        if len(cache) >= _CACHE_MAX:  # a scan of many addresses: start afresh
            cache.clear()
        cache[address] = found
        return found

    def routes(self) -> list[Route]:
        """All routes, most specific first (``ip route`` order is not significant here)."""
        return [r for n in self._lengths for r in self._by_len[n].values()]

    def __len__(self) -> int:
        return sum(len(b) for b in self._by_len.values())
