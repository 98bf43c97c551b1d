"""The ``iptables-save`` / ``iptables-restore`` language: words, rule arguments, files.

:func:`parse_iptables_save` reads what ``iptables-save`` prints and what ``iptables-restore``
accepts (``*table``, ``:CHAIN POLICY [p:b]``, ``-A/-I/-D/-R/-N/-X/-F/-P``, ``COMMIT``,
comments, blank lines, ``[p:b]`` rule counters) into an :class:`IptablesRuleset`. Each
``*table`` section starts from an empty table, as ``iptables-restore`` without ``--noflush``.

Rendering is exact: ``parse_iptables_save(text).render() == text`` for every accepted text.
Once a ruleset is modified (or was built in code) it renders in ``iptables-save`` layout:
builtin chains, then user chains, each chain's rules in order.

Example
-------
>>> from k8snet_sim.net.addr import ip
>>> from k8snet_sim.net.packet import Packet, TCP
>>> from k8snet_sim.netfilter.context import Hook, NetfilterState, PacketContext
>>> text = '''*filter
... :INPUT ACCEPT [0:0]
... -A INPUT -s 203.0.113.0/24 -p tcp -m tcp --dport 22 -j DROP
... COMMIT
... '''
>>> rules = parse_iptables_save(text)
>>> rules.render() == text
True
>>> ctx = PacketContext(Hook.INPUT, 0.0, None, NetfilterState(), lambda a: True)
>>> pkt = Packet(src=ip("203.0.113.9"), dst=ip("192.168.0.2"), proto=TCP, dport=22)
>>> result = rules.run("filter", Hook.INPUT, pkt, ctx)
>>> result.verdict.value, result.reason
('DROP', 'filter/INPUT: -s 203.0.113.0/24 -p tcp -m tcp --dport 22 -j DROP')
"""

from __future__ import annotations

import re
from typing import NamedTuple

from k8snet_sim.errors import RulesError
from k8snet_sim.netfilter.engine import check_table, paused_gc
from k8snet_sim.netfilter.ipset import IpSetRegistry
from k8snet_sim.netfilter.matches import (
    HEADER_OPTIONS,
    IMPLICIT_BY_PROTOCOL,
    MODULES,
    MatchEnv,
    Option,
    OptionDef,
    build_header,
    build_match,
    find_module,
    parse_protocol,
)
from k8snet_sim.netfilter.rules import (
    BUILTIN_CHAINS,
    MAX_CHAIN_NAME,
    TABLES,
    Chain,
    IptablesRuleset,
    Rule,
    Table,
)
from k8snet_sim.netfilter.targets import TARGETS, build_target, find_target, target_options

__all__ = ["IptablesRuleset", "parse_iptables_save", "quote_word", "split_words", "tokens"]

_HEADER = {spelling: d for d in HEADER_OPTIONS for spelling in d.names}
_MODULE_SPELLINGS = {
    name: {spelling: d for d in m.options for spelling in d.names} for name, m in MODULES.items()
}


class Word(NamedTuple):
    """One shell-style word of a line, with its span in the line."""

    text: str
    quoted: bool
    start: int
    end: int


# A word is a run of bare characters, quoted strings and escapes; quotes only group.
_WORD = re.compile(r"""(?:[^ \t\r\n"'\\]+|"(?:[^"\\]|\\.)*"|'[^']*'|\\.)+""", re.S)
_PIECE = re.compile(r"""\\(.)|"((?:[^"\\]|\\.)*)"|'([^']*)'|([^"'\\]+)""", re.S)
_ESCAPE = re.compile(r"\\(.)", re.S)
_BLANKS = " \t\r\n"
_BARE = re.compile(r"[^ \t\r\n]+")


def split_words(line: str) -> list[Word]:
    """Split like iptables-restore: blanks separate, quotes group, backslash escapes.

    >>> [w.text for w in split_words('-A X --comment "a \\\\"b\\\\"" -j Y')]
    ['-A', 'X', '--comment', 'a "b"', '-j', 'Y']
    """
    if '"' not in line and "'" not in line and "\\" not in line:
        return [Word(m.group(), False, m.start(), m.end()) for m in _BARE.finditer(line)]
    words: list[Word] = []
    end = 0
    special = True
    for match in _WORD.finditer(line):
        start = match.start()
        if special and line[end:start].strip(_BLANKS):
            break  # an unmatched quote or a trailing backslash stopped the scan
        text = match.group()
        if special and ('"' in text or "'" in text or "\\" in text):
            words.append(Word(_unquote(text), True, start, match.end()))
        else:
            words.append(Word(text, False, start, match.end()))
        end = match.end()
    if special and line[end:].strip(_BLANKS):
        rest = line[end:].strip(_BLANKS)
        if rest[0] == "\\":
            raise RulesError("line ends with a lone backslash")
        raise RulesError(f"unterminated {rest[0]} quote", hint="close the quoted text")
    return words


