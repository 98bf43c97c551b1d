"""nftables tables compiled for evaluation: sets and verdict maps, load checks, the chain walk.

:class:`Program` compiles one :class:`~k8snet_sim.netfilter.nftables.NftTable` (rules through
:mod:`k8snet_sim.netfilter.nftables_rules`) and walks packets through it with the kernel's
semantics: rules in order; a failed match or a verdict-map miss moves to the next rule;
``jump`` pushes a return point, ``goto`` does not; ``return`` or the end of a regular chain pops
it; falling off the start chain returns None (the caller applies a base chain's policy).

Example
-------
>>> from k8snet_sim.netfilter.nftables import NftChain, NftTable
>>> table = NftTable("t", chains={"c": NftChain("c", rules=["meta mark & 0x4000 == 0 return"])})
>>> program = Program(table, "<doc>")
>>> program.compiled(program.chains["c"])[0].steps[-1][0](None, None).kind
'return'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from k8snet_sim.errors import RulesError
from k8snet_sim.net.addr import Cidr
from k8snet_sim.net.packet import Packet
from k8snet_sim.netfilter.context import (
    ACCEPTED,
    HookResult,
    PacketContext,
    RuleEvent,
    Verdict,
)
from k8snet_sim.netfilter.hooks import NAT_MANIP
from k8snet_sim.netfilter.nftables_rules import (
    HOOKS,
    SET_TYPES,
    CompiledRule,
    NftVerdict,
    RuleCompiler,
    typed_key,
)

if TYPE_CHECKING:
    from k8snet_sim.netfilter.nftables import NftChain, NftSet, NftTable


@dataclass(slots=True)
class CompiledChain:
    name: str
    source: NftChain
    rules: list[CompiledRule] | None = None  # None until compiled (lazy programs)


class CompiledSet:
    """A compiled set or verdict map: typed keys; dynamic members live in ``ctx.state``."""

    def __init__(self, table: str, s: NftSet, program: Program, file: str) -> None:
        self.name = s.name
        try:
            self.dtypes = tuple(SET_TYPES[t.strip()] for t in s.type.split(" . "))
        except KeyError as err:
            raise RulesError(f"set {s.name}: type {err} is not modelled", file=file) from None
        if s.value_type and s.value_type != "verdict":
            raise RulesError(f"map {s.name}: only verdict maps are modelled", file=file)
        self.is_map = bool(s.value_type)
        self.timeout = s.timeout
        self.dynamic = "dynamic" in s.flags or "timeout" in s.flags
        # The entry's single stamp is the element's expiry time (nft timeouts), not xt_recent's
        # last-seen list; the "nft " prefix keeps these lists apart from iptables' recent lists.
        self.state_key = f"nft {table}/{s.name}"
        self.exact: dict[Any, NftVerdict | bool] = {}
        self.prefixes: list[tuple[Cidr, NftVerdict | bool]] = []
        self.targets: list[str] = []
        lines = s.element_lines or [0] * len(s.elements)
        for element, line in zip(s.elements, lines, strict=True):
            try:
                key = typed_key(element.key, self.dtypes)
                value: NftVerdict | bool = True
                if self.is_map:
                    value = program.verdict(element.value.split(), element.comment)
                    if value.target is not None:
                        self.targets.append(value.target.name)
            except (ValueError, KeyError) as err:
                raise RulesError(f"{s.name}: bad element `{element.render()}`: {err}",
                                 line=line, file=file) from None  # fmt: skip
            if isinstance(key, Cidr):
                self.prefixes.append((key, value))
            else:
                self.exact[key] = value

    def lookup(self, key: Any) -> Any:
        """The element's value (True in a set, a verdict in a map), or None."""
        found = self.exact.get(key)
        if found is None and self.prefixes:
            found = next((v for c, v in self.prefixes if c.contains(key)), None)
        return found

    def contains(self, key: Any, ctx: PacketContext) -> bool:
        if self.lookup(key) is not None:
            return True
        if self.dynamic:
            entry = ctx.state.recent.get(self.state_key, {}).get(key)
            return entry is not None and ctx.now < entry.last_seen[-1]
        return False


