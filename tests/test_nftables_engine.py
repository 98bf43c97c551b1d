"""The nftables engine: text round trips, rule semantics, and packet flows.

Packet flows run generated kube-proxy rulesets end to end: ``sync`` text → ``parse_nft`` →
``install_nftables`` into a :class:`NetfilterStack` (conntrack and the NAT core included) →
PREROUTING/INPUT/FORWARD/POSTROUTING (or OUTPUT/POSTROUTING for the node's own packets).
Every ``numgen`` branch is enumerated with a scripted chooser, so a case lists every endpoint
a first packet can reach, in branch order, and whether it was masqueraded — the shape of
upstream's ``packetFlowTest`` tables (reference §5.7/§5.8), with our own data.

Where nftables mode differs from iptables mode: ``127.0.0.1:<nodePort>`` is not a NodePort
(no localhost NodePorts), traffic to an unused port of a ClusterIP is rejected and to an
unallocated ClusterIP dropped (``cluster-ips-check``), and there is no healthCheckNodePort rule.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from k8snet_sim.cluster.model import (
    ClusterState,
    Endpoint,
    KubeProxyConfig,
    Node,
    Service,
    ServicePort,
)
from k8snet_sim.errors import RulesError
from k8snet_sim.net.addr import ip, ip_str
from k8snet_sim.net.packet import SCTP, TCP, UDP, Packet
from k8snet_sim.netfilter.conntrack import ConntrackTable
from k8snet_sim.netfilter.context import (
    ConnState,
    Hook,
    NetfilterState,
    PacketContext,
    RuleEvent,
)
from k8snet_sim.netfilter.hooks import NetfilterStack, Skb, new_context
from k8snet_sim.netfilter.nftables import (
    NftRuleset,
    install_nftables,
    parse_nft,
    parse_priority,
    render_priority,
)
from k8snet_sim.proxy.nftables import ruleset, sync
from k8snet_sim.sim.choice import ScriptedChooser, explore

NODE = "test-node"
NODE_IP = "192.168.0.2"
POD = "10.0.0.2"
EXTERNAL = "203.0.113.2"
BLOCKED = "203.0.113.130"  # outside loadBalancerSourceRanges 203.0.113.0/25
LOCALHOST = "127.0.0.1"

# --- building clusters ------------------------------------------------------------------------


def p80(node_port: int = 0, protocol: str = "TCP", name: str = "p80") -> tuple[ServicePort, ...]:
    return (ServicePort(name, protocol, 80, 80, node_port),)


def ep(address: str, node: str | None = "host1", **kw: bool) -> Endpoint:
    return Endpoint(address, 80, node, **kw)  # type: ignore[arg-type]


def state_of(*services: tuple[Service, tuple[Endpoint, ...]], **proxy: object) -> ClusterState:
    options = {"mode": "nftables", "cluster_cidr": "10.0.0.0/8"} | proxy
    return ClusterState(
        service_cidr="172.30.0.0/16",
        pod_cidr="10.0.0.0/8",
        node_port_range=(30000, 32767),
        nodes=(Node(NODE, NODE_IP, "10.0.0.0/24", "lan"),),
        pods=(),
        services=tuple(s for s, _ in services),
        endpoints={(s.key, p.name): eps for s, eps in services for p in s.ports},
        kube_proxy=KubeProxyConfig(**options),  # type: ignore[arg-type]
    )


def rules_of(*services: tuple[Service, tuple[Endpoint, ...]], **proxy: object) -> NftRuleset:
    return parse_nft(sync(state_of(*services, **proxy), NODE), file="generated")


# --- one packet through the node's hooks ------------------------------------------------------


class _Addressing:
    """The node's interfaces, for MASQUERADE: eth0 carries the node IP, lo 127.0.0.1."""

    def iface_address(self, iface: str, toward: int | None) -> int | None:
        return ip(LOCALHOST) if iface == "lo" else ip(NODE_IP)


def is_local(address: int) -> bool:
    return address == ip(NODE_IP) or address >> 24 == 127


@dataclass
class Outcome:
    verdict: str  # ACCEPT / DROP / REJECT
    endpoint: str  # "ip:port" after DNAT, "" when not DNATed
    masq: bool  # the connection was masqueraded
    reason: str
    rules_walked: int
    map_lookups: int
    events: list[RuleEvent]


def send(
    rs: NftRuleset,
    src: str,
    dst: str,
    dport: int,
    proto: int = TCP,
    *,
    chooser: ScriptedChooser | None = None,
    state: NetfilterState | None = None,
    now: float = 0.0,
) -> Outcome:
    """The first packet of a connection, as the node's netfilter sees it."""
    stack = NetfilterStack()
    install_nftables(stack, rs)
    pkt = Packet(src=ip(src), dst=ip(dst), proto=proto, sport=40000, dport=dport, flags="S")
    own = is_local(pkt.src)  # the node's own connection: OUTPUT, not PREROUTING
    ctx = new_context(
        hook=Hook.OUTPUT if own else Hook.PREROUTING,
        now=now,
        chooser=chooser or ScriptedChooser(),
        state=state or NetfilterState(),
        is_local=is_local,
        in_iface=None if own else "eth0",
        out_iface=("lo" if is_local(pkt.dst) else "eth0") if own else None,
        events=[],
    )
    skb = Skb(pkt, ctx, conntrack=ConntrackTable(), addressing=_Addressing())

    def route() -> list[Hook]:
        """The hooks still ahead, decided from the destination as it is now (after DNAT)."""
        if ctx.hook is Hook.OUTPUT:
            ctx.out_iface = "lo" if is_local(pkt.dst) else "eth0"  # re-route after DNAT
            return [Hook.POSTROUTING]
        if ctx.hook is Hook.POSTROUTING:  # looped back to ourselves through lo
            ctx.in_iface, ctx.out_iface = "lo", None
            return [Hook.PREROUTING, Hook.INPUT] if own and is_local(pkt.dst) else []
        if ctx.hook is Hook.PREROUTING and not own:
            if is_local(pkt.dst):
                return [Hook.INPUT]
            ctx.out_iface = "eth0"
            return [Hook.FORWARD, Hook.POSTROUTING]
        return []

    hooks = [Hook.OUTPUT] if own else [Hook.PREROUTING]
    result = None
    while hooks:
        hook = hooks.pop(0)
        result = stack.run(hook, skb)
        if not result.accepted:
            break
        if not hooks:
            hooks = route()
    assert result is not None
    ct = skb.ct
    return Outcome(
        verdict=result.verdict.value,
        endpoint=f"{ip_str(pkt.dst)}:{pkt.dport}" if ct is not None and ct.dnat else "",
        masq=bool(ct is not None and ct.snat),
        reason=result.reason,
        rules_walked=ctx.rules_walked,
        map_lookups=ctx.map_lookups,
        events=ctx.events or [],
    )