def tokens(text: str) -> tuple[list[str], frozenset[int]]:
    """The word texts of ``text`` and the indexes of words that were quoted or escaped.

    >>> tokens('-m comment --comment "a b" -j X')
    (['-m', 'comment', '--comment', 'a b', '-j', 'X'], frozenset({3}))
    """
    if "'" not in text and "\\" not in text:
        if '"' not in text:
            return _BARE.findall(text), _NONE_QUOTED
        parts = text.split('"')
        if len(parts) % 2:  # balanced double quotes, no escapes: the common kube-proxy line
            return _double_quoted(parts)
    words = split_words(text)
    return [w.text for w in words], frozenset(k for k, w in enumerate(words) if w.quoted)


_NONE_QUOTED: frozenset[int] = frozenset()


def _double_quoted(parts: list[str]) -> tuple[list[str], frozenset[int]]:
    """Words of a line split at its double quotes: odd parts are quoted text."""
    texts: list[str] = []
    quoted: set[int] = set()
    glue = False  # the next piece continues the last word (no blank in between)
    for k, part in enumerate(parts):
        if k % 2:
            if glue:
                texts[-1] += part
            else:
                texts.append(part)
            quoted.add(len(texts) - 1)
            glue = True
        elif part:
            words = _BARE.findall(part)
            if glue and words and part[0] not in _BLANKS:
                texts[-1] += words.pop(0)
            texts.extend(words)
            glue = part[-1] not in _BLANKS
    return texts, frozenset(quoted)


def _unquote(text: str) -> str:
    parts: list[str] = []
    for escaped, double, single, bare in _PIECE.findall(text):
        if double:
            parts.append(_ESCAPE.sub(r"\1", double))
        else:
            parts.append(escaped or single or bare)
    return "".join(parts)


def quote_word(word: str) -> str:
    """Quote a word for rule text only when the shell would need it."""
    if word and not any(ch in word for ch in " \t\"'\\"):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


_COMMANDS = {
    "-A": "-A", "--append": "-A", "-I": "-I", "--insert": "-I", "-D": "-D", "--delete": "-D",
    "-R": "-R", "--replace": "-R", "-N": "-N", "--new-chain": "-N", "-X": "-X",
    "--delete-chain": "-X", "-F": "-F", "--flush": "-F", "-P": "-P", "--policy": "-P",
}  # fmt: skip


def parse_iptables_save(
    text: str, *, file: str = "<rules>", ipsets: IpSetRegistry | None = None
) -> IptablesRuleset:
    """Parse ``iptables-save`` output (or ``iptables-restore`` input).

    ``ipsets`` are the sets ``-m set`` rules may name (the namespace's ``ipset list``).
    Raises :class:`RulesError` with the line number on the first problem; an unknown match
    module or target is an error that names it.
    """
    with paused_gc():
        return _parse(text, file, ipsets)