class Program:
    """One table compiled: chains with compiled rules, sets and maps with typed keys."""

    def __init__(self, table: NftTable, file: str, *, lazy: bool = False) -> None:
        """Compile ``table``. ``lazy`` compiles each chain on first use instead (large
        generated rulesets: a trace touches a handful of chains); errors in a chain then
        surface when it is first walked, and the load-time checks are skipped."""
        self.table, self.file = table.name, file
        self.chains = {name: CompiledChain(name, chain) for name, chain in table.chains.items()}
        self.sets = {name: CompiledSet(table.name, s, self, file) for name, s in table.sets.items()}
        if not lazy:
            for cc in self.chains.values():
                self.compiled(cc)
            self._check()

    def compiled(self, cc: CompiledChain) -> list[CompiledRule]:
        """The chain's compiled rules, compiling them now if needed."""
        if cc.rules is None:
            lines = cc.source.rule_lines or [0] * len(cc.source.rules)
            cc.rules = [
                RuleCompiler(self, cc.name, text, line).compile()
                for text, line in zip(cc.source.rules, lines, strict=True)
            ]
        return cc.rules

    def verdict(self, words: list[str], comment: str) -> NftVerdict:
        if len(words) == 1 and words[0] in ("accept", "drop", "return", "continue"):
            return NftVerdict(words[0], text=words[0], comment=comment)
        if len(words) == 2 and words[0] in ("jump", "goto"):
            target = self.chains.get(words[1])
            if target is None:
                raise ValueError(f"names no chain of table {self.table}")
            if target.source.is_base:
                raise ValueError("targets a base chain")
            return NftVerdict(words[0], target, " ".join(words), comment)
        raise ValueError("is not a verdict")

    def named_set(self, name: str, *, want_map: bool, compiler: RuleCompiler) -> CompiledSet:
        found = self.sets.get(name)
        if found is None:
            raise compiler.error(f"@{name}", f"names no set or map of table {self.table}")
        if found.is_map != want_map:
            raise compiler.error(f"@{name}", "is a map" if found.is_map else "is not a map")
        return found

    def _check(self) -> None:
        """Refuse what ``nft -f`` refuses: chain loops, NAT outside its nat hook."""
        rules = {name: self.compiled(cc) for name, cc in self.chains.items()}
        edges = {name: {t for r in chain for t in r.targets} for name, chain in rules.items()}
        state: dict[str, int] = {}  # 1: on the current path, 2: done

        def visit(name: str, path: list[str]) -> None:
            state[name] = 1
            for dest in sorted(edges[name]):
                if state.get(dest) == 1:
                    raise RulesError(f"chain loop: {' → '.join([*path, name, dest])}",
                                     file=self.file)  # fmt: skip
                if dest not in state:
                    visit(dest, [*path, name])
            state[name] = 2

        for name in self.chains:
            if name not in state:
                visit(name, [])
        for base in (cc for cc in self.chains.values() if cc.source.is_base):
            hook = HOOKS[base.source.hook]
            seen, todo = set(), [base.name]
            while todo:
                name = todo.pop()
                if name in seen:
                    continue
                seen.add(name)
                todo += edges[name]
                for rule in rules[name]:
                    if rule.nat and (base.source.type != "nat" or NAT_MANIP.get(hook) != rule.nat):
                        raise RulesError(
                            f"`{rule.text}` (chain {name}) is reachable from base chain "
                            f"{base.name} ({base.source.type} {base.source.hook}), where that "
                            "NAT statement is not allowed",
                            line=rule.line,
                            file=self.file,
                        )

    def run(self, start: CompiledChain, pkt: Packet, ctx: PacketContext) -> HookResult | None:
        """Walk from ``start``; None when it falls off (or returns from) the start chain."""
        stack: list[tuple[CompiledChain, int]] = []
        chain, pos = start, 0
        note = ""  # comment of the last map element that decided something, for reasons
        while True:
            rules = chain.rules if chain.rules is not None else self.compiled(chain)
            if pos >= len(rules):
                if not stack:
                    return None
                chain, pos = stack.pop()
                continue
            rule = rules[pos]
            pos += 1
            ctx.rules_walked += 1
            effects: list[str] = []
            verdict: NftVerdict | None = None
            for step, effect in rule.steps:
                outcome = step(pkt, ctx)
                if outcome is True:
                    if effect is not None:
                        effects.append(effect)
                    continue
                if outcome is not False:
                    verdict = outcome
                break
            else:
                if effects and ctx.events is not None:
                    ctx.record(RuleEvent(self.table, chain.name, rule.text, rule.comment,
                                         ", ".join(effects)))  # fmt: skip
                continue
            if verdict is None:
                continue
            if verdict.comment:
                note = verdict.comment
            if ctx.events is not None:
                ctx.record(RuleEvent(self.table, chain.name, rule.text,
                                     rule.comment or verdict.comment,
                                     ", ".join([*effects, verdict.text])))  # fmt: skip
            kind = verdict.kind
            if kind == "jump":
                stack.append((chain, pos))
                chain, pos = verdict.target, 0  # type: ignore[assignment]
            elif kind == "goto":
                chain, pos = verdict.target, 0  # type: ignore[assignment]
            elif kind == "return":
                if not stack:
                    return None
                chain, pos = stack.pop()
            elif kind == "accept":
                return ACCEPTED
            elif kind != "continue":
                reason = f"nft {self.table}/{chain.name}: {rule.text}"
                reason += f" [{note}]" if note else ""
                if kind == "drop":
                    return HookResult(Verdict.DROP, reason)
                return HookResult(Verdict.REJECT, reason, verdict.reject_with)
