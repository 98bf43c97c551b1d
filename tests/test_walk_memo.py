"""The walk memo of the iptables engine (netfilter.engine.WalkMemo): a memoised walk gives the
verdict and the rule count of a plain walk, for every packet, and is only used where a walk
can have no effect and reads nothing undeclared."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from k8snet_sim.net.addr import ip
from k8snet_sim.net.packet import TCP, UDP, Packet
from k8snet_sim.netfilter.context import ConnState, Hook, NetfilterState, PacketContext
from k8snet_sim.netfilter.engine import TableEngine, WalkMemo
from k8snet_sim.netfilter.iptables_save import parse_iptables_save
from k8snet_sim.netfilter.matches import MODULES, READABLE, MatchEnv, Option, build_match
from k8snet_sim.netfilter.rules import Rule

ADDRESSES = [ip(a) for a in ("10.0.0.1", "10.0.0.2", "10.244.1.5", "192.168.0.2", "127.0.0.1")]
LOCAL = {ip("192.168.0.2"), ip("127.0.0.1")}
IFACES = [None, "eth0", "cni0", "veth1"]
PORTS = [53, 80, 8080, 30080]

# Rule fragments: every match the memo may key on, and some it must refuse.
PURE_MATCHES = [
    "",
    "-s 10.0.0.0/8",
    "! -s 10.244.0.0/16",
    "-d 10.0.0.2",
    "! -d 127.0.0.0/8",
    "-p tcp",
    "-p udp",
    "-p tcp --dport 80",
    "-p tcp ! --dport 8080",
    "-p tcp --sport 1024:65535",
    "-p tcp --syn",
    "-p tcp --tcp-flags SYN,ACK ACK",
    "-p udp -m multiport --dports 53,80",
    "-i eth0",
    "! -o cni0",
    "-o veth+",
    "-m conntrack --ctstate NEW",
    "-m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT",
    "-m state --state INVALID",
    "-m mark --mark 0x4000/0x4000",
    "-m addrtype --dst-type LOCAL",
    "-m addrtype ! --src-type LOCAL",
    '-m comment --comment "just a comment"',
]
IMPURE_MATCHES = ["-m statistic --mode random --probability 0.5"]
PURE_TARGETS = ["ACCEPT", "DROP", "REJECT", "RETURN", "LOG --log-prefix memo"]
IMPURE_TARGETS = ["MARK --or-mark 0x4000"]


class Coin:
    """A Chooser that alternates, so impure rules give different answers packet to packet."""

    def __init__(self) -> None:
        self.n = 0

    def choose(self, weights: list[float], label: str) -> int:
        self.n += 1
        return self.n % 2

    def pick(self, options: int, default: int, label: str) -> int:
        return default


@st.composite
def rulesets(draw: Any) -> str:
    """An iptables-save filter table: builtin chains and user chains that jump only forward
    (no loops), mostly pure rules and sometimes an impure one."""
    impure = draw(st.booleans())
    matches = PURE_MATCHES + (IMPURE_MATCHES if impure else [])
    targets = PURE_TARGETS + (IMPURE_TARGETS if impure else [])
    users = [f"U{i}" for i in range(draw(st.integers(0, 3)))]
    lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD DROP [0:0]", ":OUTPUT ACCEPT [0:0]"]
    lines += [f":{u} - [0:0]" for u in users]
    for chain in ["INPUT", "FORWARD", "OUTPUT", *users]:
        reachable = users[users.index(chain) + 1 :] if chain in users else users
        for _ in range(draw(st.integers(0, 6))):
            match = draw(st.sampled_from(matches))
            if chain in ("OUTPUT",) and match.startswith("-i"):
                match = ""
            if chain == "INPUT" and ("-o " in match):
                match = ""
            choices = targets + ([f"-j {u}" for u in reachable] if reachable else [])
            target = draw(st.sampled_from(choices))
            target = target if target.startswith("-j") else f"-j {target}"
            if target == "-j RETURN" and chain not in users:
                target = "-j ACCEPT"
            lines.append(f"-A {chain} {match} {target}".replace("  ", " "))
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


packets = st.builds(
    lambda src, dst, proto, sport, dport, flags, mark: Packet(
        src=src, dst=dst, proto=proto, sport=sport, dport=dport, flags=flags, mark=mark
    ),
    st.sampled_from(ADDRESSES),
    st.sampled_from(ADDRESSES),
    st.sampled_from([TCP, UDP]),
    st.sampled_from([1000, 40000]),
    st.sampled_from(PORTS),
    st.sampled_from(["S", "A", "SA", "PA", "F"]),
    st.sampled_from([0, 0x4000, 0x4001]),
)
contexts = st.tuples(
    st.sampled_from([Hook.PREROUTING, Hook.INPUT, Hook.FORWARD, Hook.OUTPUT]),
    st.sampled_from(list(ConnState)),
    st.booleans(),
    st.booleans(),
    st.sampled_from(IFACES),
    st.sampled_from(IFACES),
)


def _context(spec: tuple[Any, ...], chooser: Coin, events: list[Any] | None) -> PacketContext:
    hook, state, dnat, snat, in_iface, out_iface = spec
    ctx = PacketContext(
        hook, 0.0, chooser, NetfilterState(), lambda a: a in LOCAL, in_iface, out_iface
    )
    ctx.ct_state, ctx.ct_dnat, ctx.ct_snat, ctx.events = state, dnat, snat, events
    return ctx


def _copy(p: Packet) -> Packet:
    return Packet(p.src, p.dst, p.proto, p.sport, p.dport, p.flags, mark=p.mark)


def _variants(packet: Packet, spec: tuple[Any, ...]) -> list[tuple[Packet, tuple[Any, ...]]]:
    """The case, then the case with one input changed at a time: if an input the rules read
    were missing from the memo key, a variant would find the first case's answer."""
    out = [(packet, spec)]
    packet_values: tuple[tuple[str, list[Any]], ...] = (
        ("src", [*ADDRESSES[:2], ip("192.168.0.2")]),
        ("dst", [*ADDRESSES[:2], ip("192.168.0.2")]),
        ("proto", [TCP, UDP]),
        ("sport", [1000, 40000]),
        ("dport", [80, 8080, 53]),
        ("flags", ["S", "A"]),
        ("mark", [0, 0x4000]),
    )
    for name, values in packet_values:
        for value in values:
            if getattr(packet, name) != value:
                variant = _copy(packet)
                setattr(variant, name, value)
                out.append((variant, spec))
    context_values: tuple[tuple[int, list[Any]], ...] = (
        (1, list(ConnState)),
        (2, [False, True]),
        (3, [False, True]),
        (4, IFACES),
        (5, IFACES),
    )
    for index, values in context_values:
        for value in values:
            if spec[index] != value:
                out.append((packet, (*spec[:index], value, *spec[index + 1 :])))
    return out


