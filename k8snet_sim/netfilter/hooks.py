"""The netfilter hook framework of one network namespace: who runs at which hook, in what order.

Linux runs, at each of the five hooks, the functions registered there sorted by priority. The
table below is that fact as data (``include/uapi/linux/netfilter_ipv4.h``); conntrack, NAT,
iptables tables, nftables base chains and IPVS all register into one :class:`NetfilterStack`,
and the datapath runs ``stack.run(hook, skb)``.

Example
-------
>>> stack = NetfilterStack()
>>> stack.register(Hook.INPUT, PRI_FILTER, "filter", lambda skb: ACCEPTED)
>>> [name for _, name, _ in stack.ops(Hook.INPUT)]
['filter']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from k8snet_sim.net.packet import Packet
from k8snet_sim.netfilter.conntrack import ConntrackEntry, ConntrackTable
from k8snet_sim.netfilter.context import (
    ACCEPTED,
    Chooser,
    ConnState,
    Hook,
    HookResult,
    NetfilterState,
    PacketContext,
    RuleEvent,
    Verdict,
)

_ACCEPT = Verdict.ACCEPT

# Hook priorities for IPv4 (lower runs first).
PRI_RAW = -300
PRI_CONNTRACK = -200
PRI_MANGLE = -150
PRI_NAT_DST = -100
PRI_FILTER = 0
PRI_SECURITY = 50
PRI_NAT_SRC = 100
PRI_CONNTRACK_CONFIRM = 2**31 - 1

# Which hooks each iptables table attaches to, and at which priority.
IPTABLES_TABLE_HOOKS: dict[str, dict[Hook, int]] = {
    "raw": {Hook.PREROUTING: PRI_RAW, Hook.OUTPUT: PRI_RAW},
    "mangle": {h: PRI_MANGLE for h in Hook},
    "nat": {
        Hook.PREROUTING: PRI_NAT_DST,
        Hook.OUTPUT: PRI_NAT_DST,
        Hook.INPUT: PRI_NAT_SRC,
        Hook.POSTROUTING: PRI_NAT_SRC,
    },
    "filter": {Hook.INPUT: PRI_FILTER, Hook.FORWARD: PRI_FILTER, Hook.OUTPUT: PRI_FILTER},
}

# Where conntrack looks packets up and where it confirms new entries.
CONNTRACK_IN_HOOKS = (Hook.PREROUTING, Hook.OUTPUT)
CONNTRACK_CONFIRM_HOOKS = (Hook.INPUT, Hook.POSTROUTING)

# NAT manipulation type per hook: destination NAT before routing, source NAT after it.
NAT_MANIP: dict[Hook, str] = {
    Hook.PREROUTING: "dst",
    Hook.OUTPUT: "dst",
    Hook.INPUT: "src",
    Hook.POSTROUTING: "src",
}


class Skb:
    """A packet inside one namespace, with what the stack attached to it (like ``sk_buff``).

    ``ct`` and ``ct_dir`` are set by conntrack; ``rewrites`` collects "dst a → b" notes and
    ``events`` rule events when tracing. ``extras`` is a scratch mapping for engines, made on
    first use (one is built for every packet of a load run otherwise).
    """

    __slots__ = (
        "_extras",
        "addressing",
        "conntrack",
        "ct",
        "ct_dir",
        "ctx",
        "local_origin",
        "next_hop",
        "pkt",
        "rewrites",
    )

    def __init__(
        self,
        pkt: Packet,
        ctx: PacketContext,
        conntrack: ConntrackTable,
        addressing: Any = None,  # nat.HostAddressing of the namespace (MASQUERADE/REDIRECT)
        ct: ConntrackEntry | None = None,
        ct_dir: int = 0,
        rewrites: list[str] | None = None,
        local_origin: bool = False,
        next_hop: int | None = None,
    ) -> None:
        self.pkt = pkt
        self.ctx = ctx
        self.conntrack = conntrack
        self.addressing = addressing
        self.ct = ct
        self.ct_dir = ct_dir
        self.rewrites = rewrites
        self.local_origin = local_origin
        self.next_hop = next_hop
        self._extras: dict[str, object] | None = None

    @property
    def extras(self) -> dict[str, object]:
        extras = self._extras
        if extras is None:
            extras = self._extras = {}
        return extras

    @property
    def events(self) -> list[RuleEvent] | None:
        return self.ctx.events

    def __repr__(self) -> str:
        return f"Skb({self.pkt}, hook={self.ctx.hook.value}, ct_dir={self.ct_dir})"


HookFn = Callable[[Skb], HookResult]


class NetfilterStack:
    """Registered hook functions of one namespace, sorted by priority per hook."""

    def __init__(self) -> None:
        self._ops: dict[Hook, list[tuple[int, str, HookFn]]] = {h: [] for h in Hook}
        # The functions alone, per hook, in order: what ``run`` walks for every packet.
        self._fns: dict[Hook, tuple[HookFn, ...]] = {h: () for h in Hook}
        self._count = 0
        # Whether any function is registered: the datapath skips ``run`` when none is (pods,
        # routers and outside hosts have no netfilter at all), which is what ``run`` would do.
        self.hooked = False

    def register(self, hook: Hook, priority: int, name: str, fn: HookFn) -> None:
        ops = self._ops[hook]
        ops.append((priority, name, fn))
        self._count += 1
        # Stable sort: equal priorities keep registration order, as nf_register_net_hook does.
        ops.sort(key=lambda op: op[0])
        self._fns[hook] = tuple(op[2] for op in ops)
        self.hooked = True

    def unregister(self, name: str) -> None:
        for hook in Hook:
            self._ops[hook] = [op for op in self._ops[hook] if op[1] != name]
            self._fns[hook] = tuple(op[2] for op in self._ops[hook])
        self._count = sum(len(ops) for ops in self._ops.values())
        self.hooked = self._count > 0

    def ops(self, hook: Hook) -> list[tuple[int, str, HookFn]]:
        return list(self._ops[hook])

    def names(self) -> list[str]:
        return sorted({op[1] for ops in self._ops.values() for op in ops})

    def run(self, hook: Hook, skb: Skb) -> HookResult:
        """Run every function at ``hook`` until one does not accept."""
        fns = self._fns[hook]
        if not fns:
            return ACCEPTED
        skb.ctx.hook = hook
        for fn in fns:
            result = fn(skb)
            if result is not ACCEPTED and result.verdict is not _ACCEPT:
                return result
        return ACCEPTED

    @property
    def empty(self) -> bool:
        """No hook function anywhere: packets cross this namespace untouched by netfilter."""
        return self._count == 0


def new_context(
    *,
    hook: Hook,
    now: float,
    chooser: Chooser,
    state: NetfilterState,
    is_local: Callable[[int], bool],
    in_iface: str | None = None,
    out_iface: str | None = None,
    events: list[RuleEvent] | None = None,
) -> PacketContext:
    """A fresh context for a packet entering a namespace (conntrack fills in its state)."""
    return PacketContext(
        hook=hook,
        now=now,
        chooser=chooser,
        state=state,
        is_local=is_local,
        in_iface=in_iface,
        out_iface=out_iface,
        ct_state=ConnState.NEW,
        events=events,
    )
