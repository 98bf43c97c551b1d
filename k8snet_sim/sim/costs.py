"""CPU and link cost parameters of the simulated datapath.

Defaults are the suggested starting points of ``performance.md`` §7 (kube-proxy
reference), e.g. 20 ns per iptables rule walked by a connection's first packet and 0.1 µs per
conntrack lookup. Every parameter can be overridden from the scenario's ``costs:`` mapping
(camelCase or snake_case keys, values in seconds or with units such as ``20ns``).

Example
-------
>>> c = CostModel.from_overrides({"ruleCost": "25ns"})
>>> round(c.rule_cost * 1e9, 3), c.conntrack_lookup
(25.0, 1e-07)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from typing import Any

from k8snet_sim.errors import K8sNetSimError
from k8snet_sim.scenario.modelbase import closest

_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


@dataclass(frozen=True)
class CostModel:
    """Seconds of CPU per unit of work, charged on the CPU of the namespace's owner."""

    packet: float = 1.0e-6  # base cost of a packet through one namespace's stack
    rule_cost: float = 20e-9  # per iptables rule a linear walk evaluates (first packet)
    conntrack_lookup: float = 0.1e-6  # per packet that conntrack looks up
    conntrack_new: float = 1.0e-6  # creating and confirming an entry
    map_lookup: float = 0.05e-6  # nftables set/verdict-map or IPVS table lookup
    byte_cost: float = 0.21e-9  # kernel per-byte cost (≈ 37.8 Gbit/s per core on a veth)
    nat_byte_overhead: float = 0.04  # +4 % per byte of a connection conntrack translates
    userspace_accept: float = 30e-6  # kube-proxy userspace: accept + connect per connection
    # Userspace copy per byte. Calibrated (docs/fidelity.md, "Throughput model"): +1.8× the
    # per-byte cost of this model's direct pod-to-pod path (performance.md §2, §7) — 3 kernel
    # visits plus ACKs — so a bulk flow through the proxy gets ~36 % of the direct rate. The
    # §7 starting point, 0.38 ns/B, assumed a single veth traversal as the direct path.
    userspace_byte: float = 1.0e-9
    userspace_packet: float = 5.8e-6  # userspace wakeup/copy per message relayed
    l7_request: float = 50e-6  # ingress controller: parse and route one HTTP request
    app_service: float = 20e-6  # backend application time per request
    tcp_rto: float = 1.0  # initial SYN retransmission timeout (Linux TCP_TIMEOUT_INIT)
    syn_retries: int = 2  # SYN retransmissions before connect() fails
    response_timeout: float = 3.0  # how long a client waits for a response once connected
    keepalive_requests: int = 100  # requests per keepalive connection (NGINX's default)
    gso_bytes: int = 65536  # a bulk data train: one GSO/GRO super-packet
    tcp_window: float = 6291456.0  # receive window cap in bytes (net.ipv4.tcp_rmem max)

    @classmethod
    def from_overrides(cls, overrides: dict[str, Any] | None) -> CostModel:
        if not overrides:
            return cls()
        names = {f.name: f for f in fields(cls)}
        changes: dict[str, Any] = {}
        for key, value in overrides.items():
            name = re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()
            if name not in names:
                known = sorted(map(_camel, names))
                raise K8sNetSimError(
                    f"costs.{key}: unknown cost parameter",
                    hint=closest(key, known) or "known: " + ", ".join(known),
                )
            number = _parse(value, int if names[name].type in (int, "int") else float)
            bare = not re.search(r"[a-zµ]\s*$", str(value))  # no unit written: seconds
            if name in PER_UNIT_COSTS and bare and number > 1e-2:
                # A bare number is seconds: 25 for ruleCost would be 25 s per rule walked.
                raise K8sNetSimError(
                    f"costs.{key}: {value} means {value} s per unit of work, which no kernel "
                    "or proxy takes",
                    hint=f"write a unit, e.g. {key}: {value}ns or {value}us",
                )
            changes[name] = number
        return replace(cls(), **changes)


def _camel(name: str) -> str:
    """``rule_cost`` → ``ruleCost``, as a scenario writes it."""
    return re.sub(r"_(.)", lambda m: m.group(1).upper(), name)


# CPU time per packet, rule, lookup, byte, connection or request: fractions of a millisecond.
PER_UNIT_COSTS = frozenset(
    {
        "packet",
        "rule_cost",
        "conntrack_lookup",
        "conntrack_new",
        "map_lookup",
        "byte_cost",
        "userspace_accept",
        "userspace_byte",
        "userspace_packet",
        "l7_request",
        "app_service",
    }
)


def _parse(value: Any, kind: type) -> Any:
    if isinstance(value, bool):  # YAML's true/false are ints to Python, not costs
        raise K8sNetSimError(f"bad cost value {value!r}", hint="use seconds or e.g. 20ns, 5us")
    if isinstance(value, (int, float)):
        return kind(value)
    match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([a-zµ]*)\s*", str(value))
    if not match or match.group(2) not in ("", *_UNITS):
        raise K8sNetSimError(f"bad cost value {value!r}", hint="use seconds or e.g. 20ns, 5us")
    number = float(match.group(1)) * _UNITS.get(match.group(2) or "s", 1.0)
    return kind(number)