def flow(rs: NftRuleset, src: str, dst: str, dport: int, proto: int = TCP) -> tuple[str, bool]:
    """(output, masq) in upstream's packetFlowTest form: every endpoint in branch order, or
    DROP/REJECT, or "" when nothing matched."""
    outcomes = [b.result for b in explore(lambda ch: send(rs, src, dst, dport, proto, chooser=ch))]
    masq = {o.masq for o in outcomes}
    assert len(masq) == 1, "branches disagree on masquerading"
    endpoints = [o.endpoint for o in outcomes if o.endpoint]
    if endpoints:
        assert len(endpoints) == len(outcomes)
        return ", ".join(endpoints), masq.pop()
    verdicts = {o.verdict for o in outcomes}
    assert len(verdicts) == 1
    verdict = verdicts.pop()
    return ("" if verdict == "ACCEPT" else verdict), masq.pop()


# --- text round trips -------------------------------------------------------------------------


def _feature_states() -> list[ClusterState]:
    lb = Service("ns1", "lb", "LoadBalancer", "172.30.0.41", p80(3001),
                 external_ips=("192.168.99.11",), load_balancer_ips=("1.2.3.4", "5.6.7.8"),
                 load_balancer_source_ranges=("192.168.0.0/24", "203.0.113.0/25"),
                 external_traffic_policy="Local", health_check_node_port=30000,
                 session_affinity="ClientIP")  # fmt: skip
    udp = Service("ns2", "dns", "ClusterIP", "172.30.0.10", p80(protocol="UDP", name="dns"))
    empty = Service("ns3", "none", "NodePort", "172.30.0.46", p80(3005))
    services = ((lb, (ep("10.180.0.1"), ep("10.180.2.1", NODE))), (udp, (ep("10.180.0.9"),)),
                (empty, ()))  # fmt: skip
    return [
        state_of(),
        state_of(*services),
        state_of(*services, cluster_cidr=None, masquerade_all=True),
        state_of(*services, nodeport_addresses=("192.168.0.0/24", "127.0.0.0/8")),
    ]


@pytest.mark.parametrize("state", _feature_states())
def test_generated_rulesets_round_trip(state: ClusterState) -> None:
    text = sync(state, NODE)
    parsed = parse_nft(text)
    assert parsed.render() == text
    assert parsed.table() == ruleset(state, NODE)


LIVE_NODE_STYLE = """\
# as a live node might list it: numeric priorities, counters, nft's own spellings
table ip kube-proxy {
\tcomment "rules for kube-proxy"
\tset affinity-X {
\t\ttype ipv4_addr
\t\tsize 65535
\t\tflags dynamic,timeout
\t\ttimeout 3h
\t\telements = { 10.0.0.9 timeout 3h expires 2h59m }
\t}
\tmap service-ips {
\t\ttype ipv4_addr . inet_proto . inet_service : verdict
\t\telements = { 172.30.0.41 . tcp . 80 : goto svc,
\t\t\t     172.30.0.41 . udp . 53 : drop }
\t}
\tchain nat-prerouting {
\t\ttype nat hook prerouting priority -100; policy accept;
\t\tcounter packets 12 bytes 720 jump services
\t}
\tchain nat-postrouting {
\t\ttype nat hook postrouting priority 100; policy accept;
\t\tmeta mark and 0x00004000 == 0x00000000 return
\t\tmeta mark set meta mark xor 0x00004000
\t\tmasquerade fully-random,persistent
\t}
\tchain services {
\t\tip daddr . meta l4proto . th dport vmap @service-ips
\t}
\tchain svc {
\t\tmeta mark set meta mark | 0x4000
\t\tip saddr @affinity-X goto ep
\t\tnumgen random mod 1 vmap { 0 : goto ep }
\t}
\tchain ep {
\t\tmeta l4proto tcp dnat ip to 10.180.0.1:8080
\t}
}
"""


def test_parser_reads_live_node_spellings() -> None:
    rs = parse_nft(LIVE_NODE_STYLE)
    table = rs.table("kube-proxy")
    assert table.chains["nat-prerouting"].priority == -100
    assert table.sets["affinity-X"].timeout == 10800
    assert table.sets["affinity-X"].elements[0].options == "timeout 3h expires 2h59m"
    assert table.elements("service-ips") == {
        "172.30.0.41 . tcp . 80": "goto svc",
        "172.30.0.41 . udp . 53": "drop",
    }
    # Rendering keeps what was read; the listed element is a member (it goes to `ep`
    # straight away, without the numgen lookup).
    assert parse_nft(rs.render()).render() == rs.render()
    out = send(rs, "10.0.0.9", "172.30.0.41", 80)
    assert (out.endpoint, out.masq) == ("10.180.0.1:8080", True)
    assert not any(e.rule.startswith("numgen") for e in out.events)
    assert send(rs, "10.0.0.7", "172.30.0.41", 53, UDP).verdict == "DROP"