def _parse(text: str, file: str, ipsets: IpSetRegistry | None = None) -> IptablesRuleset:
    ruleset = IptablesRuleset(file=file)
    table: Table | None = None
    table_line = 0
    lines = text.split("\n")
    for number, raw in enumerate(lines, start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            if stripped.startswith("*"):
                if table is not None:
                    raise RulesError(
                        f"COMMIT expected before `{stripped}` (table started line {table_line})"
                    )
                name = stripped[1:].strip()
                if name not in TABLES:
                    raise RulesError(f"unknown table `{name}`", hint=", ".join(TABLES))
                table, table_line = Table(name), number
            elif table is None:
                raise RulesError(
                    f"`{stripped.split()[0]}` outside a table", hint="start with *filter, *nat…"
                )
            elif stripped == "COMMIT":
                check_table(table, file=file)
                ruleset.tables.pop(table.name, None)  # a table given twice: the last one wins
                ruleset.tables[table.name] = table
                table = None
            elif stripped.startswith(":"):
                _declare(table, stripped)
            else:
                _command(table, stripped, number, ipsets)
        except RulesError as err:
            if err.line:
                raise
            raise RulesError(err.message, line=number, file=file, hint=err.hint) from None
    if table is not None:
        raise RulesError(
            f"table {table.name} has no COMMIT",
            line=table_line,
            file=file,
            hint="iptables-restore applies a table only at its COMMIT line",
        )
    ruleset.keep_source(text)
    return ruleset


def _declare(table: Table, line: str) -> None:
    parts = line[1:].split()
    if len(parts) not in (2, 3):
        raise RulesError(f"bad chain declaration `{line}`", hint=":NAME POLICY [packets:bytes]")
    name, policy = parts[0], parts[1]
    _check_chain_name(name)
    if name in table.chains:
        raise RulesError(f"chain {name} declared twice")
    builtin = name in table.builtin_chains
    if policy != "-" and not builtin:
        raise RulesError(f"user chain {name} cannot have a policy", hint=f"write :{name} - [0:0]")
    if policy not in ("-", "ACCEPT", "DROP"):
        raise RulesError(f"bad policy `{policy}` for {name}", hint="ACCEPT or DROP")
    counters = _counters(parts[2]) if len(parts) == 3 else None
    table.chains[name] = Chain(name, None if policy == "-" else policy, counters=counters)


def _counters(text: str) -> tuple[int, int]:
    inner = text[1:-1] if text.startswith("[") and text.endswith("]") else ""
    packets, colon, octets = inner.partition(":")
    if not (colon and packets.isdigit() and octets.isdigit()):
        raise RulesError(f"bad counters `{text}`", hint="[packets:bytes]")
    return int(packets), int(octets)


def _check_chain_name(name: str) -> None:
    if len(name) > MAX_CHAIN_NAME:
        raise RulesError(f"chain name `{name}` longer than {MAX_CHAIN_NAME} characters")
    if name.startswith(("-", "!")) or name in TARGETS:
        raise RulesError(f"invalid chain name `{name}`")


def _chain(table: Table, name: str) -> Chain:
    chain = table.chains.get(name)
    if chain is None:
        if name not in table.builtin_chains:
            raise RulesError(f"chain {name} does not exist in table {table.name}",
                             hint=f"declare it first with `:{name} - [0:0]`")  # fmt: skip
        chain = table.chains[name] = Chain(name)  # builtin chains always exist in the kernel
    return chain


def _command(table: Table, line: str, number: int, ipsets: IpSetRegistry | None = None) -> None:
    counters: tuple[int, int] | None = None
    if line.startswith("["):  # iptables-save -c: "[packets:bytes] -A …"
        end = line.find("]")
        counters = _counters(line[: end + 1])
        line = line[end + 1 :].lstrip()
    head = _HEAD.match(line)
    word, name, rest = head.groups() if head else (line, "", "")
    command = _COMMANDS.get(word)
    if command is None:
        raise RulesError(f"unknown command `{word}`", hint="-A, -I, -D, -R, -N, -X, -F, -P")
    if command in ("-F", "-X") and not name:
        for chain in list(table.chains.values()):
            if command == "-F":
                chain.rules.clear()
            elif chain.name not in table.builtin_chains:
                _delete_chain(table, chain.name)
        return
    if not name:
        raise RulesError(f"{word} needs a chain name")
    if any(ch in name for ch in "\"'\\"):
        raise RulesError(f"quoted chain name {name} is not supported")
    if command == "-N":
        _check_chain_name(name)
        if name in table.chains or name in BUILTIN_CHAINS.get(table.name, ()):
            raise RulesError(f"chain {name} already exists")
        table.chains[name] = Chain(name)
    elif command == "-X":
        _chain(table, name)
        _delete_chain(table, name)
    elif command == "-F":
        _chain(table, name).rules.clear()
    elif command == "-P":
        if name not in table.builtin_chains or rest.strip() not in ("ACCEPT", "DROP"):
            raise RulesError("-P needs a builtin chain and ACCEPT or DROP")
        _chain(table, name).policy = rest.strip()
    else:
        _edit(table, command, _chain(table, name), rest.strip(), number, counters, ipsets)


# A command line: the command, the chain and the rest (index and rule arguments).
_HEAD = re.compile(r"([^ \t]+)[ \t]*([^ \t]*)[ \t]*(.*)", re.S)


def _edit(
    table: Table,
    command: str,
    chain: Chain,
    args: str,
    number: int,
    counters: tuple[int, int] | None,
    ipsets: IpSetRegistry | None = None,
) -> None:
    index: int | None = None
    if command in ("-I", "-D", "-R"):
        first, _, remainder = args.partition(" ")
        if first.isdigit():
            index = int(first)
            args = remainder.strip()
            if not 1 <= index <= len(chain.rules) + (command == "-I"):
                raise RulesError(f"rule number {index} out of range for {chain.name}")
    if command == "-R" and index is None:
        raise RulesError("-R needs a rule number")
    if command == "-D":
        if index is not None:
            del chain.rules[index - 1]
            return
        wanted = tuple(tokens(args)[0])
        for position, old in enumerate(chain.rules):
            if old.words == wanted:
                del chain.rules[position]
                return
        raise RulesError(f"no such rule in {chain.name} to delete")
    texts, quoted = tokens(args)
    rule = compile_rule(texts, quoted, args, table.name, chain.name, number, counters, ipsets)
    if command == "-A":
        chain.rules.append(rule)
    elif index is None:  # -I without a number inserts at the top
        chain.rules.insert(0, rule)
    elif command == "-I":
        chain.rules.insert(index - 1, rule)
    else:
        chain.rules[index - 1] = rule


def _delete_chain(table: Table, name: str) -> None:
    if name in table.builtin_chains:
        raise RulesError(f"cannot delete builtin chain {name}")
    if table.chains[name].rules:
        raise RulesError(f"chain {name} is not empty", hint=f"flush it first with -F {name}")
    for chain in table.chains.values():
        for rule in chain.rules:
            if rule.action is not None and rule.action.chain == name:
                raise RulesError(
                    f"chain {name} is still referenced from {chain.name} ({rule.text})"
                )
    del table.chains[name]


_NEGATE, _MODULE, _JUMP, _GOTO, _HEADER_OPTION = range(5)
_SPECIAL: dict[str, int] = {
    "!": _NEGATE, "-m": _MODULE, "--match": _MODULE, "-j": _JUMP, "--jump": _JUMP,
    "-g": _GOTO, "--goto": _GOTO, **{spelling: _HEADER_OPTION for spelling in _HEADER},
}  # fmt: skip


def compile_rule(
    texts: list[str],
    quoted: frozenset[int],
    args: str,
    table: str,
    chain: str,
    line: int,
    counters: tuple[int, int] | None,
    ipsets: IpSetRegistry | None = None,
) -> Rule:
    header: dict[str, Option] = {}
    matches: list[tuple[str, list[Option]]] = []
    target: str | None = None
    goto = False
    target_opts: list[Option] = []
    negate = False
    i, n = 0, len(texts)

    def missing(option: str) -> RulesError:
        return RulesError(f"{option} needs a value")

    def old_negation(option: str) -> RulesError:
        return RulesError(
            f"old negation syntax `{option} ! …` is not accepted",
            hint=f"write `! {option} …`, as iptables-save does",
        )

    while i < n:
        text = texts[i]
        kind = _SPECIAL.get(text) if not quoted or i not in quoted else None
        if kind == _NEGATE:
            if negate:
                raise RulesError("`! !` is not allowed")
            negate, i = True, i + 1
            continue
        if kind is not None:
            if i + 1 >= n:
                raise missing(text)
            value = texts[i + 1]
            if kind == _HEADER_OPTION:
                canonical = _HEADER[text].names[0]
                if value == "!" and i + 1 not in quoted:
                    raise old_negation(text)
                if canonical in header:
                    raise RulesError(f"{text} given twice")
                header[canonical] = Option(canonical, (value,), negate)
                negate, i = False, i + 2
                continue
            if negate:
                raise RulesError(f"`!` cannot negate {text}")
            if kind == _MODULE:
                find_module(value)
                matches.append((value.lower(), []))
            elif target is not None:
                raise RulesError(f"more than one target (`{target}` and `{value}`)")
            else:
                find_target(value)
                target, goto = value, kind == _GOTO
            i += 2
            continue
        if i in quoted or not text.startswith("-") or text == "-":
            raise RulesError(f"unexpected `{text}`", hint="quote values that contain spaces")
        definition, owner, lenient = _find_option(text, target, matches, header)
        if negate and not definition.invertible:
            raise RulesError(f"`!` cannot negate {text}")
        nargs = definition.nargs
        if i + nargs >= n:
            raise missing(text)
        values = texts[i + 1 : i + 1 + nargs]
        if nargs and values[0] == "!" and i + 1 not in quoted and definition.invertible:
            raise old_negation(text)
        if lenient and nargs and i + 1 not in quoted:
            # Upstream fixtures write multi-word comments unquoted: take bare words up to the
            # next option, as kube-proxy's test parser does.
            k = i + 2
            while k < n and not texts[k].startswith(("-", "!")):
                k += 1
            values = texts[i + 1 : k]
            i = k
        else:
            i += 1 + nargs
        option = Option(definition.names[0], tuple(values), negate)
        negate = False
        if owner is None:
            target_opts.append(option)
        else:
            owner.append(option)
    if negate:
        raise RulesError("`!` at the end of the rule negates nothing")

    _check_interfaces(table, chain, header)
    compiled_header = build_header(header)
    label = f"{table}/{chain}: " + (_first_comment(matches) or args)
    env = MatchEnv(table, chain, label, compiled_header.protocol, line, ipsets)
    predicates = list(compiled_header.predicates)
    reads: set[str] | None = set(compiled_header.reads)
    dport_key: int | None = None
    pure_so_far = True
    comment = ""
    for name, options in matches:
        compiled = build_match(name, options, env)
        if compiled.predicate is not None:
            predicates.append(compiled.predicate)
        if reads is not None:
            reads = None if compiled.reads is None else reads | compiled.reads
        if dport_key is None and pure_so_far and compiled.dport_key is not None:
            dport_key = compiled.dport_key
        pure_so_far = pure_so_far and compiled.pure
        comment = comment or compiled.comment
    action = None
    if target is not None:
        action = build_target(
            target,
            target_opts,
            rule_label=label,
            protocol=compiled_header.protocol,
            goto=goto,
            table=table,
        )
    return Rule(
        table=table,
        chain=chain,
        args=args,
        words=tuple(texts),
        header=tuple(header.values()),
        matches=tuple((name, tuple(opts)) for name, opts in matches),
        target=target,
        target_options=tuple(target_opts),
        goto=goto,
        comment=comment,
        line=line,
        counters=counters,
        predicates=tuple(predicates),
        action=action,
        dst_key=compiled_header.dst_key,
        dport_key=dport_key,
        reads=None if reads is None else frozenset(reads),
    )


def _find_option(
    text: str,
    target: str | None,
    matches: list[tuple[str, list[Option]]],
    header: dict[str, Option],
) -> tuple[OptionDef, list[Option] | None, bool]:
    """Which loaded extension owns option ``text``: the target, else the latest match.

    Returns the definition, the option list to append to (None: the target's) and whether its
    value may span bare words. Loads tcp/udp/sctp implicitly after ``-p``, as iptables does.
    """
    if target is not None:
        for definition in target_options(target):
            if text in definition.names:
                return definition, None, False
    for name, options in reversed(matches):
        found = _MODULE_SPELLINGS[name].get(text)
        if found is not None:
            return found, options, found.names[0] in MODULES[name].lenient
    protocol = header.get("--protocol")
    if protocol is not None and not protocol.negated:
        implicit = IMPLICIT_BY_PROTOCOL.get(parse_protocol(protocol.value))
        if implicit is not None and text in _MODULE_SPELLINGS[implicit]:
            matches.append((implicit, []))
            return _MODULE_SPELLINGS[implicit][text], matches[-1][1], False
    loaded = ", ".join(f"-m {name}" for name, _ in matches) or "none"
    raise RulesError(
        f"unknown option `{text}`" + (f" for target {target}" if target else ""),
        hint=f"matches loaded before it: {loaded}",
    )


def _first_comment(matches: list[tuple[str, list[Option]]]) -> str:
    for name, options in matches:
        if name == "comment":
            for option in options:
                return option.value
    return ""


def _check_interfaces(table: str, chain: str, header: dict[str, Option]) -> None:
    if chain not in BUILTIN_CHAINS.get(table, ()):
        return
    if "--in-interface" in header and chain in ("OUTPUT", "POSTROUTING"):
        raise RulesError(
            f"can't use -i with {chain}", hint="no packet has an input interface there"
        )
    if "--out-interface" in header and chain in ("PREROUTING", "INPUT"):
        raise RulesError(f"can't use -o with {chain}", hint="the route is not chosen yet there")
