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
from operator import attrgetter
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
from k8snet_sim.netfilter.matches import CONTEXT_READS, LOCAL_READS, PACKET_READS, READABLE
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

    __slots__ = ("builtin", "find", "index", "memo", "name", "policy", "rules")

    def __init__(self, name: str) -> None:
        self.name = name
        self.rules: list[tuple[Any, ...]] = []
        self.find: Finder = _linear([])
        self.index = ""  # "dst" or "dport" when the chain is indexed
        self.policy: HookResult = ACCEPTED
        self.builtin = False
        self.memo: WalkMemo | None = None  # builtin chains whose walks may be memoised


class WalkMemo:
    """Exact outcomes of walking one builtin chain, keyed by every input its rules can read.

    A walk through rules whose matches all declare what they read (``Rule.reads``) and whose
    targets are all pure (jumps, RETURN, ACCEPT/DROP/REJECT, LOG) is a function of those
    inputs: the same inputs give the same verdict after the same number of rules. Most packets
    of a load run are ESTABLISHED ones walking FORWARD → KUBE-FORWARD to the same ACCEPT; they
    get the verdict, and ``rules_walked`` grows by what the walk would have added (the cost
    model charges for it). The memo belongs to one compiled table, so it is thrown away with
    it when the table changes; it is never used while a trace records rule events.

    >>> memo = WalkMemo(frozenset({"dst", "ct_state"}))
    >>> memo.fields
    ('dst', 'ct_state')
    """

    __slots__ = ("fields", "key", "results")

    def __init__(self, reads: frozenset[str]) -> None:
        unknown = reads - READABLE
        if unknown:
            raise ValueError(f"cannot key a walk memo on {sorted(unknown)}")
        packet_fields = tuple(sorted(reads & PACKET_READS))
        ctx_fields = tuple(sorted(reads & CONTEXT_READS))
        self.fields = packet_fields + ctx_fields + tuple(sorted(reads & LOCAL_READS))
        self.results: dict[Any, tuple[HookResult, int]] = {}
        self.key = _key_function(
            packet_fields, ctx_fields, "local_src" in reads, "local_dst" in reads
        )

    def remember(self, key: Any, result: HookResult, walked: int) -> None:
        results = self.results
        if len(results) >= MEMO_MAX_ENTRIES:  # keys with ports can be many: start afresh
            results.clear()
        results[key] = (result, walked)


MEMO_MAX_ENTRIES = 4096


def _key_function(
    packet_fields: tuple[str, ...], ctx_fields: tuple[str, ...], local_src: bool, local_dst: bool
) -> Callable[[Packet, PacketContext], Any]:
    """The memo key of a packet: its fields and its context's fields (``attrgetter`` reads them
    in C), plus the addrtype answers when a rule asks them."""
    of_packet = attrgetter(*packet_fields) if packet_fields else None
    of_ctx = attrgetter(*ctx_fields) if ctx_fields else None
    if local_src or local_dst:

        def key(p: Packet, c: PacketContext) -> Any:
            return (
                of_packet(p) if of_packet is not None else None,
                of_ctx(c) if of_ctx is not None else None,
                c.is_local(p.src) if local_src else None,
                c.is_local(p.dst) if local_dst else None,
            )

        return key
    if of_packet is not None and of_ctx is not None:
        return lambda p, c: (of_packet(p), of_ctx(c))
    if of_packet is not None:
        return lambda p, c: of_packet(p)
    if of_ctx is not None:
        return lambda p, c: of_ctx(c)
    return lambda p, c: None


def _memo_reads(start: _Compiled) -> frozenset[str] | None:
    """What every rule reachable from ``start`` reads, or None when a walk from it may have an
    effect or read something undeclared (then it is never memoised)."""
    reads: set[str] = set()
    seen = {id(start)}
    stack = [start]
    while stack:
        cc = stack.pop()
        for _, _, dest, _, rule, _ in cc.rules:
            action = rule.action
            if rule.reads is None or (action is not None and not action.pure):
                return None
            reads |= rule.reads
            if dest is not None and id(dest) not in seen:
                seen.add(id(dest))
                stack.append(dest)
    return frozenset(reads)


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
        for cc in compiled.values():
            if cc.builtin and (reads := _memo_reads(cc)) is not None:
                cc.memo = WalkMemo(reads)
        self._chains = compiled
        # The builtin chain each hook enters (a Hook is a str enum: it finds its chain by name).
        self._starts = {name: cc for name, cc in compiled.items() if cc.builtin}
        # The walk memo of each hook's builtin chain (None: none, or not memoisable).
        self.memos = {hook: getattr(self._starts.get(hook), "memo", None) for hook in Hook}

    def index_summary(self) -> dict[str, str]:
        """The indexed chains and their key (``dst`` or ``dport``), for tests and reports."""
        return {name: cc.index for name, cc in self._chains.items() if cc.index}

    def run(self, hook: Hook, packet: Packet, ctx: PacketContext) -> HookResult:
        """Walk the builtin chain of ``hook``; ACCEPT when this table has no such chain."""
        start = self._starts.get(hook)
        if start is None:
            return ACCEPTED
        memo = start.memo
        if memo is not None and ctx.events is None:
            key = memo.key(packet, ctx)
            known = memo.results.get(key)
            if known is not None:
                ctx.rules_walked += known[1]
                return known[0]
            walked = ctx.rules_walked
            result = self._walk(start, packet, ctx)
            if result is None:
                result = start.policy
            memo.remember(key, result, ctx.rules_walked - walked)
            return result
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
