"""The nftables rule language: one rule's text compiled to steps.

A rule becomes a tuple of steps run left to right; a step returns True (go on), False (the rule
does not match: next rule) or an :class:`NftVerdict` (act on it). Values are typed once, at
compile time, so evaluating a packet only compares ints. :mod:`k8snet_sim.netfilter.nftables_eval`
holds the sets, maps and chain walk that run these steps; :mod:`k8snet_sim.netfilter.nftables`
reads and writes the ``nft list ruleset`` text around them.

Modelled expressions: ``ip saddr/daddr/protocol``, ``meta l4proto/mark/iifname/oifname``,
``th/tcp/udp/sctp sport/dport``, ``ct state``, ``ct status dnat|snat``, ``fib saddr/daddr type
local``, ``numgen random mod N``, concatenations with ``.``, ``@set`` / ``{ … }`` lookups and
verdict maps. Statements: ``mark set``, ``update/add @set { ip saddr }``, ``counter``,
``dnat/snat [ip] to``, ``masquerade``, ``redirect``, and the verdicts.

Example
-------
>>> parse_duration("3h"), typed_key("10.0.0.1 . tcp . 80", (ADDR, PROTO, PORT))
(10800, (167772161, 6, 80))
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from k8snet_sim.errors import RulesError
from k8snet_sim.net.addr import Cidr, ip
from k8snet_sim.net.packet import PROTO_NUMBERS, SCTP, TCP, UDP, Packet
from k8snet_sim.netfilter.context import Hook, PacketContext, RecentEntry

if TYPE_CHECKING:
    from k8snet_sim.netfilter.nftables_eval import CompiledChain, Program

HOOKS: dict[str, Hook] = {h.value.lower(): h for h in Hook}
_DURATION_RE = re.compile(r"(\d+)(d|h|ms|m|s)")
_TOKEN_RE = re.compile(r'"[^"]*"|[{},]|[^\s{},]+')
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}


def parse_duration(text: str) -> int:
    """Seconds in an nft duration (``10800s``, ``3h``, ``2h59m``)."""
    parts = _DURATION_RE.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"bad duration `{text}`")
    return int(sum(int(n) * _UNITS[u] for n, u in parts))


Getter = Callable[[Packet, PacketContext], Any]
Step = Callable[[Packet, PacketContext], Any]  # True: go on; False: rule fails; NftVerdict: act

ADDR, PROTO, PORT, INT, CTSTATE, CTSTATUS, ADDRTYPE, IFNAME = range(8)
_L4 = (TCP, UDP, SCTP)
SET_TYPES = {"ipv4_addr": ADDR, "inet_proto": PROTO, "inet_service": PORT, "mark": INT,
              "ifname": IFNAME}  # fmt: skip
_CT_STATES = ("new", "established", "related", "invalid", "untracked")
_PORT_OF: dict[str, tuple[int, ...]] = {"th": _L4, "tcp": (TCP,), "udp": (UDP,), "sctp": (SCTP,)}


def _port_getter(protos: tuple[int, ...], field_name: str) -> Getter:
    return lambda p, c: getattr(p, field_name) if p.proto in protos else None


def _ct_status(p: Packet, c: PacketContext) -> frozenset[str]:
    return frozenset(n for n, on in (("dnat", c.ct_dnat), ("snat", c.ct_snat)) if on)


# Selector words -> (datatype, getter). Longest match wins.
_SELECTORS: dict[tuple[str, ...], tuple[int, Getter]] = {
    ("ip", "saddr"): (ADDR, lambda p, c: p.src),
    ("ip", "daddr"): (ADDR, lambda p, c: p.dst),
    ("ip", "protocol"): (PROTO, lambda p, c: p.proto),
    ("meta", "l4proto"): (PROTO, lambda p, c: p.proto),
    ("meta", "mark"): (INT, lambda p, c: p.mark),
    ("mark",): (INT, lambda p, c: p.mark),
    ("meta", "iifname"): (IFNAME, lambda p, c: c.in_iface or ""),
    ("iifname",): (IFNAME, lambda p, c: c.in_iface or ""),
    ("meta", "oifname"): (IFNAME, lambda p, c: c.out_iface or ""),
    ("oifname",): (IFNAME, lambda p, c: c.out_iface or ""),
    ("ct", "state"): (CTSTATE, lambda p, c: c.ct_state.value.lower()),
    ("ct", "status"): (CTSTATUS, _ct_status),
    ("fib", "saddr", "type"): (ADDRTYPE, lambda p, c: "local" if c.is_local(p.src) else "unicast"),
    ("fib", "daddr", "type"): (ADDRTYPE, lambda p, c: "local" if c.is_local(p.dst) else "unicast"),
    **{(proto, f"{d}port"): (PORT, _port_getter(protos, f"{d}port"))
       for proto, protos in _PORT_OF.items() for d in "sd"},
}  # fmt: skip
_MARK_OPS: dict[str, Callable[[int, int], int]] = {
    "&": int.__and__, "and": int.__and__, "|": int.__or__, "or": int.__or__,
    "^": int.__xor__, "xor": int.__xor__,
}  # fmt: skip
_MARK_OP_TEXT = {"&": "&=", "and": "&=", "|": "|=", "or": "|=", "^": "^=", "xor": "^="}
_REJECT_WITH = {
    "port-unreachable": "icmp-port-unreachable", "host-unreachable": "icmp-host-unreachable",
    "net-unreachable": "icmp-net-unreachable", "prot-unreachable": "icmp-proto-unreachable",
    "net-prohibited": "icmp-net-prohibited", "host-prohibited": "icmp-host-prohibited",
    "admin-prohibited": "icmp-admin-prohibited",
}  # fmt: skip
_NAT_MANIP_OF = {"dnat": "dst", "redirect": "dst", "snat": "src", "masquerade": "src"}


@dataclass(frozen=True, slots=True)
class NftVerdict:
    kind: str  # accept drop reject return continue jump goto
    target: CompiledChain | None = None
    text: str = ""
    comment: str = ""  # the map element's comment, when the verdict came from a map
    reject_with: str = ""


@dataclass(slots=True)
class CompiledRule:
    text: str
    comment: str
    steps: tuple[tuple[Step, str | None], ...]
    nat: str | None  # "dst"/"src" when the rule has a NAT statement
    targets: tuple[str, ...]  # chains it may jump or go to
    line: int = 0


_cidr = lru_cache(maxsize=4096)(Cidr.parse)


def _literal(text: str, dtype: int, *, allow_cidr: bool = True) -> Any:
    """A typed constant; ADDR may be a :class:`Cidr`."""
    if dtype == ADDR:
        return _cidr(text) if "/" in text and allow_cidr else ip(text)
    if dtype == PROTO:
        return PROTO_NUMBERS[text] if text in PROTO_NUMBERS else int(text)
    if dtype in (PORT, INT):
        return int(text, 0)
    if dtype == IFNAME:
        return text.strip('"')
    if (dtype == CTSTATE and text not in _CT_STATES) or (
        dtype == CTSTATUS and text not in ("dnat", "snat")
    ):
        raise ValueError(f"`{text}` is not a modelled ct state/status")
    if dtype == ADDRTYPE and text not in ("local", "unicast"):
        raise ValueError(f"fib type `{text}` is not modelled")
    return text


def typed_key(text: str, dtypes: tuple[int, ...]) -> Any:
    parts = [x.strip() for x in text.split(" . ")]
    if len(parts) != len(dtypes):
        raise ValueError(f"expected {len(dtypes)} key part(s)")
    if len(parts) == 1:
        return _literal(parts[0], dtypes[0])
    return tuple(_literal(x, t, allow_cidr=False) for x, t in zip(parts, dtypes, strict=True))


def _predicate(values: list[Any], dtype: int) -> Callable[[Any], bool]:
    """Does a packet value equal one of ``values`` (prefix, wildcard, flag aware)?"""
    if dtype == CTSTATUS:
        return lambda v: any(x in v for x in values)
    if dtype == IFNAME:
        return lambda v: any(v.startswith(x[:-1]) if x.endswith("*") else v == x for x in values)
    exact = frozenset(x for x in values if not isinstance(x, Cidr))
    cidrs = [x for x in values if isinstance(x, Cidr)]
    if not cidrs:
        return exact.__contains__
    return lambda v: v in exact or any(c.contains(v) for c in cidrs)


def _const(verdict: NftVerdict) -> Step:
    return lambda p, c: verdict


_HINT = (
    "the simulator models the nftables subset kube-proxy writes: ip saddr/daddr, meta l4proto, "
    "th/tcp/udp/sctp dport, ct state/status, fib saddr/daddr type local, meta mark, numgen "
    "random, sets and verdict maps, update @set, jump/goto/return/accept/drop/reject, "
    "dnat/snat/masquerade/redirect, counter, comment"
)


class RuleCompiler:
    """One rule's text to steps: a small recursive descent over nft's rule grammar."""

    def __init__(self, program: Program, chain: str, text: str, line: int) -> None:
        self.program, self.chain, self.text, self.line = program, chain, text, line
        self.toks: list[str] = _TOKEN_RE.findall(text)
        self.i = 0
        self.steps: list[tuple[Step, str | None]] = []
        self.comment = ""
        self.terminal = False
        self.nat: str | None = None
        self.targets: list[str] = []

    def error(self, construct: str, why: str = "is not modelled") -> RulesError:
        return RulesError(
            f"`{construct}` {why} (chain {self.chain}, rule `{self.text}`)",
            line=self.line,
            file=self.program.file,
            hint=_HINT,
        )

    def peek(self, k: int = 0) -> str:
        return self.toks[self.i + k] if self.i + k < len(self.toks) else ""

    def take(self, what: str = "a value") -> str:
        if self.i >= len(self.toks):
            raise self.error(self.text, f"ends where {what} was expected")
        self.i += 1
        return self.toks[self.i - 1]

    def expect(self, word: str) -> None:
        tok = self.take(f"`{word}`")
        if tok != word:
            raise self.error(tok, f"found where `{word}` was expected")

    def number(self, what: str) -> int:
        tok = self.take(what)
        try:
            return int(tok, 0)
        except ValueError:
            raise self.error(tok, f"is not {what}") from None

    def compile(self) -> CompiledRule:
        while self.i < len(self.toks):
            tok = self.peek()
            if tok == "comment":
                self.i += 1
                self.comment = self.take("a quoted comment").strip('"')
            elif self.terminal:
                raise self.error(tok, "follows the rule's verdict")
            elif tok == "counter":
                self.i += 1
                if self.peek() == "packets":
                    self.i += 4  # packets N bytes M: state we do not keep
            elif tok in ("accept", "drop", "return", "continue", "jump", "goto", "reject"):
                self.verdict_statement()
            elif tok in _NAT_MANIP_OF:
                self.nat_statement()
            elif tok in ("update", "add") and self.peek(1).startswith("@"):
                self.update_statement()
            elif self.toks[self.i : self.i + 2] == ["mark", "set"] or self.toks[
                self.i : self.i + 3
            ] == ["meta", "mark", "set"]:
                self.mark_statement()
            else:
                self.expression()
        steps = tuple(self.steps)
        return CompiledRule(
            self.text, self.comment, steps, self.nat, tuple(self.targets), self.line
        )

    def program_verdict(self, words: list[str], comment: str = "") -> NftVerdict:
        try:
            verdict = self.program.verdict(words, comment)
        except ValueError as err:
            raise self.error(" ".join(words), str(err)) from None
        if verdict.target is not None:
            self.targets.append(verdict.target.name)
        return verdict

    # --- statements ------------------------------------------------------------------------

    def verdict_statement(self) -> None:
        word = self.take()
        if word in ("jump", "goto"):
            verdict = self.program_verdict([word, self.take("a chain name")])
        elif word == "reject":
            with_ = "icmp-port-unreachable"  # nft's default for the ip family
            if self.peek() == "with":
                self.i += 1
                kind = self.take("a reject type")
                if kind == "tcp":
                    self.expect("reset")
                    with_ = "tcp-reset"
                elif kind in ("icmp", "icmpx"):
                    if self.peek() == "type":
                        self.i += 1
                    code = self.take("an icmp type")
                    if code not in _REJECT_WITH:
                        raise self.error(code)
                    with_ = _REJECT_WITH[code]
                else:
                    raise self.error(f"reject with {kind}")
            verdict = NftVerdict("reject", text="reject", reject_with=with_)
        else:
            verdict = NftVerdict(word, text=word)
        self.steps.append((_const(verdict), None))
        self.terminal = True

    def nat_statement(self) -> None:
        word = self.take()
        action: Callable[[Any], None]
        if word == "masquerade":
            opts: list[str] = []
            flags = ("fully-random", "random", "persistent")
            while self.peek() in flags or (self.peek() == "," and self.peek(1) in flags):
                opts.append(self.take())
            fully = "fully-random" in opts
            action, text = (lambda nat: nat.masquerade(random_fully=fully)), "masquerade"
        elif word == "redirect":
            port = None
            if self.peek() == "to":
                self.i += 1
                tok = self.take("a port")
                if not tok.lstrip(":").isdigit():
                    raise self.error(tok, "is not a port")
                port = int(tok.lstrip(":"))
            action, text = (lambda nat: nat.redirect(port)), "redirect"
        else:
            if self.peek() == "ip":
                self.i += 1
            self.expect("to")
            target = self.take("an address")
            host, _, port_text = target.partition(":")
            try:
                addr, nat_port = ip(host), int(port_text) if port_text else None
            except ValueError:
                raise self.error(target, "is not an address[:port]") from None
            if word == "dnat":
                action = lambda nat: nat.dnat(addr, nat_port)  # noqa: E731
            else:
                action = lambda nat: nat.snat(addr, nat_port)  # noqa: E731
            text = f"{word} to {target}"
        verdict = NftVerdict("accept", text=text)  # NAT statements end the chain (NF_ACCEPT)
        chain = self.chain

        def step(p: Packet, c: PacketContext) -> Any:
            if c.nat is None:
                raise RulesError(
                    f"`{word}` reached in chain {chain} outside a nat chain's evaluation of a "
                    "connection's first packet"
                )
            action(c.nat)
            return verdict

        self.steps.append((step, None))
        self.terminal = True
        self.nat = _NAT_MANIP_OF[word]

    def update_statement(self) -> None:
        op, name = self.take(), self.take()[1:]
        target = self.program.named_set(name, want_map=False, compiler=self)
        self.expect("{")
        getter, dtypes = self.selector_chain()
        if len(dtypes) != 1 or len(target.dtypes) != 1:
            raise self.error(f"{op} @{name}", "with a concatenated key is not modelled")
        timeout = target.timeout
        if self.peek() == "timeout":
            self.i += 1
            tok = self.take("a duration")
            try:
                timeout = parse_duration(tok)
            except ValueError:
                raise self.error(tok, "is not a duration") from None
        self.expect("}")
        target.dynamic = True
        key, lifetime = target.state_key, float("inf") if timeout is None else float(timeout)

        def step(p: Packet, c: PacketContext) -> Any:
            value = getter(p, c)
            if value is None:
                return False
            c.map_lookups += 1
            entries = c.state.recent.setdefault(key, {})
            old = entries.get(value)
            if op == "add" and old is not None and c.now < old.last_seen[-1]:
                return True  # `add` keeps a live element's expiry; `update` refreshes it
            entries[value] = RecentEntry([c.now + lifetime])
            return True

        self.steps.append((step, f"{op} @{name}"))

    def mark_statement(self) -> None:
        self.i += 3 if self.peek() == "meta" else 2
        if self.peek() in ("mark", "meta"):
            if self.take() == "meta":
                self.expect("mark")
            opword = self.take("an operator")
            if opword not in _MARK_OPS:
                raise self.error(opword, "is not a modelled mark operator")
            operand, fn = self.number("a number"), _MARK_OPS[opword]

            def new(mark: int) -> int:
                return fn(mark, operand)

            effect = f"mark {_MARK_OP_TEXT[opword]} {hex(operand)}"
        else:
            value = self.number("a mark value")

            def new(mark: int) -> int:
                return value

            effect = f"mark = {hex(value)}"

        def step(p: Packet, c: PacketContext) -> Any:
            p.mark = new(p.mark) & 0xFFFFFFFF
            return True

        self.steps.append((step, effect))

    # --- expressions -----------------------------------------------------------------------

    def selector(self) -> tuple[Getter, int]:
        if self.peek() == "numgen":
            return self.numgen()
        for n in (3, 2, 1):
            words = tuple(self.toks[self.i : self.i + n])
            if len(words) == n and words in _SELECTORS:
                self.i += n
                dtype, getter = _SELECTORS[words]
                break
        else:
            raise self.error(self.peek() or self.text, "is not a modelled expression")
        if dtype == INT and self.peek() in _MARK_OPS:  # meta mark & 0x4000 == 0
            fn = _MARK_OPS[self.take()]
            operand, inner = self.number("a number"), getter

            def getter(p: Packet, c: PacketContext) -> Any:
                return fn(inner(p, c), operand)

        return getter, dtype

    def numgen(self) -> tuple[Getter, int]:
        self.expect("numgen")
        mode = self.take("a numgen mode")
        if mode != "random":
            raise self.error(f"numgen {mode}")
        self.expect("mod")
        modulus = self.number("a modulus")
        offset = 0
        if self.peek() == "offset":
            self.i += 1
            offset = self.number("an offset")
        weights = [1.0] * modulus
        label = f"{self.program.table}/{self.chain}: numgen random mod {modulus}"

        def getter(p: Packet, c: PacketContext) -> Any:
            return c.chooser.choose(weights, label) + offset

        return getter, INT

    def selector_chain(self) -> tuple[Getter, tuple[int, ...]]:
        parts = [self.selector()]
        while self.peek() == ".":
            self.i += 1
            parts.append(self.selector())
        if len(parts) == 1:
            return parts[0][0], (parts[0][1],)
        getters = tuple(g for g, _ in parts)

        def concat(p: Packet, c: PacketContext) -> Any:
            values = tuple(g(p, c) for g in getters)
            return None if None in values else values

        return concat, tuple(t for _, t in parts)

    def braced(self) -> list[list[str]]:
        items: list[list[str]] = [[]]
        while (tok := self.take("`}`")) != "}":
            if tok == ",":
                items.append([])
            else:
                items[-1].append(tok)
        return [x for x in items if x]

    def literal(self, text: str, dtype: int) -> Any:
        try:
            return _literal(text, dtype)
        except (ValueError, KeyError):
            raise self.error(text, "is not a valid value here") from None

    def expression(self) -> None:
        getter, dtypes = self.selector_chain()
        if self.peek() == "vmap":
            self.i += 1
            self.vmap(getter, dtypes)
            return
        negate = self.peek() in ("!=", "ne")
        if self.peek() in ("!=", "ne", "==", "eq"):
            self.i += 1
        tok = self.take("a value")
        if tok.startswith("@"):
            named = self.program.named_set(tok[1:], want_map=False, compiler=self)
            if len(named.dtypes) != len(dtypes):
                raise self.error(tok, "has a key of another shape")

            def lookup(p: Packet, c: PacketContext) -> Any:
                value = getter(p, c)
                if value is None:
                    return False
                c.map_lookups += 1
                return named.contains(value, c) != negate

            self.steps.append((lookup, None))
            return
        if len(dtypes) != 1:
            raise self.error(tok, "compared with a concatenation is not modelled")
        dtype = dtypes[0]
        is_set = tok == "{"
        words = [" ".join(x) for x in self.braced()] if is_set else [tok]
        while not is_set and dtype in (CTSTATE, CTSTATUS) and self.peek() == ",":
            self.i += 1  # a flag list: ct state established,related
            words.append(self.take("a flag"))
        pred = _predicate([self.literal(w, dtype) for w in words], dtype)

        def match(p: Packet, c: PacketContext) -> Any:
            value = getter(p, c)
            if value is None:
                return False
            if is_set:
                c.map_lookups += 1
            return pred(value) != negate

        self.steps.append((match, None))

    def vmap(self, getter: Getter, dtypes: tuple[int, ...]) -> None:
        tok = self.take("a map")
        if tok.startswith("@"):
            named = self.program.named_set(tok[1:], want_map=True, compiler=self)
            if len(named.dtypes) != len(dtypes):
                raise self.error(tok, "has a key of another shape")
            self.targets += named.targets
            lookup = named.lookup
        elif tok == "{":
            table: dict[Any, NftVerdict] = {}
            for item in self.braced():
                if ":" not in item:
                    raise self.error(" ".join(item), "is not a `key : verdict` element")
                colon = item.index(":")
                try:
                    key = typed_key(" ".join(item[:colon]), dtypes)
                except (ValueError, KeyError):
                    raise self.error(" ".join(item[:colon]), "is not a valid key here") from None
                table[key] = self.program_verdict(item[colon + 1 :])
            lookup = table.get  # type: ignore[assignment]
        else:
            raise self.error(f"vmap {tok}")

        def step(p: Packet, c: PacketContext) -> Any:
            key = getter(p, c)
            if key is None:
                return False
            c.map_lookups += 1
            return lookup(key) or False  # a miss ends the rule, like a failed match

        self.steps.append((step, None))
        self.terminal = True


# ---------------------------------------------------------------------------------- evaluation