@pytest.mark.parametrize(
    ("hook", "text", "value", "canonical"),
    [
        ("prerouting", "dstnat - 10", -110, "dstnat - 10"),
        ("prerouting", "dstnat-10", -110, "dstnat - 10"),
        ("output", "-110", -110, "-110"),  # dstnat is a prerouting name only
        ("output", "-100", -100, "-100"),
        ("input", "filter", 0, "filter"),
        ("input", "0", 0, "filter"),
        ("postrouting", "srcnat", 100, "srcnat"),
        ("forward", "filter + 5", 5, "filter + 5"),
        ("prerouting", "raw", -300, "raw"),
    ],
)
def test_priorities(hook: str, text: str, value: int, canonical: str) -> None:
    assert parse_priority(text, hook) == value
    assert render_priority(hook, value) == canonical


@pytest.mark.parametrize(
    ("hook", "text"), [("postrouting", "dstnat"), ("output", "dstnat"), ("input", "early")]
)
def test_bad_priorities(hook: str, text: str) -> None:
    with pytest.raises(ValueError):
        parse_priority(text, hook)


def table_text(*rules: str, base: str = "type filter hook input priority filter; policy accept;",
               extra: str = "") -> str:  # fmt: skip
    body = "\n".join(f"\t\t{r}" for r in rules)
    return (
        f"table ip t {{\n{extra}\tchain c {{\n\t\t{base}\n{body}\n\t}}\n"
        "\tchain other {\n\t\taccept\n\t}\n}\n"
    )


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (table_text('log prefix "x" accept'), 4, "`log` is not a modelled expression"),
        (table_text("ip6 daddr ::1 drop"), 4, "`ip6`"),
        (table_text("goto nowhere"), 4, "names no chain of table t"),
        (table_text("ip daddr @nothing drop"), 4, "`@nothing` names no set or map"),
        (table_text("tcp dport 80 accept drop"), 4, "`drop` follows the rule's verdict"),
        (table_text("tcp dport http accept"), 4, "`http` is not a valid value here"),
        (table_text("ct state bogus accept"), 4, "`bogus` is not a valid value here"),
        (table_text("numgen inc mod 2 vmap { 0 : accept }"), 4, "`numgen inc`"),
        (table_text("ip daddr"), 4, "ends where a value was expected"),
        (table_text("redirect to :http"), 4, "`:http` is not a port"),
        (
            table_text(
                "update @s { ip saddr timeout 5x }", extra="\tset s {\n\t\ttype ipv4_addr\n\t}\n"
            ),
            7,
            "`5x` is not a duration",
        ),
        (table_text("goto c", base="type filter hook input priority 0;"), 4, "base chain"),
        (table_text("tcp dport 80 dnat to 10.0.0.1:80"), 4, "NAT statement is not allowed"),
        (table_text("jump other", extra="\tchain loop {\n\t\tjump loop\n\t}\n"), 0, "chain loop"),
        (table_text("accept", base="type filter hook ingress priority 0;"), 3, "not modelled"),
        (table_text("accept", base="type nat hook forward priority 0;"), 3, "invalid base"),
        (table_text("accept", base="type filter hook input priority early;"), 3, "priority"),
        ("table inet t {\n}\n", 1, "family `inet` is not modelled"),
        ("table ip t {\n\tchain c {\n\t\taccept\n", 3, "unexpected end of input"),
        ("flush ruleset\n", 1, "expected `table ip NAME {`"),
        (
            "table ip t {\n\tset s {\n\t\ttype ipv4_addr\n\t\telements = { 300.1.1.1 }\n\t}\n}\n",
            4,
            "bad element",
        ),
        ("table ip t {\n\tset s {\n\t\tpolicy memory\n\t}\n}\n", 3, "`policy` in set s is not"),
    ],
)
def test_parse_errors_name_the_line_and_construct(text: str, line: int, message: str) -> None:
    with pytest.raises(RulesError) as caught:
        parse_nft(text, file="rules.nft")
    assert message in str(caught.value)
    assert caught.value.line == line and caught.value.file == "rules.nft"


# --- rule semantics ---------------------------------------------------------------------------


def ctx_for(
    *, hook: Hook = Hook.INPUT, state: ConnState = ConnState.NEW, dnat: bool = False,
    in_iface: str | None = "eth0", chooser: ScriptedChooser | None = None,
    events: list[RuleEvent] | None = None, now: float = 0.0,
    nf: NetfilterState | None = None,
) -> PacketContext:  # fmt: skip
    ctx = PacketContext(hook, now, chooser or ScriptedChooser(), nf or NetfilterState(),
                        is_local, in_iface=in_iface, ct_state=state, ct_dnat=dnat,
                        events=events)  # fmt: skip
    return ctx


def pkt(src: str = "10.0.0.2", dst: str = "192.168.0.2", dport: int = 80, proto: int = TCP,
        mark: int = 0) -> Packet:  # fmt: skip
    return Packet(src=ip(src), dst=ip(dst), proto=proto, sport=40000, dport=dport, mark=mark)


SETS = "\tset allowed {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = { 10.1.0.0/16, 10.0.0.2 }\n\t}\n"  # noqa: E501


