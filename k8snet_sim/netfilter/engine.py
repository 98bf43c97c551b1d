"""Walking iptables chains with the kernel's semantics, fast enough for 10,000 Services.

:class:`TableEngine` compiles one :class:`~k8snet_sim.netfilter.rules.Table`: rules become
tuples of predicates, jump destinations become direct references, and long chains get an
index. The walk is ``ipt_do_table``'s: rules in order; a matching jump pushes a return point;
RETURN or falling off a user chain pops it; goto does not push; falling off (or RETURN from)
a builtin chain applies its policy.

Indexes never change the result. A chain whose rules mostly carry a non-negated ``-d host/32``
(or a single ``--dport`` preceded only by side-effect-free matches) keeps, per key, the sorted
positions of the rules with that key merged with the positions of rules without one; only
those candidates are evaluated, in order. A skipped rule is one whose pure key test fails, so
a linear walk would have rejected it before any side effect. ``ctx.rules_walked`` grows by
what a linear walk would have evaluated.

Example
-------
>>> from k8snet_sim.net.addr import ip
>>> from k8snet_sim.net.packet import Packet, TCP
>>> from k8snet_sim.netfilter.context import Hook, NetfilterState, PacketContext
>>> from k8snet_sim.netfilter.rules import Chain, Rule, Table
>>> table = Table("filter")
>>> table.chains["INPUT"] = Chain("INPUT", "DROP")
>>> table.chains["INPUT"].rules.append(Rule.parse("-p tcp --dport 22 -j ACCEPT",
...                                               table="filter", chain="INPUT"))
>>> ctx = PacketContext(Hook.INPUT, 0.0, None, NetfilterState(), lambda a: True)
>>> pkt = Packet(src=ip("10.0.0.2"), dst=ip("10.0.0.1"), proto=TCP, dport=80)
>>> TableEngine(table).run(Hook.INPUT, pkt, ctx).verdict.value, ctx.rules_walked
('DROP', 1)
"""

from __future__ import annotations

import gc
from bisect import bisect_left
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from heapq import merge
from typing import TYPE_CHECKING, Any

from k8snet_sim.errors import RulesError
from k8snet_sim.net.packet import Packet
from k8snet_sim.netfilter.context import (
    ACCEPTED,
    Hook,
    HookResult,
    PacketContext,
    RuleEvent,
    Verdict,
)
from k8snet_sim.netfilter.targets import TARGETS, TargetKind

if TYPE_CHECKING:  # the model imports this engine; the engine needs the model only for types
    from k8snet_sim.netfilter.rules import Rule, Table

INDEX_MIN_RULES = 16  # shorter chains are walked linearly: an index would not pay for itself

_CONTINUE, _VERDICT, _RETURN, _JUMP, _GOTO = (int(k) for k in TargetKind)
Finder = Callable[[Packet, PacketContext, int], int]


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many small objects.

    Compiling 100,000 rules allocates closures the collector would rescan again and again
    (about 40% of the time) although they form no cycles; the collector is restored after.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def check_table(table: Table, *, file: str = "<rules>") -> None:
    """Raise :class:`RulesError` where ``iptables-restore`` would refuse the table.

    Checks that jumps name existing user chains, that chains do not loop, and that NAT and
    REJECT targets are only reachable from the builtin chains (hooks) that allow them.
    """
    if table.checked_version == table.version:
        return
    chains = table.chains
    builtin = set(table.builtin_chains)
    edges: dict[str, list[tuple[str, Rule]]] = {}
    for chain in chains.values():
        out = edges.setdefault(chain.name, [])
        for rule in chain.rules:
            action = rule.action
            if action is None or action.kind not in (TargetKind.JUMP, TargetKind.GOTO):
                continue
            if action.chain in builtin:
                raise _error(f"cannot jump to builtin chain {action.chain}", rule, file)
            if action.chain not in chains:
                raise _error(
                    f"unknown target or chain `{action.chain}`",
                    rule,
                    file,
                    hint=f"declare it with `:{action.chain} - [0:0]`, or use a modelled "
                    f"target: {', '.join(TARGETS)}",
                )
            out.append((action.chain, rule))
    _check_loops(edges, file)
    reached_from: dict[str, set[str]] = {}
    for hook in builtin & set(chains):
        stack = [hook]
        while stack:
            name = stack.pop()
            hooks = reached_from.setdefault(name, set())
            if hook in hooks:
                continue
            hooks.add(hook)
            stack.extend(dest for dest, _ in edges.get(name, ()))
    for name, hooks in reached_from.items():
        for rule in chains[name].rules:
            definition = TARGETS.get(rule.target or "")
            if definition is not None and definition.hooks and not hooks <= definition.hooks:
                bad = ", ".join(sorted(hooks - definition.hooks))
                raise _error(
                    f"{rule.target} is reachable from {bad}, but only usable from "
                    + "/".join(sorted(definition.hooks)),
                    rule,
                    file,
                )
    table.checked_version = table.version


