"""iptables matches: each parsed option set becomes one small predicate over ints.

A predicate is ``(packet, ctx) -> bool``. Builders run once, when a rule is parsed; they turn
option text into ints and return closures that do no string work at match time. The generic
header options (``-s -d -p -i -o``) are compiled by :func:`build_header`; match modules
(``-m tcp``, ``-m conntrack``…) are declared as data in :data:`MODULES` and compiled by
:func:`build_match`. Bad values raise :class:`~k8snet_sim.errors.RulesError` without a line
number; the parser adds it.

Example
-------
>>> from k8snet_sim.net.addr import ip
>>> from k8snet_sim.net.packet import Packet, TCP
>>> env = MatchEnv(table="nat", chain="KUBE-SERVICES", label="nat/KUBE-SERVICES: x", protocol=TCP)
>>> m = build_match("tcp", [Option("--dport", ("80",))], env)
>>> m.predicate(Packet(src=ip("10.0.0.2"), dst=ip("10.96.0.1"), proto=TCP, dport=80), None)
True
>>> m.dport_key
80
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from k8snet_sim.errors import RulesError
from k8snet_sim.net.addr import Cidr
from k8snet_sim.net.packet import Packet
from k8snet_sim.netfilter.context import ConnState, PacketContext, RecentEntry, chance
from k8snet_sim.netfilter.ipset import IpSetRegistry, parse_flags

Predicate = Callable[[Packet, PacketContext], bool]

# IP protocol numbers iptables accepts by name (/etc/protocols); 0 means "all".
PROTOCOLS: dict[str, int] = {
    "all": 0, "icmp": 1, "igmp": 2, "ipip": 4, "tcp": 6, "udp": 17, "gre": 47,
    "esp": 50, "ah": 51, "sctp": 132, "udplite": 136,
}  # fmt: skip
PORT_PROTOCOLS = frozenset({6, 17, 132})  # protocols whose header carries ports we model

# Match modules that exist in iptables but that k8snet_sim does not evaluate.
NOT_MODELLED = frozenset({
    "physdev", "nfacct", "limit", "hashlimit", "connmark", "owner", "string", "u32",
    "iprange", "length", "ttl", "pkttype", "mac", "socket", "rpfilter", "cgroup", "icmp",
    "policy", "connlimit", "connbytes", "time", "helper", "dscp", "tos", "devgroup", "ipvs",
    "cluster", "quota", "bpf", "realm", "esp", "ah", "hl", "cpu", "dccp", "udplite", "ecn",
    "osf", "tcpmss", "addrtype2", "conntrack2",
})  # fmt: skip


class Option(NamedTuple):
    """One option as parsed: canonical long ``name``, its value words, and a leading ``!``."""

    name: str
    values: tuple[str, ...] = ()
    negated: bool = False

    @property
    def value(self) -> str:
        return " ".join(self.values)


@dataclass(frozen=True, slots=True)
class OptionDef:
    """An option a module accepts: spellings (canonical long name first), value count, ``!``."""

    names: tuple[str, ...]
    nargs: int = 1
    invertible: bool = False


@dataclass(frozen=True, slots=True)
class MatchEnv:
    """What a builder may know about the rule it compiles for."""

    table: str
    chain: str
    label: str  # names the rule for Chooser decisions and counters
    protocol: int | None = None  # from a non-negated ``-p``; None when absent or negated
    line: int = 0  # where the rule was written (0: built in code); part of counter keys
    ipsets: IpSetRegistry | None = None  # the namespace's ipsets, for ``-m set``


@dataclass(frozen=True, slots=True)
class CompiledMatch:
    """A compiled match. ``predicate`` None means it always matches (``-m comment``).

    ``pure`` is False when evaluating the match has an effect (randomness, counters, recent
    lists): an index may only skip a rule on a pure test evaluated before any impure one.

    ``reads`` names every input the predicate looks at (see :data:`READABLE`), declared by the
    builder next to the code that reads it; None means "not declared", which keeps the
    engine from memoising walks through the rule (``engine.TableEngine``). A match that has an
    effect, draws randomness or consults state outside the packet and its context (an ipset,
    a recent list, a counter) must leave it None.
    """

    predicate: Predicate | None
    pure: bool = True
    dport_key: int | None = None  # a single non-negated --dport: usable as an index key
    comment: str = ""
    reads: frozenset[str] | None = None


# What a predicate may read: packet fields, context fields, and whether the packet's source or
# destination is a local address (``ctx.is_local``, the addrtype test).
PACKET_READS = frozenset({"src", "dst", "proto", "sport", "dport", "flags", "mark"})
CONTEXT_READS = frozenset({"in_iface", "out_iface", "ct_state", "ct_dnat", "ct_snat"})
LOCAL_READS = frozenset({"local_src", "local_dst"})
READABLE = PACKET_READS | CONTEXT_READS | LOCAL_READS


@dataclass(frozen=True, slots=True)
class MatchModule:
    name: str
    options: tuple[OptionDef, ...]
    build: Callable[[dict[str, Option], MatchEnv], CompiledMatch]
    needs_ports: bool = False  # the kernel refuses it unless -p is tcp, udp or sctp
    lenient: frozenset[str] = frozenset()  # options whose value may be several bare words


def parse_number(text: str, what: str, *, limit: int = 0xFFFFFFFF) -> int:
    """Parse like C's ``strtoul(text, 0)``: ``0x`` hex, leading ``0`` octal, else decimal."""
    base = 16 if text[:2].lower() == "0x" else 8 if len(text) > 1 and text[0] == "0" else 10
    try:
        value = int(text[2:] if base == 16 else text, base)
    except ValueError:
        raise RulesError(f"bad {what} `{text}`: expected a number") from None
    if not 0 <= value <= limit:
        raise RulesError(f"{what} `{text}` out of range (0–{limit})")
    return value