@pytest.mark.parametrize(
    ("rule", "packet", "ctx_kw", "matches"),
    [
        ("ip saddr 10.0.0.0/8", pkt(), {}, True),
        ("ip saddr != 10.0.0.0/8", pkt(), {}, False),
        ("ip saddr 10.0.0.3", pkt(), {}, False),
        ("ip daddr { 1.2.3.4, 192.168.0.0/24 }", pkt(), {}, True),
        ("ip saddr @allowed", pkt(), {}, True),
        ("ip saddr @allowed", pkt(src="10.1.2.3"), {}, True),
        ("ip saddr != @allowed", pkt(src="10.2.0.1"), {}, True),
        ("meta l4proto tcp", pkt(), {}, True),
        ("meta l4proto udp", pkt(), {}, False),
        ("ip protocol 6", pkt(), {}, True),
        ("th dport 80", pkt(proto=SCTP), {}, True),
        ("tcp dport 80", pkt(proto=UDP), {}, False),
        ("udp dport != 53", pkt(proto=UDP), {}, True),
        ("th dport != 80", pkt(proto=1), {}, False),  # no transport header: never matches
        ("th dport { 53, 80 }", pkt(), {}, True),
        ("meta l4proto . th dport { tcp . 80 }", pkt(), {}, None),  # not modelled
        ("ct state new", pkt(), {}, True),
        ("ct state established,related", pkt(), {"state": ConnState.RELATED}, True),
        ("ct state { established, related }", pkt(), {}, False),
        ("ct state != new", pkt(), {"state": ConnState.INVALID}, True),
        ("ct status dnat", pkt(), {"dnat": True}, True),
        ("ct status dnat", pkt(), {}, False),
        ("fib daddr type local", pkt(), {}, True),
        ("fib saddr type local", pkt(), {}, False),
        ("fib saddr type local", pkt(src="127.0.0.1"), {}, True),
        ("meta mark & 0x4000 == 0", pkt(mark=0x4001), {}, False),
        ("mark and 0x4000 != 0", pkt(mark=0x4001), {}, True),
        ("meta mark 0x1", pkt(mark=1), {}, True),
        ('iifname "eth*"', pkt(), {}, True),
        ('iifname != "eth0"', pkt(), {"in_iface": None}, True),
        ('meta oifname "eth0"', pkt(), {}, False),
        ("ip saddr 10.0.0.0/8 ip daddr 192.168.0.2 tcp dport 80", pkt(), {}, True),
        ("ip saddr 10.0.0.0/8 ip daddr 192.168.0.3 tcp dport 80", pkt(), {}, False),
    ],
)
def test_matches(
    rule: str, packet: Packet, ctx_kw: dict[str, object], matches: bool | None
) -> None:
    text = table_text(f"{rule} accept", extra=SETS)
    if matches is None:
        with pytest.raises(RulesError):
            parse_nft(text)
        return
    result = parse_nft(text).run_chain("c", packet, ctx_for(**ctx_kw))  # type: ignore[arg-type]
    assert (result is not None and result.accepted) is matches


def test_jump_returns_goto_does_not() -> None:
    text = """table ip t {
\tchain base {
\t\ttype filter hook forward priority filter; policy drop;
\t\tjump marker
\t\tmeta mark 0x1 goto checks
\t\tdrop
\t}
\tchain marker {
\t\tmeta mark set 0x1
\t\treturn
\t\tmeta mark set 0x2
\t}
\tchain checks {
\t\ttcp dport 22 reject with tcp reset
\t\ttcp dport 23 reject
\t\ttcp dport 80 continue
\t\ttcp dport 80 accept
\t}
}
"""
    rs = parse_nft(text)

    def run(port: int) -> tuple[str, str, int]:
        packet = pkt(dport=port)
        result = rs.run_base("base", packet, ctx_for(hook=Hook.FORWARD))
        return result.verdict.value, result.reject_with, packet.mark

    assert run(22) == ("REJECT", "tcp-reset", 1)  # jump came back; return skipped mark 0x2
    assert run(23) == ("REJECT", "icmp-port-unreachable", 1)
    assert run(80) == ("ACCEPT", "", 1)  # continue goes on to the next rule
    # goto does not come back: falling off `checks` ends the base chain → policy drop.
    result = rs.run_base("base", pkt(dport=443), ctx_for(hook=Hook.FORWARD))
    assert result.verdict.value == "DROP" and "policy drop" in result.reason
    assert rs.run_chain("marker", pkt(), ctx_for()) is None  # return from the start: None


def test_costs_and_events_for_a_service_dispatch() -> None:
    rs = rules_of((Service("ns1", "svc1", "ClusterIP", "172.30.0.41", p80()),
                   (ep("10.180.0.1"), ep("10.180.0.2"))))  # fmt: skip
    out = send(rs, EXTERNAL, "172.30.0.41", 80, chooser=ScriptedChooser([1]))
    assert out.endpoint == "10.180.0.2:80" and out.masq
    acted = [(e.chain.split("-")[0], e.effect) for e in out.events]
    assert ("services", "goto service-ULMVA6XW-ns1/svc1/tcp/p80") in acted
    assert ("mark", "mark |= 0x4000") in acted
    assert ("masquerading", "mark ^= 0x4000") in acted
    assert ("masquerading", "masquerade") in acted
    assert any(e.effect == "dnat to 10.180.0.2:80" for e in out.events)
    dispatch = next(e for e in out.events if e.rule.startswith("numgen"))
    assert dispatch.effect.startswith("goto endpoint-") and dispatch.table == "kube-proxy"
    # Walked rules and lookups: fixed costs, counted per evaluated rule / per lookup.
    assert (out.rules_walked, out.map_lookups) == (18, 6)


def test_numgen_asks_the_chooser_with_equal_weights() -> None:
    rs = rules_of((Service("ns1", "svc1", "ClusterIP", "172.30.0.41", p80()),
                   tuple(ep(f"10.180.0.{i}") for i in range(1, 4))))  # fmt: skip
    chooser = ScriptedChooser([2])
    assert send(rs, POD, "172.30.0.41", 80, chooser=chooser).endpoint == "10.180.0.3:80"
    (decision,) = chooser.decisions
    assert decision.weights == [1.0, 1.0, 1.0]
    assert decision.label == "kube-proxy/service-ULMVA6XW-ns1/svc1/tcp/p80: numgen random mod 3"


def test_numgen_value_missing_from_the_map_ends_the_rule() -> None:
    rs = parse_nft(table_text("numgen random mod 3 vmap { 0 : drop, 1 : drop }", "accept"))
    assert rs.run_chain("c", pkt(), ctx_for(chooser=ScriptedChooser([2]))).accepted  # type: ignore[union-attr]


def test_lazy_parsing_defers_rule_errors_to_the_first_walk() -> None:
    text = table_text("accept", extra='\tchain bad {\n\t\tlog prefix "x"\n\t}\n')
    with pytest.raises(RulesError, match="`log`"):
        parse_nft(text)
    rs = parse_nft(text, lazy=True)
    assert rs.run_chain("c", pkt(), ctx_for()) is not None
    with pytest.raises(RulesError, match="`log`"):
        rs.run_chain("bad", pkt(), ctx_for())