def _check_loops(edges: dict[str, list[tuple[str, Rule]]], file: str) -> None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in edges:
        if root in state:
            continue
        state[root] = 1
        path: list[tuple[str, int]] = [(root, 0)]
        while path:
            name, k = path[-1]
            out = edges[name]
            if k == len(out):
                state[name] = 2
                path.pop()
                continue
            path[-1] = (name, k + 1)
            dest, rule = out[k]
            if state.get(dest) == 1:
                raise _error(f"chain loop: {dest} is reached again through {name}", rule, file)
            if dest not in state:
                state[dest] = 1
                path.append((dest, 0))


def _error(message: str, rule: Rule, file: str, hint: str | None = None) -> RulesError:
    where = "" if rule.line else f" (in `{rule.text}`)"
    return RulesError(message + where, line=rule.line, file=file, hint=hint)


class _Compiled:
    """A compiled chain: rule tuples ``(predicates, kind, destination, apply, rule, effect)``."""

    __slots__ = ("builtin", "find", "index", "name", "policy", "rules")

    def __init__(self, name: str) -> None:
        self.name = name
        self.rules: list[tuple[Any, ...]] = []
        self.find: Finder = _linear([])
        self.index = ""  # "dst" or "dport" when the chain is indexed
        self.policy: HookResult = ACCEPTED
        self.builtin = False


class TableEngine:
    """A compiled table, ready to walk packets. Build it again after the table changes."""

    def __init__(
        self,
        table: Table,
        *,
        indexed: bool = True,
        file: str = "<rules>",
        index_min_rules: int = INDEX_MIN_RULES,
    ) -> None:
        with paused_gc():
            self._build(table, indexed, file, index_min_rules)

    def _build(self, table: Table, indexed: bool, file: str, index_min_rules: int) -> None:
        check_table(table, file=file)
        self.name = table.name
        self.version = table.version
        self.indexed = indexed
        self._builtin = frozenset(table.builtin_chains)
        compiled = {name: _Compiled(name) for name in table.chains}
        for chain in table.chains.values():
            cc = compiled[chain.name]
            cc.builtin = chain.name in self._builtin
            if cc.builtin and chain.policy not in (None, "ACCEPT"):
                verdict = Verdict(chain.policy)
                cc.policy = HookResult(
                    verdict, reason=f"{table.name}/{chain.name} policy {verdict.value}"
                )
            for rule in chain.rules:
                action = rule.action
                if action is None:
                    cc.rules.append((rule.predicates, _CONTINUE, None, None, rule, ""))
                    continue
                dest = compiled[action.chain] if action.chain else None
                effect = {_JUMP: f"jump {action.chain}", _GOTO: f"goto {action.chain}"}.get(
                    int(action.kind), "RETURN"
                )
                cc.rules.append(
                    (rule.predicates, int(action.kind), dest, action.apply, rule, effect)
                )
            if indexed and len(cc.rules) >= index_min_rules:
                cc.find, cc.index = _build_finder(cc.rules)
            else:
                cc.find = _linear(cc.rules)
        self._chains = compiled

    def index_summary(self) -> dict[str, str]:
        """The indexed chains and their key (``dst`` or ``dport``), for tests and reports."""
        return {name: cc.index for name, cc in self._chains.items() if cc.index}

    def run(self, hook: Hook, packet: Packet, ctx: PacketContext) -> HookResult:
        """Walk the builtin chain of ``hook``; ACCEPT when this table has no such chain."""
        start = self._chains.get(hook.value) if hook.value in self._builtin else None
        if start is None:
            return ACCEPTED
        result = self._walk(start, packet, ctx)
        if result is not None:
            return result
        policy = start.policy
        if policy.verdict is not Verdict.ACCEPT and ctx.events is not None:
            ctx.record(
                RuleEvent(self.name, start.name, f":{start.name} {policy.verdict.value}", "",
                          f"policy {policy.verdict.value}")
            )  # fmt: skip
        return policy

    def run_chain(self, chain: str, packet: Packet, ctx: PacketContext) -> HookResult | None:
        """Walk any chain directly; None when it falls through or returns (no policy applies)."""
        start = self._chains.get(chain)
        if start is None:
            raise RulesError(f"no chain {chain} in table {self.name}")
        return self._walk(start, packet, ctx)

    def _walk(self, cc: _Compiled, packet: Packet, ctx: PacketContext) -> HookResult | None:
        stack: list[tuple[_Compiled, int]] = []
        pos = 0
        table = self.name
        while True:
            i = cc.find(packet, ctx, pos)
            if i < 0:  # fell off the chain: return to the caller, or let the policy decide
                if not stack:
                    return None
                cc, pos = stack.pop()
                continue
            _, kind, dest, apply, rule, effect = cc.rules[i]
            if kind == _CONTINUE:
                pos = i + 1
                if apply is None:  # no target: the rule only counts
                    continue
                effect = apply(packet, ctx)[1]
            elif kind == _VERDICT:
                result, effect = apply(packet, ctx)
                if ctx.events is not None:
                    ctx.record(RuleEvent(table, cc.name, rule.text, rule.comment, effect))
                return result
            if ctx.events is not None:
                ctx.record(RuleEvent(table, cc.name, rule.text, rule.comment, effect))
            if kind == _JUMP:
                stack.append((cc, i + 1))
                cc, pos = dest, 0
            elif kind == _GOTO:
                cc, pos = dest, 0
            elif kind == _RETURN:
                if not stack:
                    return None
                cc, pos = stack.pop()


