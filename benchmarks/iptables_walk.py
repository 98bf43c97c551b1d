"""Micro-benchmark: the first packet of a connection through a node with many Services.

Builds kube-proxy-shaped ``iptables-restore`` text for N Services × E endpoints (ClusterIP,
every fourth one also a NodePort), parses it, and times the nat PREROUTING walk of a first
packet to random ClusterIPs, indexed and linear. Prints figures; asserts nothing.

Run: ``python benchmarks/iptables_walk.py [services] [endpoints]``
"""

from __future__ import annotations

import random
import statistics
import sys
import time

from k8snet_sim.net.addr import ip_str
from k8snet_sim.net.packet import TCP, Packet
from k8snet_sim.netfilter.context import Hook, NetfilterState, PacketContext
from k8snet_sim.netfilter.iptables_save import IptablesRuleset, parse_iptables_save

SERVICE_BASE = 0xAC1E0000  # 172.30.0.0
POD_BASE = 0x0AB40000  # 10.180.0.0


def kube_proxy_text(services: int, endpoints: int) -> str:
    """nat table text in kube-proxy's shape (names are synthetic, not hashes)."""
    decl = [":PREROUTING ACCEPT [0:0]", ":KUBE-SERVICES - [0:0]", ":KUBE-NODEPORTS - [0:0]",
            ":KUBE-MARK-MASQ - [0:0]"]  # fmt: skip
    rules = ["-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
             "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000"]  # fmt: skip
    for s in range(services):
        name, vip = f"ns/svc{s}:p80", ip_str(SERVICE_BASE + 1 + s)
        svc = f"KUBE-SVC-{s:016d}"
        decl.append(f":{svc} - [0:0]")
        rules.append(f'-A KUBE-SERVICES -m comment --comment "{name} cluster IP" -m tcp -p tcp '
                     f"-d {vip} --dport 80 -j {svc}")  # fmt: skip
        if s % 4 == 0:
            ext = f"KUBE-EXT-{s:016d}"
            decl.append(f":{ext} - [0:0]")
            rules.append(f"-A KUBE-NODEPORTS -m comment --comment {name} -m tcp -p tcp "
                         f"--dport {30000 + s // 4} -j {ext}")  # fmt: skip
            rules.append(f"-A {ext} -j KUBE-MARK-MASQ")
            rules.append(f"-A {ext} -j {svc}")
        rules.append(f'-A {svc} -m comment --comment "{name} cluster IP" -m tcp -p tcp -d {vip} '
                     "--dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ")  # fmt: skip
        for e in range(endpoints):
            pod = ip_str(POD_BASE + s * endpoints + e)
            sep = f"KUBE-SEP-{s:010d}{e:06d}"
            decl.append(f":{sep} - [0:0]")
            left = endpoints - e
            stat = f"-m statistic --mode random --probability {1 / left:.11f} " if left > 1 else ""
            rules.append(f'-A {svc} -m comment --comment "{name} -> {pod}:80" {stat}-j {sep}')
            rules.append(f"-A {sep} -m comment --comment {name} -s {pod} -j KUBE-MARK-MASQ")
            rules.append(f"-A {sep} -m comment --comment {name} -m tcp -p tcp "
                         f"-j DNAT --to-destination {pod}:80")  # fmt: skip
    rules.append('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports" '
                 "-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS")  # fmt: skip
    return "\n".join(["*nat", *decl, *rules, "COMMIT", ""])


class _Chooser:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def choose(self, weights: list[float], label: str) -> int:
        return self.rng.choices(range(len(weights)), weights)[0]

    def pick(self, options: int, default: int, label: str) -> int:
        return default


class _Nat:
    def __init__(self, packet: Packet) -> None:
        self.packet = packet

    def dnat(self, address: int, port: int | None = None) -> None:
        self.packet.dst = address

    def snat(self, address: int, port: int | None = None) -> None: ...

    def masquerade(self, *, random_fully: bool = False) -> None: ...

    def redirect(self, port: int | None = None) -> None: ...


def time_walks(ruleset: IptablesRuleset, services: int, packets: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    chooser = _Chooser(rng)
    durations = []
    for _ in range(packets):
        s = rng.randrange(services)
        pkt = Packet(src=0x0A000002, dst=SERVICE_BASE + 1 + s, proto=TCP, sport=40000, dport=80)
        ctx = PacketContext(Hook.PREROUTING, 0.0, chooser, NetfilterState(),
                            lambda a: a == 0xC0A80002, nat=_Nat(pkt))  # fmt: skip
        start = time.perf_counter()
        ruleset.run("nat", Hook.PREROUTING, pkt, ctx)
        durations.append(time.perf_counter() - start)
    return durations


def main() -> None:
    services = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    endpoints = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    text = kube_proxy_text(services, endpoints)
    start = time.perf_counter()
    ruleset = parse_iptables_save(text)
    parsed = time.perf_counter() - start
    rules = sum(len(c.rules) for c in ruleset.tables["nat"].chains.values())
    print(
        f"{services} services × {endpoints} endpoints: {rules} nat rules, parsed in {parsed:.2f} s"
    )
    for indexed in (True, False):
        ruleset.indexed = indexed
        start = time.perf_counter()
        ruleset.engine("nat")
        built = time.perf_counter() - start
        walks = time_walks(ruleset, services, 2000 if indexed else 50, seed=1)
        print(f"  {'indexed' if indexed else 'linear '}: compiled in {built:.2f} s; first packet "
              f"median {statistics.median(walks) * 1e6:.1f} µs, "
              f"p99 {sorted(walks)[int(len(walks) * 0.99)] * 1e6:.1f} µs")  # fmt: skip


if __name__ == "__main__":
    main()
