"""Describe, then build: turn a scenario and its control-plane result into a :class:`World`.

Mininet's ``Topo.build()`` lesson: the scenario is a description; building produces the
namespaces, segments and routes, the CNI wiring (cni0 bridges, host-gw routes or a VXLAN
overlay), the servers in pods, and each node's kube-proxy datapath for the chosen mode.

Example
-------
>>> from k8snet_sim.scenario.loader import load_scenario   # doctest: +SKIP
>>> world = build_world(load_scenario("scenarios/two-node-host-gw.yaml"))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from k8snet_sim.cluster.model import ClusterState, Node
from k8snet_sim.net.addr import Cidr, ip
from k8snet_sim.net.link import Interface, Segment
from k8snet_sim.net.packet import PROTO_NUMBERS
from k8snet_sim.net.routing import Route
from k8snet_sim.sim.apps import PodServer
from k8snet_sim.sim.costs import CostModel
from k8snet_sim.sim.health import install_health_servers
from k8snet_sim.sim.ingress import IngressController
from k8snet_sim.sim.kubeproxy import install_kube_proxy
from k8snet_sim.sim.loadbalancer import announce_metallb, health_check, provision_cloud
from k8snet_sim.sim.namespace import Namespace
from k8snet_sim.sim.sockets import Listener
from k8snet_sim.sim.world import Vxlan, World

DEFAULT = Cidr.parse("0.0.0.0/0")
VETH_BANDWIDTH_BPS = 40e9  # a veth pair with offloads: ~37.8 Gbit/s per stream (performance §5)
VETH_LATENCY_S = 1e-6


def node_ns(name: str) -> str:
    return f"node/{name}"


def pod_ns(key: str) -> str:
    return f"pod/{key}"


def build_world(scenario: Any, build: Any = None, *, costs: CostModel | None = None) -> World:
    """Build the world for ``scenario`` (a loaded Scenario). ``build`` is the control-plane
    result (``k8snet_sim.cluster.build.build_cluster``), computed if not given."""
    if build is None:
        from k8snet_sim.cluster.build import build_cluster

        build = build_cluster(scenario)
    state: ClusterState = build.state
    world = World()
    world.costs = costs or CostModel.from_overrides(getattr(scenario, "costs", None))
    world.info.update(scenario=scenario, cluster=build, state=state)
    _subnets(world, scenario)
    _routers(world, scenario)
    _hosts(world, scenario)
    specs = {n.name: n for n in scenario.cluster.nodes}
    for node in state.nodes:
        _node(world, node, specs[node.name], scenario)
    _cni(world, state, scenario.cluster.cni)
    controllers = _ingress_controllers(scenario, build)
    for pod in state.pods:
        _pod(world, state, pod, controllers.get(pod.key))
    for node in state.nodes:
        install_kube_proxy(world, state, node.name)
        install_health_servers(world, state, node.name)
    devices = []
    provider = scenario.load_balancer.provider if scenario.load_balancer else None
    if provider == "metallb-l2":
        announce_metallb(world, state, scenario)
    elif provider == "cloud":
        devices = provision_cloud(world, state, scenario)
    # Pods, routers and outside hosts get no netfilter hooks at all: Linux registers
    # conntrack in a network namespace only when something there needs it (rules, NAT).
    if devices:
        health_check(world, devices)
    world.info["ingressControllers"] = {k: v.class_name for k, v in controllers.items()}
    return world


def _ingress_controllers(scenario: Any, build: Any) -> dict[str, IngressController]:
    """The controller application of each ingress controller pod, by pod key."""
    apps: dict[str, IngressController] = {}
    for spec in scenario.ingress_controllers:
        namespace, name = spec.deployment.split("/", 1)
        ingresses = [i for i in build.ingresses if i.class_name == spec.class_name]
        for pod in build.state.pods:
            if pod.namespace == namespace and pod.owner == f"Deployment/{name}":
                apps[pod.key] = IngressController(
                    pod.key, spec.class_name, ingresses, build.state, spec.upstream
                )
    return apps


def _subnets(world: World, scenario: Any) -> None:
    for s in scenario.network.subnets:
        world.add_segment(
            Segment(
                s.name,
                bandwidth_bps=s.bandwidth,
                latency_s=s.latency,
                buffer_packets=s.buffer_packets,
                kind="lan",
            )
        )
        world.graph.nodes[f"segment/{s.name}"]["cidr"] = s.cidr


def _prefix_of(scenario: Any, subnet: str) -> int:
    for s in scenario.network.subnets:
        if s.name == subnet:
            return Cidr.parse(s.cidr).prefix
    raise KeyError(subnet)


def _add_routes(ns: Namespace, routes: list[Any]) -> None:
    for r in routes:
        via = ip(r.via)
        dev = ns.iface_on_link(via)
        if dev is not None:
            ns.routes.add(Route(Cidr.parse(r.to), dev=dev, via=via, origin="scenario"))


def _routers(world: World, scenario: Any) -> None:
    for spec in scenario.network.routers:
        ns = world.add_namespace(
            Namespace(f"router/{spec.name}", kind="router", ip_forward=spec.ip_forward)
        )
        for i, iface in enumerate(spec.interfaces):
            name = f"eth{i}"
            ns.add_interface(
                Interface(name, [(ip(iface.address), _prefix_of(scenario, iface.subnet))])
            )
            world.connect(ns, name, iface.subnet)
        _add_routes(ns, spec.routes)
        if spec.default_route:
            _add_routes(ns, [_Route("0.0.0.0/0", spec.default_route)])


class _Route:
    def __init__(self, to: str, via: str) -> None:
        self.to, self.via = to, via


def _hosts(world: World, scenario: Any) -> None:
    for spec in scenario.network.hosts:
        ns = world.add_namespace(Namespace(f"host/{spec.name}", kind="host"))
        ns.add_interface(Interface("eth0", [(ip(spec.address), _prefix_of(scenario, spec.subnet))]))
        world.connect(ns, "eth0", spec.subnet)
        _add_routes(ns, spec.routes)
        if spec.gateway:
            _add_routes(ns, [_Route("0.0.0.0/0", spec.gateway)])


def _node(world: World, node: Node, spec: Any, scenario: Any) -> None:
    ns = world.add_namespace(
        Namespace(node_ns(node.name), kind="node", ip_forward=spec.ip_forward, cores=spec.cpus)
    )
    ns.labels["node"] = node.name
    ns.add_interface(Interface("eth0", [(ip(node.address), _prefix_of(scenario, node.subnet))]))
    world.connect(ns, "eth0", node.subnet)
    if node.gateway:
        _add_routes(ns, [_Route("0.0.0.0/0", node.gateway)])
    # cni0: the node's port on its pods' bridge, holding the pod CIDR's first address.
    pod_net = Cidr.parse(node.pod_cidr)
    bridge = world.add_segment(
        Segment(
            f"cni0@{node.name}",
            bandwidth_bps=VETH_BANDWIDTH_BPS,
            latency_s=VETH_LATENCY_S,
            kind="bridge",
            owner=ns.name,
            owner_iface="cni0",
        )
    )
    ns.add_interface(Interface("cni0", [(pod_net.host(1), pod_net.prefix)], kind="bridge"))
    world.connect(ns, "cni0", bridge.name)


def _cni(world: World, state: ClusterState, cni: str) -> None:
    """host-gw: route each other node's pod CIDR via that node. vxlan: a flannel.1 device per
    node and routes to each other node's pod CIDR through it."""
    for node in state.nodes:
        ns = world.namespaces[node_ns(node.name)]
        if cni == "vxlan":
            pod_net = Cidr.parse(node.pod_cidr)
            ns.add_interface(
                Interface("flannel.1", [(pod_net.network, 32)], kind="vxlan", mtu=1450)
            )
            world.vxlans[ns.name] = Vxlan("flannel.1", ip(node.address))
        for other in state.nodes:
            if other.name == node.name:
                continue
            other_net = Cidr.parse(other.pod_cidr)
            if cni == "vxlan":
                ns.routes.add(
                    Route(
                        other_net,
                        dev="flannel.1",
                        via=other_net.network,
                        onlink=True,
                        origin="flannel vxlan",
                    )
                )
                world.vxlans[ns.name].fdb[other_net.network] = ip(other.address)
            elif other.subnet == node.subnet:
                ns.routes.add(
                    Route(other_net, dev="eth0", via=ip(other.address), origin="cni host-gw")
                )
        if cni == "vxlan":
            for other in state.nodes:
                if other.name != node.name:
                    world.graph.add_edge(ns.name, node_ns(other.name), kind="vxlan")


def _pod(world: World, state: ClusterState, pod: Any, controller: Any = None) -> None:
    node = state.node(pod.node)
    if pod.host_network:
        target = node_ns(node.name)
    else:
        ns = world.add_namespace(
            Namespace(pod_ns(pod.key), kind="pod", cpu_owner=node_ns(node.name))
        )
        ns.labels.update(node=node.name, pod=pod.key)
        pod_net = Cidr.parse(node.pod_cidr)
        ns.add_interface(Interface("eth0", [(ip(pod.ip), pod_net.prefix)]))
        world.connect(ns, "eth0", f"cni0@{node.name}")
        ns.routes.add(Route(DEFAULT, dev="eth0", via=pod_net.host(1), origin="cni"))
        target = ns.name
    server = controller or PodServer(pod.key)
    # The controller's sockets are not endpoints of the request: its backends are.
    owner = None if controller is not None else pod.key
    kind = f"ingress controller {pod.key}" if controller is not None else pod.key
    for port in pod.ports:
        proto = PROTO_NUMBERS[port.protocol.lower()]
        world.listen(
            target,
            Listener(proto, port.port, server, name=f"{kind}:{port.name or port.port}", pod=owner),
        )
