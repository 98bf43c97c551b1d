"""The iptables data model: rules, chains, tables and the ruleset of a network namespace.

A :class:`Rule` is immutable: its text as written plus the parsed options, compiled once into
small predicates and a target. :class:`Chain` and :class:`Table` are mutable containers that
count their own modifications, so the compiled engine (and the verbatim renderer) can tell
cheaply that they changed. :class:`IptablesRuleset` holds the tables, walks packets through
them (:meth:`IptablesRuleset.run`) and renders them as ``iptables-save`` text.

Example
-------
>>> rule = Rule.build("nat", "KUBE-SERVICES", "-m", "comment", "--comment", "svc1 cluster IP",
...                   "-m", "tcp", "-p", "tcp", "-d", "172.30.0.41", "--dport", "80",
...                   "-j", "KUBE-SVC-XPGD46QRK7WJZT7O")
>>> rule.text  # doctest: +NORMALIZE_WHITESPACE
'-A KUBE-SERVICES -m comment --comment "svc1 cluster IP" -m tcp -p tcp -d 172.30.0.41
 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O'
>>> rule.comment, rule.target, rule.dst_key == 0xAC1E0029
('svc1 cluster IP', 'KUBE-SVC-XPGD46QRK7WJZT7O', True)
>>> rules = IptablesRuleset()
>>> rules.table("nat").chains["KUBE-SERVICES"] = Chain("KUBE-SERVICES", rules=[rule])
>>> rules.table("nat").chains["KUBE-SVC-XPGD46QRK7WJZT7O"] = Chain("KUBE-SVC-XPGD46QRK7WJZT7O")
>>> print(rules.render(), end="")  # doctest: +NORMALIZE_WHITESPACE
*nat
:KUBE-SERVICES - [0:0]
:KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
-A KUBE-SERVICES -m comment --comment "svc1 cluster IP" -m tcp -p tcp -d 172.30.0.41
 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
COMMIT
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, SupportsIndex

from k8snet_sim.errors import RulesError
from k8snet_sim.net.packet import Packet
from k8snet_sim.netfilter.context import ACCEPTED, Hook, HookResult, PacketContext
from k8snet_sim.netfilter.engine import TableEngine, check_table
from k8snet_sim.netfilter.matches import Option, Predicate
from k8snet_sim.netfilter.targets import CompiledTarget

TABLES = ("filter", "nat", "mangle", "raw", "security")
# The builtin chains of each table, in hook order (iptables-save prints them first).
BUILTIN_CHAINS: dict[str, tuple[str, ...]] = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
    "security": ("INPUT", "FORWARD", "OUTPUT"),
}
MAX_CHAIN_NAME = 28  # XT_EXTENSION_MAXNAMELEN - 1


@dataclass(frozen=True, slots=True, eq=False)
class Rule:
    """One rule of a chain. Equality is identity: two identical lines are two rules."""

    table: str
    chain: str
    args: str  # the arguments as written, after ``-A CHAIN``
    words: tuple[str, ...]
    header: tuple[Option, ...]
    matches: tuple[tuple[str, tuple[Option, ...]], ...]  # (module, options) in order
    target: str | None
    target_options: tuple[Option, ...] = ()
    goto: bool = False
    comment: str = ""
    line: int = 0
    counters: tuple[int, int] | None = None
    predicates: tuple[Predicate, ...] = field(default=(), repr=False)
    action: CompiledTarget | None = field(default=None, repr=False)
    dst_key: int | None = field(default=None, repr=False)  # exact -d host: index key
    dport_key: int | None = field(default=None, repr=False)  # exact --dport, pure prefix
    # Everything the rule's matches read (matches.READABLE); None when a match has an effect or
    # reads state beyond the packet and its context (statistic, recent, set).
    reads: frozenset[str] | None = field(default=None, repr=False)

    @property
    def text(self) -> str:
        """The rule as ``iptables-save`` writes it: ``-A CHAIN args``."""
        return f"-A {self.chain} {self.args}" if self.args else f"-A {self.chain}"

    @property
    def label(self) -> str:
        """Names the rule in verdict reasons and Chooser decisions."""
        return f"{self.table}/{self.chain}: {self.comment or self.args}"

    @classmethod
    def parse(
        cls,
        args: str,
        *,
        table: str,
        chain: str,
        line: int = 0,
        counters: tuple[int, int] | None = None,
    ) -> Rule:
        """Parse the arguments of ``-A chain …`` (without the ``-A chain`` part)."""
        from k8snet_sim.netfilter import iptables_save  # the language builds on this model

        texts, quoted = iptables_save.tokens(args)
        return iptables_save.compile_rule(texts, quoted, args.strip(), table, chain, line, counters)

    @classmethod
    def from_tokens(
        cls,
        texts: list[str],
        quoted: frozenset[int],
        args: str,
        *,
        table: str,
        chain: str,
        line: int = 0,
        counters: tuple[int, int] | None = None,
    ) -> Rule:
        """Like :meth:`parse` for arguments already split by ``iptables_save.tokens``."""
        from k8snet_sim.netfilter import iptables_save

        return iptables_save.compile_rule(texts, quoted, args, table, chain, line, counters)

    @classmethod
    def build(cls, table: str, chain: str, *words: str) -> Rule:
        """Build a rule from unquoted words; its text is generated with shell quoting."""
        from k8snet_sim.netfilter.iptables_save import quote_word

        return cls.parse(" ".join(quote_word(w) for w in words), table=table, chain=chain)


class _Epoch:
    """A modification counter shared by a table and everything in it."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