@settings(max_examples=150, deadline=None)
@given(rulesets(), st.lists(st.tuples(packets, contexts), min_size=1, max_size=6))
def test_memoised_walks_equal_plain_walks(text: str, drawn: list[Any]) -> None:
    table = parse_iptables_save(text).tables["filter"]
    memoised, plain = TableEngine(table), TableEngine(table)
    coin_a, coin_b = Coin(), Coin()
    cases = [v for packet, spec in drawn for v in _variants(packet, spec)]
    # Every case twice: the second time a memoised chain answers from its memo.
    for packet, spec in cases + cases:
        hook = spec[0]
        if hook is Hook.PREROUTING:  # no filter chain there: both accept without a walk
            hook = Hook.FORWARD
        spec = (hook, *spec[1:])
        p1, p2 = _copy(packet), _copy(packet)
        ctx1 = _context(spec, coin_a, None)
        ctx2 = _context(spec, coin_b, [])  # recording events: the memo is never used
        r1 = memoised.run(hook, p1, ctx1)
        r2 = plain.run(hook, p2, ctx2)
        assert (r1.verdict, r1.reason, r1.reject_with) == (r2.verdict, r2.reason, r2.reject_with)
        assert ctx1.rules_walked == ctx2.rules_walked
        assert ctx1.map_lookups == ctx2.map_lookups
        assert p1 == p2  # neither walk changed the packet differently
    assert coin_a.n == coin_b.n  # impure matches ran exactly as often


FORWARD = """*filter
:FORWARD ACCEPT [0:0]
:KUBE-FORWARD - [0:0]
-A FORWARD -m conntrack --ctstate NEW -j KUBE-FORWARD
-A FORWARD -j KUBE-FORWARD
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
"""


