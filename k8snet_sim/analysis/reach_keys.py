"""Which sources the datapath cannot tell apart, for one target: they may share one
computation of a reachability cell (:func:`computation_key`).

Two sources are equivalent for a target when they send from the same network namespace (a
node and its hostNetwork pods), or are pods on the same node whose namespaces have the same
shape (their own address aside), whose addresses fall in exactly the same prefixes of the
world's configuration (:class:`AddressClasses`), and neither of which is the target or one of
the endpoints behind it (:func:`target_addresses`) — a pod that backs the target is
hairpinned and masqueraded, so it is never merged with one that does not. When the scenario
has NetworkPolicy objects, the pod's namespace and labels are part of the key as well.

Example
-------
>>> [(a, p) for a, p in _ADDRESS.findall("-s 10.244.0.0/16 -d 10.96.0.10 --dport 53")]
[('10.244.0.0', '16'), ('10.96.0.10', '')]
"""

from __future__ import annotations

import re
from typing import Any

from k8snet_sim.analysis.reach_model import Source
from k8snet_sim.analysis.targets import Target
from k8snet_sim.net.addr import Cidr, ip

_ADDRESS = re.compile(r"(?<![\d.])(\d{1,3}(?:\.\d{1,3}){3})(?:/(\d{1,2}))?(?![\d.]*\d)")


class AddressClasses:
    """Which prefixes of the world's configuration contain an address: every route, every
    interface network, the cluster's CIDRs and Service source ranges, and every address or
    prefix written in a node's kube-proxy configuration — except the endpoint addresses
    kube-proxy writes only inside that endpoint's own chains (the hairpin masquerade match),
    which :func:`computation_key` handles per target instead."""

    def __init__(self, world: Any) -> None:
        state = world.info["state"]
        endpoint_ips = {ip(e.ip) for eps in state.endpoints.values() for e in eps}
        found: set[Cidr] = set()
        for ns in world.namespaces.values():
            found.update(r.dest for r in ns.routes.routes())
            for iface in ns.interfaces.values():
                found.update(Cidr(a & Cidr(0, p).mask, p) for a, p in iface.addresses if p < 32)
        proxy = state.kube_proxy
        texts = [
            state.pod_cidr,
            state.service_cidr,
            proxy.cluster_cidr or "",
            *proxy.nodeport_addresses,
            *(n.pod_cidr for n in state.nodes),
            *(r for s in state.services for r in s.load_balancer_source_ranges),
        ]
        # Nodes' configurations repeat each other line for line: read each distinct line once.
        lines: set[str] = set()
        for configs in world.info.get("rules", {}).values():
            for text in configs.values():
                lines.update(str(text).splitlines())
        texts.extend(lines)
        literals = {m for text in texts for m in _ADDRESS.findall(text)}
        for address, prefix in literals:
            try:
                cidr = Cidr.parse(f"{address}/{prefix or 32}")
            except ValueError:
                continue
            if cidr.prefix < 32 or cidr.network not in endpoint_ips:
                found.add(cidr)
        self._by_len: dict[int, tuple[int, set[int]]] = {}
        for cidr in found:
            self._by_len.setdefault(cidr.prefix, (cidr.mask, set()))[1].add(cidr.network)
        self._cache: dict[str, Any] = {}
        # What target_addresses() needs, indexed once.
        self.services_at: dict[int, set[str]] = {}
        self.nodeport_services: dict[int, set[str]] = {}
        for svc in state.services:
            for address in (svc.cluster_ip, *svc.external_ips, *svc.load_balancer_ips):
                if address:
                    self.services_at.setdefault(ip(address), set()).add(svc.key)
            for port in svc.ports:
                if port.node_port:
                    self.nodeport_services.setdefault(port.node_port, set()).add(svc.key)
        self.node_ips = {
            a for ns in world.namespaces.values() if ns.kind == "node" for a in ns.local_addresses
        }
        self.endpoints_of: dict[str, set[int]] = {}
        for (key, _), eps in state.endpoints.items():
            self.endpoints_of.setdefault(key, set()).update(ip(e.ip) for e in eps)
        build = world.info.get("cluster")
        self.ingress_services = {
            r.service for ing in getattr(build, "ingresses", ()) for r in ing.routes
        }
        self.ingress_services |= {
            ing.default_backend[0] for ing in getattr(build, "ingresses", ()) if ing.default_backend
        }
        policies = world.info["scenario"].objects("NetworkPolicy")
        self._labels = (
            {f"pod/{p.key}": (p.namespace, tuple(sorted(p.labels.items()))) for p in state.pods}
            if policies
            else {}
        )

    def of(self, address: int) -> frozenset[tuple[int, int]]:
        """The (prefix length, network) of every known prefix containing ``address``."""
        return frozenset(
            (n, address & mask)
            for n, (mask, nets) in self._by_len.items()
            if address & mask in nets
        )

    def pod_key(self, world: Any, ns_name: str) -> tuple[Any, ...]:
        """Everything about a pod namespace the datapath can see, its own address aside."""
        key = self._cache.get(ns_name)
        if key is None:
            ns = world.namespaces[ns_name]
            own = ns.primary_address()

            def rel(a: int | None) -> Any:
                return "self" if a is not None and a == own else a

            shape = (
                tuple(
                    (i.name, i.kind, i.mtu, i.segment, tuple((rel(a), p) for a, p in i.addresses))
                    for i in ns.interfaces.values()
                ),
                tuple(
                    sorted(
                        (
                            r.dest.prefix,
                            r.dest.network,
                            r.dev,
                            rel(r.via),
                            r.kind,
                            r.onlink,
                            rel(r.src),
                        )
                        for r in ns.routes.routes()
                    )
                ),
                tuple(ns.stack.names()),
                ns.ip_forward,
                ns.martian_check,
                ns.conntrack_max,
            )
            key = self._cache[ns_name] = (
                "pod",
                ns.labels.get("node"),
                shape,
                self.of(own or 0),
                self._labels.get(ns_name),
            )
        return key


def target_addresses(world: Any, target: Target, classes: AddressClasses) -> set[int]:
    """The target's own address and every endpoint behind it: a source with one of these
    addresses is seen differently by the datapath (local delivery, hairpin masquerade)."""
    services = {target.service.key} if target.service else set()
    services |= classes.services_at.get(target.ip, set())
    if target.ip in classes.node_ips:  # a NodePort reached through a node address
        services |= classes.nodeport_services.get(target.port, set())
    if target.kind == "http":
        services |= classes.ingress_services
    out = {target.ip}
    for key in services:
        out |= classes.endpoints_of.get(key, set())
    return out


def computation_key(
    world: Any, classes: AddressClasses, source: Source, addresses: set[int]
) -> tuple[Any, ...]:
    """Sources with equal keys get the same answer for a target (up to their own address and
    name); ``addresses`` are the target's :func:`target_addresses`."""
    ns = world.namespaces[source.ns]
    own = ns.primary_address()
    if ns.kind != "pod" or own is None or own in addresses:
        return ("namespace", source.ns)
    return classes.pod_key(world, source.ns)
