"""nftables as kube-proxy uses it: parse ``nft list ruleset`` text, render it back, evaluate it.

The model (:class:`NftTable`, :class:`NftSet`, :class:`NftChain`) holds a ruleset as text-level
objects: the nftables proxier builds one and renders it, :func:`parse_nft` reads one back, and
``parse_nft(text).render() == text`` for every ruleset the proxier writes. :class:`NftRuleset`
compiles the tables into an evaluator with the kernel's semantics:

* base chains sit at their hook with their numeric priority (``dstnat`` = -100, ``srcnat`` =
  100, ``filter`` = 0, ``dstnat - 10`` = -110); :func:`install_nftables` registers them in a
  :class:`~k8snet_sim.netfilter.hooks.NetfilterStack`, nat chains behind the NAT core;
* a rule's expressions run left to right and are ANDed; a failed match, or a verdict-map miss,
  moves on to the next rule; ``jump`` pushes a return point, ``goto`` does not, ``return`` or
  the end of a regular chain pops it, the end of a base chain applies its policy;
* ``dnat``/``masquerade`` set up the connection's NAT binding through ``ctx.nat`` and end the
  chain with accept; ``numgen random`` asks ``ctx.chooser``; dynamic sets (``update @set``) live
  in ``ctx.state`` and expire in simulated time.

Only the subset kube-proxy writes (plus a few obvious neighbours) is modelled; anything else is
a :class:`~k8snet_sim.errors.RulesError` naming the line and the construct. Each evaluated rule
adds 1 to ``ctx.rules_walked`` and each set or map lookup 1 to ``ctx.map_lookups``. The rule
language lives in :mod:`~k8snet_sim.netfilter.nftables_rules`, the walk in
:mod:`~k8snet_sim.netfilter.nftables_eval`.

Example
-------
>>> from k8snet_sim.net.addr import ip
>>> from k8snet_sim.net.packet import Packet, TCP
>>> from k8snet_sim.netfilter.context import Hook, NetfilterState, PacketContext
>>> rs = parse_nft('''
... table ip demo {
...     chain input {
...         type filter hook input priority filter; policy accept;
...         tcp dport { 22, 23 } drop
...     }
... }''')
>>> ctx = PacketContext(Hook.INPUT, 0.0, None, NetfilterState(), lambda a: True)
>>> pkt = Packet(src=ip("10.0.0.2"), dst=ip("10.0.0.1"), proto=TCP, dport=22)
>>> rs.run_base("input", pkt, ctx).verdict.value, ctx.rules_walked, ctx.map_lookups
('DROP', 1, 1)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from k8snet_sim.errors import RulesError
from k8snet_sim.net.packet import Packet
from k8snet_sim.netfilter.context import (
    ACCEPTED,
    Hook,
    HookResult,
    PacketContext,
    Verdict,
)
from k8snet_sim.netfilter.hooks import NAT_MANIP, HookFn, NetfilterStack, Skb
from k8snet_sim.netfilter.nat import install_conntrack
from k8snet_sim.netfilter.nftables_eval import CompiledChain, Program
from k8snet_sim.netfilter.nftables_rules import HOOKS, parse_duration

# Standard priorities of the ip family (nft(8) "CHAIN PRIORITIES"); nft accepts dstnat only at
# prerouting and srcnat only at postrouting (elsewhere the same values are written as numbers).
PRIORITY_NAMES: dict[str, int] = {
    "raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100,
}  # fmt: skip
_NAME_HOOKS = {"dstnat": ("prerouting",), "srcnat": ("postrouting",)}
CHAIN_TYPES = ("filter", "nat", "route")

# ---------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class NftElement:
    """One element of a set or map, as text: ``key [options] [comment "c"] [: value]``."""

    key: str
    value: str = ""
    comment: str = ""
    options: str = ""  # e.g. "timeout 3h expires 2h59m" on a live node's dynamic set

    def render(self) -> str:
        text = self.key + (f" {self.options}" if self.options else "")
        text += f' comment "{self.comment}"' if self.comment else ""
        return text + (f" : {self.value}" if self.value else "")


@dataclass
class NftSet:
    """A named set, or a map when ``value_type`` is set (``verdict`` for a verdict map)."""

    name: str
    type: str  # "ipv4_addr" or a concatenation "ipv4_addr . inet_proto . inet_service"
    value_type: str = ""
    flags: tuple[str, ...] = ()
    timeout: int | None = None  # seconds
    size: int | None = None  # nft lists `size 65535` for dynamic sets; not enforced
    comment: str = ""
    elements: list[NftElement] = field(default_factory=list)
    element_lines: list[int] = field(default_factory=list, compare=False, repr=False)

    def render(self) -> str:
        lines = [f"\t{'map' if self.value_type else 'set'} {self.name} {{"]
        lines.append(f"\t\ttype {self.type}" + (f" : {self.value_type}" if self.value_type else ""))
        if self.size is not None:
            lines.append(f"\t\tsize {self.size}")
        if self.flags:
            lines.append(f"\t\tflags {','.join(self.flags)}")
        if self.timeout is not None:
            lines.append(f"\t\ttimeout {self.timeout}s")
        if self.comment:
            lines.append(f'\t\tcomment "{self.comment}"')
        if self.elements:
            items = ",\n\t\t\t     ".join(e.render() for e in self.elements)
            lines.append(f"\t\telements = {{ {items} }}")
        lines.append("\t}")
        return "\n".join(lines)


@dataclass
class NftChain:
    """A chain; a base chain when ``type`` is set. ``rules`` are rule texts as listed."""

    name: str
    type: str = ""  # "filter" | "nat" | "route" for base chains
    hook: str = ""  # "prerouting" ... "postrouting"
    priority: int = 0
    policy: str = "accept"
    comment: str = ""
    rules: list[str] = field(default_factory=list)
    rule_lines: list[int] = field(default_factory=list, compare=False, repr=False)

    @property
    def is_base(self) -> bool:
        return bool(self.type)

    def render(self) -> str:
        lines = [f"\tchain {self.name} {{"]
        if self.comment:
            lines.append(f'\t\tcomment "{self.comment}"')
        if self.type:
            prio = render_priority(self.hook, self.priority)
            lines.append(
                f"\t\ttype {self.type} hook {self.hook} priority {prio}; policy {self.policy};"
            )
        lines += [f"\t\t{rule}" for rule in self.rules]
        lines.append("\t}")
        return "\n".join(lines)


@dataclass
class NftTable:
    """One table: sets and maps, then chains, each in listing order."""

    name: str
    family: str = "ip"
    comment: str = ""
    sets: dict[str, NftSet] = field(default_factory=dict)
    chains: dict[str, NftChain] = field(default_factory=dict)

    def chain_rules(self, chain: str) -> list[str]:
        """The rules of ``chain`` (empty if it does not exist)."""
        found = self.chains.get(chain)
        return list(found.rules) if found else []

    def elements(self, name: str) -> dict[str, str]:
        """A set's or map's elements as ``{key: value}`` (value ``""`` for a set)."""
        found = self.sets.get(name)
        return {e.key: e.value for e in found.elements} if found else {}

    def render(self) -> str:
        blocks = [s.render() for s in self.sets.values()]
        blocks += [c.render() for c in self.chains.values()]
        head = f"table {self.family} {self.name} {{"
        if self.comment:
            head += f'\n\tcomment "{self.comment}"'
        return head + "\n" + "\n\n".join(blocks) + ("\n" if blocks else "") + "}\n"


def render_priority(hook: str, value: int) -> str:
    """nft's listing of a base-chain priority: a standard name valid at ``hook``, ± up to 10,
    else the number.

    >>> render_priority("prerouting", -110), render_priority("output", -110)
    ('dstnat - 10', '-110')
    """
    for name, base in PRIORITY_NAMES.items():
        offset = value - base
        if hook in _NAME_HOOKS.get(name, (hook,)) and abs(offset) <= 10:
            return name if offset == 0 else f"{name} {'+' if offset > 0 else '-'} {abs(offset)}"
    return str(value)


# ---------------------------------------------------------------------------------- text parsing

_TABLE_RE = re.compile(r"table (\w+) ([\w.-]+) \{")
_BLOCK_RE = re.compile(r"(set|map|chain) (\S+) \{")
_COMMENT_RE = re.compile(r'comment "([^"]*)"')
_BASE_RE = re.compile(r"type (\w+) hook (\w+) priority ([^;]+);(?:\s*policy (\w+);)?")


def parse_priority(text: str, hook: str) -> int:
    """A base-chain priority: a number, or a standard name with an optional offset."""
    m = re.fullmatch(r"([a-z]+)?([+-]?\d+)?", text.replace(" ", ""))
    if not m or not (m[1] or m[2]) or (m[1] and m[1] not in PRIORITY_NAMES):
        raise ValueError(f"bad priority `{text}`")
    if m[1] and hook not in _NAME_HOOKS.get(m[1], (hook,)):
        raise ValueError(f"priority `{m[1]}` is not valid at hook {hook}")
    return (PRIORITY_NAMES[m[1]] if m[1] else 0) + (int(m[2]) if m[2] else 0)


def _split_top(text: str, sep: str) -> list[str]:
    """Split at ``sep`` outside quotes and braces."""
    if '"' not in text and "{" not in text:
        return text.split(sep)
    parts, depth, quoted, start, i = [], 0, False, 0, 0
    while i < len(text):
        ch = text[i]
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in "{}":
            depth += 1 if ch == "{" else -1
        elif not quoted and depth == 0 and text.startswith(sep, i):
            parts.append(text[start:i])
            start = i = i + len(sep)
            continue
        i += 1
    parts.append(text[start:])
    return parts


def _parse_element(text: str) -> NftElement:
    key_part, *value = _split_top(text.strip(), " : ")
    comment = ""
    m = re.search(r'\s*comment "([^"]*)"', key_part)
    if m:
        comment, key_part = m[1], key_part[: m.start()] + key_part[m.end() :]
    words = key_part.split()
    opts = next((k for k, w in enumerate(words) if w in ("timeout", "expires")), len(words))
    return NftElement(
        " ".join(words[:opts]), " ".join(value).strip(), comment, " ".join(words[opts:])
    )


class _TextParser:
    """Line-oriented reader of ``nft list ruleset`` output."""

    def __init__(self, text: str, file: str) -> None:
        self.lines = text.splitlines()
        self.file = file
        self.i = 0

    def error(self, line: int, message: str, hint: str | None = None) -> RulesError:
        return RulesError(message, line=line, file=self.file, hint=hint)

    def next(self, within: str) -> tuple[int, str]:
        while self.i < len(self.lines):
            self.i += 1
            line = self.lines[self.i - 1].strip()
            if line and not line.startswith("#"):
                return self.i, line
        raise self.error(len(self.lines), f"unexpected end of input inside {within}")

    def parse(self) -> list[NftTable]:
        tables: list[NftTable] = []
        while any(x.strip() and not x.strip().startswith("#") for x in self.lines[self.i :]):
            no, line = self.next("the ruleset")
            m = _TABLE_RE.fullmatch(line)
            if not m:
                raise self.error(no, f"expected `table ip NAME {{`, got `{line}`")
            if m[1] != "ip":
                raise self.error(no, f"table family `{m[1]}` is not modelled (only `ip`)")
            tables.append(self.table(NftTable(m[2], m[1])))
        return tables

    def table(self, table: NftTable) -> NftTable:
        while True:
            no, line = self.next(f"table {table.name}")
            if line == "}":
                return table
            if m := _COMMENT_RE.fullmatch(line):
                table.comment = m[1]
                continue
            m = _BLOCK_RE.fullmatch(line)
            if not m:
                raise self.error(no, f"unexpected `{line}` in table {table.name}")
            kind, name = m[1], m[2]
            if name in table.sets or name in table.chains:
                raise self.error(no, f"{kind} {name} is defined twice")
            if kind == "chain":
                table.chains[name] = self.chain(NftChain(name))
            else:
                table.sets[name] = self.set(NftSet(name, ""), kind)

    def set(self, s: NftSet, kind: str) -> NftSet:
        while True:
            no, line = self.next(f"{kind} {s.name}")
            word, _, rest = line.partition(" ")
            if line == "}":
                if not s.type:
                    raise self.error(no, f"{kind} {s.name} has no type")
                return s
            if word == "type":
                s.type, _, s.value_type = (x.strip() for x in rest.partition(" : "))
                if (kind == "map") != bool(s.value_type):
                    raise self.error(no, f"`{line}`: a map needs `type KEY : VALUE`, a set not")
            elif word == "flags":
                s.flags = tuple(f.strip() for f in rest.split(","))
            elif word == "size" and rest.isdigit():
                s.size = int(rest)
            elif word == "timeout":
                try:
                    s.timeout = parse_duration(rest)
                except ValueError as err:
                    raise self.error(no, str(err)) from None
            elif m := _COMMENT_RE.fullmatch(line):
                s.comment = m[1]
            elif line.startswith("elements = {"):
                parts = [line[len("elements = ") :]]
                depth = parts[0].count("{") - parts[0].count("}")  # braces in quotes: not ours
                while depth > 0:
                    parts.append(self.next(f"elements of {s.name}")[1])
                    depth += parts[-1].count("{") - parts[-1].count("}")
                body = " ".join(parts).strip()[1:-1]
                for item in _split_top(body, ","):
                    if item.strip():
                        s.elements.append(_parse_element(item))
                        s.element_lines.append(no)
            else:
                raise self.error(no, f"`{word}` in {kind} {s.name} is not modelled")

    def chain(self, c: NftChain) -> NftChain:
        while True:
            no, line = self.next(f"chain {c.name}")
            if line == "}":
                return c
            if (m := _COMMENT_RE.fullmatch(line)) and not c.rules:
                c.comment = m[1]
            elif line.startswith("type ") and not c.rules:
                m = _BASE_RE.fullmatch(line)
                if not m:
                    raise self.error(no, f"cannot read base chain declaration `{line}`")
                c.type, c.hook, c.policy = m[1], m[2], m[4] or "accept"
                if c.type not in CHAIN_TYPES or c.hook not in HOOKS:
                    raise self.error(no, f"chain type/hook `{c.type} {c.hook}` is not modelled")
                if (c.type, c.hook) == ("nat", "forward") or c.policy not in ("accept", "drop"):
                    raise self.error(no, f"invalid base chain `{line}`")
                try:
                    c.priority = parse_priority(m[3].strip(), c.hook)
                except ValueError as err:
                    raise self.error(no, str(err)) from None
            else:
                c.rules.append(" ".join(line.split()) if '"' not in line else line)
                c.rule_lines.append(no)


class NftRuleset:
    """Parsed ``nft list ruleset`` tables, compiled for evaluation.

    Build one with :func:`parse_nft`, or from :class:`NftTable` objects directly; ``lazy``
    as for :func:`parse_nft`.
    """

    def __init__(self, tables: list[NftTable], *, file: str = "<nft>", lazy: bool = False) -> None:
        self.tables = tables
        self.file = file
        self._programs = {t.name: Program(t, file, lazy=lazy) for t in tables}

    def table(self, name: str | None = None) -> NftTable:
        """A table by name (the only one when ``name`` is None)."""
        for t in self.tables:
            if name is None or t.name == name:
                return t
        raise RulesError(f"no table {name} in {self.file}")

    def render(self) -> str:
        """``nft list ruleset`` text; equal to the parsed text for text this module wrote."""
        return "\n".join(t.render() for t in self.tables)

    def base_chains(self) -> list[tuple[str, NftChain]]:
        """(table name, chain) of every base chain, in listing order."""
        return [(t.name, c) for t in self.tables for c in t.chains.values() if c.is_base]

    def _find(self, chain: str, table: str | None) -> tuple[Program, CompiledChain]:
        for name, program in self._programs.items():
            if (table is None or name == table) and chain in program.chains:
                return program, program.chains[chain]
        raise RulesError(f"no chain {chain} in {self.file}")

    def run_chain(
        self, chain: str, pkt: Packet, ctx: PacketContext, *, table: str | None = None
    ) -> HookResult | None:
        """Evaluate any chain directly; None when it falls through or returns."""
        program, start = self._find(chain, table)
        return program.run(start, pkt, ctx)

    def run_base(
        self, chain: str, pkt: Packet, ctx: PacketContext, *, table: str | None = None
    ) -> HookResult:
        """Evaluate a chain as its hook would: falling off applies the chain's policy."""
        program, start = self._find(chain, table)
        result = program.run(start, pkt, ctx)
        if result is not None:
            return result
        if start.source.policy == "drop":
            return HookResult(Verdict.DROP, f"nft {program.table}/{chain} policy drop")
        return ACCEPTED


