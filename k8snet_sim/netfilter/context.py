"""The contract between a rule engine (iptables, nftables, IPVS) and the per-hop datapath.

The datapath (``k8snet_sim.sim.datapath``) walks a packet through the five netfilter hooks of a
network namespace. At each hook it calls the hook functions registered there in priority order,
passing the packet and a :class:`PacketContext`. A rule engine reads the context (interfaces,
conntrack state, address types, time), may rewrite the packet's mark, asks the context to
perform NAT (conntrack owns NAT bindings, as in Linux) and returns a :class:`Verdict`.

Nothing here knows about simpy, Services or scenarios.

Example
-------
>>> from k8snet_sim.netfilter.context import Hook, HOOK_ORDER
>>> [h.value for h in HOOK_ORDER]
['PREROUTING', 'INPUT', 'FORWARD', 'OUTPUT', 'POSTROUTING']
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


class Hook(enum.StrEnum):
    PREROUTING = "PREROUTING"
    INPUT = "INPUT"
    FORWARD = "FORWARD"
    OUTPUT = "OUTPUT"
    POSTROUTING = "POSTROUTING"


HOOK_ORDER = (Hook.PREROUTING, Hook.INPUT, Hook.FORWARD, Hook.OUTPUT, Hook.POSTROUTING)


class Verdict(enum.Enum):
    ACCEPT = "ACCEPT"
    DROP = "DROP"
    REJECT = "REJECT"
    STOLEN = "STOLEN"  # NF_STOLEN: the hook function took the packet (IPVS sends it on itself)


@dataclass(frozen=True, slots=True)
class HookResult:
    """What a hook function decided. ``reason`` names the rule or policy that decided it."""

    verdict: Verdict
    reason: str = ""
    reject_with: str = ""  # e.g. "icmp-port-unreachable", "tcp-reset" (REJECT only)

    @property
    def accepted(self) -> bool:
        return self.verdict is Verdict.ACCEPT


ACCEPTED = HookResult(Verdict.ACCEPT)


class ConnState(enum.StrEnum):
    """conntrack's view of a packet (``-m conntrack --ctstate``)."""

    NEW = "NEW"
    ESTABLISHED = "ESTABLISHED"
    RELATED = "RELATED"
    INVALID = "INVALID"
    UNTRACKED = "UNTRACKED"


class NatActions(Protocol):
    """NAT requests a rule engine makes. Each sets up the conntrack NAT binding for the
    connection and rewrites the packet, exactly as the kernel's nf_nat does. Only valid in
    the nat table (or nftables nat chains) for the first packet of a connection."""

    def dnat(self, address: int, port: int | None = None) -> None: ...

    def snat(self, address: int, port: int | None = None) -> None: ...

    def masquerade(self, *, random_fully: bool = False) -> None: ...

    def redirect(self, port: int | None = None) -> None: ...


class Chooser(Protocol):
    """Every random decision of the datapath goes through here (seeded, or enumerated when
    exploring all branches)."""

    def choose(self, weights: list[float], label: str) -> int:
        """Pick an index with the given (not necessarily normalised) weights."""
        ...

    def pick(self, options: int, default: int, label: str) -> int:
        """A deterministic scheduler (round-robin, source hash) chose ``default`` among
        ``options``; an explorer may override it to visit every option."""
        ...


def chance(chooser: Chooser, probability: float, label: str) -> bool:
    """True with ``probability`` (``-m statistic --mode random``)."""
    if probability >= 1.0:
        return True
    if probability <= 0.0:
        return False
    return chooser.choose([probability, 1.0 - probability], label) == 0


@dataclass(slots=True)
class RuleEvent:
    """One step of a rule walk worth showing in a trace: a rule that matched and acted."""

    table: str
    chain: str
    rule: str  # the rule as written (``-A CHAIN …``) or a short description
    comment: str = ""
    effect: str = ""  # "jump KUBE-SVC-…", "DNAT 10.96.0.10:80 → 10.244.1.5:8080", "MARK 0x4000"

    def describe(self) -> str:
        label = self.comment or self.rule
        return f"{self.table}/{self.chain}: {label}" + (f" → {self.effect}" if self.effect else "")


@dataclass(slots=True)
class RecentEntry:
    # Newest last, at most 20 (ip_pkt_list_tot).
    last_seen: list[float] = field(default_factory=list)


class EngineState(Protocol):
    """Dynamic state an engine keeps in :attr:`NetfilterState.extensions` (e.g. IPVS's
    connection table); ``copy`` must return an independent copy, for forks."""

    def copy(self) -> EngineState: ...


@dataclass
class NetfilterState:
    """Dynamic netfilter state of one network namespace besides conntrack.

    ``recent`` holds xt_recent lists (name → masked address → timestamps); ``counters`` holds
    per-rule packet counters used by ``-m statistic --mode nth``, keyed by the rule's identity;
    ``extensions`` holds other engines' state by engine name (``"ipvs"``).
    Forking a simulation deep-copies this object.
    """

    recent: dict[str, dict[int, RecentEntry]] = field(default_factory=dict)
    counters: dict[object, int] = field(default_factory=dict)
    extensions: dict[str, EngineState] = field(default_factory=dict)

    def copy(self) -> NetfilterState:
        return NetfilterState(
            {
                n: {a: RecentEntry(list(e.last_seen)) for a, e in lst.items()}
                for n, lst in self.recent.items()
            },
            dict(self.counters),
            {name: ext.copy() for name, ext in self.extensions.items()},
        )


@dataclass(slots=True)
class PacketContext:
    """Everything a rule may look at besides the packet itself.

    - ``in_iface`` is set in PREROUTING, INPUT, FORWARD; ``out_iface`` in FORWARD, OUTPUT,
      POSTROUTING (as in Linux, where ``-i`` is invalid in OUTPUT/POSTROUTING and ``-o`` in
      PREROUTING/INPUT).
    - ``ct_state`` / ``ct_dnat`` / ``ct_snat``: the conntrack view (``--ctstate NEW`` etc., and
      the ``DNAT``/``SNAT`` pseudo-states: the connection's original destination/source was
      translated).
    - ``is_local(addr)``: the ``-m addrtype LOCAL`` test for this namespace.
    - ``rules_walked``: engines add the number of rules a *linear* walk would have evaluated,
      even when an index let them skip some — the cost model charges for it.
    - ``events``: when not None, engines append a :class:`RuleEvent` for each rule that
      matched and acted (jump, mark, NAT, verdict), for traces.
    """

    hook: Hook
    now: float
    chooser: Chooser
    state: NetfilterState
    is_local: Callable[[int], bool]
    in_iface: str | None = None
    out_iface: str | None = None
    ct_state: ConnState = ConnState.NEW
    ct_dnat: bool = False
    ct_snat: bool = False
    ct_reply: bool = False  # the packet travels in the connection's reply direction
    nat: NatActions | None = None
    events: list[RuleEvent] | None = None
    rules_walked: int = 0
    map_lookups: int = 0  # set / verdict-map / IPVS table lookups (nftables, ipvs), for costs

    def record(self, event: RuleEvent) -> None:
        if self.events is not None:
            self.events.append(event)
