"""iptables_trace(): follow a packet through a real node's ``iptables-save`` dump.

Paste a node's dump, name the packet (source, destination, port) and the node's own addresses;
the packet goes through the same hook pipeline the simulator uses for every node — nat
PREROUTING (or OUTPUT for the node's own packets), the routing decision, filter INPUT/FORWARD,
nat POSTROUTING — with every branch of every ``-m statistic`` rule explored. The answer has the
shape of upstream kube-proxy's packet-flow tests: the endpoints the packet may be DNATed to (in
rule order), whether it is masqueraded, or the ACCEPT / DROP / REJECT a rule decided.

A dump that is kube-proxy's restore input (no jump rules in the builtin chains) gets the jump
rules kube-proxy installs with ``EnsureRule``, as on a real node; the result says so.

Example
-------
>>> text = '''*nat
... :PREROUTING ACCEPT [0:0]
... :KUBE-SERVICES - [0:0]
... -A PREROUTING -j KUBE-SERVICES
... -A KUBE-SERVICES -d 10.96.0.10/32 -p tcp --dport 80 -j DNAT --to-destination 10.244.1.5:8080
... COMMIT
... '''
>>> iptables_trace(text, src="10.244.2.3", dst="10.96.0.10", dport=80).output
['10.244.1.5:8080']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from k8snet_sim.net.addr import ip, ip_str
from k8snet_sim.net.link import Interface
from k8snet_sim.net.packet import PROTO_NUMBERS, Packet
from k8snet_sim.netfilter.conntrack import ConntrackTable
from k8snet_sim.netfilter.context import Hook, HookResult, NetfilterState, RuleEvent
from k8snet_sim.netfilter.hooks import Skb, new_context
from k8snet_sim.netfilter.iptables_save import parse_iptables_save
from k8snet_sim.proxy.iptables import BUILTIN_CHAINS, JUMP_CHAINS
from k8snet_sim.sim.choice import ScriptedChooser, explore
from k8snet_sim.sim.kubeproxy import install_iptables
from k8snet_sim.sim.namespace import Namespace


@dataclass
class Branch:
    probability: float
    destination: str | None  # "ip:port" after DNAT, None if not DNATed
    verdict: str | None  # "ACCEPT" | "DROP" | "REJECT" when a rule decided, else None
    masquerade: bool
    path: list[str]  # the hooks the packet took
    events: list[str]
    reason: str = ""


@dataclass
class IptablesTraceResult:
    src: str
    dst: str
    dport: int
    proto: str
    local_ips: list[str]
    output: list[str]
    masquerade: bool
    verdict: str  # "DNAT" | "ACCEPT" | "DROP" | "REJECT" | "NONE"
    branches: list[Branch] = field(default_factory=list)
    added_jumps: list[str] = field(default_factory=list)

    def summary(self) -> str:
        out = ", ".join(self.output) if self.output else "nothing matched"
        return f"{self.proto.upper()} {self.src} > {self.dst}:{self.dport}: {out}" + (
            "; masqueraded" if self.masquerade else ""
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "src": self.src,
            "dst": self.dst,
            "dport": self.dport,
            "proto": self.proto,
            "localIPs": self.local_ips,
            "output": self.output,
            "masquerade": self.masquerade,
            "verdict": self.verdict,
            "addedJumps": self.added_jumps,
            "branches": [
                {
                    "probability": round(b.probability, 10),
                    "destination": b.destination,
                    "verdict": b.verdict,
                    "masquerade": b.masquerade,
                    "path": b.path,
                    "reason": b.reason,
                    "rules": b.events,
                }
                for b in self.branches
            ],
        }


def ensure_kube_proxy_jumps(text: str) -> tuple[str, list[str]]:
    """Add the builtin-chain jump rules kube-proxy installs (``iptablesJumpChains``) where a
    dump has the kube-proxy chain but not the jump to it. Returns the new text and the rules
    added."""
    ruleset = parse_iptables_save(text)
    additions: dict[str, list[str]] = {}
    declarations: dict[str, list[str]] = {}
    for table_name, table in ruleset.tables.items():
        wanted = [j for j in JUMP_CHAINS if j.table == table_name and j.target in table.chains]
        for source in BUILTIN_CHAINS.get(table_name, ()):
            existing = table.chains[source].rules if source in table.chains else []
            missing = [
                j
                for j in wanted
                if j.source == source and not any(r.target == j.target for r in existing)
            ]
            if not missing:
                continue
            if source not in table.chains:
                declarations.setdefault(table_name, []).append(f":{source} ACCEPT [0:0]")
            # Each jump is prepended when installed: the last installed comes first.
            additions.setdefault(table_name, []).extend(j.rule() for j in reversed(missing))
    if not additions:
        return text, []
    out: list[str] = []
    current: str | None = None
    pending: list[str] = []
    for line in text.splitlines():
        if line.startswith("*"):
            current = line[1:].strip()
            out.append(line)
            out.extend(declarations.get(current, []))
            pending = list(additions.get(current, []))
            continue
        if pending and (line.startswith("-A") or line.strip() == "COMMIT"):
            out.extend(pending)
            pending = []
        out.append(line)
    added = [rule for rules in additions.values() for rule in rules]
    return "\n".join(out) + ("\n" if text.endswith("\n") else ""), added


def _run(ns: Namespace, chooser: ScriptedChooser, pkt: Packet) -> Branch:
    conntrack, state = ConntrackTable(), NetfilterState()
    events: list[RuleEvent] = []
    rewrites: list[str] = []
    original = (pkt.dst, pkt.dport)

    def skb_for(hook: Hook, in_iface: str | None, out_iface: str | None) -> Skb:
        ctx = new_context(
            hook=hook,
            now=0.0,
            chooser=chooser,
            state=state,
            is_local=ns.is_local,
            in_iface=in_iface,
            out_iface=out_iface,
            events=events,
        )
        return Skb(pkt, ctx, conntrack=conntrack, addressing=ns, rewrites=rewrites)

    local_src = ns.is_local(pkt.src)
    path: list[str] = []
    result: HookResult | None = None
    skb = skb_for(
        Hook.OUTPUT if local_src else Hook.PREROUTING,
        None if local_src else "eth0",
        "eth0" if local_src else None,
    )
    if local_src:
        steps = [Hook.OUTPUT, Hook.POSTROUTING]
    else:
        steps = [Hook.PREROUTING]
    for hook in steps:
        path.append(hook.value)
        result = ns.stack.run(hook, skb)
        if not result.accepted:
            break
    if result is not None and result.accepted:
        if ns.is_local(pkt.dst):
            after = [Hook.PREROUTING, Hook.INPUT] if local_src else [Hook.INPUT]
            skb.ctx.in_iface, skb.ctx.out_iface = "lo" if local_src else "eth0", None
        elif not local_src:
            after = [Hook.FORWARD, Hook.POSTROUTING]
            skb.ctx.out_iface = "eth0"
        else:
            after = []
        for hook in after:
            path.append(hook.value)
            result = ns.stack.run(hook, skb)
            if not result.accepted:
                break
    verdict = None
    reason = ""
    if result is not None and not result.accepted:
        verdict, reason = result.verdict.value, result.reason
    elif any(
        e.effect == "ACCEPT" and e.chain.startswith("KUBE-") and e.chain != "KUBE-FORWARD"
        for e in events
    ):
        verdict = "ACCEPT"
    destination = f"{ip_str(pkt.dst)}:{pkt.dport}" if (pkt.dst, pkt.dport) != original else None
    masquerade = any("MASQUERADE" in r for r in rewrites) or any(
        e.chain == "KUBE-MARK-MASQ" for e in events
    )
    return Branch(
        chooser.probability,
        destination,
        verdict,
        masquerade,
        path,
        [e.describe() for e in events],
        reason,
    )


def iptables_trace(
    text: str,
    *,
    src: str,
    dst: str,
    dport: int,
    proto: str = "tcp",
    local_ips: Sequence[str] = (),
    file: str = "<rules>",
) -> IptablesTraceResult:
    """Trace a new connection's first packet through the dump ``text`` (see module doc)."""
    text, added = ensure_kube_proxy_jumps(text)
    ruleset = parse_iptables_save(text, file=file)
    ns = Namespace("node", kind="node", ip_forward=True)
    ns.add_interface(
        Interface("eth0", [(ip(a), 32) for a in local_ips] or [(ip("169.254.0.1"), 32)])
    )
    install_iptables(ns, ruleset)
    number = PROTO_NUMBERS[proto.lower()]

    def run(chooser: ScriptedChooser) -> Branch:
        pkt = Packet(src=ip(src), dst=ip(dst), proto=number, sport=40000, dport=dport, flags="S")
        return _run(ns, chooser, pkt)

    branches = []
    for explored in explore(run):
        explored.result.probability = explored.probability
        branches.append(explored.result)
    decided = [b for b in branches if b.verdict in ("DROP", "REJECT")]
    dnat = [
        b.destination for b in branches if b.destination and b.verdict not in ("DROP", "REJECT")
    ]
    if decided and not dnat:
        output, verdict = [decided[0].verdict or ""], decided[0].verdict or ""
    elif dnat:
        output, verdict = list(dict.fromkeys(dnat)), "DNAT"
    elif any(b.verdict == "ACCEPT" for b in branches):
        output, verdict = ["ACCEPT"], "ACCEPT"
    else:
        output, verdict = [], "NONE"
    return IptablesTraceResult(
        src,
        dst,
        dport,
        proto.lower(),
        list(local_ips),
        output,
        any(b.masquerade for b in branches),
        verdict,
        branches,
        added,
    )