def _linear(rules: list[tuple[Any, ...]]) -> Finder:
    predicates = [r[0] for r in rules]
    n = len(predicates)

    def find(packet: Packet, ctx: PacketContext, pos: int) -> int:
        for i in range(pos, n):
            for predicate in predicates[i]:
                if not predicate(packet, ctx):
                    break
            else:
                ctx.rules_walked += i - pos + 1
                return i
        ctx.rules_walked += n - pos
        return -1

    return find


def _build_finder(rules: list[tuple[Any, ...]]) -> tuple[Finder, str]:
    """An indexed finder when most rules share an exact key, else the linear one."""
    n = len(rules)
    by_dst = [r[4].dst_key for r in rules]
    by_dport = [r[4].dport_key for r in rules]
    keys, use_dst = max(
        (by_dst, True), (by_dport, False), key=lambda c: sum(k is not None for k in c[0])
    )
    if sum(k is not None for k in keys) * 2 < n:
        return _linear(rules), ""
    keyed: dict[int, list[int]] = {}
    wild: list[int] = []
    for position, key in enumerate(keys):
        if key is None:
            wild.append(position)
        else:
            keyed.setdefault(key, []).append(position)
    finder = _indexed([r[0] for r in rules], keyed, tuple(wild), use_dst)
    return finder, "dst" if use_dst else "dport"


def _indexed(
    predicates: list[Any], keyed: dict[int, list[int]], wild: tuple[int, ...], use_dst: bool
) -> Finder:
    n = len(predicates)
    # Candidate lists per key, merged with the unkeyed positions on first use.
    candidates: dict[int, tuple[int, ...]] = {}

    def find(packet: Packet, ctx: PacketContext, pos: int) -> int:
        key = packet.dst if use_dst else packet.dport
        cands = candidates.get(key)
        if cands is None:
            own = keyed.get(key)
            if own is None:
                cands = wild
            else:
                cands = candidates[key] = tuple(merge(own, wild))
        for j in range(bisect_left(cands, pos) if pos else 0, len(cands)):
            i = cands[j]
            for predicate in predicates[i]:
                if not predicate(packet, ctx):
                    break
            else:
                ctx.rules_walked += i - pos + 1
                return i
        ctx.rules_walked += n - pos
        return -1

    return find
