"""Cross-field checks of a validated scenario: names that must be unique or must exist,
addresses that must sit inside their subnet, prefixes that must not overlap.

Each check reports at the offending field of the scenario file, so every message carries its
``file:line:col: dotted.path``. Things that are legal but probably surprising become notes.

Example
-------
>>> from k8snet_sim.scenario.yamlpos import load_yaml_documents
>>> text = '''
... metadata: {name: demo}
... cluster:
...   nodes: [{name: n1, address: 10.0.0.5, subnet: lan}]
... network:
...   subnets: [{name: lan, cidr: 192.168.1.0/24}]
... '''
>>> [doc], _ = load_yaml_documents(text, "demo.yaml")
>>> problems, notes = check_topology(doc, [])
>>> print(problems[0].render())
demo.yaml:4:31: cluster.nodes[0].address: 10.0.0.5 is outside subnet lan (192.168.1.0/24)
    hint: use an address inside 192.168.1.0/24 or put the node on another subnet
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from k8snet_sim.errors import Diagnostic
from k8snet_sim.scenario.manifests import Manifest
from k8snet_sim.scenario.schema import (
    HostSpec,
    IngressControllerSpec,
    NodeSpec,
    RouterSpec,
    RouteSpec,
    SubnetSpec,
    TrafficSpec,
)
from k8snet_sim.scenario.yamlpos import YamlDocument, YamlPath

_M = TypeVar("_M", bound=BaseModel)


def _section(data: Any, *keys: str) -> Any:
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def _items(model: type[_M], raw: Any) -> list[tuple[int, _M]]:
    """The valid items of a raw list, with their index. Invalid ones were reported already;
    checking the rest means one typo does not hide every cross-field problem."""
    out = []
    for i, item in enumerate(raw if isinstance(raw, list) else []):
        try:
            out.append((i, model.model_validate(item)))
        except ValidationError:
            continue
    return out


def _cidr_or_none(value: Any, default: str) -> IPv4Network | None:
    try:
        return IPv4Network(default if value is None else value, strict=True)
    except (ValueError, TypeError):
        return None


class _Checker:
    def __init__(self, doc: YamlDocument) -> None:
        self.doc = doc
        self.problems: list[Diagnostic] = []
        self.notes: list[str] = []
        self.subnet_items = _items(SubnetSpec, _section(doc.data, "network", "subnets"))
        self.subnets: dict[str, IPv4Network] = {}
        for _, subnet in self.subnet_items:  # the first definition wins, as in the error text
            self.subnets.setdefault(subnet.name, IPv4Network(subnet.cidr))
        # Subnets named but invalid (reported already): references to them are not errors.
        raw = _section(doc.data, "network", "subnets")
        self.broken = {
            item["name"]
            for item in (raw if isinstance(raw, list) else [])
            if isinstance(item, dict) and isinstance(item.get("name"), str)
        } - set(self.subnets)
        # (subnet, address) -> "node/n1" : one address per subnet
        self.addresses: dict[tuple[str, str], str] = {}

    def error(self, path: YamlPath, message: str, hint: str = "") -> None:
        self.problems.append(self.doc.diagnostic(path, message, hint))

    def unique(self, items: Iterable[tuple[int, str]], path: YamlPath, what: str) -> None:
        seen: dict[str, int] = {}
        for i, name in items:
            if name in seen:
                self.error(
                    (*path, i, "name"),
                    f"duplicate {what} name {name!r} (also {path[-1]}[{seen[name]}])",
                    f"give every {what} a unique name",
                )
            seen.setdefault(name, i)

    def subnet_of(self, name: str, path: YamlPath) -> IPv4Network | None:
        if name in self.broken:
            return None
        if name not in self.subnets:
            known = ", ".join(self.subnets) or "none defined"
            self.error(path, f"unknown subnet {name!r}", f"subnets in network.subnets: {known}")
            return None
        return self.subnets[name]

    def inside(
        self, address: str, subnet: str, net: IPv4Network, path: YamlPath, owner: str
    ) -> None:
        addr = IPv4Address(address)
        if addr not in net:
            self.error(
                path,
                f"{address} is outside subnet {subnet} ({net})",
                f"use an address inside {net} or put the {owner} on another subnet",
            )
        elif net.prefixlen < 31 and addr in (net.network_address, net.broadcast_address):
            self.error(
                path,
                f"{address} is the network or broadcast address of {net}",
                "use a host address of the subnet",
            )

    def claim(self, address: str, subnet: str, who: str, path: YamlPath) -> None:
        key = (subnet, address)
        if key in self.addresses:
            self.error(
                path,
                f"address {address} on subnet {subnet} is already used by {self.addresses[key]}",
                "every interface on a subnet needs its own address",
            )
        else:
            self.addresses[key] = who

    def gateway(self, gateway: str | None, subnet: str, net: IPv4Network, path: YamlPath) -> None:
        if gateway is not None and IPv4Address(gateway) not in net:
            self.error(
                path,
                f"gateway {gateway} is outside subnet {subnet} ({net})",
                "a gateway must be directly reachable: pick an address in the same subnet",
            )

    def routes(self, routes: list[RouteSpec], nets: list[IPv4Network], path: YamlPath) -> None:
        for j, route in enumerate(routes):
            if not any(IPv4Address(route.via) in net for net in nets):
                reach = ", ".join(str(n) for n in nets) or "no subnet"
                self.error(
                    (*path, j, "via"),
                    f"next hop {route.via} is not on a directly connected subnet ({reach})",
                    "a route's `via` must be an address on one of the attached subnets",
                )


def check_topology(
    doc: YamlDocument, manifests: list[Manifest]
) -> tuple[list[Diagnostic], list[str]]:
    """Cross-field problems (errors) and notes (legal but surprising) of the scenario in
    ``doc``. Works on every item that is valid by itself, even if others are not."""
    c = _Checker(doc)
    data = doc.data
    nodes = _items(NodeSpec, _section(data, "cluster", "nodes"))
    routers = _items(RouterSpec, _section(data, "network", "routers"))
    hosts = _items(HostSpec, _section(data, "network", "hosts"))
    c.unique(((i, s.name) for i, s in c.subnet_items), ("network", "subnets"), "subnet")
    c.unique(((i, n.name) for i, n in nodes), ("cluster", "nodes"), "node")
    c.unique(((i, r.name) for i, r in routers), ("network", "routers"), "router")
    c.unique(((i, h.name) for i, h in hosts), ("network", "hosts"), "host")
    traffic = _items(TrafficSpec, _section(data, "traffic"))
    c.unique(((i, t.name) for i, t in traffic), ("traffic",), "traffic")
    for n, (i, subnet) in enumerate(c.subnet_items):
        cidr = IPv4Network(subnet.cidr)
        for _, other in c.subnet_items[:n]:
            other_cidr = IPv4Network(other.cidr)
            if other.name != subnet.name and cidr.overlaps(other_cidr):
                c.error(
                    ("network", "subnets", i, "cidr"),
                    f"{cidr} overlaps subnet {other.name} ({other_cidr})",
                )
    _cluster_ranges(c, nodes)
    for i, node in nodes:
        path: YamlPath = ("cluster", "nodes", i)
        sub = c.subnet_of(node.subnet, (*path, "subnet"))
        if sub is not None:
            c.inside(node.address, node.subnet, sub, (*path, "address"), "node")
            c.claim(node.address, node.subnet, f"node/{node.name}", (*path, "address"))
            c.gateway(node.gateway, node.subnet, sub, (*path, "gateway"))
    for i, router in routers:
        path = ("network", "routers", i)
        nets = []
        for j, iface in enumerate(router.interfaces):
            sub = c.subnet_of(iface.subnet, (*path, "interfaces", j, "subnet"))
            if sub is not None:
                nets.append(sub)
                c.inside(
                    iface.address, iface.subnet, sub, (*path, "interfaces", j, "address"), "router"
                )
                c.claim(
                    iface.address,
                    iface.subnet,
                    f"router/{router.name}",
                    (*path, "interfaces", j, "address"),
                )
        c.routes(router.routes, nets, (*path, "routes"))
        if router.default_route is not None:
            c.routes([RouteSpec(to="0.0.0.0/0", via=router.default_route)], nets, path)
    for i, host in hosts:
        path = ("network", "hosts", i)
        sub = c.subnet_of(host.subnet, (*path, "subnet"))
        if sub is not None:
            c.inside(host.address, host.subnet, sub, (*path, "address"), "host")
            c.claim(host.address, host.subnet, f"host/{host.name}", (*path, "address"))
            c.gateway(host.gateway, host.subnet, sub, (*path, "gateway"))
            c.routes(host.routes, [sub], (*path, "routes"))
    _ingress_controllers(c, manifests)
    return c.problems, c.notes


def _cluster_ranges(c: _Checker, nodes: list[tuple[int, NodeSpec]]) -> None:
    pods = _cidr_or_none(_section(c.doc.data, "cluster", "podCIDR"), "10.244.0.0/16")
    services = _cidr_or_none(_section(c.doc.data, "cluster", "serviceCIDR"), "10.96.0.0/12")
    if pods is None or services is None:
        return
    if pods.overlaps(services):
        c.error(
            ("cluster", "serviceCIDR"),
            f"serviceCIDR {services} overlaps podCIDR {pods}",
            "choose disjoint ranges, e.g. 10.96.0.0/12 and 10.244.0.0/16",
        )
    for name, net in c.subnets.items():
        for what, cidr in (("podCIDR", pods), ("serviceCIDR", services)):
            if net.overlaps(cidr):
                c.notes.append(f"subnet {name} ({net}) overlaps cluster {what} {cidr}")
    explicit: list[tuple[str, IPv4Network]] = []
    for i, node in nodes:
        if node.pod_cidr is None:
            continue
        path: YamlPath = ("cluster", "nodes", i, "podCIDR")
        own = IPv4Network(node.pod_cidr)
        if not own.subnet_of(pods):
            c.error(
                path,
                f"node podCIDR {own} is outside the cluster podCIDR {pods}",
                f"pick a prefix inside {pods} or omit podCIDR to have one assigned",
            )
            continue
        for other_name, other in explicit:
            if own.overlaps(other):
                c.error(
                    path,
                    f"node podCIDR {own} overlaps the podCIDR of {other_name} ({other})",
                    "give every node a distinct pod prefix",
                )
        explicit.append((node.name, own))


def _ingress_controllers(c: _Checker, manifests: list[Manifest]) -> None:
    have = {(m.kind, m.key) for m in manifests}
    seen: set[str] = set()
    for i, ctl in _items(IngressControllerSpec, _section(c.doc.data, "ingressControllers")):
        path: YamlPath = ("ingressControllers", i)
        if ctl.class_name in seen:
            c.error(
                (*path, "class"),
                f"duplicate ingress controller for class {ctl.class_name!r}",
                "one controller per IngressClass",
            )
        seen.add(ctl.class_name)
        if not any(
            (kind, ctl.deployment) in have for kind in ("Deployment", "DaemonSet", "StatefulSet")
        ):
            c.error(
                (*path, "deployment"),
                f"no Deployment, DaemonSet or StatefulSet {ctl.deployment} in the manifests",
                "name the workload that runs the controller as NAMESPACE/NAME",
            )
        if ("Service", ctl.service) not in have:
            c.error(
                (*path, "service"),
                f"no Service {ctl.service} in the manifests",
                "name the controller's Service as NAMESPACE/NAME",
            )
