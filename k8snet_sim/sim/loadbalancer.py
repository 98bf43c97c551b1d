"""LoadBalancer providers: how a Service's external IP gets traffic to the cluster.

``metallb-l2``: one node, elected per IP, answers ARP for it on the LAN (the others stay
silent); packets land on that node with the LoadBalancer IP as destination and kube-proxy's
rules take over. The election hashes node name and IP (MetalLB's memberlist election); with
``externalTrafficPolicy: Local`` only nodes with a ready local endpoint may announce.

``cloud``: a load balancer appears as its own device holding the IP. It health-checks every
node — the Service's healthCheckNodePort under ``externalTrafficPolicy: Local`` (200 only where
a local endpoint is ready), kube-proxy's ``/healthz`` (10256) otherwise — by real probes over
the simulated network, then DNATs each new connection to a healthy node's NodePort, chosen at
random, and masquerades it (the backend sees the load balancer's address — clouds that
preserve client addresses do it outside the datapath modelled here, see docs/fidelity.md).
``loadBalancerSourceRanges`` are enforced by the cloud device's firewall (the nodes see only
the device's address).

Example
-------
>>> elect_speaker(["node1", "node2", "node3"], "192.168.10.200") in ("node1", "node2", "node3")
True
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from k8snet_sim.cluster.model import ClusterState, Service
from k8snet_sim.net.addr import Cidr, ip, ip_str
from k8snet_sim.net.link import Interface
from k8snet_sim.net.packet import PROTO_NUMBERS, TCP
from k8snet_sim.net.routing import Route
from k8snet_sim.netfilter.context import ACCEPTED, Hook, HookResult, RuleEvent, Verdict
from k8snet_sim.netfilter.hooks import PRI_NAT_DST, PRI_NAT_SRC, Skb
from k8snet_sim.netfilter.nat import install_conntrack
from k8snet_sim.proxy.topology import external_policy_local, health_check_node_port
from k8snet_sim.sim.health import HEALTHZ_PORT
from k8snet_sim.sim.namespace import Namespace

if TYPE_CHECKING:
    from k8snet_sim.sim.world import World


def elect_speaker(candidates: list[str], address: str) -> str | None:
    """MetalLB L2: the node whose sha256(node + "#" + ip) sorts first announces the IP."""
    if not candidates:
        return None
    return min(candidates, key=lambda n: hashlib.sha256(f"{n}#{address}".encode()).hexdigest())


def _local_ready_nodes(state: ClusterState, svc: Service) -> list[str]:
    return sorted(
        {
            e.node_name
            for p in svc.ports
            for e in state.endpoints_for(svc, p)
            if e.ready and e.node_name
        }
    )


def _subnet_of(scenario: Any, address: str) -> Any:
    for s in scenario.network.subnets:
        if Cidr.parse(s.cidr).contains(ip(address)):
            return s
    return None


def announce_metallb(world: World, state: ClusterState, scenario: Any) -> None:
    """Make the elected node answer ARP for each LoadBalancer IP."""
    status = world.info.setdefault("loadBalancers", {})
    for svc in state.services:
        for vip in svc.load_balancer_ips:
            subnet = _subnet_of(scenario, vip)
            nodes = [n.name for n in state.nodes if subnet is not None and n.subnet == subnet.name]
            if external_policy_local(svc):
                ready = set(_local_ready_nodes(state, svc))
                nodes = [n for n in nodes if n in ready]
            speaker = elect_speaker(nodes, vip)
            entry = {
                "provider": "metallb-l2",
                "ip": vip,
                "announcedBy": speaker,
                "candidates": nodes,
            }
            if speaker is None:
                entry["problem"] = "no node may announce it (no node on its subnet" + (
                    " with a ready local endpoint)" if external_policy_local(svc) else ")"
                )
            else:
                world.segments[subnet.name].claim(ip(vip), f"node/{speaker}", "eth0")
            status.setdefault(svc.key, []).append(entry)


@dataclass
class CloudLoadBalancer:
    """A cloud load balancer device for one Service."""

    service: str
    vips: list[int]
    ports: dict[tuple[int, int], int]  # (proto, port) -> nodePort
    address: int  # the device's own address: probes and masqueraded traffic come from it
    source_ranges: list[Cidr]
    nodes: list[tuple[str, int]]  # (node name, address)
    health_port: int
    health_path: str
    healthy: list[tuple[str, int]] = field(default_factory=list)
    probes: dict[str, str] = field(default_factory=dict)  # node -> "200", "503", "timeout"…

    def prerouting(self, skb: Skb) -> HookResult:
        pkt, ctx = skb.pkt, skb.ctx
        node_port = self.ports.get((pkt.proto, pkt.dport)) if pkt.dst in self.vips else None
        if node_port is None:
            return ACCEPTED
        if self.source_ranges and not any(c.contains(pkt.src) for c in self.source_ranges):
            ctx.record(RuleEvent("cloud-lb", self.service, "firewall", effect="DROP"))
            return HookResult(
                Verdict.DROP,
                f"cloud load balancer {self.service}: source "
                f"{ip_str(pkt.src)} not in loadBalancerSourceRanges",
            )
        if not self.healthy:
            return HookResult(
                Verdict.DROP,
                f"cloud load balancer {self.service}: no healthy "
                f"node (probes: {self._probe_text()})",
            )
        assert ctx.nat is not None
        i = ctx.chooser.choose([1.0] * len(self.healthy), f"cloud LB {self.service} node")
        name, address = self.healthy[i]
        ctx.record(
            RuleEvent(
                "cloud-lb",
                self.service,
                f"healthy nodes: {', '.join(n for n, _ in self.healthy)}",
                effect=f"node {name} NodePort {node_port}",
            )
        )
        ctx.nat.dnat(address, node_port)
        return ACCEPTED

    def postrouting(self, skb: Skb) -> HookResult:
        if skb.ctx.ct_dnat and skb.ctx.nat is not None:
            skb.ctx.nat.masquerade()
        return ACCEPTED

    def _probe_text(self) -> str:
        return ", ".join(f"{n}: {r}" for n, r in self.probes.items())

    def describe(self) -> dict[str, Any]:
        return {
            "provider": "cloud",
            "deviceAddress": ip_str(self.address),
            "ip": ", ".join(ip_str(v) for v in self.vips),
            "healthCheck": f"{self.health_path} on port {self.health_port}",
            "probes": dict(self.probes),
            "healthyNodes": [n for n, _ in self.healthy],
        }


def provision_cloud(world: World, state: ClusterState, scenario: Any) -> list[CloudLoadBalancer]:
    """One device per LoadBalancer Service with an address, on the subnet of its address."""
    devices = []
    taken: set[int] = set()
    for svc in state.services:
        if not svc.load_balancer_ips:
            continue
        subnet = _subnet_of(scenario, svc.load_balancer_ips[0])
        if subnet is None:
            world.info.setdefault("loadBalancers", {})[svc.key] = [
                {
                    "provider": "cloud",
                    "ip": svc.load_balancer_ips[0],
                    "problem": "the address is on no subnet of the scenario",
                }
            ]
            continue
        net = Cidr.parse(subnet.cidr)
        ns = world.add_namespace(Namespace(f"lb/{svc.key}", kind="lb", ip_forward=True))
        # The device's own address (first, so MASQUERADE and probes use it) is distinct from
        # the Service's IP: every node may hold the Service IP locally (kube-ipvs0 in IPVS
        # mode), and a packet from one of a node's own addresses is a martian there.
        own = _free_address(world, state, net, taken)
        taken.add(own)
        ns.add_interface(
            Interface(
                "eth0", [(own, net.prefix)] + [(ip(v), net.prefix) for v in svc.load_balancer_ips]
            )
        )
        world.connect(ns, "eth0", subnet.name)
        gateway = _gateway_on(scenario, subnet.name)
        if gateway is not None:
            ns.routes.add(
                Route(Cidr.parse("0.0.0.0/0"), dev="eth0", via=ip(gateway), origin="cloud")
            )
        hcnp = health_check_node_port(svc)
        device = CloudLoadBalancer(
            service=svc.key,
            vips=[ip(v) for v in svc.load_balancer_ips],
            address=own,
            ports={
                (PROTO_NUMBERS[p.protocol.lower()], p.port): p.node_port
                for p in svc.ports
                if p.node_port
            },
            source_ranges=[Cidr.parse(r.strip()) for r in svc.load_balancer_source_ranges],
            nodes=[(n.name, ip(n.address)) for n in state.nodes],
            health_port=hcnp or HEALTHZ_PORT,
            health_path="/" if hcnp else "/healthz",
        )
        install_conntrack(
            ns.stack,
            {
                Hook.PREROUTING: (PRI_NAT_DST, "cloud-lb", device.prerouting),
                Hook.POSTROUTING: (PRI_NAT_SRC, "cloud-lb", device.postrouting),
            },
        )
        devices.append(device)
    return devices


def _free_address(world: World, state: ClusterState, net: Cidr, taken: set[int]) -> int:
    """The highest address of ``net`` that no namespace, Service or other device uses."""
    used = set(taken)
    for ns in world.namespaces.values():
        used |= ns.local_addresses
    for svc in state.services:
        used |= {ip(a) for a in (*svc.load_balancer_ips, *svc.external_ips)}
    for address in range(net.broadcast - 1, net.network, -1):
        if address not in used:
            return address
    raise ValueError(f"no free address on {net} for a cloud load balancer")


def _gateway_on(scenario: Any, subnet: str) -> str | None:
    for router in scenario.network.routers:
        for iface in router.interfaces:
            if iface.subnet == subnet:
                return str(iface.address)
    return None


def health_check(world: World, devices: list[CloudLoadBalancer]) -> None:
    """Probe every node from every device over the simulated network (one probe each)."""
    from k8snet_sim.sim.clients import RequestClient, connect
    from k8snet_sim.sim.simulation import Simulation
    from k8snet_sim.sim.sockets import Message

    status = world.info.setdefault("loadBalancers", {})
    for device in devices:
        sim = Simulation(world, seed=0)
        probes = []
        for name, address in device.nodes:
            client = RequestClient(
                sim, Message("request", 80, {"method": "GET", "path": device.health_path})
            )
            connect(
                sim,
                f"lb/{device.service}",
                address,
                device.health_port,
                TCP,
                client,
                src=device.address,
            )
            probes.append((name, address, client))
        sim.run(until=10.0)
        for name, address, client in probes:
            outcome = client.outcome
            if outcome.ok and outcome.response is not None:
                code = int(outcome.response.data.get("status", 200))
                device.probes[name] = str(code)
                if code == 200:
                    device.healthy.append((name, address))
            else:
                device.probes[name] = outcome.status
        status[device.service] = [device.describe()]