class RuleList(list[Rule]):
    """The rules of a chain: a list that bumps its table's modification counter."""

    __slots__ = ("_epoch",)

    def __init__(self, rules: Iterable[Rule] = (), epoch: _Epoch | None = None) -> None:
        super().__init__(rules)
        self._epoch = epoch or _Epoch()

    def _touch(self) -> None:
        self._epoch.n += 1

    def append(self, rule: Rule) -> None:
        super().append(rule)
        self._touch()

    def extend(self, rules: Iterable[Rule]) -> None:
        super().extend(rules)
        self._touch()

    def insert(self, index: SupportsIndex, rule: Rule) -> None:
        super().insert(index, rule)
        self._touch()

    def pop(self, index: SupportsIndex = -1) -> Rule:
        self._touch()
        return super().pop(index)

    def remove(self, rule: Rule) -> None:
        super().remove(rule)
        self._touch()

    def clear(self) -> None:
        super().clear()
        self._touch()

    def sort(self, *args: Any, **kwargs: Any) -> None:
        super().sort(*args, **kwargs)
        self._touch()

    def reverse(self) -> None:
        super().reverse()
        self._touch()

    def __setitem__(self, index: Any, value: Any) -> None:
        super().__setitem__(index, value)
        self._touch()

    def __delitem__(self, index: Any) -> None:
        super().__delitem__(index)
        self._touch()

    def __iadd__(self, rules: Iterable[Rule]) -> RuleList:  # type: ignore[override,misc]
        super().__iadd__(rules)
        self._touch()
        return self


class Chain:
    """A chain: its rules and, for a builtin chain, its policy (None for user chains, and for
    a builtin chain declared with ``-``, which keeps the kernel's default ACCEPT)."""

    __slots__ = ("_epoch", "_policy", "_rules", "counters", "name")

    def __init__(
        self,
        name: str,
        policy: str | None = None,
        rules: Iterable[Rule] = (),
        counters: tuple[int, int] | None = (0, 0),
    ) -> None:
        self.name = name
        self._epoch = _Epoch()
        self._policy = policy
        self._rules = RuleList(rules, self._epoch)
        self.counters = counters

    @property
    def rules(self) -> RuleList:
        return self._rules

    @rules.setter
    def rules(self, rules: Iterable[Rule]) -> None:
        self._rules = RuleList(rules, self._epoch)
        self._epoch.n += 1

    @property
    def policy(self) -> str | None:
        return self._policy

    @policy.setter
    def policy(self, policy: str | None) -> None:
        self._policy = policy
        self._epoch.n += 1

    def _adopt(self, epoch: _Epoch) -> None:
        self._epoch = self._rules._epoch = epoch
        epoch.n += 1

    def declaration(self) -> str:
        counters = f" [{self.counters[0]}:{self.counters[1]}]" if self.counters else ""
        return f":{self.name} {self.policy or '-'}{counters}"

    def __repr__(self) -> str:
        return f"Chain({self.name!r}, policy={self.policy!r}, rules=<{len(self._rules)}>)"


