"""iptables mode at scale: rule generation, rule counts and the first packet's cost.

For 100, 1,000 and 10,000 Services × 3 endpoints (ClusterIP Services on a 3-node cluster), the
real iptables proxier generates the node's rules; the script prints generation and parse time
and the rule counts, then times the first packet of new connections to random ClusterIPs through
the node's nat PREROUTING (the walk kube-proxy's rules cost), with the engine's index and with
a plain linear walk, and the number of rules a linear walk evaluates (what the cost model
charges). Prints figures; asserts nothing.

Run: ``python benchmarks/iptables_scale.py [max_services]``
"""

from __future__ import annotations

import random
import statistics
import sys
import time

from k8snet_sim.cluster.model import (
    ClusterState,
    Endpoint,
    KubeProxyConfig,
    Node,
    Service,
    ServicePort,
)
from k8snet_sim.net.addr import ip, ip_str
from k8snet_sim.net.packet import TCP, Packet
from k8snet_sim.netfilter.conntrack import ConntrackTable
from k8snet_sim.netfilter.context import Hook, NetfilterState
from k8snet_sim.netfilter.hooks import Skb, new_context
from k8snet_sim.netfilter.iptables_save import parse_iptables_save
from k8snet_sim.proxy.iptables import node_rules
from k8snet_sim.sim.choice import SeededChooser
from k8snet_sim.sim.kubeproxy import install_iptables
from k8snet_sim.sim.namespace import Namespace

SERVICE_BASE = ip("10.96.0.10")
POD_BASE = ip("10.244.0.10")


def cluster(services: int, endpoints: int = 3) -> ClusterState:
    nodes = tuple(
        Node(f"node{i}", f"192.168.0.{10 + i}", f"10.244.{i}.0/24", "lan") for i in range(3)
    )
    svcs, eps = [], {}
    for s in range(services):
        svc = Service(
            "bench",
            f"svc{s}",
            "ClusterIP",
            ip_str(SERVICE_BASE + s),
            (ServicePort("http", "TCP", 80, 8080),),
        )
        svcs.append(svc)
        eps[(svc.key, "http")] = tuple(
            sorted(
                (
                    Endpoint(ip_str(POD_BASE + s * endpoints + e), 8080, f"node{e % 3}")
                    for e in range(endpoints)
                ),
                key=lambda x: x.address,
            )
        )
    return ClusterState(
        "10.96.0.0/12",
        "10.244.0.0/16",
        (30000, 32767),
        nodes,
        (),
        tuple(svcs),
        eps,
        KubeProxyConfig(cluster_cidr="10.244.0.0/16"),
    )


def first_packets(
    ns: Namespace, services: int, packets: int, seed: int
) -> tuple[list[float], list[int]]:
    """Time nat PREROUTING (conntrack + DNAT decision) for new connections to random Services."""
    rng = random.Random(seed)
    chooser = SeededChooser(rng)
    durations, walked = [], []
    for i in range(packets):
        dst = SERVICE_BASE + rng.randrange(services)
        pkt = Packet(
            src=ip("10.244.1.99"), dst=dst, proto=TCP, sport=30000 + i, dport=80, flags="S"
        )
        ctx = new_context(
            hook=Hook.PREROUTING,
            now=0.0,
            chooser=chooser,
            state=NetfilterState(),
            is_local=ns.is_local,
            in_iface="cni0",
        )
        skb = Skb(pkt, ctx, conntrack=ConntrackTable(), addressing=ns)
        start = time.perf_counter()
        ns.stack.run(Hook.PREROUTING, skb)
        durations.append(time.perf_counter() - start)
        walked.append(ctx.rules_walked)
    return durations, walked


def main() -> None:
    top = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    sizes = [n for n in (100, 1_000, 10_000) if n <= top]
    print(
        f"{'services':>9} {'generate':>9} {'parse':>7} {'nat rules':>10} {'filter':>7} "
        f"{'indexed p50':>12} {'p99':>9} {'linear p50':>11} {'rules walked (mean/max)':>24}"
    )
    for n in sizes:
        state = cluster(n)
        start = time.perf_counter()
        text = node_rules(state, "node0")
        generated = time.perf_counter() - start
        start = time.perf_counter()
        ruleset = parse_iptables_save(text)
        parsed = time.perf_counter() - start
        nat = sum(len(c.rules) for c in ruleset.tables["nat"].chains.values())
        filt = sum(len(c.rules) for c in ruleset.tables["filter"].chains.values())
        ns = Namespace("node/node0", kind="node", ip_forward=True)
        install_iptables(ns, ruleset)
        ruleset.engine("nat")  # compile before timing
        indexed, walked = first_packets(ns, n, 2000, seed=1)
        ruleset.indexed = False
        ruleset.engine("nat")
        linear, _ = first_packets(ns, n, 200 if n >= 10_000 else 1000, seed=1)
        ruleset.indexed = True
        p99 = sorted(indexed)[int(len(indexed) * 0.99)]
        print(
            f"{n:>9} {generated:>8.2f}s {parsed:>6.2f}s {nat:>10} {filt:>7} "
            f"{statistics.median(indexed) * 1e6:>10.1f}µs {p99 * 1e6:>7.1f}µs "
            f"{statistics.median(linear) * 1e6:>9.1f}µs "
            f"{statistics.mean(walked):>15.0f} / {max(walked)}"
        )


if __name__ == "__main__":
    main()