def test_dnat_outside_a_nat_chain_evaluation_is_an_error() -> None:
    rs = parse_nft(table_text("accept", extra="\tchain d {\n\t\tdnat to 10.0.0.1\n\t}\n"))
    with pytest.raises(RulesError, match="outside a nat chain"):
        rs.run_chain("d", pkt(), ctx_for())


# --- session affinity: dynamic sets in simulated time -----------------------------------------


def affinity_rules(timeout: int = 60) -> NftRuleset:
    svc = Service("ns1", "svc1", "ClusterIP", "172.30.0.41", p80(), session_affinity="ClientIP",
                  session_affinity_timeout=timeout)  # fmt: skip
    return rules_of((svc, (ep("10.180.0.1"), ep("10.180.0.2"), ep("10.180.0.3"))))


def test_client_ip_affinity_sticks_until_the_timeout() -> None:
    rs = affinity_rules(timeout=60)
    nf = NetfilterState()
    first = send(rs, POD, "172.30.0.41", 80, chooser=ScriptedChooser([2]), state=nf)
    assert first.endpoint == "10.180.0.3:80"
    # Later connections from the same client: sticky, whatever the chooser would say.
    for now in (1.0, 59.0):
        again = send(rs, POD, "172.30.0.41", 80, chooser=ScriptedChooser([0]), state=nf, now=now)
        assert again.endpoint == "10.180.0.3:80"
    # Each use refreshed the element: 59 + 60 is the new expiry.
    late = send(rs, POD, "172.30.0.41", 80, chooser=ScriptedChooser([0]), state=nf, now=118.0)
    assert late.endpoint == "10.180.0.3:80"
    expired = send(rs, POD, "172.30.0.41", 80, chooser=ScriptedChooser([0]), state=nf, now=179.0)
    assert expired.endpoint == "10.180.0.1:80"
    # Another client is not sticky; a forked state does not see later updates.
    other = send(rs, "10.0.0.3", "172.30.0.41", 80, chooser=ScriptedChooser([1]), state=nf)
    assert other.endpoint == "10.180.0.2:80"
    fork = nf.copy()
    send(rs, "10.0.0.4", "172.30.0.41", 80, chooser=ScriptedChooser([1]), state=nf, now=1.0)
    assert send(rs, "10.0.0.4", "172.30.0.41", 80, chooser=ScriptedChooser([0]), state=fork,
                now=1.0).endpoint == "10.180.0.1:80"  # fmt: skip


def test_add_keeps_a_live_element_and_update_refreshes_it() -> None:
    extra = "\tset seen {\n\t\ttype ipv4_addr\n\t\tflags dynamic,timeout\n\t\ttimeout 10s\n\t}\n"
    rs = parse_nft(table_text("add @seen { ip saddr }", extra=extra)
                   + "")  # fmt: skip
    up = parse_nft(table_text("update @seen { ip saddr timeout 20s }", extra=extra))
    check = parse_nft(table_text("ip saddr @seen accept", extra=extra))
    nf = NetfilterState()
    rs.run_chain("c", pkt(), ctx_for(nf=nf, now=0.0))
    rs.run_chain("c", pkt(), ctx_for(nf=nf, now=5.0))  # add: expiry stays at 10
    assert check.run_chain("c", pkt(), ctx_for(nf=nf, now=9.0)) is not None
    assert check.run_chain("c", pkt(), ctx_for(nf=nf, now=10.0)) is None
    up.run_chain("c", pkt(), ctx_for(nf=nf, now=10.0))  # update with its own timeout
    assert check.run_chain("c", pkt(), ctx_for(nf=nf, now=29.0)) is not None


# --- hook registration ------------------------------------------------------------------------


def test_install_registers_base_chains_at_their_priorities() -> None:
    stack = NetfilterStack()
    install_nftables(stack, rules_of())
    ops = {hook: [(p, n) for p, n, _ in stack.ops(hook)] for hook in Hook}
    assert ops[Hook.PREROUTING] == [
        (-200, "conntrack"),
        (-110, "nft kube-proxy filter-prerouting-pre-dnat"),
        (-100, "nft kube-proxy nat-prerouting"),
    ]
    assert ops[Hook.OUTPUT] == [
        (-200, "conntrack"),
        (-110, "nft kube-proxy filter-output-pre-dnat"),
        (-100, "nft kube-proxy nat-output"),
        (0, "nft kube-proxy filter-output"),
    ]
    assert ops[Hook.INPUT][0] == (0, "nft kube-proxy filter-input")
    assert ops[Hook.FORWARD] == [(0, "nft kube-proxy filter-forward")]
    assert ops[Hook.POSTROUTING][0] == (100, "nft kube-proxy nat-postrouting")


# --- packet flows: the masquerade matrix ------------------------------------------------------


def iem_state(**proxy: object) -> ClusterState:
    """Three LoadBalancers, endpoints 10.180.0.N on this node and 10.180.1.N elsewhere."""

    def svc(n: int, lb_ip: str, **policy: str) -> tuple[Service, tuple[Endpoint, ...]]:
        service = Service(f"ns{n}", f"svc{n}", "LoadBalancer", f"172.30.0.4{n}", p80(3000 + n),
                          load_balancer_ips=(lb_ip,), health_check_node_port=30000 + n,
                          **policy)  # type: ignore[arg-type]  # fmt: skip
        return service, (ep(f"10.180.0.{n}", NODE), ep(f"10.180.1.{n}", "host1"))

    return state_of(
        svc(1, "1.2.3.4"),
        svc(2, "5.6.7.8", external_traffic_policy="Local"),
        svc(3, "9.10.11.12", internal_traffic_policy="Local"),
        **proxy,
    )


def both(n: int) -> str:
    return f"10.180.0.{n}:80, 10.180.1.{n}:80"


def local_only(n: int) -> str:
    return f"10.180.0.{n}:80"


