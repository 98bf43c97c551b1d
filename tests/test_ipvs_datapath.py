"""IPVS mode on the wire: ipsets and ``-m set``, the IPVS schedulers, and packet flows through
a two-node cluster built here (ClusterIP, NodePort, LoadBalancer, externalIPs, traffic
policies, persistence, source ranges, hairpin), plus the founding lesson and every bundled
scenario run with ``--mode ipvs``."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from k8snet_sim import trace
from k8snet_sim.analysis.check import check
from k8snet_sim.analysis.compare import compare_modes
from k8snet_sim.api import simulate
from k8snet_sim.errors import NotSupported, RulesError
from k8snet_sim.net.addr import Cidr, ip
from k8snet_sim.net.packet import ICMP, TCP, UDP, FiveTuple, Packet
from k8snet_sim.netfilter.conntrack import ConntrackEntry, ConntrackTable
from k8snet_sim.netfilter.context import Hook, NetfilterState, PacketContext
from k8snet_sim.netfilter.ipset import IpSet
from k8snet_sim.netfilter.iptables_save import parse_iptables_save
from k8snet_sim.netfilter.ipvs import (
    IpvsTable,
    RealServer,
    VirtualServer,
    ipvs_state,
    source_hash_bucket,
)
from k8snet_sim.scenario.loader import load_scenario, load_scenario_text
from k8snet_sim.sim.choice import SeededChooser
from k8snet_sim.sim.simulation import Simulation

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
LAPTOP, PARTNER = "172.16.0.50", "198.51.100.7"
NODE1, NODE2 = "192.168.10.11", "192.168.10.12"
WEB_A, WEB_B = "default/web-a", "default/web-b"


DD, SD = ("dst", "dst"), ("src", "dst")


def pkt(src: str, dst: str, dport: int = 80, proto: int = TCP, sport: int = 40000) -> Packet:
    return Packet(src=ip(src), dst=ip(dst), proto=proto, sport=sport, dport=dport, flags="S")


def context(now: float = 0.0, state: NetfilterState | None = None) -> PacketContext:
    return PacketContext(
        Hook.INPUT, now, SeededChooser(random.Random(0)), state or NetfilterState(), lambda a: False
    )


# ----------------------------------------------------------------------------- ipsets


@pytest.mark.parametrize(
    ("set_type", "members", "packet", "flags", "hit"),
    [
        ("hash:ip", ["10.96.0.10"], pkt(LAPTOP, "10.96.0.10"), ("dst",), True),
        ("hash:ip", ["10.96.0.10"], pkt(LAPTOP, "10.96.0.10"), ("src",), False),
        ("hash:ip,port", ["10.96.0.10,tcp:80"], pkt(LAPTOP, "10.96.0.10"), ("dst", "dst"), True),
        ("hash:ip,port", ["10.96.0.10,tcp:80"], pkt(LAPTOP, "10.96.0.10", 81), DD, False),
        ("hash:ip,port", ["10.96.0.10,udp:80"], pkt(LAPTOP, "10.96.0.10"), ("dst", "dst"), False),
        ("hash:ip,port", ["10.96.0.10,80"], pkt(LAPTOP, "10.96.0.10"), ("dst", "dst"), True),
        # The no-detector masquerade rule: a VIP-sourced connection to a service port.
        ("hash:ip,port", ["10.96.0.10,tcp:80"], pkt("10.96.0.10", "10.244.1.5"), SD, True),
        # Fewer flags than dimensions never match (ip_set_test); extra flags are ignored.
        ("hash:ip,port", ["10.96.0.10,tcp:80"], pkt(LAPTOP, "10.96.0.10"), ("dst",), False),
        ("hash:ip", ["10.96.0.10"], pkt(LAPTOP, "10.96.0.10"), ("dst", "dst"), True),
        ("hash:ip,port,ip", ["10.244.1.5,tcp:8080,10.244.1.5"],
         pkt("10.244.1.5", "10.244.1.5", 8080), ("dst", "dst", "src"), True),
        ("hash:ip,port,ip", ["10.244.1.5,tcp:8080,10.244.1.5"],
         pkt("10.244.1.6", "10.244.1.5", 8080), ("dst", "dst", "src"), False),
        ("hash:ip,port,net", ["1.2.3.4,tcp:80,203.0.113.0/25"],
         pkt("203.0.113.2", "1.2.3.4"), ("dst", "dst", "src"), True),
        ("hash:ip,port,net", ["1.2.3.4,tcp:80,203.0.113.0/25"],
         pkt("203.0.113.130", "1.2.3.4"), ("dst", "dst", "src"), False),
        ("bitmap:port", ["30080"], pkt(LAPTOP, NODE1, 30080), ("dst",), True),
        ("bitmap:port", ["30080"], pkt(LAPTOP, NODE1, 30080, proto=UDP), ("dst",), True),
        ("bitmap:port", ["30080"], pkt(LAPTOP, NODE1, 30081), ("dst",), False),
        ("bitmap:port", ["30080"], pkt(LAPTOP, NODE1, 0, proto=ICMP), ("dst",), False),
        ("bitmap:port", ["40000"], pkt(LAPTOP, NODE1, 30080), ("src",), True),
    ],
)  # fmt: skip
def test_ipset_membership(set_type, members, packet, flags, hit) -> None:
    assert IpSet.build("S", set_type, members).test(packet, flags) is hit


@pytest.mark.parametrize(
    ("set_type", "member", "message"),
    [
        ("hash:ip,port", "10.96.0.10", "does not fit type"),
        ("hash:ip,port", "10.96.0.10,gopher:80", "bad port"),
        ("hash:ip", "10.96.0.300", "bad ipset member"),
        ("bitmap:port", "70000", "bad ipset member"),
        ("list:set", "x", "not modelled"),
    ],
)
def test_ipset_rejects_bad_members(set_type: str, member: str, message: str) -> None:
    with pytest.raises(RulesError, match=message):
        IpSet.build("S", set_type, [member])


SET_RULES = """*filter
:INPUT ACCEPT [0:0]
-A INPUT -m set --match-set VIPS dst,dst -j ACCEPT
-A INPUT -m set ! --match-set PORTS dst -j DROP
COMMIT
"""
SETS = {
    "VIPS": IpSet.build("VIPS", "hash:ip,port", ["10.96.0.10,tcp:80"]),
    "PORTS": IpSet.build("PORTS", "bitmap:port", ["22"]),
}


@pytest.mark.parametrize(
    ("packet", "verdict", "lookups"),
    [
        (pkt(LAPTOP, "10.96.0.10"), "ACCEPT", 1),
        (pkt(LAPTOP, NODE1, 22), "ACCEPT", 2),  # falls off INPUT: policy ACCEPT
        (pkt(LAPTOP, NODE1, 8080), "DROP", 2),
    ],
)
def test_set_match_in_rules_counts_one_lookup_per_test(packet, verdict, lookups) -> None:
    rules = parse_iptables_save(SET_RULES, ipsets=SETS)
    ctx = context()
    assert rules.run("filter", Hook.INPUT, packet, ctx).verdict.value == verdict
    assert ctx.map_lookups == lookups


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("-A INPUT -m set --match-set NOPE dst -j DROP", "ipset NOPE does not exist"),
        ("-A INPUT -m set --match-set VIPS both -j DROP", "bad --match-set flags"),
        ("-A INPUT -m set --match-set VIPS -j DROP", "unexpected|needs a value|bad --match-set"),
        ("-A INPUT -m set -j DROP", "needs --match-set"),
    ],
)
def test_set_match_errors(rule: str, message: str) -> None:
    with pytest.raises(RulesError, match=message):
        parse_iptables_save(f"*filter\n:INPUT ACCEPT [0:0]\n{rule}\nCOMMIT\n", ipsets=SETS)


# ----------------------------------------------------------------------------- schedulers

VIP = ip("10.96.0.10")
A, B, C = (RealServer(ip(f"10.244.1.{n}"), 8080) for n in (5, 6, 7))


def service(scheduler: str = "rr", persistence: int = 0, servers=(A, B, C)) -> VirtualServer:
    return VirtualServer(TCP, VIP, 80, scheduler, persistence, tuple(servers), "shop/web:http")


def schedule_many(vs: VirtualServer, clients: list[str], now: float = 0.0) -> list[RealServer]:
    table, state, conntrack = IpvsTable([vs]), NetfilterState(), ConntrackTable()
    out = []
    for n, client in enumerate(clients):
        chosen = table.schedule(vs, pkt(client, "10.96.0.10", sport=40000 + n), context(now, state),
                                conntrack)  # fmt: skip
        assert chosen is not None
        out.append(chosen)
    return out


@pytest.mark.parametrize("scheduler", ["rr", "wrr"])
def test_round_robin_cycles_through_real_servers_per_virtual_server(scheduler: str) -> None:
    assert schedule_many(service(scheduler), [LAPTOP] * 4) == [A, B, C, A]


@pytest.mark.parametrize("scheduler", ["sh", "dh"])
def test_hash_schedulers_use_the_kernel_bucket(scheduler: str) -> None:
    clients = [f"172.16.0.{n}" for n in range(1, 40)]
    got = schedule_many(service(scheduler), clients)
    if scheduler == "sh":
        assert got == [(A, B, C)[source_hash_bucket(ip(c)) % 3] for c in clients]
        assert len(set(got)) == 3
    else:  # one destination address: every client lands on the same server
        assert set(got) == {(A, B, C)[source_hash_bucket(VIP) % 3]}


def test_source_hash_is_the_kernels_hash_32() -> None:
    # hash_32(val, 8) = (val * 0x61C88647 mod 2^32) >> 24
    assert source_hash_bucket(ip("172.16.0.50")) == ((ip("172.16.0.50") * 0x61C88647) % 2**32) >> 24
    assert (
        schedule_many(service("sh"), [LAPTOP] * 3)
        == [schedule_many(service("sh"), [LAPTOP])[0]] * 3
    )


def _established(conntrack: ConntrackTable, tup: FiveTuple, state: str = "ESTABLISHED") -> None:
    ct = ConntrackEntry.new(tup, 0.0)
    ct.state, ct.expires = state, 1e9
    assert conntrack.confirm(ct, 0.0)


@pytest.mark.parametrize(
    ("scheduler", "open_states", "expected"),
    [
        # A has one established connection, B one half-open: lc weighs active·256 + inactive.
        ("lc", {A: ["ESTABLISHED"], B: ["SYN_SENT"]}, C),
        ("lc", {A: ["ESTABLISHED"], B: ["SYN_SENT"], C: ["ESTABLISHED"]}, B),
        ("wlc", {A: ["SYN_SENT", "SYN_SENT"], B: ["SYN_SENT"], C: ["SYN_SENT", "SYN_SENT"]}, B),
        # sed counts active connections only: ties go to the first server.
        ("sed", {A: ["ESTABLISHED"], B: ["SYN_SENT", "SYN_SENT"]}, B),
        # nq takes an idle server first, even one later in the list.
        ("nq", {A: ["ESTABLISHED"], B: ["ESTABLISHED"]}, C),
        # Closed connections no longer count.
        ("lc", {A: ["TIME_WAIT"], B: ["ESTABLISHED"], C: ["ESTABLISHED"]}, A),
    ],
)
def test_connection_based_schedulers(scheduler: str, open_states: dict, expected) -> None:
    vs = service(scheduler)
    table, state, conntrack = IpvsTable([vs]), NetfilterState(), ConntrackTable()
    conns = ipvs_state(context(0.0, state)).conns.setdefault(vs.key, {})
    port = 41000
    for dest, states in open_states.items():
        for ct_state in states:
            tup = FiveTuple(TCP, ip(LAPTOP), port, VIP, 80)
            conns[tup] = dest
            _established(conntrack, tup, ct_state)
            port += 1
    chosen = table.schedule(
        vs, pkt(LAPTOP, "10.96.0.10", sport=50000), context(0, state), conntrack
    )
    assert chosen == expected


def test_connections_that_conntrack_forgot_stop_counting() -> None:
    vs = service("lc", servers=(A, B))
    table, state, conntrack = IpvsTable([vs]), NetfilterState(), ConntrackTable()
    first = table.schedule(vs, pkt(LAPTOP, "10.96.0.10", sport=1), context(0, state), conntrack)
    # Never confirmed in conntrack (e.g. dropped): A is free again for the next connection.
    second = table.schedule(vs, pkt(LAPTOP, "10.96.0.10", sport=2), context(0, state), conntrack)
    assert first == second == A
    assert ipvs_state(context(0, state)).conns[vs.key] == {
        pkt(LAPTOP, "10.96.0.10", sport=2).tuple(): A
    }


@pytest.mark.parametrize(
    ("gap", "same"),
    [(10.0, True), (59.0, True), (61.0, False)],
)
def test_persistence_template_lives_for_the_timeout(gap: float, same: bool) -> None:
    vs = service("rr", persistence=60)
    table, state, conntrack = IpvsTable([vs]), NetfilterState(), ConntrackTable()
    first = table.schedule(vs, pkt(LAPTOP, "10.96.0.10"), context(0.0, state), conntrack)
    again = table.schedule(vs, pkt(LAPTOP, "10.96.0.10", sport=2), context(gap, state), conntrack)
    other = table.schedule(vs, pkt("172.16.0.51", "10.96.0.10"), context(gap, state), conntrack)
    assert (again == first) is same
    assert other != first or not same  # another client is scheduled on its own


def test_persistence_is_refreshed_by_each_new_connection() -> None:
    vs = service("rr", persistence=60)
    table, state, conntrack = IpvsTable([vs]), NetfilterState(), ConntrackTable()
    picks = [table.schedule(vs, pkt(LAPTOP, "10.96.0.10", sport=t), context(t, state), conntrack)
             for t in (0, 50, 100, 150)]  # fmt: skip
    assert len(set(picks)) == 1


def test_weight_zero_and_empty_services() -> None:
    table, conntrack = (
        IpvsTable([service(servers=(RealServer(A.address, 8080, 0), B))]),
        ConntrackTable(),
    )
    vs = table.lookup(TCP, VIP, 80)
    assert vs is not None
    assert {
        table.schedule(vs, pkt(LAPTOP, "10.96.0.10"), context(), conntrack) for _ in range(3)
    } == {B}
    empty = service(servers=())
    assert (
        IpvsTable([empty]).schedule(empty, pkt(LAPTOP, "10.96.0.10"), context(), conntrack) is None
    )


def test_state_is_copied_with_the_netfilter_state() -> None:
    state = NetfilterState()
    ipvs_state(context(0, state)).last[(TCP, VIP, 80)] = 1
    fork = state.copy()
    ipvs_state(context(0, fork)).last[(TCP, VIP, 80)] = 2
    assert ipvs_state(context(0, state)).last[(TCP, VIP, 80)] == 1


@pytest.mark.parametrize("scheduler", ["mh", "lblc", "lblcr"])
def test_unmodelled_schedulers_are_refused(scheduler: str) -> None:
    with pytest.raises(NotSupported, match="not modelled"):
        IpvsTable([service(scheduler)])


# ----------------------------------------------------------------------------- packet flows

LAB = """
apiVersion: k8snet-sim.io/v1alpha1
kind: Scenario
metadata: {name: ipvs-lab}
cluster:
  serviceCIDR: 10.96.0.0/16
  podCIDR: 10.244.0.0/16
  cni: host-gw
  kubeProxy: {mode: ipvs, clusterCIDR: 10.244.0.0/16}
  nodes:
    - {name: node1, address: 192.168.10.11, subnet: lan, gateway: 192.168.10.1,
       podCIDR: 10.244.1.0/24}
    - {name: node2, address: 192.168.10.12, subnet: lan, gateway: 192.168.10.1,
       podCIDR: 10.244.2.0/24}