def parse_ipv4(text: str) -> int:
    """A dotted-quad address as an int, without ipaddress's overhead (rules have many)."""
    parts = text.split(".")
    if len(parts) == 4 and all(p.isdigit() and len(p) <= 3 for p in parts):
        a, b, c, d = (int(p) for p in parts)
        if a < 256 and b < 256 and c < 256 and d < 256:
            return (a << 24) | (b << 16) | (c << 8) | d
    raise ValueError(f"bad IPv4 address {text!r}")


def parse_cidr(text: str) -> Cidr:
    """``10.0.0.0/8``, ``1.2.3.4`` (a /32) or ``10.0.0.0/255.0.0.0``; host bits are cleared."""
    address, slash, prefix = text.partition("/")
    if not slash or prefix.isdigit():
        length = int(prefix) if slash else 32
        if length <= 32:
            mask = (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF
            return Cidr(parse_ipv4(address) & mask, length)
    return Cidr.parse(text)


def parse_port(text: str) -> int:
    if not text.isdigit():
        raise RulesError(
            f"bad port `{text}`", hint="ports are numbers 0–65535 (names not modelled)"
        )
    port = int(text)
    if port > 65535:
        raise RulesError(f"port {port} out of range (0–65535)")
    return port


def parse_port_range(text: str) -> tuple[int, int]:
    """``80`` → (80, 80); ``1000:2000``, ``:2000``, ``1000:`` as iptables reads them."""
    if ":" not in text:
        port = parse_port(text)
        return port, port
    low, _, high = text.partition(":")
    first = parse_port(low) if low else 0
    last = parse_port(high) if high else 65535
    if first > last:
        raise RulesError(f"bad port range `{text}`: {first} > {last}")
    return first, last


def parse_mark(text: str) -> tuple[int, int]:
    """``0x4000/0x4000`` → (value, mask); the mask defaults to 0xffffffff."""
    value, slash, mask = text.partition("/")
    return parse_number(value, "mark"), parse_number(mask, "mask") if slash else 0xFFFFFFFF


def parse_protocol(text: str) -> int:
    name = text.lower()
    if name in PROTOCOLS:
        return PROTOCOLS[name]
    if name.isdigit() and int(name) <= 255:
        return int(name)
    raise RulesError(
        f"unknown protocol `{text}`", hint=f"use a number or one of {sorted(PROTOCOLS)}"
    )


# --------------------------------------------------------------------------- header matches

HEADER_OPTIONS: tuple[OptionDef, ...] = (
    OptionDef(("--source", "-s", "--src"), invertible=True),
    OptionDef(("--destination", "-d", "--dst"), invertible=True),
    OptionDef(("--protocol", "-p"), invertible=True),
    OptionDef(("--in-interface", "-i"), invertible=True),
    OptionDef(("--out-interface", "-o"), invertible=True),
)


def _address(option: Option) -> Cidr:
    text = option.value
    if "," in text:
        raise RulesError(
            f"{option.name} `{text}`: a comma list expands to several rules",
            hint="write one rule per address, as iptables-save prints them",
        )
    try:
        return parse_cidr(text)
    except ValueError:
        raise RulesError(f"bad address `{text}` for {option.name}") from None


def _address_predicate(cidr: Cidr, negated: bool, field: str) -> Predicate:
    net, mask = cidr.network, cidr.mask
    if field == "src":
        if mask == 0xFFFFFFFF:
            return (lambda p, c: p.src != net) if negated else (lambda p, c: p.src == net)
        return (
            (lambda p, c: (p.src & mask) != net)
            if negated
            else (lambda p, c: (p.src & mask) == net)
        )
    if mask == 0xFFFFFFFF:
        return (lambda p, c: p.dst != net) if negated else (lambda p, c: p.dst == net)
    return (lambda p, c: (p.dst & mask) != net) if negated else (lambda p, c: (p.dst & mask) == net)


def _interface_predicate(name: str, negated: bool, inbound: bool) -> Predicate:
    """``eth0`` exact, ``veth+`` prefix; an absent interface is the empty name, as in Linux."""
    wildcard = name.endswith("+")
    stem = name[:-1] if wildcard else name

    def test(packet: Packet, ctx: PacketContext) -> bool:
        iface = (ctx.in_iface if inbound else ctx.out_iface) or ""
        hit = iface.startswith(stem) if wildcard else iface == stem
        return hit != negated

    return test


@dataclass(frozen=True, slots=True)
class CompiledHeader:
    predicates: tuple[Predicate, ...]
    protocol: int | None  # non-negated -p other than all
    dst_key: int | None  # non-negated -d host/32: usable as an index key
    reads: frozenset[str] = frozenset()  # what the predicates read (see CompiledMatch)


def build_header(options: dict[str, Option]) -> CompiledHeader:
    """Compile ``-s -d -p -i -o`` (all pure, all checked before any module, as in the kernel)."""
    predicates: list[Predicate] = []
    reads: set[str] = set()
    dst_key: int | None = None
    if (opt := options.get("--destination")) is not None:
        cidr = _address(opt)
        predicates.append(_address_predicate(cidr, opt.negated, "dst"))
        reads.add("dst")
        if cidr.prefix == 32 and not opt.negated:
            dst_key = cidr.network
    if (opt := options.get("--source")) is not None:
        predicates.append(_address_predicate(_address(opt), opt.negated, "src"))
        reads.add("src")
    protocol: int | None = None
    if (opt := options.get("--protocol")) is not None:
        reads.add("proto")
        number = parse_protocol(opt.value)
        if number == 0:
            if opt.negated:  # "! -p all" can never match
                predicates.append(lambda p, c: False)
        elif opt.negated:
            predicates.append(lambda p, c: p.proto != number)
        else:
            protocol = number
            predicates.append(lambda p, c: p.proto == number)
    for name, inbound in (("--in-interface", True), ("--out-interface", False)):
        if (opt := options.get(name)) is not None:
            if len(opt.value) > 15 or not opt.value:
                raise RulesError(f"bad interface name `{opt.value}` (1–15 characters)")
            if opt.value != "+" or opt.negated:  # "-i +" matches every packet
                predicates.append(_interface_predicate(opt.value, opt.negated, inbound))
                reads.add("in_iface" if inbound else "out_iface")
    return CompiledHeader(tuple(predicates), protocol, dst_key, frozenset(reads))


# --------------------------------------------------------------------------- match modules


def _ports(options: dict[str, Option], env: MatchEnv) -> CompiledMatch:
    """``-m tcp|udp|sctp``: ``--sport``/``--dport`` single ports or ranges; tcp flags."""
    tests: list[Predicate] = []
    reads: set[str] = set()
    dport_key: int | None = None
    for name, attr in (("--source-port", "sport"), ("--destination-port", "dport")):
        if (opt := options.get(name)) is None:
            continue
        low, high = parse_port_range(opt.value)
        if attr == "dport" and low == high and not opt.negated:
            dport_key = low
        tests.append(_port_predicate(attr == "dport", low, high, opt.negated))
        reads.add(attr)
    if (opt := options.get("--tcp-flags")) is not None:
        mask, comp = (_tcp_flags(v) for v in opt.values)
        tests.append(_flags_predicate(mask, comp, opt.negated))
        reads.add("flags")
    if (opt := options.get("--syn")) is not None:
        tests.append(_flags_predicate(frozenset("SARF"), frozenset("S"), opt.negated))
        reads.add("flags")
    return CompiledMatch(
        _all_of(tests),
        dport_key=dport_key if len(tests) == 1 else None,
        reads=frozenset(reads),
    )


def _port_predicate(destination: bool, low: int, high: int, neg: bool) -> Predicate:
    if destination and low == high:
        return (lambda p, c: p.dport != low) if neg else (lambda p, c: p.dport == low)
    if destination:
        return lambda p, c: (low <= p.dport <= high) != neg
    return lambda p, c: (low <= p.sport <= high) != neg


_TCP_FLAG_LETTERS = {"SYN": "S", "ACK": "A", "FIN": "F", "RST": "R", "PSH": "P", "URG": "U"}


def _tcp_flags(text: str) -> frozenset[str]:
    letters: set[str] = set()
    for name in text.upper().split(","):
        if name == "ALL":
            letters.update(_TCP_FLAG_LETTERS.values())
        elif name in _TCP_FLAG_LETTERS:
            letters.add(_TCP_FLAG_LETTERS[name])
        elif name != "NONE":
            raise RulesError(f"unknown TCP flag `{name}`", hint="SYN,ACK,FIN,RST,PSH,URG,ALL,NONE")
    return frozenset(letters)


def _flags_predicate(mask: frozenset[str], comp: frozenset[str], negated: bool) -> Predicate:
    return lambda p, c: (frozenset(p.flags) & mask == comp) != negated


def _all_of(tests: list[Predicate]) -> Predicate | None:
    if not tests:
        return None
    if len(tests) == 1:
        return tests[0]
    frozen = tuple(tests)
    return lambda p, c: all(t(p, c) for t in frozen)


def _multiport(options: dict[str, Option], env: MatchEnv) -> CompiledMatch:
    given = [o for o in options.values()]
    if len(given) != 1:
        raise RulesError("-m multiport needs exactly one of --dports, --sports, --ports")
    opt = given[0]
    ranges: list[tuple[int, int]] = [parse_port_range(part) for part in opt.value.split(",")]
    if sum(1 if lo == hi else 2 for lo, hi in ranges) > 15:
        raise RulesError("-m multiport takes at most 15 ports (a range counts as two)")
    neg = opt.negated

    def hit(port: int) -> bool:
        return any(lo <= port <= hi for lo, hi in ranges)

    if opt.name == "--destination-ports":
        return CompiledMatch(lambda p, c: hit(p.dport) != neg, reads=frozenset({"dport"}))
    if opt.name == "--source-ports":
        return CompiledMatch(lambda p, c: hit(p.sport) != neg, reads=frozenset({"sport"}))
    return CompiledMatch(
        lambda p, c: (hit(p.sport) or hit(p.dport)) != neg, reads=frozenset({"sport", "dport"})
    )


def _addrtype(options: dict[str, Option], env: MatchEnv) -> CompiledMatch:
    for name in ("--limit-iface-in", "--limit-iface-out"):
        if name in options:
            raise RulesError(f"-m addrtype {name} is not modelled", hint="drop it or use -i/-o")
    tests: list[Predicate] = []
    reads: set[str] = set()
    for name, attr in (("--src-type", "src"), ("--dst-type", "dst")):
        if (opt := options.get(name)) is None:
            continue
        reads.add(f"local_{attr}")
        kinds = set(opt.value.upper().split(","))
        if kinds != {"LOCAL"}:
            raise RulesError(
                f"-m addrtype {name} {opt.value}: only LOCAL is modelled",
                hint="k8snet_sim knows which addresses are local, not other address types",
            )
        tests.append(_local_predicate(attr == "src", opt.negated))
    if not tests:
        raise RulesError("-m addrtype needs --src-type or --dst-type")
    return CompiledMatch(_all_of(tests), reads=frozenset(reads))


def _local_predicate(source: bool, neg: bool) -> Predicate:
    if source:
        return lambda p, c: c.is_local(p.src) != neg
    return lambda p, c: c.is_local(p.dst) != neg


def _mark(options: dict[str, Option], env: MatchEnv) -> CompiledMatch:
    opt = options.get("--mark")
    if opt is None:
        raise RulesError("-m mark needs --mark value[/mask]")
    value, mask = parse_mark(opt.value)
    neg = opt.negated
    return CompiledMatch(lambda p, c: ((p.mark & mask) == value) != neg, reads=frozenset({"mark"}))


_STATE_NAMES = {s.value: s for s in ConnState}


def _states(opt: Option, *, pseudo: bool) -> tuple[frozenset[ConnState], bool, bool]:
    states: set[ConnState] = set()
    dnat = snat = False
    for name in opt.value.upper().split(","):
        if name in _STATE_NAMES:
            states.add(_STATE_NAMES[name])
        elif pseudo and name == "DNAT":
            dnat = True
        elif pseudo and name == "SNAT":
            snat = True
        else:
            allowed = [*_STATE_NAMES, *(("DNAT", "SNAT") if pseudo else ())]
            raise RulesError(f"unknown connection state `{name}`", hint=f"one of {allowed}")
    return frozenset(states), dnat, snat


def _conntrack(options: dict[str, Option], env: MatchEnv) -> CompiledMatch:
    opt = options.get("--ctstate")
    if opt is None:
        raise RulesError("-m conntrack: only --ctstate is modelled")
    states, dnat, snat = _states(opt, pseudo=True)
    neg = opt.negated

    def test(packet: Packet, ctx: PacketContext) -> bool:
        # The kernel ORs the real state bit with the DNAT/SNAT status bits, then tests the union.
        hit = ctx.ct_state in states or (dnat and ctx.ct_dnat) or (snat and ctx.ct_snat)
        return hit != neg

    return CompiledMatch(test, reads=frozenset({"ct_state", "ct_dnat", "ct_snat"}))


def _state(options: dict[str, Option], env: MatchEnv) -> CompiledMatch:
    opt = options.get("--state")
    if opt is None:
        raise RulesError("-m state needs --state")
    states, _, _ = _states(opt, pseudo=False)
    neg = opt.negated
    return CompiledMatch(lambda p, c: (c.ct_state in states) != neg, reads=frozenset({"ct_state"}))


def _statistic(options: dict[str, Option], env: MatchEnv) -> CompiledMatch:
    mode = options.get("--mode")
    if mode is None:
        raise RulesError("-m statistic needs --mode random|nth")
    if mode.value == "random":
        opt = options.get("--probability")
        if opt is None or "--every" in options or "--packet" in options:
            raise RulesError("-m statistic --mode random takes --probability P only")
        try:
            probability = float(opt.value)
        except ValueError:
            raise RulesError(f"bad probability `{opt.value}`") from None
        if not 0.0 <= probability <= 1.0:
            raise RulesError(f"probability {opt.value} outside 0–1")
        # The kernel stores lround(2^31·p) and draws 31 random bits: use that exact chance.
        effective = int(probability * 0x80000000 + 0.5) / 0x80000000
        neg, label = opt.negated, env.label
        return CompiledMatch(lambda p, c: chance(c.chooser, effective, label) != neg, pure=False)
    if mode.value == "nth":
        opt = options.get("--every")
        if opt is None or "--probability" in options:
            raise RulesError("-m statistic --mode nth takes --every N [--packet P]")
        every = parse_number(opt.value, "--every")
        packet_opt = options.get("--packet")
        start = parse_number(packet_opt.value, "--packet") if packet_opt else 0
        if every < 1 or start > every - 1:
            raise RulesError("--every must be ≥ 1 and --packet below --every")
        return CompiledMatch(_nth(every - 1, every - 1 - start, opt.negated, env), pure=False)
    raise RulesError(f"unknown statistic mode `{mode.value}`", hint="random or nth")


def _nth(every: int, initial: int, negated: bool, env: MatchEnv) -> Predicate:
    key = ("statistic-nth", env.table, env.chain, env.label, env.line)

    def test(packet: Packet, ctx: PacketContext) -> bool:
        # xt_statistic: count runs every..0 cyclically from every-packet; match when it wraps.
        counters = ctx.state.counters
        old = counters.get(key, initial)
        new = 0 if old == every else old + 1
        counters[key] = new
        return (new == 0) != negated

    return test


def _comment(options: dict[str, Option], env: MatchEnv) -> CompiledMatch:
    opt = options.get("--comment")
    if opt is None:
        raise RulesError("-m comment needs --comment TEXT")
    if len(opt.value) > 255:
        raise RulesError("comment longer than 255 characters")
    return CompiledMatch(None, comment=opt.value, reads=frozenset())


_PORT_OPTIONS = (
    OptionDef(("--source-port", "--sport"), invertible=True),
    OptionDef(("--destination-port", "--dport"), invertible=True),
)
_TCP_OPTIONS = (
    *_PORT_OPTIONS,
    OptionDef(("--tcp-flags",), nargs=2, invertible=True),
    OptionDef(("--syn",), nargs=0, invertible=True),
)
_RECENT_OPTIONS = (
    OptionDef(("--name",)),
    OptionDef(("--set",), nargs=0, invertible=True),
    OptionDef(("--rcheck",), nargs=0, invertible=True),
    OptionDef(("--update",), nargs=0, invertible=True),
    OptionDef(("--remove",), nargs=0, invertible=True),
    OptionDef(("--seconds",)),
    OptionDef(("--hitcount",)),
    OptionDef(("--reap",), nargs=0),
    OptionDef(("--rsource",), nargs=0),
    OptionDef(("--rdest",), nargs=0),
    OptionDef(("--mask",)),
    OptionDef(("--rttl",), nargs=0),
)

# xt_recent module parameters: ip_list_tot entries per list, ip_pkt_list_tot stamps per entry.
RECENT_LIST_MAX = 100
RECENT_STAMPS_MAX = 20


def _recent(options: dict[str, Option], env: MatchEnv) -> CompiledMatch:
    """``-m recent``, following the kernel's ``recent_mt`` step by step (see xt_recent.c)."""
    if "--rttl" in options:
        raise RulesError("-m recent --rttl is not modelled (packets carry no history of TTLs)")
    commands = [
        o for o in options.values() if o.name in ("--set", "--rcheck", "--update", "--remove")
    ]
    if len(commands) != 1:
        raise RulesError("-m recent needs exactly one of --set, --rcheck, --update, --remove")
    command = commands[0].name
    invert = commands[0].negated
    name = options["--name"].value if "--name" in options else "DEFAULT"
    if not name or len(name) > 200:
        raise RulesError(f"bad recent list name `{name}`")
    seconds = parse_number(options["--seconds"].value, "--seconds") if "--seconds" in options else 0
    hitcount = (
        parse_number(options["--hitcount"].value, "--hitcount") if "--hitcount" in options else 0
    )
    reap = "--reap" in options
    if hitcount > RECENT_STAMPS_MAX:
        raise RulesError(f"--hitcount {hitcount} above the kernel's limit {RECENT_STAMPS_MAX}")
    if (seconds or hitcount or reap) and command in ("--set", "--remove"):
        raise RulesError(f"--seconds, --hitcount and --reap make no sense with {command}")
    if reap and not seconds:
        raise RulesError("--reap needs --seconds")
    if "--rsource" in options and "--rdest" in options:
        raise RulesError("give only one of --rsource and --rdest")
    use_dst = "--rdest" in options
    mask = 0xFFFFFFFF
    if "--mask" in options:
        try:
            mask = Cidr.parse(f"0.0.0.0/{options['--mask'].value}").mask
        except ValueError:
            raise RulesError(f"bad --mask `{options['--mask'].value}`") from None
    do_set, do_remove, do_update = command == "--set", command == "--remove", command == "--update"

    def test(packet: Packet, ctx: PacketContext) -> bool:
        lists = ctx.state.recent
        table = lists.get(name)
        if table is None:
            table = lists[name] = {}
        addr = (packet.dst if use_dst else packet.src) & mask
        now = ctx.now
        ret = invert
        entry = table.get(addr)
        if entry is None:
            if not do_set:
                return ret
            if len(table) >= RECENT_LIST_MAX:  # the least recently updated entry makes room
                del table[next(iter(table))]
            table[addr] = RecentEntry([now])
            return not ret
        if do_set:
            ret = not ret
        elif do_remove:
            del table[addr]
            return not ret
        else:
            horizon = now - seconds
            hits = 0
            for stamp in entry.last_seen:
                if seconds and stamp < horizon:
                    continue
                hits += 1
                if not hitcount or hits >= hitcount:
                    ret = not ret
                    break
            if reap:
                # The kernel reaps one entry per packet: the least recently updated one, when
                # its newest stamp is older than the window (and it is not about to be updated).
                oldest_addr = next(iter(table))
                oldest = table[oldest_addr]
                keep = oldest is entry and do_update and ret
                if not keep and oldest.last_seen[-1] < horizon:
                    del table[oldest_addr]
        if do_set or (do_update and ret):
            entry.last_seen.append(now)
            del entry.last_seen[:-RECENT_STAMPS_MAX]
            table.pop(addr, None)
            table[addr] = entry  # move to the most recently updated end
        return ret

    return CompiledMatch(test, pure=False)


def _set(options: dict[str, Option], env: MatchEnv) -> CompiledMatch:
    """``-m set [!] --match-set NAME FLAGS``: one hash lookup in a set (``netfilter.ipset``)."""
    opt = options.get("--match-set")
    if opt is None:
        raise RulesError("-m set needs --match-set NAME src|dst[,…]")
    name, flags = opt.values[0], parse_flags(opt.values[1])
    ipset = (env.ipsets or {}).get(name)
    if ipset is None:
        raise RulesError(f"ipset {name} does not exist", hint="create the set before the rule")
    neg = opt.negated

    def test(packet: Packet, ctx: PacketContext) -> bool:
        ctx.map_lookups += 1
        return ipset.test(packet, flags) != neg

    return CompiledMatch(test)


MODULES: dict[str, MatchModule] = {
    m.name: m
    for m in (
        MatchModule("tcp", _TCP_OPTIONS, _ports, needs_ports=True),
        MatchModule("udp", _PORT_OPTIONS, _ports, needs_ports=True),
        MatchModule("sctp", _PORT_OPTIONS, _ports, needs_ports=True),
        MatchModule(
            "multiport",
            (
                OptionDef(("--destination-ports", "--dports"), invertible=True),
                OptionDef(("--source-ports", "--sports"), invertible=True),
                OptionDef(("--ports",), invertible=True),
            ),
            _multiport,
            needs_ports=True,
        ),
        MatchModule(
            "addrtype",
            (
                OptionDef(("--src-type",), invertible=True),
                OptionDef(("--dst-type",), invertible=True),
                OptionDef(("--limit-iface-in",), nargs=0),
                OptionDef(("--limit-iface-out",), nargs=0),
            ),
            _addrtype,
        ),
        MatchModule("mark", (OptionDef(("--mark",), invertible=True),), _mark),
        MatchModule("conntrack", (OptionDef(("--ctstate",), invertible=True),), _conntrack),
        MatchModule("state", (OptionDef(("--state",), invertible=True),), _state),
        MatchModule(
            "statistic",
            (
                OptionDef(("--mode",)),
                OptionDef(("--probability",), invertible=True),
                OptionDef(("--every",), invertible=True),
                OptionDef(("--packet",)),
            ),
            _statistic,
        ),
        MatchModule("recent", _RECENT_OPTIONS, _recent),
        MatchModule("set", (OptionDef(("--match-set",), nargs=2, invertible=True),), _set),
        MatchModule(
            "comment", (OptionDef(("--comment",)),), _comment, lenient=frozenset({"--comment"})
        ),
    )
}
# The modules -p loads implicitly when their options follow without -m (iptables does this).
IMPLICIT_BY_PROTOCOL: dict[int, str] = {6: "tcp", 17: "udp", 132: "sctp"}


def find_module(name: str) -> MatchModule:
    """The match module called ``name``; a clear error when it is unknown or not modelled."""
    module = MODULES.get(name.lower())
    if module is not None:
        return module
    if name.lower() in NOT_MODELLED:
        raise RulesError(
            f"match module `{name}` is not modelled by k8snet_sim",
            hint=f"modelled modules: {', '.join(MODULES)}",
        )
    raise RulesError(
        f"unknown match module `{name}`", hint=f"modelled modules: {', '.join(MODULES)}"
    )


def build_match(name: str, options: list[Option], env: MatchEnv) -> CompiledMatch:
    """Compile one ``-m name`` with its options (given with canonical names)."""
    module = find_module(name)
    if module.needs_ports and env.protocol not in PORT_PROTOCOLS:
        raise RulesError(
            f"-m {module.name} needs -p tcp, -p udp or -p sctp",
            hint="the kernel refuses port matches without a (non-negated) port protocol",
        )
    if module.name in ("tcp", "udp", "sctp") and env.protocol != PROTOCOLS[module.name]:
        raise RulesError(f"-m {module.name} needs -p {module.name}")
    spellings = {spelling: d.names[0] for d in module.options for spelling in d.names}
    by_name: dict[str, Option] = {}
    for opt in options:
        canonical = spellings.get(opt.name)
        if canonical is None:
            raise RulesError(f"-m {module.name} has no option {opt.name}")
        if canonical in by_name:
            raise RulesError(f"-m {module.name}: {opt.name} given twice")
        by_name[canonical] = opt if canonical == opt.name else opt._replace(name=canonical)
    return module.build(by_name, env)