# (id, source, destination, port, output, masq) — the base configuration: pod-CIDR detector,
# no masquerade-all. 06/16/26 differ from iptables mode: no localhost NodePorts.
IEM_BASE = [
    ("01", POD, "172.30.0.41", 80, both(1), False),
    ("02", POD, NODE_IP, 3001, both(1), True),
    ("03", POD, "1.2.3.4", 80, both(1), True),
    ("04", NODE_IP, "172.30.0.41", 80, both(1), True),
    ("05", NODE_IP, NODE_IP, 3001, both(1), True),
    ("06", LOCALHOST, LOCALHOST, 3001, "", False),
    ("07", NODE_IP, "1.2.3.4", 80, both(1), True),
    ("08", EXTERNAL, "172.30.0.41", 80, both(1), True),
    ("09", EXTERNAL, NODE_IP, 3001, both(1), True),
    ("10", EXTERNAL, "1.2.3.4", 80, both(1), True),
    ("11", POD, "172.30.0.42", 80, both(2), False),
    ("12", POD, NODE_IP, 3002, both(2), False),  # pod short-circuit: every endpoint, no SNAT
    ("13", POD, "5.6.7.8", 80, both(2), False),
    ("14", NODE_IP, "172.30.0.42", 80, both(2), True),
    ("15", NODE_IP, NODE_IP, 3002, both(2), True),  # the node: masquerade, every endpoint
    ("16", LOCALHOST, LOCALHOST, 3002, "", False),
    ("17", NODE_IP, "5.6.7.8", 80, both(2), True),
    ("18", EXTERNAL, "172.30.0.42", 80, both(2), True),
    ("19", EXTERNAL, NODE_IP, 3002, local_only(2), False),  # client IP preserved
    ("20", EXTERNAL, "5.6.7.8", 80, local_only(2), False),
    ("21", POD, "172.30.0.43", 80, local_only(3), False),
    ("22", POD, NODE_IP, 3003, both(3), True),  # iTP applies to the ClusterIP only
    ("23", POD, "9.10.11.12", 80, both(3), True),
    ("24", NODE_IP, "172.30.0.43", 80, local_only(3), True),
    ("25", NODE_IP, NODE_IP, 3003, both(3), True),
    ("26", LOCALHOST, LOCALHOST, 3003, "", False),
    ("27", NODE_IP, "9.10.11.12", 80, both(3), True),
    ("28", EXTERNAL, "172.30.0.43", 80, local_only(3), True),
    ("29", EXTERNAL, NODE_IP, 3003, both(3), True),
    ("30", EXTERNAL, "9.10.11.12", 80, both(3), True),
]
NO_DETECTOR = {"04": False, "08": False, "14": False, "18": False, "24": False, "28": False}
MASQ_ALL = {"01": True, "11": True, "21": True}
VARIANTS: dict[str, tuple[dict[str, object], dict[str, bool], dict[str, str]]] = {
    "base": ({}, {}, {}),
    "no-detector": ({"cluster_cidr": None}, NO_DETECTOR,
                    {"12": local_only(2), "13": local_only(2)}),
    "masquerade-all": ({"masquerade_all": True}, MASQ_ALL, {}),
    "both": ({"cluster_cidr": None, "masquerade_all": True}, MASQ_ALL,
             {"12": local_only(2), "13": local_only(2)}),
}  # fmt: skip


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_internal_external_masquerade_matrix(variant: str, lazy: bool) -> None:
    proxy, masq_changes, output_changes = VARIANTS[variant]
    rs = parse_nft(sync(iem_state(**proxy), NODE), lazy=lazy)
    got, want = {}, {}
    for case, src, dst, port, output, masq in IEM_BASE:
        got[case] = flow(rs, src, dst, port)
        want[case] = (output_changes.get(case, output), masq_changes.get(case, masq))
    assert got == want


# --- packet flows: other upstream cases, re-expressed -----------------------------------------


def lb_with_source_ranges() -> NftRuleset:
    svc = Service("ns1", "svc1", "LoadBalancer", "172.30.0.41", p80(3001),
                  load_balancer_ips=("1.2.3.4", "5.6.7.8"),
                  load_balancer_source_ranges=("192.168.0.0/24", " 203.0.113.0/25"))  # fmt: skip
    return rules_of((svc, (ep("10.180.0.1"),)))


@pytest.mark.parametrize(
    ("src", "dst", "port", "output", "masq"),
    [
        (POD, "172.30.0.41", 80, "10.180.0.1:80", False),
        (EXTERNAL, NODE_IP, 3001, "10.180.0.1:80", True),
        (BLOCKED, NODE_IP, 3001, "10.180.0.1:80", True),  # NodePorts bypass the ranges
        (EXTERNAL, "1.2.3.4", 80, "10.180.0.1:80", True),
        (EXTERNAL, "5.6.7.8", 80, "10.180.0.1:80", True),
        (BLOCKED, "1.2.3.4", 80, "DROP", False),
        (BLOCKED, "5.6.7.8", 80, "DROP", False),
        (POD, "1.2.3.4", 80, "DROP", False),  # pods are outside the ranges too
        (NODE_IP, "1.2.3.4", 80, "10.180.0.1:80", True),  # the node's range is allowed
        ("1.2.3.4", "1.2.3.4", 80, "10.180.0.1:80", True),  # node traffic SNATed to the VIP
    ],
)
def test_load_balancer_source_ranges_flows(
    src: str, dst: str, port: int, output: str, masq: bool
) -> None:
    assert flow(lb_with_source_ranges(), src, dst, port) == (output, masq)


def test_blocked_source_is_dropped_before_dnat() -> None:
    out = send(lb_with_source_ranges(), BLOCKED, "1.2.3.4", 80)
    assert out.reason.startswith("nft kube-proxy/firewall-") and out.reason.endswith(" drop")
    assert out.rules_walked == 3  # filter-prerouting-pre-dnat, firewall-check, firewall-…


def no_endpoints() -> NftRuleset:
    svc = Service("ns1", "svc1", "LoadBalancer", "172.30.0.41", p80(3001),
                  external_ips=("192.168.99.11",), load_balancer_ips=("1.2.3.4",),
                  external_traffic_policy="Local", health_check_node_port=30000,
                  session_affinity="ClientIP")  # fmt: skip
    return rules_of((svc, ()))


