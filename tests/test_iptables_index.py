"""The chain index changes nothing: indexed and linear walks agree on everything observable.

Random rulesets (jumps, gotos, RETURN, side-effecting statistic/recent matches, MARK, DNAT)
are walked twice, with and without indexes, from identical states; verdicts, rewrites,
``rules_walked``, events, Chooser questions and netfilter state must be identical.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from k8snet_sim.net.addr import ip, ip_str
from k8snet_sim.net.packet import TCP, UDP, Packet
from k8snet_sim.netfilter.context import Hook, NetfilterState, PacketContext
from k8snet_sim.netfilter.engine import TableEngine
from k8snet_sim.netfilter.iptables_save import parse_iptables_save
from k8snet_sim.netfilter.rules import Table

ADDRESSES = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.96.0.1", "10.96.0.2", "10.96.0.3"]
PORTS = [53, 80, 443]
USER_CHAINS = ["U0", "U1", "U2", "U3"]


class SeededChooser:
    """Answers from a seeded generator and remembers every question."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.asked: list[str] = []

    def choose(self, weights: list[float], label: str) -> int:
        self.asked.append(label)
        return self.rng.randrange(len(weights))

    def pick(self, options: int, default: int, label: str) -> int:
        return default


class RecordingNat:
    def __init__(self, packet: Packet) -> None:
        self.packet = packet
        self.calls: list[tuple[Any, ...]] = []

    def dnat(self, address: int, port: int | None = None) -> None:
        self.calls.append(("dnat", address, port))
        self.packet.dst = address

    def snat(self, address: int, port: int | None = None) -> None:
        self.calls.append(("snat", address, port))

    def masquerade(self, *, random_fully: bool = False) -> None:
        self.calls.append(("masquerade", random_fully))

    def redirect(self, port: int | None = None) -> None:
        self.calls.append(("redirect", port))


# --------------------------------------------------------------------------- random rulesets
# Hypothesis draws a seed; a seeded generator builds the ruleset. Drawing every word through
# Hypothesis would cost 25 times more per example than the walks being compared.


def rule_args(rng: random.Random, chain_index: int, dst_share: int) -> str:
    """One rule of chain ``chain_index`` (-1: PREROUTING). ``dst_share`` (tenths): how often
    a rule names a destination (a dst index key); otherwise it usually names a port."""
    parts: list[str] = []
    if rng.randrange(10) < dst_share:
        form = rng.choice(["-d {}", "-d {}/32", "! -d {}", "-d {}/24"])
        parts.append(form.format(rng.choice(ADDRESSES)))
    if rng.random() < 0.5:
        parts.append(f"-s {rng.choice(ADDRESSES)}")
    protocol = rng.choice(["", "tcp", "udp"] if dst_share > 5 else ["tcp", "udp"])
    port_match = ""
    if protocol:
        parts.append(f"-p {protocol}")
        port = rng.choice(PORTS)
        port_match = rng.choice([
            "", f"-m {protocol} --dport {port}", f"-m {protocol} --dport {port}",
            f"-m {protocol} ! --dport {port}", f"-m {protocol} --dport {port}:{port + 400}",
            f"--dport {port}",
        ])  # fmt: skip
    extras = rng.sample([
        "-m statistic --mode random --probability 0.5",
        "-m statistic --mode nth --every 2",
        "-m recent --name R --set",
        "-m recent --name R --rcheck --seconds 5",
        "-m mark --mark 0x1/0x1",
        '-m comment --comment "c d"',
    ], rng.choice([0, 0, 1, 2]))  # fmt: skip
    # An impure match before the port match must keep the port from being an index key.
    position = rng.randrange(len(extras) + 1)
    parts.extend([*extras[:position], port_match, *extras[position:]])
    later = USER_CHAINS[chain_index + 1 :]  # jumps only go forward: no loops
    targets = ["-j ACCEPT", "-j DROP", "-j RETURN", "", "-j MARK --or-mark 0x1",
               "-j MARK --xor-mark 0x2", "-j LOG", "-j DNAT --to-destination 10.9.9.9"]  # fmt: skip
    targets += [f"-j {c}" for c in later] * 2 + [f"-g {c}" for c in later]
    parts.append(rng.choice(targets))
    return " ".join(p for p in parts if p)


def random_ruleset(seed: int) -> str:
    rng = random.Random(seed)
    lines = ["*nat", ":PREROUTING ACCEPT [0:0]"] + [f":{c} - [0:0]" for c in USER_CHAINS]
    for index, chain in enumerate(["PREROUTING", *USER_CHAINS], start=-1):
        dst_share = rng.choice([0, 2, 7, 10])
        for _ in range(rng.randrange(25)):
            lines.append(f"-A {chain} {rule_args(rng, index, dst_share)}".rstrip())
    return "\n".join([*lines, "COMMIT", ""])