def _established(hook: Hook = Hook.FORWARD) -> PacketContext:
    ctx = PacketContext(hook, 0.0, Coin(), NetfilterState(), lambda a: False, "eth0", "cni0")
    ctx.ct_state = ConnState.ESTABLISHED
    return ctx


def test_established_forwarding_answers_from_the_memo_with_the_same_count() -> None:
    engine = TableEngine(parse_iptables_save(FORWARD).tables["filter"])
    memo = engine._starts["FORWARD"].memo
    assert memo is not None and memo.fields == ("mark", "ct_dnat", "ct_snat", "ct_state")
    counts = []
    for sport in (40000, 40001, 40002):  # different connections, one key
        ctx = _established()
        pkt = Packet(src=ip("10.244.1.2"), dst=ip("10.244.2.3"), proto=TCP, sport=sport, dport=80)
        assert engine.run(Hook.FORWARD, pkt, ctx).verdict.value == "ACCEPT"
        counts.append(ctx.rules_walked)
    assert counts == [5, 5, 5] and len(memo.results) == 1


def test_changing_the_table_drops_the_memo() -> None:
    ruleset = parse_iptables_save(FORWARD)
    pkt = Packet(src=ip("10.244.1.2"), dst=ip("10.244.2.3"), proto=TCP, dport=80)
    assert ruleset.run("filter", Hook.FORWARD, pkt, _established()).verdict.value == "ACCEPT"
    ruleset.tables["filter"].chains["KUBE-FORWARD"].rules.insert(
        0, Rule.parse("-j DROP", table="filter", chain="KUBE-FORWARD")
    )
    ctx = _established()
    assert ruleset.run("filter", Hook.FORWARD, pkt, ctx).verdict.value == "DROP"
    assert ctx.rules_walked == 3


@pytest.mark.parametrize(
    "rule",
    [
        "-A FORWARD -m statistic --mode random --probability 0.5 -j ACCEPT",
        "-A FORWARD -m statistic --mode nth --every 2 -j ACCEPT",
        "-A FORWARD -m recent --name x --set -j ACCEPT",
        "-A FORWARD -j MARK --or-mark 0x4000",
        "-A FORWARD -j U",  # U marks packets: reachable impurity
    ],
)
def test_walks_with_effects_are_never_memoised(rule: str) -> None:
    text = (
        f"*filter\n:FORWARD ACCEPT [0:0]\n:U - [0:0]\n{rule}\n-A U -j MARK --set-mark 1\nCOMMIT\n"
    )
    engine = TableEngine(parse_iptables_save(text).tables["filter"])
    assert engine._starts["FORWARD"].memo is None


def test_every_match_module_declares_what_it_reads_or_is_never_memoised() -> None:
    """The proof the memo key is complete lives with each builder: a pure match declares what
    it reads (a subset of READABLE); statistic, recent and set declare nothing."""
    examples = {
        "tcp": [Option("--destination-port", ("80",)), Option("--tcp-flags", ("SYN", "SYN"))],
        "udp": [Option("--source-port", ("53",))],
        "sctp": [Option("--destination-port", ("80",))],
        "multiport": [Option("--destination-ports", ("80,443",))],
        "addrtype": [Option("--dst-type", ("LOCAL",))],
        "mark": [Option("--mark", ("0x4000",))],
        "conntrack": [Option("--ctstate", ("NEW",))],
        "state": [Option("--state", ("NEW",))],
        "statistic": [Option("--mode", ("random",)), Option("--probability", ("0.5",))],
        "recent": [Option("--name", ("x",)), Option("--set", ())],
        "comment": [Option("--comment", ("c",))],
    }
    protocols = {"tcp": TCP, "udp": UDP, "sctp": 132, "multiport": TCP}
    for name in MODULES:
        if name == "set":  # needs an ipset registry; reads a set's contents: never memoised
            continue
        env = MatchEnv("filter", "FORWARD", "label", protocols.get(name))
        compiled = build_match(name, examples[name], env)
        if name in ("statistic", "recent"):
            assert compiled.reads is None, name
        else:
            assert compiled.reads is not None and compiled.reads <= READABLE, name
    assert {"tcp", "udp", "sctp", "multiport", "addrtype", "mark", "conntrack", "state",
            "statistic", "recent", "comment", "set"} == set(MODULES)  # fmt: skip


def test_a_memo_cannot_key_on_something_unreadable() -> None:
    with pytest.raises(ValueError, match="ttl"):
        WalkMemo(frozenset({"dst", "ttl"}))