@pytest.mark.parametrize(
    ("src", "dst", "port"),
    [
        (POD, "172.30.0.41", 80),
        (EXTERNAL, "192.168.99.11", 80),
        (POD, NODE_IP, 3001),
        (EXTERNAL, NODE_IP, 3001),
        (POD, "1.2.3.4", 80),
        (EXTERNAL, "1.2.3.4", 80),
        (NODE_IP, "172.30.0.41", 80),
        (NODE_IP, NODE_IP, 3001),
    ],
)
def test_no_endpoints_reject_every_destination(src: str, dst: str, port: int) -> None:
    assert flow(no_endpoints(), src, dst, port) == ("REJECT", False)
    out = send(no_endpoints(), src, dst, port)
    assert out.reason == "nft kube-proxy/reject-chain: reject [ns1/svc1:p80]"


def test_health_check_node_port_has_no_rule() -> None:
    assert flow(no_endpoints(), "1.2.3.4", NODE_IP, 30000) == ("", False)


def cluster_ip_general() -> NftRuleset:
    svc1 = Service("ns1", "svc1", "ClusterIP", "172.30.0.41", p80(name="http"))
    ports = (ServicePort("http", "TCP", 80, 80), ServicePort("dns-udp", "UDP", 53, 53),
             ServicePort("dns-sctp", "SCTP", 53, 53))  # fmt: skip
    svc2 = Service("ns2", "svc2", "ClusterIP", "172.30.0.42", ports)
    eps2 = (Endpoint("10.180.0.1", 80, NODE), Endpoint("10.180.2.1", 80, "node2"))
    state = state_of((svc1, (Endpoint("10.180.0.1", 80, NODE),)))
    state = replace(
        state,
        services=(svc1, svc2),
        endpoints={
            **state.endpoints,
            ("ns2/svc2", "http"): eps2,
            ("ns2/svc2", "dns-udp"): tuple(replace(e, port=53) for e in eps2),
            ("ns2/svc2", "dns-sctp"): tuple(replace(e, port=53) for e in eps2),
        },
    )
    return parse_nft(sync(state, NODE))


@pytest.mark.parametrize(
    ("src", "dst", "port", "proto", "output", "masq"),
    [
        ("10.180.0.2", "172.30.0.41", 80, TCP, "10.180.0.1:80", False),
        ("10.180.0.1", "172.30.0.41", 80, TCP, "10.180.0.1:80", True),  # hairpin
        ("10.180.0.2", "172.30.0.42", 80, TCP, "10.180.0.1:80, 10.180.2.1:80", False),
        ("10.180.0.2", "172.30.0.42", 53, UDP, "10.180.0.1:53, 10.180.2.1:53", False),
        ("10.180.0.2", "172.30.0.42", 53, SCTP, "10.180.0.1:53, 10.180.2.1:53", False),
        ("10.180.0.2", "172.30.0.42", 80, UDP, "REJECT", False),  # TCP-only port
        ("10.180.0.2", "172.30.0.41", 443, TCP, "REJECT", False),  # unused port of a ClusterIP
        ("10.180.0.2", "172.30.0.50", 80, TCP, "DROP", False),  # unallocated ClusterIP
        ("10.180.0.2", "10.180.0.3", 80, TCP, "", False),  # not a service: untouched
    ],
)
def test_cluster_ip_flows(
    src: str, dst: str, port: int, proto: int, output: str, masq: bool
) -> None:
    assert flow(cluster_ip_general(), src, dst, port, proto) == (output, masq)


def test_hairpin_masquerade_only_on_the_looping_branch() -> None:
    rs = cluster_ip_general()
    outcomes = [b.result for b in explore(lambda ch: send(rs, "10.180.0.1", "172.30.0.42", 53,
                                                          SCTP, chooser=ch))]  # fmt: skip
    assert [(o.endpoint, o.masq) for o in outcomes] == [
        ("10.180.0.1:53", True),
        ("10.180.2.1:53", False),
    ]


def local_policy_service(kind: str, **kw: object) -> NftRuleset:
    svc = Service("ns1", "svc1", kind, "172.30.0.41", p80(3001 if kind != "ClusterIP" else 0),
                  external_ips=("192.168.99.11",), load_balancer_ips=("1.2.3.4",)
                  if kind == "LoadBalancer" else (), **kw)  # type: ignore[arg-type]  # fmt: skip
    return rules_of((svc, (ep("10.180.0.1", "host1"), ep("10.180.2.1", NODE))))


@pytest.mark.parametrize(
    ("kind", "src", "dst", "port", "output", "masq"),
    [
        ("NodePort", POD, "172.30.0.41", 80, "10.180.0.1:80, 10.180.2.1:80", False),
        ("NodePort", EXTERNAL, "192.168.99.11", 80, "10.180.2.1:80", False),
        ("LoadBalancer", EXTERNAL, "1.2.3.4", 80, "10.180.2.1:80", False),
        ("LoadBalancer", EXTERNAL, NODE_IP, 3001, "10.180.2.1:80", False),
        ("NodePort", POD, NODE_IP, 3001, "10.180.0.1:80, 10.180.2.1:80", False),
        ("NodePort", POD, LOCALHOST, 3001, "", False),
        ("ClusterIP", EXTERNAL, "192.168.99.11", 80, "10.180.0.1:80, 10.180.2.1:80", True),
    ],
)
def test_external_traffic_policy_local_flows(
    kind: str, src: str, dst: str, port: int, output: str, masq: bool
) -> None:
    rs = local_policy_service(kind, external_traffic_policy="Local")
    assert flow(rs, src, dst, port) == (output, masq)


