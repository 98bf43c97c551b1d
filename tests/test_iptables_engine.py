"""Evaluating iptables rules: matches, targets and chain walking (netfilter.engine)."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from k8snet_sim.errors import RulesError
from k8snet_sim.net.addr import ip, ip_str
from k8snet_sim.net.packet import ICMP, SCTP, TCP, UDP, Packet
from k8snet_sim.netfilter.context import (
    ConnState,
    Hook,
    HookResult,
    NetfilterState,
    PacketContext,
    RuleEvent,
    Verdict,
)
from k8snet_sim.netfilter.iptables_save import parse_iptables_save
from k8snet_sim.netfilter.rules import IptablesRuleset

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared/reference/kube-proxy"
NODE_IP = "192.168.0.2"


class Script:
    """A Chooser that answers from a preset list (then 0) and records what it was asked."""

    def __init__(self, *answers: int) -> None:
        self.answers = list(answers)
        self.asked: list[tuple[list[float], str]] = []

    def choose(self, weights: list[float], label: str) -> int:
        self.asked.append((weights, label))
        return self.answers.pop(0) if self.answers else 0

    def pick(self, options: int, default: int, label: str) -> int:
        return default


@dataclass
class FakeNat:
    """Records NAT requests; rewrites the destination for DNAT as conntrack would."""

    packet: Packet | None = None
    calls: list[tuple[Any, ...]] = field(default_factory=list)

    def dnat(self, address: int, port: int | None = None) -> None:
        self.calls.append(("dnat", ip_str(address), port))
        if self.packet is not None:
            self.packet.dst = address
            self.packet.dport = port if port is not None else self.packet.dport

    def snat(self, address: int, port: int | None = None) -> None:
        self.calls.append(("snat", ip_str(address), port))

    def masquerade(self, *, random_fully: bool = False) -> None:
        self.calls.append(("masquerade", random_fully))

    def redirect(self, port: int | None = None) -> None:
        self.calls.append(("redirect", port))


def packet(
    src: str = "10.0.0.2",
    dst: str = "172.30.0.41",
    proto: int = TCP,
    sport: int = 40000,
    dport: int = 80,
    **kw: Any,
) -> Packet:
    return Packet(src=ip(src), dst=ip(dst), proto=proto, sport=sport, dport=dport, **kw)


def context(hook: Hook = Hook.INPUT, **kw: Any) -> PacketContext:
    kw.setdefault("chooser", Script())
    kw.setdefault("state", NetfilterState())
    kw.setdefault("events", [])
    return PacketContext(
        hook=hook,
        now=kw.pop("now", 0.0),
        is_local=kw.pop("is_local", lambda a: a == ip(NODE_IP)),
        **kw,
    )


def one_rule(match: str) -> IptablesRuleset:
    """filter INPUT with policy DROP and one ``match -j ACCEPT`` rule."""
    return parse_iptables_save(f"*filter\n:INPUT DROP [0:0]\n-A INPUT {match} -j ACCEPT\nCOMMIT\n")


def matches(match: str, pkt: Packet, ctx: PacketContext) -> bool:
    return one_rule(match).run("filter", Hook.INPUT, pkt, ctx).verdict is Verdict.ACCEPT


# --------------------------------------------------------------------------- matches

MATCHES: list[tuple[str, dict[str, Any], dict[str, Any], bool]] = [
    # (match text, packet fields, context fields, expected)
    ("-s 10.0.0.0/8", {}, {}, True),
    ("-s 10.0.0.0/8", {"src": "11.0.0.2"}, {}, False),
    ("! -s 10.0.0.0/8", {}, {}, False),
    ("! -s 10.0.0.0/8", {"src": "11.0.0.2"}, {}, True),
    ("-s 10.0.0.2", {}, {}, True),
    ("-s 10.0.0.3/32", {}, {}, False),
    ("-s 10.0.0.0/255.0.0.0", {}, {}, True),
    ("-d 172.30.0.41/32", {}, {}, True),
    ("-d 172.30.0.42", {}, {}, False),
    ("! -d 172.30.0.42", {}, {}, True),
    ("-d 0.0.0.0/0", {}, {}, True),
    ("-p tcp", {}, {}, True),
    ("-p udp", {}, {}, False),
    ("-p 6", {}, {}, True),
    ("-p all", {"proto": ICMP}, {}, True),
    ("! -p tcp", {"proto": UDP}, {}, True),
    ("! -p tcp", {}, {}, False),
    ("-p sctp", {"proto": SCTP}, {}, True),
    ("-p icmp", {"proto": ICMP}, {}, True),
    ("-i eth0", {}, {"in_iface": "eth0"}, True),
    ("-i eth0", {}, {"in_iface": "eth1"}, False),
    ("-i veth+", {}, {"in_iface": "veth12ab"}, True),
    ("! -i veth+", {}, {"in_iface": "veth12ab"}, False),
    ("-i +", {}, {"in_iface": None}, True),
    ("-i eth0", {}, {"in_iface": None}, False),
    ("! -i eth0", {}, {"in_iface": None}, True),
    ("-p tcp -m tcp --dport 80", {}, {}, True),
    ("-p tcp -m tcp --dport 81", {}, {}, False),
    ("-p tcp -m tcp ! --dport 81", {}, {}, True),
    ("-p tcp -m tcp --dport 79:81", {}, {}, True),
    ("-p tcp -m tcp --dport :79", {}, {}, False),
    ("-p tcp -m tcp --dport 80:", {}, {}, True),
    ("-p tcp -m tcp --sport 40000", {}, {}, True),
    ("-p tcp -m tcp ! --sport 1024:65535", {}, {}, False),
    ("-p tcp --dport 80", {}, {}, True),  # implicit -m tcp
    ("-p udp -m udp --dport 53", {"proto": UDP, "dport": 53}, {}, True),
    ("-p udp -m udp --dport 53", {"proto": TCP, "dport": 53}, {}, False),
    ("-p sctp -m sctp --dport 80", {"proto": SCTP}, {}, True),
    ("-p tcp -m tcp --syn", {"flags": "S"}, {}, True),
    ("-p tcp -m tcp --syn", {"flags": "SA"}, {}, False),
    ("-p tcp -m tcp ! --syn", {"flags": "A"}, {}, True),
    ("-p tcp -m tcp --tcp-flags SYN,ACK SYN", {"flags": "SP"}, {}, True),
    ("-p tcp -m tcp --tcp-flags ALL NONE", {"flags": ""}, {}, True),
    ("-p tcp -m multiport --dports 22,80,8000:8080", {}, {}, True),
    ("-p tcp -m multiport --dports 22,8000:8080", {"dport": 8080}, {}, True),
    ("-p tcp -m multiport --dports 22,8000:8080", {}, {}, False),
    ("-p tcp -m multiport ! --dports 22,443", {}, {}, True),
    ("-p tcp -m multiport --sports 40000", {}, {}, True),
    ("-p tcp -m multiport --ports 40000", {"dport": 1}, {}, True),
    ("-p tcp -m multiport --ports 1,2", {}, {}, False),
    ("-m addrtype --dst-type LOCAL", {"dst": NODE_IP}, {}, True),
    ("-m addrtype --dst-type LOCAL", {}, {}, False),
    ("-m addrtype ! --dst-type LOCAL", {}, {}, True),
    ("-m addrtype --src-type LOCAL", {"src": NODE_IP}, {}, True),
    ("-m addrtype --src-type LOCAL --dst-type LOCAL", {"src": NODE_IP}, {}, False),
    ("-m mark --mark 0x4000/0x4000", {"mark": 0x4001}, {}, True),
    ("-m mark --mark 0x4000/0x4000", {"mark": 0x1}, {}, False),
    ("-m mark ! --mark 0x4000/0x4000", {"mark": 0x1}, {}, True),
    ("-m mark --mark 5", {"mark": 5}, {}, True),
    ("-m mark --mark 5", {"mark": 7}, {}, False),
    ("-m mark --mark 010", {"mark": 8}, {}, True),  # strtoul: leading 0 is octal
    ("-m conntrack --ctstate NEW", {}, {}, True),
    ("-m conntrack --ctstate NEW", {}, {"ct_state": ConnState.ESTABLISHED}, False),
    ("-m conntrack --ctstate RELATED,ESTABLISHED", {}, {"ct_state": ConnState.RELATED}, True),
    ("-m conntrack ! --ctstate RELATED,ESTABLISHED", {}, {}, True),
    ("-m conntrack --ctstate INVALID", {}, {"ct_state": ConnState.INVALID}, True),
    ("-m conntrack --ctstate UNTRACKED", {}, {"ct_state": ConnState.UNTRACKED}, True),
    ("-m conntrack --ctstate DNAT", {}, {"ct_dnat": True}, True),
    ("-m conntrack --ctstate DNAT", {}, {"ct_snat": True}, False),
    ("-m conntrack --ctstate SNAT", {}, {"ct_snat": True}, True),
    ("-m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT", {}, {"ct_dnat": True}, False),
    ("-m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT", {}, {}, True),
    ("-m state --state NEW", {}, {}, True),
    ("-m state ! --state NEW", {}, {}, False),
    ("-m state --state ESTABLISHED", {}, {"ct_state": ConnState.ESTABLISHED}, True),
    ('-m comment --comment "anything at all"', {}, {}, True),
    ("-d 172.30.0.41 -p tcp -m tcp --dport 80 -m conntrack --ctstate NEW", {}, {}, True),
]


@pytest.mark.parametrize(("match", "pkt", "ctx", "expected"), MATCHES)
def test_match(match: str, pkt: dict[str, Any], ctx: dict[str, Any], expected: bool) -> None:
    assert matches(match, packet(**pkt), context(**ctx)) is expected


# --------------------------------------------------------------------------- targets


@pytest.mark.parametrize(
    ("target", "verdict", "reject_with", "effect"),
    [
        ("-j ACCEPT", Verdict.ACCEPT, "", "ACCEPT"),
        ("-j DROP", Verdict.DROP, "", "DROP"),
        ("-j REJECT", Verdict.REJECT, "icmp-port-unreachable", "REJECT (icmp-port-unreachable)"),
        ("-j REJECT --reject-with host-prohib", Verdict.REJECT, "icmp-host-prohibited", None),
        ("-p tcp -j REJECT --reject-with tcp-reset", Verdict.REJECT, "tcp-reset", None),
    ],
)
def test_verdict_targets(
    target: str, verdict: Verdict, reject_with: str, effect: str | None
) -> None:
    rules = parse_iptables_save(
        f'*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m comment --comment "c 1" {target}\nCOMMIT\n'
    )
    ctx = context()
    result = rules.run("filter", Hook.INPUT, packet(), ctx)
    assert result == HookResult(verdict, "filter/INPUT: c 1", reject_with)
    assert ctx.events is not None and len(ctx.events) == 1
    assert ctx.events[0].comment == "c 1"
    if effect:
        assert ctx.events[0].effect == effect


@pytest.mark.parametrize(
    ("before", "target", "after"),
    [
        (0x0, "--or-mark 0x4000", 0x4000),
        (0x4001, "--or-mark 0x4000", 0x4001),
        (0x4001, "--xor-mark 0x4000", 0x0001),
        (0x0001, "--xor-mark 0x4000", 0x4001),
        (0xFF, "--and-mark 0x0f", 0x0F),
        (0xFF, "--set-mark 0x100", 0x100),
        (0xFF, "--set-mark 0x1/0xf", 0xF1),
        (0xFF, "--set-mark 0x30/0x10", 0xFF),  # V|M cleared, then V xor-ed in: kernel's form
        (0xFF, "--set-xmark 0x4000/0x4000", 0x40FF),
        (0x40FF, "--set-xmark 0x4000/0x0", 0xFF),  # iptables-save's form of --xor-mark
        (0xF0, "--set-xmark 0x3/0xf", 0xF3),
        (0x12345678, "--set-xmark 0x0", 0x0),
    ],
)
def test_mark_arithmetic(before: int, target: str, after: int) -> None:
    rules = parse_iptables_save(
        f"*mangle\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j MARK {target}\nCOMMIT\n"
    )
    pkt, ctx = packet(mark=before), context(Hook.PREROUTING)
    assert rules.run("mangle", Hook.PREROUTING, pkt, ctx).accepted
    assert pkt.mark == after
    assert ctx.events is not None and ctx.events[0].effect.endswith(f"→ {after:#x}")
    assert ctx.rules_walked == 1


def test_mark_event_reads_naturally() -> None:
    rules = parse_iptables_save(
        "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j MARK --or-mark 0x4000\nCOMMIT\n"
    )
    ctx = context(Hook.PREROUTING)
    rules.run("nat", Hook.PREROUTING, packet(), ctx)
    assert ctx.events == [
        RuleEvent(
            "nat",
            "PREROUTING",
            "-A PREROUTING -j MARK --or-mark 0x4000",
            "",
            "MARK or 0x4000 → 0x4000",
        )
    ]


NAT_TEXT = """*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -p tcp -d 172.30.0.41 -j DNAT --to-destination 10.180.0.1:8080
-A PREROUTING -p tcp -d 172.30.0.42 -j DNAT --to-destination 10.180.0.2
-A PREROUTING -p tcp -d 172.30.0.43 -j REDIRECT --to-ports 15001
-A PREROUTING -p udp -j REDIRECT
-A PREROUTING -j LOG --log-prefix "never: "
-A POSTROUTING -s 10.0.0.0/8 -j MASQUERADE --random-fully
-A POSTROUTING -s 11.0.0.0/8 -j MASQUERADE
-A POSTROUTING -p tcp -j SNAT --to-source 192.168.0.2:5000
COMMIT
"""


@pytest.mark.parametrize(
    ("hook", "pkt", "calls", "effect", "walked"),
    [
        (Hook.PREROUTING, {}, [("dnat", "10.180.0.1", 8080)], "DNAT → 10.180.0.1:8080", 1),
        (Hook.PREROUTING, {"dst": "172.30.0.42"}, [("dnat", "10.180.0.2", None)],
         "DNAT → 10.180.0.2", 2),
        (Hook.PREROUTING, {"dst": "172.30.0.43"}, [("redirect", 15001)], "REDIRECT → :15001", 3),
        (Hook.PREROUTING, {"proto": UDP}, [("redirect", None)], "REDIRECT", 4),
        (Hook.POSTROUTING, {}, [("masquerade", True)], "MASQUERADE (random-fully)", 1),
        (Hook.POSTROUTING, {"src": "11.0.0.1"}, [("masquerade", False)], "MASQUERADE", 2),
        (Hook.POSTROUTING, {"src": "12.0.0.1"}, [("snat", "192.168.0.2", 5000)],
         "SNAT → 192.168.0.2:5000", 3),
    ],
)  # fmt: skip
def test_nat_targets_call_nat_actions_and_accept(
    hook: Hook, pkt: dict[str, Any], calls: list[tuple[Any, ...]], effect: str, walked: int
) -> None:
    p = packet(**pkt)
    nat = FakeNat(p)
    ctx = context(hook, nat=nat)
    result = parse_iptables_save(NAT_TEXT).run("nat", hook, p, ctx)
    assert result.accepted and result.reason.startswith(f"nat/{hook.value}: ")
    assert nat.calls == calls
    assert ctx.events is not None and [e.effect for e in ctx.events] == [effect]
    assert ctx.rules_walked == walked  # the NAT target ended the walk


def test_nat_target_without_nat_actions_is_an_error() -> None:
    with pytest.raises(RulesError, match=r"ctx\.nat is None"):
        parse_iptables_save(NAT_TEXT).run("nat", Hook.PREROUTING, packet(), context())


def test_log_does_not_terminate_and_no_target_only_counts() -> None:
    rules = parse_iptables_save(
        '*filter\n:INPUT DROP [0:0]\n-A INPUT -j LOG --log-prefix "in: " --log-level info\n'
        "-A INPUT -p tcp\n-A INPUT -s 10.0.0.0/8 -j ACCEPT\nCOMMIT\n"
    )
    ctx = context()
    assert rules.run("filter", Hook.INPUT, packet(), ctx).accepted
    assert ctx.events is not None and [e.effect for e in ctx.events] == ["LOG 'in: '", "ACCEPT"]
    assert ctx.rules_walked == 3


# --------------------------------------------------------------------------- walking

WALK = """*filter
:INPUT DROP [0:0]
:FORWARD - [0:0]
:OUTPUT ACCEPT [0:0]
:A - [0:0]
:B - [0:0]
:C - [0:0]
-A INPUT -s 10.0.0.1 -j ACCEPT
-A INPUT -j A
-A INPUT -d 172.30.0.41 -j ACCEPT
-A A -p udp -j DROP
-A A -s 10.0.0.3 -j RETURN
-A A -s 10.0.0.4 -g B
-A A -s 10.0.0.5 -j B
-A A -s 10.0.0.0/8 -j REJECT
-A B -d 172.30.0.99 -j ACCEPT
-A FORWARD -g C
-A OUTPUT -j RETURN
-A OUTPUT -j DROP
-A C -s 10.0.0.0/8 -j ACCEPT
COMMIT
"""


@pytest.mark.parametrize(
    ("hook", "pkt", "verdict", "walked", "effects"),
    [
        (Hook.INPUT, {"src": "10.0.0.1"}, Verdict.ACCEPT, 1, ["ACCEPT"]),
        (Hook.INPUT, {"proto": UDP}, Verdict.DROP, 3, ["jump A", "DROP"]),
        # RETURN pops back to INPUT's next rule.
        (Hook.INPUT, {"src": "10.0.0.3"}, Verdict.ACCEPT, 5, ["jump A", "RETURN", "ACCEPT"]),
        # goto B then falling off B returns to INPUT (A's REJECT is skipped).
        (Hook.INPUT, {"src": "10.0.0.4"}, Verdict.ACCEPT, 7, ["jump A", "goto B", "ACCEPT"]),
        # jump B then falling off B returns to A, whose REJECT applies.
        (Hook.INPUT, {"src": "10.0.0.5"}, Verdict.REJECT, 8,
         ["jump A", "jump B", "REJECT (icmp-port-unreachable)"]),
        (Hook.INPUT, {"src": "11.0.0.5", "dst": "9.9.9.9"}, Verdict.DROP, 8,
         ["jump A", "policy DROP"]),
        # goto from a builtin chain: falling off the user chain applies the policy ("-": ACCEPT).
        (Hook.FORWARD, {"src": "11.0.0.5"}, Verdict.ACCEPT, 2, ["goto C"]),
        # RETURN in a builtin chain applies its policy.
        (Hook.OUTPUT, {}, Verdict.ACCEPT, 1, ["RETURN"]),
    ],
)  # fmt: skip
def test_jump_goto_return_and_policies(
    hook: Hook, pkt: dict[str, Any], verdict: Verdict, walked: int, effects: list[str]
) -> None:
    ctx = context(hook)
    result = parse_iptables_save(WALK).run("filter", hook, packet(**pkt), ctx)
    assert result.verdict is verdict
    assert ctx.rules_walked == walked
    assert ctx.events is not None and [e.effect for e in ctx.events] == effects


def test_policy_result_names_the_chain() -> None:
    pkt = packet(src="11.0.0.5", dst="9.9.9.9")
    result = parse_iptables_save(WALK).run("filter", Hook.INPUT, pkt, context())
    assert result == HookResult(Verdict.DROP, "filter/INPUT policy DROP")


@pytest.mark.parametrize(
    ("table", "hook"),
    [("raw", Hook.PREROUTING), ("filter", Hook.PREROUTING), ("nat", Hook.FORWARD)],
)
def test_missing_tables_and_chains_accept(table: str, hook: Hook) -> None:
    rules = parse_iptables_save("*filter\n:INPUT DROP [0:0]\nCOMMIT\n*nat\nCOMMIT\n")
    ctx = context(hook)
    assert rules.run(table, hook, packet(), ctx).accepted
    assert ctx.rules_walked == 0 and ctx.events == []


def test_run_chain_reports_fall_through_as_none() -> None:
    rules = parse_iptables_save(WALK)
    assert rules.run_chain("filter", "B", packet(), context()) is None
    result = rules.run_chain("filter", "B", packet(dst="172.30.0.99"), context())
    assert result is not None and result.accepted
    with pytest.raises(RulesError):
        rules.run_chain("filter", "NOPE", packet(), context())


def test_events_are_optional() -> None:
    ctx = context(events=None)
    assert parse_iptables_save(WALK).run("filter", Hook.INPUT, packet(src="10.0.0.5"), ctx)
    assert ctx.events is None and ctx.rules_walked == 8


def test_changing_a_table_rebuilds_its_engine() -> None:
    rules = parse_iptables_save(WALK)
    assert rules.run("filter", Hook.INPUT, packet(proto=UDP), context()).verdict is Verdict.DROP
    rules.tables["filter"].chains["A"].rules.pop(0)
    assert rules.run("filter", Hook.INPUT, packet(proto=UDP), context()).verdict is Verdict.REJECT
    rules.tables["filter"].chains["INPUT"].policy = "ACCEPT"
    result = rules.run("filter", Hook.INPUT, packet(proto=UDP, src="11.0.0.1"), context())
    assert result.accepted


# --------------------------------------------------------------------------- statistic

SVC = """*nat
:PREROUTING ACCEPT [0:0]
:KUBE-SVC-A - [0:0]
:KUBE-SEP-1 - [0:0]
:KUBE-SEP-2 - [0:0]
:KUBE-SEP-3 - [0:0]
-A PREROUTING -d 172.30.0.41 -j KUBE-SVC-A
-A KUBE-SVC-A -m comment --comment "ns/a -> 1" -m statistic --mode random --probability 0.33333333349 -j KUBE-SEP-1
-A KUBE-SVC-A -m comment --comment "ns/a -> 2" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-2
-A KUBE-SVC-A -m comment --comment "ns/a -> 3" -j KUBE-SEP-3
-A KUBE-SEP-1 -p tcp -j DNAT --to-destination 10.180.0.1:80
-A KUBE-SEP-2 -p tcp -j DNAT --to-destination 10.180.0.2:80
-A KUBE-SEP-3 -p tcp -j DNAT --to-destination 10.180.0.3:80
COMMIT
"""  # noqa: E501


@pytest.mark.parametrize(
    ("answers", "endpoint", "labels"),
    [
        ((0,), "10.180.0.1", ["nat/KUBE-SVC-A: ns/a -> 1"]),
        ((1, 0), "10.180.0.2", ["nat/KUBE-SVC-A: ns/a -> 1", "nat/KUBE-SVC-A: ns/a -> 2"]),
        ((1, 1), "10.180.0.3", ["nat/KUBE-SVC-A: ns/a -> 1", "nat/KUBE-SVC-A: ns/a -> 2"]),
    ],
)
def test_statistic_random_asks_the_chooser(
    answers: tuple[int, ...], endpoint: str, labels: list[str]
) -> None:
    chooser = Script(*answers)
    nat = FakeNat()
    ctx = context(Hook.PREROUTING, chooser=chooser, nat=nat)
    assert parse_iptables_save(SVC).run("nat", Hook.PREROUTING, packet(), ctx).accepted
    assert nat.calls == [("dnat", endpoint, 80)]
    assert [label for _, label in chooser.asked] == labels
    # The kernel's probability: lround(2^31 p) / 2^31.
    assert chooser.asked[0][0][0] == 715827883 / 2**31
    if len(chooser.asked) > 1:
        assert chooser.asked[1][0] == [0.5, 0.5]


@pytest.mark.parametrize(
    ("match", "answer", "expected", "asked"),
    [
        ("--probability 0.25", 0, True, 1),
        ("--probability 0.25", 1, False, 1),
        ("! --probability 0.25", 0, False, 1),
        ("! --probability 0.25", 1, True, 1),
        ("--probability 1", 1, True, 0),
        ("--probability 0", 0, False, 0),
    ],
)
def test_statistic_random_negation_and_certainty(
    match: str, answer: int, expected: bool, asked: int
) -> None:
    chooser = Script(answer)
    pkt, ctx = packet(), context(chooser=chooser)
    assert matches(f"-m statistic --mode random {match}", pkt, ctx) is expected
    assert len(chooser.asked) == asked


@pytest.mark.parametrize(
    ("match", "pattern"),
    [
        ("--every 3", [True, False, False, True, False, False, True]),
        ("--every 3 --packet 2", [False, False, True, False, False, True, False]),
        ("! --every 2", [False, True, False, True]),
        ("--every 1", [True, True, True]),
    ],
)
def test_statistic_nth_counts_per_rule(match: str, pattern: list[bool]) -> None:
    rules = one_rule(f"-m statistic --mode nth {match}")
    state = NetfilterState()
    seen = [
        rules.run("filter", Hook.INPUT, packet(), context(state=state)).accepted for _ in pattern
    ]
    assert seen == pattern
    assert len(state.counters) == 1


# --------------------------------------------------------------------------- recent


def recent_run(rules: IptablesRuleset, state: NetfilterState, now: float, **pkt: Any) -> bool:
    ctx = context(state=state, now=now)
    return rules.run("filter", Hook.INPUT, packet(**pkt), ctx).accepted


def test_recent_set_then_rcheck_within_and_after_seconds() -> None:
    state = NetfilterState()
    setter = one_rule("-m recent --name L --set")
    check = one_rule("-m recent --name L --rcheck --seconds 10")
    assert not recent_run(check, state, 0.0)
    assert recent_run(setter, state, 0.0)  # --set always matches
    assert recent_run(check, state, 5.0)
    assert recent_run(check, state, 10.0)  # exactly --seconds old still counts
    assert not recent_run(check, state, 10.5)
    assert not recent_run(check, state, 5.0, src="10.0.0.9")  # another source
    assert recent_run(one_rule("-m recent --name L --rcheck"), state, 1e6)  # no --seconds
    assert list(state.recent) == ["L"] and list(state.recent["L"]) == [ip("10.0.0.2")]


def test_recent_update_refreshes_and_remove_forgets() -> None:
    state = NetfilterState()
    assert recent_run(one_rule("-m recent --set"), state, 0.0)
    update = one_rule("-m recent --update --seconds 10")
    assert recent_run(update, state, 8.0)
    assert recent_run(update, state, 16.0)  # 8.0 refreshed it
    assert not recent_run(update, state, 40.0)
    assert not recent_run(update, state, 45.0)  # a failed --update does not record
    assert state.recent["DEFAULT"][ip("10.0.0.2")].last_seen == [0.0, 8.0, 16.0]
    assert recent_run(one_rule("-m recent --remove"), state, 50.0)
    assert not recent_run(one_rule("-m recent --rcheck"), state, 50.0)
    assert not recent_run(one_rule("-m recent --remove"), state, 50.0)


def test_recent_hitcount_stamps_cap_and_inversion() -> None:
    state = NetfilterState()
    setter = one_rule("-m recent --set")
    for t in range(25):
        recent_run(setter, state, float(t))
    assert state.recent["DEFAULT"][ip("10.0.0.2")].last_seen == [float(t) for t in range(5, 25)]
    assert recent_run(one_rule("-m recent --rcheck --seconds 3 --hitcount 4"), state, 24.0)
    assert not recent_run(one_rule("-m recent --rcheck --seconds 3 --hitcount 5"), state, 24.0)
    assert not recent_run(one_rule("-m recent ! --rcheck"), state, 24.0)
    assert recent_run(one_rule("-m recent ! --rcheck --name OTHER"), state, 24.0)


def test_recent_rdest_and_mask() -> None:
    state = NetfilterState()
    assert recent_run(one_rule("-m recent --rdest --mask 255.255.255.0 --set"), state, 0.0)
    check = one_rule("-m recent --rdest --mask 255.255.255.0 --rcheck")
    assert recent_run(check, state, 1.0, dst="172.30.0.200", src="1.1.1.1")
    assert not recent_run(check, state, 1.0, dst="172.30.1.41")
    assert list(state.recent["DEFAULT"]) == [ip("172.30.0.0")]


def test_recent_reap_removes_the_oldest_expired_entry() -> None:
    state = NetfilterState()
    setter = one_rule("-m recent --set")
    recent_run(setter, state, 0.0, src="10.0.0.7")
    recent_run(setter, state, 50.0, src="10.0.0.8")
    recent_run(setter, state, 60.0)
    reaper = one_rule("-m recent --rcheck --seconds 20 --reap")
    assert recent_run(reaper, state, 65.0)
    assert list(state.recent["DEFAULT"]) == [ip("10.0.0.8"), ip("10.0.0.2")]
    assert recent_run(reaper, state, 66.0)  # 10.0.0.8 is 16 s old: kept
    assert len(state.recent["DEFAULT"]) == 2


def test_recent_list_keeps_at_most_100_addresses() -> None:
    state = NetfilterState()
    setter = one_rule("-m recent --set")
    for k in range(101):
        recent_run(setter, state, float(k), src=f"10.1.{k // 256}.{k % 256}")
    addresses = list(state.recent["DEFAULT"])
    assert len(addresses) == 100 and addresses[0] == ip("10.1.0.1")


AFFINITY = """*nat
:PREROUTING ACCEPT [0:0]
:KUBE-SVC-A - [0:0]
:KUBE-SEP-1 - [0:0]
:KUBE-SEP-2 - [0:0]
-A PREROUTING -d 172.30.0.41 -p tcp -m tcp --dport 80 -j KUBE-SVC-A
-A KUBE-SVC-A -m recent --name KUBE-SEP-1 --rcheck --seconds 10800 --reap -j KUBE-SEP-1
-A KUBE-SVC-A -m recent --name KUBE-SEP-2 --rcheck --seconds 10800 --reap -j KUBE-SEP-2
-A KUBE-SVC-A -m statistic --mode random --probability 0.5 -j KUBE-SEP-1
-A KUBE-SVC-A -j KUBE-SEP-2
-A KUBE-SEP-1 -m recent --name KUBE-SEP-1 --set -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80
-A KUBE-SEP-2 -m recent --name KUBE-SEP-2 --set -m tcp -p tcp -j DNAT --to-destination 10.180.0.2:80
COMMIT
"""


def test_client_ip_affinity_sticks_until_the_timeout() -> None:
    rules, state = parse_iptables_save(AFFINITY), NetfilterState()

    def connect(now: float, answer: int) -> str:
        nat = FakeNat()
        ctx = context(Hook.PREROUTING, state=state, now=now, chooser=Script(answer), nat=nat)
        rules.run("nat", Hook.PREROUTING, packet(), ctx)
        return str(nat.calls[0][1])

    assert connect(0.0, 1) == "10.180.0.2"
    assert connect(100.0, 0) == "10.180.0.2"  # the chooser would say endpoint 1
    assert connect(100.0 + 10800, 0) == "10.180.0.2"  # each connection refreshes the stamp
    assert connect(200.0 + 2 * 10800, 0) == "10.180.0.1"  # expired: chosen afresh
    assert connect(300.0 + 2 * 10800, 1) == "10.180.0.1"


# --------------------------------------------------------------------------- upstream


def _branches(run: Any) -> list[Any]:
    """Run once per path through the random decisions, depth first, "match" before "not"."""
    results: list[Any] = []
    todo: list[list[int]] = [[]]
    while todo:
        prefix = todo.pop()
        chooser = Script(*prefix)
        results.append(run(chooser))
        answers = prefix + [0] * (len(chooser.asked) - len(prefix))
        for k in range(len(prefix), len(answers)):  # deepest alternative is popped first
            todo.extend([*answers[:k], alt] for alt in range(len(chooser.asked[k][0]) - 1, 0, -1))
    return results


def upstream_trace(rules: IptablesRuleset, src: str, dst: str, dport: int) -> tuple[str, bool]:
    """Upstream's tracePacket (§5.3 of the reference) on top of this engine."""
    is_local = {ip(NODE_IP), ip("127.0.0.1")}.__contains__

    def run(chooser: Script) -> tuple[str | None, int]:
        pkt = packet(src=src, dst=dst, dport=dport)
        nat = FakeNat(pkt)
        ctx = context(Hook.PREROUTING, chooser=chooser, nat=nat, is_local=is_local)
        rules.run("nat", Hook.PREROUTING, pkt, ctx)
        dnat = f"{nat.calls[0][1]}:{nat.calls[0][2]}" if nat.calls else None
        return dnat, pkt.mark

    outputs, masq = [], False
    for dnat, mark in _branches(run):
        if dnat:
            outputs.append(dnat)
        masq = masq or bool(mark & 0x4000)
    routed_to = outputs[0].split(":")[0] if outputs else dst
    for chain in (
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-PROXY-FIREWALL",
    ):
        if chain in rules.tables["filter"].chains:
            ctx = context(Hook.FORWARD, is_local=is_local)
            result = rules.run_chain(
                "filter", chain, packet(src=src, dst=routed_to, dport=dport), ctx
            )
            if result is not None:
                outputs.append(result.verdict.value)
    return ", ".join(outputs), masq


def _upstream_rows() -> list[dict[str, str]]:
    if not REFERENCE.is_dir():
        return []
    with (REFERENCE / "packet-flow-cases.csv").open() as f:
        return [row for row in csv.DictReader(f) if row["fixture"]]


@pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"upstream reference not found at {REFERENCE}")
@pytest.mark.parametrize("row", _upstream_rows(), ids=lambda row: row["id"])
def test_upstream_packet_flow_cases_through_the_fixtures(row: dict[str, str]) -> None:
    rules = parse_iptables_save((REFERENCE / row["fixture"]).read_text())
    if "tracepackets" not in row["fixture"]:  # the other fixtures lack the entry jumps
        rules = rules.with_jump_rules([("nat", "PREROUTING", "-j KUBE-SERVICES")])
    output, masq = upstream_trace(rules, row["source_ip"], row["dest_ip"], int(row["dest_port"]))
    assert (output, masq) == (row["expected_output"], row["expected_masq"] == "true")