def parse_nft(text: str, *, file: str = "<nft>", lazy: bool = False) -> NftRuleset:
    """Parse ``nft list ruleset`` text (the subset kube-proxy writes) into a ruleset.

    Raises :class:`~k8snet_sim.errors.RulesError` naming the line and the construct for
    anything outside the modelled subset. ``lazy=True`` compiles each chain's rules on first
    use (for large generated rulesets, where a trace touches a handful of chains); rule
    errors then surface when the chain is first evaluated.
    """
    return NftRuleset(_TextParser(text, file).parse(), file=file, lazy=lazy)


def install_nftables(stack: NetfilterStack, ruleset: NftRuleset) -> None:
    """Register every base chain at its hook and priority; nat chains behind conntrack's NAT.

    Filter (and route) chains are ordinary hook functions. The nat chains of one hook are
    combined, in priority order, into the one function the NAT core consults for a
    connection's first packet; a chain that set up the binding ends the walk, as
    ``nf_nat_inet_fn`` stops once the manipulation is initialised.
    """
    nat: dict[Hook, list[tuple[int, str, NftChain]]] = {}
    for table, chain in ruleset.base_chains():
        hook = HOOKS[chain.hook]
        if chain.type == "nat":
            nat.setdefault(hook, []).append((chain.priority, table, chain))
        else:
            stack.register(hook, chain.priority, f"nft {table} {chain.name}",
                           _hook_fn(ruleset, table, chain.name))  # fmt: skip
    nat_tables = {}
    for hook, entries in nat.items():
        entries.sort(key=lambda e: e[0])
        names = ", ".join(f"{t} {c.name}" for _, t, c in entries)
        nat_tables[hook] = (entries[0][0], f"nft {names}", _nat_fn(ruleset, hook, entries))
    install_conntrack(stack, nat_tables)


def _hook_fn(ruleset: NftRuleset, table: str, chain: str) -> HookFn:
    def run(skb: Skb) -> HookResult:
        return ruleset.run_base(chain, skb.pkt, skb.ctx, table=table)

    return run


def _nat_fn(ruleset: NftRuleset, hook: Hook, entries: list[tuple[int, str, NftChain]]) -> HookFn:
    manip = NAT_MANIP[hook]

    def run(skb: Skb) -> HookResult:
        for _, table, chain in entries:
            result = ruleset.run_base(chain.name, skb.pkt, skb.ctx, table=table)
            if not result.accepted:
                return result
            ct = skb.ct
            if ct is not None and (ct.dst_done if manip == "dst" else ct.src_done):
                break
        return ACCEPTED

    return run