network:
  subnets:
    - {name: lan, cidr: 192.168.10.0/24}
    - {name: office, cidr: 172.16.0.0/24}
    - {name: partner, cidr: 198.51.100.0/24}
  routers:
    - name: core
      interfaces:
        - {subnet: lan, address: 192.168.10.1}
        - {subnet: office, address: 172.16.0.1}
        - {subnet: partner, address: 198.51.100.1}
      routes: [{to: 203.0.113.10/32, via: 192.168.10.11}]
  hosts:
    - {name: laptop, subnet: office, address: 172.16.0.50, gateway: 172.16.0.1}
    - {name: partner, subnet: partner, address: 198.51.100.7, gateway: 198.51.100.1}
loadBalancer: {provider: metallb-l2, pool: 192.168.10.200-192.168.10.201}
manifests:
  - {apiVersion: v1, kind: Pod, metadata: {name: web-a, labels: {app: web}},
     spec: {nodeName: node1, containers: [{name: web, ports: [
       {name: http, containerPort: 8080}, {name: dns, containerPort: 53, protocol: UDP}]}]}}
  - {apiVersion: v1, kind: Pod, metadata: {name: web-b, labels: {app: web}},
     spec: {nodeName: node2, containers: [{name: web, ports: [
       {name: http, containerPort: 8080}, {name: dns, containerPort: 53, protocol: UDP}]}]}}
  - {apiVersion: v1, kind: Pod, metadata: {name: client-1},
     spec: {nodeName: node1, containers: [{name: c}]}}
  - {apiVersion: v1, kind: Pod, metadata: {name: client-2},
     spec: {nodeName: node2, containers: [{name: c}]}}
  - {apiVersion: v1, kind: Service, metadata: {name: web},
     spec: {selector: {app: web}, ports: [{name: http, port: 80, targetPort: http}]}}
  - {apiVersion: v1, kind: Service, metadata: {name: dns},
     spec: {selector: {app: web}, ports: [{name: dns, port: 53, protocol: UDP, targetPort: dns}]}}
  - {apiVersion: v1, kind: Service, metadata: {name: web-np},
     spec: {type: NodePort, selector: {app: web},
            ports: [{name: http, port: 80, targetPort: http, nodePort: 30080}]}}
  - {apiVersion: v1, kind: Service, metadata: {name: web-local},
     spec: {type: NodePort, externalTrafficPolicy: Local, selector: {app: web},
            ports: [{name: http, port: 80, targetPort: http, nodePort: 30081}]}}
  - {apiVersion: v1, kind: Service, metadata: {name: web-ext},
     spec: {selector: {app: web}, externalIPs: [203.0.113.10],
            ports: [{name: http, port: 8000, targetPort: http}]}}
  - {apiVersion: v1, kind: Service, metadata: {name: web-lb},
     spec: {type: LoadBalancer, selector: {app: web}, loadBalancerSourceRanges: [172.16.0.0/24],
            ports: [{name: http, port: 80, targetPort: http}]}}
  - {apiVersion: v1, kind: Service, metadata: {name: lb-local},
     spec: {type: LoadBalancer, externalTrafficPolicy: Local, selector: {app: web},
            ports: [{name: http, port: 80, targetPort: http}]}}
  - {apiVersion: v1, kind: Service, metadata: {name: sticky},
     spec: {selector: {app: web}, sessionAffinity: ClientIP,
            sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}},
            ports: [{name: http, port: 80, targetPort: http}]}}
  - {apiVersion: v1, kind: Service, metadata: {name: empty},
     spec: {selector: {app: nothing}, ports: [{name: http, port: 80, targetPort: 8080}]}}
  - {apiVersion: v1, kind: Service, metadata: {name: local-only},
     spec: {internalTrafficPolicy: Local, selector: {app: web},
            ports: [{name: http, port: 80, targetPort: http}]}}