def random_flows(seed: int) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)
    flows = []
    for _ in range(rng.randrange(1, 7)):
        src, dst = rng.choice(ADDRESSES), rng.choice(ADDRESSES)
        flows.append((src, dst, rng.choice([TCP, UDP]), rng.choice(PORTS), rng.randrange(4)))
    return flows


def walk_all(engine: TableEngine, flows: list[tuple[Any, ...]], seed: int) -> list[Any]:
    """Everything observable about walking ``flows`` (one after another, shared state)."""
    state, chooser, seen = NetfilterState(), SeededChooser(seed), []
    for k, (src, dst, proto, dport, mark) in enumerate(flows):
        pkt = Packet(src=ip(src), dst=ip(dst), proto=proto, sport=40000, dport=dport, mark=mark)
        nat = RecordingNat(pkt)
        ctx = PacketContext(Hook.PREROUTING, float(k), chooser, state,
                            lambda a: a == ip("10.0.0.1"), nat=nat, events=[])  # fmt: skip
        result = engine.run(Hook.PREROUTING, pkt, ctx)
        events = [(e.table, e.chain, e.rule, e.comment, e.effect) for e in ctx.events or ()]
        seen.append((result, str(pkt), pkt.mark, ctx.rules_walked, events, nat.calls))
    recent = {n: {a: e.last_seen for a, e in lst.items()} for n, lst in state.recent.items()}
    return [seen, chooser.asked, recent, state.counters]


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_indexed_walk_equals_linear_walk(rules_seed: int, flows_seed: int) -> None:
    table = parse_iptables_save(random_ruleset(rules_seed)).tables["nat"]
    flows = random_flows(flows_seed)
    linear = TableEngine(table, indexed=False)
    indexed = TableEngine(table, indexed=True, index_min_rules=2)
    assert walk_all(indexed, flows, flows_seed) == walk_all(linear, flows, flows_seed)


def test_random_rulesets_exercise_both_index_kinds() -> None:
    kinds: set[str] = set()
    for seed in range(40):
        table = parse_iptables_save(random_ruleset(seed)).tables["nat"]
        kinds.update(TableEngine(table, index_min_rules=2).index_summary().values())
    assert kinds == {"dst", "dport"}


# --------------------------------------------------------------------------- kube-proxy shape


def kube_services(services: int) -> str:
    lines = ["*nat", ":PREROUTING ACCEPT [0:0]", ":KUBE-SERVICES - [0:0]"]
    lines.append(":KUBE-NODEPORTS - [0:0]")
    rules = ["-A PREROUTING -j KUBE-SERVICES"]
    for s in range(services):
        lines += [f":KUBE-SVC-{s} - [0:0]"]
        vip = ip_str(ip("172.30.0.1") + s)
        rules.append(f'-A KUBE-SERVICES -m comment --comment "ns/svc{s}:p80 cluster IP" '
                     f"-m tcp -p tcp -d {vip} --dport 80 -j KUBE-SVC-{s}")  # fmt: skip
        rules.append(f"-A KUBE-NODEPORTS -m comment --comment ns/svc{s}:p80 -m tcp -p tcp "
                     f"--dport {30000 + s} -j KUBE-SVC-{s}")  # fmt: skip
        rules.append(f"-A KUBE-SVC-{s} -j DNAT --to-destination {ip_str(ip('10.180.0.1') + s)}")
    rules.append("-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS")
    return "\n".join([*lines, *rules, "COMMIT", ""])


def test_kube_proxy_chains_get_indexed_and_agree_with_linear() -> None:
    table: Table = parse_iptables_save(kube_services(300)).tables["nat"]
    indexed, linear = TableEngine(table), TableEngine(table, indexed=False)
    assert indexed.index_summary() == {"KUBE-SERVICES": "dst", "KUBE-NODEPORTS": "dport"}
    assert linear.index_summary() == {}
    flows = [("10.0.0.2", ip_str(ip("172.30.0.1") + s), TCP, 80, 0) for s in range(0, 300, 7)]
    flows += [("10.0.0.2", "10.0.0.1", TCP, 30000 + s, 0) for s in range(0, 300, 11)]
    flows += [("10.0.0.2", "172.30.9.9", TCP, 80, 0), ("10.0.0.2", "172.30.0.1", UDP, 80, 0)]
    assert walk_all(indexed, flows, 0) == walk_all(linear, flows, 0)
    # A NodePort packet walks all of KUBE-SERVICES, then part of KUBE-NODEPORTS, as if linear.
    walked = walk_all(indexed, [("10.0.0.2", "10.0.0.1", TCP, 30005, 0)], 0)[0][0][3]
    assert walked == 1 + 301 + 6 + 1


def test_short_chains_are_not_indexed() -> None:
    table = parse_iptables_save(kube_services(5)).tables["nat"]
    assert TableEngine(table).index_summary() == {}