@pytest.mark.parametrize(
    ("policy", "eps", "output"),
    [
        ("Cluster", ("test-node", "host1", "host2"), "10.0.1.1:80, 10.0.1.2:80, 10.0.1.3:80"),
        ("Local", ("test-node", "host1", "host2"), "10.0.1.1:80"),
        ("Local", ("host0", "host1", "host2"), "DROP"),
        ("Local", (), "REJECT"),
    ],
)
def test_internal_traffic_policy_flows(policy: str, eps: tuple[str, ...], output: str) -> None:
    svc = Service("ns1", "svc1", "ClusterIP", "172.30.1.1", p80(name=""),
                  internal_traffic_policy=policy)  # fmt: skip
    endpoints = tuple(ep(f"10.0.1.{i}", node) for i, node in enumerate(eps, start=1))
    assert flow(rules_of((svc, endpoints)), POD, "172.30.1.1", 80) == (output, False)


@pytest.mark.parametrize(
    ("eps", "pod_output", "external_output"),
    [
        (
            [("1", NODE, "ready"), ("2", NODE, "ready"), ("3", NODE, "serving"),
             ("4", NODE, "gone"), ("5", "host-1", "ready")],
            "10.0.1.1:80, 10.0.1.2:80, 10.0.1.5:80",
            "10.0.1.1:80, 10.0.1.2:80",
        ),
        (
            [("2", NODE, "serving"), ("3", NODE, "serving"), ("4", NODE, "gone"),
             ("5", "host-1", "ready")],
            "10.0.1.5:80",
            "10.0.1.2:80, 10.0.1.3:80",
        ),
        ([("5", "host-1", "serving")], "10.0.1.5:80", "DROP"),
        ([("5", NODE, "gone"), ("6", "host-1", "gone")], "REJECT", "REJECT"),
    ],
)  # fmt: skip
def test_terminating_endpoints_with_local_policy(
    eps: list[tuple[str, str, str]], pod_output: str, external_output: str
) -> None:
    """Ready preferred; serving+terminating as fallback per set; not serving: never."""
    states = {"ready": {}, "serving": {"ready": False, "terminating": True},
              "gone": {"ready": False, "serving": False, "terminating": True}}  # fmt: skip
    endpoints = tuple(ep(f"10.0.1.{n}", node, **states[s]) for n, node, s in eps)
    svc = Service("ns1", "svc1", "LoadBalancer", "172.30.1.1", p80(),
                  load_balancer_ips=("1.2.3.4",), external_traffic_policy="Local",
                  session_affinity="ClientIP")  # fmt: skip
    rs = rules_of((svc, endpoints))
    assert flow(rs, POD, "172.30.1.1", 80)[0] == pod_output
    assert flow(rs, EXTERNAL, "1.2.3.4", 80) == (external_output, False)


def test_first_packet_cost_does_not_grow_with_services() -> None:
    def cost(n: int) -> tuple[int, int]:
        services = tuple(
            (Service(f"ns{i}", "svc", "NodePort", f"172.30.{i // 200}.{i % 200 + 1}",
                     p80(30000 + i)), (ep(f"10.180.{i // 200}.{i % 200 + 1}"),))
            for i in range(n)
        )  # fmt: skip
        rs = rules_of(*services)
        last = services[-1][0]
        to_ip = send(rs, EXTERNAL, str(last.cluster_ip), 80)
        to_nodeport = send(rs, EXTERNAL, NODE_IP, last.ports[0].node_port)
        assert to_ip.endpoint and to_nodeport.endpoint
        return (to_ip.rules_walked + to_nodeport.rules_walked,
                to_ip.map_lookups + to_nodeport.map_lookups)  # fmt: skip

    assert cost(3) == cost(400)


# --- conformance extra and kernel check -------------------------------------------------------

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "kube-proxy"


@pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"reference cases not found at {REFERENCE}")
def test_matrix_agrees_with_upstream_iptables_cases_except_localhost_nodeports() -> None:
    import csv

    with (REFERENCE / "packet-flow-cases.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["id"].startswith("IEM")]
    assert len(rows) == 30
    rs = parse_nft(sync(iem_state(), NODE))
    for row in rows:
        output, masq = flow(rs, row["source_ip"], row["dest_ip"], int(row["dest_port"]))
        if row["source_ip"] == LOCALHOST:
            assert (output, masq) == ("", False), row["id"]  # nftables: no localhost NodePorts
            continue
        assert (output, masq) == (row["expected_output"], row["expected_masq"] == "true"), row


@pytest.mark.kernel
def test_generated_rules_load_into_real_nftables() -> None:
    required = os.environ.get("K8SNET_KERNEL_TESTS") == "1"
    tools = shutil.which("nft") and shutil.which("unshare")
    if not (tools and os.geteuid() == 0):
        if required:
            pytest.fail("kernel tests required but nft/unshare/root unavailable")
        pytest.skip("needs root, unshare and nft")
    for state in _feature_states():
        # A fresh network namespace has its own, empty ruleset: nothing on the host changes.
        done = subprocess.run(["unshare", "-n", "nft", "-c", "-f", "-"], input=sync(state, NODE),
                              capture_output=True, text=True, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr


@pytest.mark.kernel
def test_the_kernels_own_listing_parses_and_behaves_the_same() -> None:
    """Load our text into a scratch network namespace, let nft list it back (its own
    spellings and element order), parse that, and run the masquerade matrix through it."""
    required = os.environ.get("K8SNET_KERNEL_TESTS") == "1"
    if not (shutil.which("nft") and shutil.which("unshare") and os.geteuid() == 0):
        if required:
            pytest.fail("kernel tests required but nft/unshare/root unavailable")
        pytest.skip("needs root, unshare and nft")
    ours = sync(iem_state(), NODE)
    done = subprocess.run(["unshare", "-n", "sh", "-c", "nft -f - && nft list ruleset"],
                          input=ours, capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    listed = parse_nft(done.stdout, file="nft list ruleset")
    mine = parse_nft(ours)
    assert listed.render() != ours  # the kernel really did respell it
    for name in mine.table().sets:
        assert listed.table().elements(name) == mine.table().elements(name), name
    assert list(listed.table().chains) == list(mine.table().chains)
    for _, src, dst, port, _, _ in IEM_BASE:
        assert flow(listed, src, dst, port) == flow(mine, src, dst, port), (src, dst, port)