"""


def lab(*overrides: str, seed: int = 0) -> Simulation:
    return simulate(load_scenario_text(LAB, file="lab.yaml", overrides=overrides), seed=seed)


def _rows(result) -> dict[str | None, tuple[str, str | None]]:
    return {
        r["pod"]: (r["disposition"], r.get("sourceSeenByBackend"))
        for r in result.possible_endpoints
    }


@pytest.mark.parametrize(
    ("source", "target", "expected"),
    [
        pytest.param("pod/default/client-1", "service/default/web:80",
                     {WEB_A: ("DELIVERED", "10.244.1.3"), WEB_B: ("DELIVERED", "10.244.1.3")},
                     id="pod-clusterip-keeps-pod-source"),
        pytest.param("pod/default/client-1", "service/default/dns:53",
                     {WEB_A: ("DELIVERED", "10.244.1.3"), WEB_B: ("DELIVERED", "10.244.1.3")},
                     id="udp-clusterip"),
        pytest.param("pod/default/web-a", "service/default/web:80",
                     {WEB_A: ("DELIVERED", "10.244.1.1"), WEB_B: ("DELIVERED", "10.244.1.2")},
                     id="hairpin-masquerades-via-loop-back-set"),
        pytest.param("node/node1", "service/default/web:80",
                     {WEB_A: ("DELIVERED", "10.244.1.1"), WEB_B: ("DELIVERED", NODE1)},
                     id="node-clusterip-masqueraded"),
        pytest.param("host/laptop", "nodeport/node1/default/web-np:80",
                     {WEB_A: ("DELIVERED", "10.244.1.1"), WEB_B: ("DELIVERED", NODE1)},
                     id="nodeport-etp-cluster-masqueraded"),
        pytest.param("host/laptop", "nodeport/node2/default/web-np:80",
                     {WEB_A: ("DELIVERED", NODE2), WEB_B: ("DELIVERED", "10.244.2.1")},
                     id="nodeport-on-the-other-node"),
        pytest.param("host/laptop", "nodeport/node1/default/web-local:80",
                     {WEB_A: ("DELIVERED", LAPTOP)}, id="nodeport-etp-local-keeps-client"),
        pytest.param("host/laptop", "203.0.113.10:8000",
                     {WEB_A: ("DELIVERED", "10.244.1.1"), WEB_B: ("DELIVERED", NODE1)},
                     id="external-ip-masqueraded"),
        pytest.param("host/laptop", "loadbalancer/default/web-lb:80",
                     {WEB_A: ("DELIVERED", NODE2), WEB_B: ("DELIVERED", "10.244.2.1")},
                     id="loadbalancer-inside-source-ranges"),
        pytest.param("host/partner", "loadbalancer/default/web-lb:80",
                     {None: ("DROPPED", None)}, id="loadbalancer-outside-source-ranges"),
        pytest.param("pod/default/client-1", "loadbalancer/default/web-lb:80",
                     {None: ("DROPPED", None)}, id="pods-are-outside-source-ranges-too"),
        pytest.param("pod/default/client-1", "service/default/local-only:80",
                     {WEB_A: ("DELIVERED", "10.244.1.3")}, id="itp-local"),
        pytest.param("pod/default/client-1", "service/default/empty:80",
                     {None: ("REJECTED", None)}, id="no-real-server-port-unreachable"),
        pytest.param("pod/default/client-1", "10.96.0.2:8080",
                     {None: ("REJECTED", None)}, id="vip-does-not-expose-other-ports"),
    ],
)  # fmt: skip
def test_packet_flows(source: str, target: str, expected: dict) -> None:
    assert _rows(trace(lab(), source, target)) == expected


def test_etp_local_without_local_endpoint_uses_every_endpoint_and_loses_outside_replies() -> None:
    sim = lab("manifests.1.spec.nodeName=node1")  # both backends on node1
    rows = _rows(trace(sim, "host/laptop", "nodeport/node2/default/web-local:80"))
    assert rows == {WEB_A: ("REPLY_LOST", LAPTOP), WEB_B: ("REPLY_LOST", LAPTOP)}
    rows = _rows(trace(sim, "pod/default/client-2", "nodeport/node2/default/web-local:80"))
    assert {d for d, _ in rows.values()} == {"DELIVERED"}  # why upstream did it (PR #97081)


def test_no_real_server_answers_with_icmp_port_unreachable() -> None:
    result = trace(lab(), "pod/default/client-1", "service/default/empty:80")
    assert "has no real server" in result.reason
    assert result.reply_hops and "ICMP" in result.reply_hops[0].packet


def test_trace_names_the_virtual_server_and_the_stolen_packet_is_masqueraded() -> None:
    sim = lab()
    result = trace(sim, "host/laptop", "nodeport/node1/default/web-np:80", explore_all=False)
    node_hop = next(h for h in result.hops if h.node == "node/node1")
    assert any(r.startswith("ipvs/TCP  192.168.10.11:30080: default/web-np:http (rr)")
               for r in node_hop.rules)  # fmt: skip
    assert node_hop.action.startswith("IPVS forward")
    assert node_hop.map_lookups > 0
    (ct,) = sim.state("node/node1").conntrack.entries()
    assert ct.dnat and ct.snat and ct.confirmed
    assert ct.reply.dst in (ip(NODE1), ip("10.244.1.1"))  # indexed by the masqueraded tuple


def endpoint_pod(sim: Simulation, source: str, target: str) -> str:
    """The pod one connection (no exploration) reached."""
    endpoint = trace(sim, source, target, explore_all=False).endpoint
    assert endpoint is not None
    return str(endpoint["pod"])


def test_round_robin_alternates_between_connections() -> None:
    sim = lab()
    pods = [endpoint_pod(sim, "pod/default/client-1", "service/default/web:80") for _ in range(4)]
    assert pods == [WEB_A, WEB_B, WEB_A, WEB_B]


def test_source_hash_sticks_to_the_client() -> None:
    sim = lab("cluster.kubeProxy.ipvsScheduler=sh")
    pods = {endpoint_pod(sim, "pod/default/client-1", "service/default/web:80") for _ in range(4)}
    assert len(pods) == 1


def test_persistence_holds_within_timeout_and_releases_after() -> None:
    sim = lab(seed=3)
    first = trace(sim, "pod/default/client-1", "service/default/sticky:80")
    assert len(first.possible_endpoints) == 2 and first.endpoint is not None
    sim.advance(30)
    held = trace(sim, "pod/default/client-1", "service/default/sticky:80")
    assert [r["pod"] for r in held.possible_endpoints] == [first.endpoint["pod"]]
    sim.advance(61)
    released = trace(sim, "pod/default/client-1", "service/default/sticky:80")
    assert len(released.possible_endpoints) == 2


def test_rules_output_has_the_three_listings() -> None:
    configs = lab().world.info["rules"]["node1"]
    assert list(configs) == ["ipvsadm", "ipset", "iptables"]
    assert "TCP  192.168.10.11:30080 rr" in configs["ipvsadm"]
    assert "Name: KUBE-NODE-PORT-LOCAL-TCP" in configs["ipset"]
    assert configs["iptables"].startswith("*filter\n")


def test_kube_ipvs0_holds_the_service_addresses() -> None:
    ns = lab().world.namespaces["node/node1"]
    dummy = ns.interfaces["kube-ipvs0"]
    assert dummy.kind == "dummy"
    assert {a for a, _ in dummy.addresses} >= {ip("10.96.0.2"), ip("203.0.113.10")}
    assert {p for _, p in dummy.addresses} == {32}
    assert ns.is_local(ip("10.96.0.2"))
    # Local but on no segment: the node does not answer ARP for them (strict ARP).
    assert not any(
        Cidr(a, 32).contains(ip("10.96.0.2")) for a, _ in ns.interfaces["eth0"].addresses
    )


# ----------------------------------------------------------------------------- scenarios

FOUNDING = SCENARIOS / "external-clusterip.yaml"
DETECTOR = "cluster.kubeProxy.clusterCIDR=10.244.0.0/16"


def test_founding_lesson_without_detector_is_partial() -> None:
    result = trace(simulate(load_scenario(FOUNDING, mode="ipvs")), "host/office",
                   "service/default/web:80")  # fmt: skip
    assert _rows(result) == {
        "default/web-master": ("DELIVERED", "172.16.0.50"),  # not masqueraded either
        "default/web-0": ("REPLY_LOST", "172.16.0.50"),
        "default/web-1": ("REPLY_LOST", "172.16.0.50"),
    }


def test_founding_lesson_with_detector_masquerades_to_the_master() -> None:
    scenario = load_scenario(FOUNDING, mode="ipvs", overrides=[DETECTOR])
    result = trace(simulate(scenario), "host/office", "service/default/web:80")
    assert _rows(result) == {
        "default/web-master": ("DELIVERED", "10.244.0.1"),
        "default/web-0": ("DELIVERED", "192.168.10.10"),
        "default/web-1": ("DELIVERED", "192.168.10.10"),
    }


def test_compare_shows_ipvs_with_table_lookups_and_fewer_rules() -> None:
    comparison = compare_modes(
        FOUNDING, "host/office", "service/default/web:80", modes=("iptables", "ipvs"),
        overrides=[DETECTOR],
    )  # fmt: skip
    rows = {r.mode: r for r in comparison.rows}
    assert rows["ipvs"].reachable == "all"
    assert rows["ipvs"].map_lookups > 0 and rows["iptables"].map_lookups == 0
    assert 0 < rows["ipvs"].rules_walked < rows["iptables"].rules_walked


# Expectations written for IPVS that upstream contradicts; the scenario's author is told.
DISPUTED: dict[str, str] = {}


def _bundled() -> list:
    return [
        pytest.param(p, marks=pytest.mark.xfail(reason=DISPUTED[p.stem], strict=False))
        if p.stem in DISPUTED
        else p
        for p in sorted(SCENARIOS.glob("*.yaml"))
    ]


@pytest.mark.parametrize("path", _bundled(), ids=lambda p: p.stem)
def test_bundled_scenarios_hold_in_ipvs_mode(path: Path) -> None:
    scenario = load_scenario(path, mode="ipvs")
    result = check(simulate(scenario, seed=1), scenario)
    assert result.passed, result