class ChainDict(dict[str, Chain]):
    """A table's chains by name; adding or removing one counts as a modification."""

    def __init__(self, epoch: _Epoch) -> None:
        super().__init__()
        self._epoch = epoch

    def __setitem__(self, name: str, chain: Chain) -> None:
        super().__setitem__(name, chain)
        chain._adopt(self._epoch)

    def __delitem__(self, name: str) -> None:
        super().__delitem__(name)
        self._epoch.n += 1

    def pop(self, name: str, *default: Any) -> Any:
        self._epoch.n += 1
        return super().pop(name, *default)

    def popitem(self) -> tuple[str, Chain]:
        self._epoch.n += 1
        return super().popitem()

    def clear(self) -> None:
        super().clear()
        self._epoch.n += 1

    def setdefault(self, name: str, chain: Chain | None = None) -> Chain:
        if name not in self:
            self[name] = chain if chain is not None else Chain(name)
        return self[name]

    def update(self, *args: Any, **kwargs: Any) -> None:
        for name, chain in dict(*args, **kwargs).items():
            self[name] = chain


class Table:
    """One table (``filter``, ``nat``…): its chains in declaration order."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._epoch = _Epoch()
        self.chains: ChainDict = ChainDict(self._epoch)
        self.checked_version = -1  # the version engine.check_table last found valid

    @property
    def version(self) -> int:
        """Changes whenever the table, a chain or a rule list in it is modified."""
        return self._epoch.n

    @property
    def builtin_chains(self) -> tuple[str, ...]:
        return BUILTIN_CHAINS.get(self.name, ())

    def ordered_chains(self) -> list[Chain]:
        """Builtin chains first in hook order, then user chains in declaration order."""
        builtin = [self.chains[c] for c in self.builtin_chains if c in self.chains]
        return builtin + [c for name, c in self.chains.items() if name not in self.builtin_chains]

    def __repr__(self) -> str:
        return f"Table({self.name!r}, chains=<{len(self.chains)}>)"


class IptablesRuleset:
    """The tables of one network namespace, as ``iptables-save`` shows them.

    ``tables`` maps a table name to its :class:`Table`. :meth:`run` evaluates a hook; the
    compiled engine of each table is cached and rebuilt when the table changes.
    """

    def __init__(self, *, indexed: bool = True, file: str = "<rules>") -> None:
        self.tables: dict[str, Table] = {}
        self.indexed = indexed
        self.file = file
        self._source: str | None = None
        self._source_versions: tuple[tuple[str, int, int], ...] = ()
        self._engines: dict[str, tuple[Table, int, bool, TableEngine]] = {}

    # ------------------------------------------------------------------ evaluation

    def engine(self, table: str) -> TableEngine | None:
        """The compiled engine of ``table`` (None when the table does not exist)."""
        tab = self.tables.get(table)
        if tab is None:
            return None
        cached = self._engines.get(table)
        if (
            cached is not None
            and cached[0] is tab
            and cached[1] == tab._epoch.n  # tab.version, without the property call
            and cached[2] == self.indexed
        ):
            return cached[3]
        compiled = TableEngine(tab, indexed=self.indexed, file=self.file)
        self._engines[table] = (tab, tab.version, self.indexed, compiled)
        return compiled

    def run(self, table: str, hook: Hook, packet: Packet, ctx: PacketContext) -> HookResult:
        """Walk ``table``'s builtin chain for ``hook``: ACCEPT, DROP or REJECT.

        A table that does not exist, or has no builtin chain for the hook, accepts.
        """
        compiled = self.engine(table)
        if compiled is None:
            return ACCEPTED
        return compiled.run(hook, packet, ctx)

    def hook_function(self, table: str, hook: Hook) -> Callable[[Any], HookResult]:
        """The function to register at ``hook`` for ``table``: ``fn(skb)`` walks the table's
        builtin chain for that hook, like :meth:`run` (and sees later changes to the table)."""

        def run(skb: Any) -> HookResult:
            # self.engine(table), inlined for the common case: the cached engine is current.
            tab = self.tables.get(table)
            cached = self._engines.get(table)
            if (
                cached is not None
                and cached[0] is tab
                and tab is not None
                and cached[1] == tab._epoch.n
                and cached[2] == self.indexed
            ):
                compiled = cached[3]
                # TableEngine.run's memo hit, inlined: most packets through a node are
                # ESTABLISHED ones whose filter walk is known (see engine.WalkMemo).
                memo = compiled.memos[hook]
                ctx = skb.ctx
                if memo is not None and ctx.events is None:
                    known = memo.results.get(memo.key(skb.pkt, ctx))
                    if known is not None:
                        ctx.rules_walked += known[1]
                        return known[0]
                return compiled.run(hook, skb.pkt, ctx)
            rebuilt = self.engine(table)
            if rebuilt is None:
                return ACCEPTED
            return rebuilt.run(hook, skb.pkt, skb.ctx)

        return run

    def run_chain(
        self, table: str, chain: str, packet: Packet, ctx: PacketContext
    ) -> HookResult | None:
        """Walk one chain directly (as upstream's tracer does); None if it does not decide."""
        compiled = self.engine(table)
        if compiled is None:
            raise RulesError(f"no table {table}")
        return compiled.run_chain(chain, packet, ctx)

    # ------------------------------------------------------------------ building

    def table(self, name: str) -> Table:
        """The table called ``name``, created empty when missing."""
        if name not in TABLES:
            raise RulesError(f"unknown table `{name}`", hint=", ".join(TABLES))
        if name not in self.tables:
            self.tables[name] = Table(name)
        return self.tables[name]

    def copy(self) -> IptablesRuleset:
        """A copy whose tables and chains can be changed independently (rules are shared)."""
        other = IptablesRuleset(indexed=self.indexed, file=self.file)
        for name, tab in self.tables.items():
            new = other.tables[name] = Table(name)
            for chain in tab.chains.values():
                new.chains[chain.name] = Chain(
                    chain.name, chain.policy, chain.rules, chain.counters
                )
        return other

    def with_jump_rules(
        self, jumps: Iterable[tuple[str, str, str]], *, prepend: bool = True
    ) -> IptablesRuleset:
        """A copy with extra rules ``(table, chain, args)`` put at the top of their chains
        (in the given order), as ``EnsureRule(Prepend, …)`` installs kube-proxy's entry jumps;
        or appended with ``prepend=False``. Missing tables and builtin chains are created.

        >>> from k8snet_sim.netfilter.iptables_save import parse_iptables_save
        >>> r = parse_iptables_save("*nat\\n:KUBE-SERVICES - [0:0]\\nCOMMIT\\n")
        >>> r2 = r.with_jump_rules([("nat", "PREROUTING", "-j KUBE-SERVICES")])
        >>> print(r2.render(), end="")
        *nat
        :PREROUTING - [0:0]
        :KUBE-SERVICES - [0:0]
        -A PREROUTING -j KUBE-SERVICES
        COMMIT
        """
        other = self.copy()
        added: dict[tuple[str, str], int] = {}
        for table, chain, args in jumps:
            tab = other.table(table)
            if chain not in tab.chains:
                if chain not in tab.builtin_chains:
                    raise RulesError(f"no chain {chain} in table {table}")
                tab.chains[chain] = Chain(chain)
            rule = Rule.parse(args, table=table, chain=chain)
            rules = tab.chains[chain].rules
            if prepend:
                rules.insert(added.get((table, chain), 0), rule)
                added[(table, chain)] = added.get((table, chain), 0) + 1
            else:
                rules.append(rule)
        for tab in other.tables.values():
            check_table(tab, file=other.file)
        return other

    # ------------------------------------------------------------------ rendering

    def _versions(self) -> tuple[tuple[str, int, int], ...]:
        return tuple((name, id(tab), tab.version) for name, tab in self.tables.items())

    def keep_source(self, text: str) -> None:
        """Render ``text`` verbatim for as long as the tables stay as they are now."""
        self._source = text
        self._source_versions = self._versions()

    def render(self, *, canonical: bool = False) -> str:
        """The rules as text: the parsed text verbatim while unmodified, else (or with
        ``canonical=True``) in ``iptables-save`` layout."""
        if not canonical and self._source is not None and self._versions() == self._source_versions:
            return self._source
        lines: list[str] = []
        for tab in self.tables.values():
            lines.append(f"*{tab.name}")
            chains = tab.ordered_chains()
            lines.extend(chain.declaration() for chain in chains)
            for chain in chains:
                for rule in chain.rules:
                    counters = f"[{rule.counters[0]}:{rule.counters[1]}] " if rule.counters else ""
                    lines.append(counters + rule.text)
            lines.append("COMMIT")
        return "".join(line + "\n" for line in lines)

    def __repr__(self) -> str:
        sizes = ", ".join(
            f"{n}: {sum(len(c.rules) for c in t.chains.values())} rules"
            for n, t in self.tables.items()
        )
        return f"IptablesRuleset({sizes})"
