"""Which nodes the datapath cannot tell apart for one target: their sources may share one
computation of a reachability cell, the answer relabelled from one node to the other.

A node is *involved* in a target when it holds one of the target's addresses (the node of a
NodePort target, a hostNetwork endpoint), hosts one of the endpoints behind it, or answers
ARP for it (the MetalLB speaker). Two uninvolved nodes X and Y are **interchangeable** when
swapping them — names, addresses, pod CIDRs, bridges — maps the world onto itself as far as
any packet of the connection can see:

* X's own configuration equals Y's once each node's own identifiers are replaced by
  placeholders and every other node's by anonymous "peer" placeholders (interfaces, routes,
  segments, sysctls, cores, netfilter hooks, listening sockets, the VXLAN forwarding table,
  and the prefixes of the world's configuration that contain the node's addresses);
* every other namespace treats X as it treats Y (routes via X, VXLAN entries for X, ARP
  claims…), again up to that relabelling — and the involved nodes, which keep their names,
  do so item by item;
* both nodes run the same scenario node spec (labels, schedulability, gateway, subnet);
* neither is a *transit* node — one that something routes through to reach something else
  (a router sending the service CIDR to it): those always keep their names.

kube-proxy's rules on X and Y are not compared line by line: the proxier writes them from the
cluster state and the node, and the node enters them only through its addresses (relabelled
above: ``nodePortAddresses``, source ranges) and its *local endpoints*. An uninvolved node has
no local endpoint of the target's Services; what it writes for *other* Services is reached
only by packets addressed to those Services' frontends, which no packet of this connection
carries (frontends are unique per address, port and protocol). ``tests/test_reach_nodes.py``
checks that premise against the proxiers of all four modes.

Targets whose path itself chooses among nodes (a cloud load balancer's backends, an Ingress
controller) and scenarios with NetworkPolicy objects are left to per-node computations.

Example
-------
>>> peer_numbered(["route", ("peer", "podnet", 7), ("peer", "eth0#0", 7), ("peer", "eth0#0", 2)])
('route', ('peer0', 'podnet'), ('peer0', 'eth0#0'), ('peer1', 'eth0#0'))
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from k8snet_sim.net.addr import Cidr, ip, ip_str


def peer_numbered(items: Iterable[Any]) -> tuple[Any, ...]:
    """Number the peer nodes an item mentions in order of appearance (``("peer", role, node)``
    becomes ``("peer0", role)``), so "a peer's pod CIDR via *the same* peer's address" stays
    distinct from "via another peer's address" while the peers themselves stay anonymous."""
    seen: dict[Any, int] = {}
    out: list[Any] = []
    for x in items:
        if isinstance(x, tuple) and len(x) == 3 and x[0] == "peer":
            out.append((f"peer{seen.setdefault(x[2], len(seen))}", x[1]))
        else:
            out.append(x)
    return tuple(out)


class NodeSymmetry:
    """Interchangeable nodes of a built world (see the module docstring).

    ``classes``: the world's :class:`~k8snet_sim.analysis.reach_keys.AddressClasses`.
    """

    def __init__(self, world: Any, classes: Any) -> None:
        state = world.info["state"]
        self.world = world
        self.classes = classes
        self.enabled = bool(state.nodes) and not world.info["scenario"].objects("NetworkPolicy")
        self.nodes = [n.name for n in state.nodes if f"node/{n.name}" in world.namespaces]
        self._index = {name: i for i, name in enumerate(self.nodes)}
        node_ns = [world.namespaces[f"node/{n}"] for n in self.nodes]
        # Addresses every node holds (kube-ipvs0's Service IPs) identify none of them.
        common = (
            set.intersection(*(set(ns.local_addresses) for ns in node_ns)) if node_ns else set()
        )
        self.roles: list[dict[int, str]] = []  # per node: its addresses -> role
        self.podnets: dict[tuple[int, int], int] = {}  # (network, length) -> node index
        self.owner: dict[int, int] = {}  # an address of a node -> node index
        for i, (name, ns) in enumerate(zip(self.nodes, node_ns, strict=True)):
            roles: dict[int, str] = {}
            for iface in ns.interfaces.values():
                if iface.kind == "loopback":
                    continue
                for k, (address, _) in enumerate(iface.addresses):
                    if address not in common:
                        roles.setdefault(address, f"{iface.name}#{k}")
            self.roles.append(roles)
            for address in roles:
                self.owner.setdefault(address, i)
            if state.node(name).pod_cidr:
                cidr = Cidr.parse(state.node(name).pod_cidr)
                self.podnets.setdefault((cidr.network, cidr.prefix), i)
        self._podnet_of = {i: key for key, i in self.podnets.items()}
        self._owned_ns = self._owned_namespaces()
        self._items_cache: dict[str, list[tuple[Any, ...]]] = {}
        # ARP claims (MetalLB speakers): who answers for which address, on which segment.
        self._claims: dict[str, list[tuple[Any, ...]]] = {}
        self._claimers: dict[int, set[str]] = {}
        for seg in world.segments.values():
            for address, (host, _) in seg.claims.items():
                self._claims.setdefault(host, []).append(("claim", seg.name, address))
                self._claimers.setdefault(address, set()).add(host)
        self.transit = self._transit_nodes()
        self._views = self._others_views()
        self._base = [self._base_signature(i) for i in range(len(self.nodes))]
        self._pair_cache: dict[tuple[int, int], Any] = {}
        self._pod_cache: dict[str, Any] = {}

    # ------------------------------------------------------------------ identifiers

    def tokens(self, node: str) -> dict[str, str]:
        """Role → text of each identifier of ``node`` (for relabelling answers)."""
        i = self._index[node]
        out = {role: ip_str(a) for a, role in self.roles[i].items()}
        if i in self._podnet_of:
            out["podnet"] = ip_str(self._podnet_of[i][0])
        out["ns"] = f"node/{node}"
        return out

    def _rel(self, i: int, value: Any) -> Any:
        """A value as node ``i`` sees it: its own identifiers as roles, other nodes' as peers.
        Addresses are integers; a prefix is ``("cidr", network, length)`` and is a node's
        only as its pod CIDR (10.244.0.0/16 is nobody's, though node0's pod CIDR starts at
        the same address) or as a /32 of one of its addresses."""
        if isinstance(value, tuple) and len(value) == 3 and value[0] == "cidr":
            _, net, length = value
            owner = self.podnets.get((net, length))
            if owner is not None:
                return ("self", "podnet") if owner == i else ("peer", "podnet", owner)
            return ("cidr", self._rel(i, net), 32) if length == 32 else value
        if not isinstance(value, int) or isinstance(value, bool):
            return value
        owner = self.owner.get(value)
        if owner is None:
            return value
        role = self.roles[owner][value]
        return ("self", role) if owner == i else ("peer", role, owner)

    def _item(self, i: int, fields: Iterable[Any]) -> tuple[Any, ...]:
        return peer_numbered(self._rel(i, f) for f in fields)

    # ------------------------------------------------------------------ views

    def _transit_nodes(self) -> set[str]:
        """Nodes that anything routes *through* to reach something else: a route via a node's
        address to a prefix that is not that node's pod CIDR or address (a router sending the
        service CIDR to one node), or a VXLAN entry pointing one node's VTEP at another
        node's underlay (a pod's routes via its own node do not count). A packet may cross
        such a node on the way to anywhere, so it always keeps its name: the anonymous "peer"
        placeholders then stand only for nodes a packet of another node's connection never
        crosses."""
        out: set[str] = set()
        for ns in self.world.namespaces.values():
            for r in ns.routes.routes():
                via = self.owner.get(r.via) if r.via is not None else None
                if via is None or self._owned_ns.get(ns.name) == via:
                    continue  # a pod's default route via its own node is its own business
                own_dest = self.podnets.get((r.dest.network, r.dest.prefix)) == via or (
                    r.dest.prefix == 32 and self.owner.get(r.dest.network) == via
                )
                if not own_dest:
                    out.add(self.nodes[via])
            vx = self.world.vxlans.get(ns.name)
            for vtep, underlay in vx.fdb.items() if vx is not None else ():
                a, b = self.owner.get(vtep), self.owner.get(underlay)
                if b is not None and a != b:
                    out.add(self.nodes[b])
        return out

    def _owned_namespaces(self) -> dict[str, int]:
        """Namespace name -> node index, for a node's own namespace and its pods'."""
        out: dict[str, int] = {}
        for name, ns in self.world.namespaces.items():
            node = ns.labels.get("node")
            if node in self._index and ns.kind in ("node", "pod"):
                out[name] = self._index[node]
        return out

    def _ns_items(self, ns: Any) -> list[tuple[Any, ...]]:
        """The configuration of a namespace as raw items (addresses still as integers)."""
        cached = self._items_cache.get(ns.name)
        if cached is None:
            cached = self._items_cache[ns.name] = self._describe(ns)
        return cached

    def _describe(self, ns: Any) -> list[tuple[Any, ...]]:
        world = self.world
        items: list[tuple[Any, ...]] = [
            ("ns", ns.kind, ns.ip_forward, ns.martian_check, ns.conntrack_max, ns.cores),
            ("hooks", *ns.stack.names()),
        ]
        for iface in ns.interfaces.values():
            seg = world.segments.get(iface.segment) if iface.segment else None
            seg_shape: tuple[Any, ...] = ()
            if seg is not None:
                seg_owner = self._owned_ns.get(seg.owner or "")
                seg_shape = (
                    seg.kind,
                    seg.bandwidth_bps,
                    seg.latency_s,
                    seg.buffer_packets,
                    seg.bridge_nf,
                    # A node's bridge has only that node and its pods as members.
                    iface.segment if seg_owner is None else "node-bridge",
                )
            items.append(("iface", iface.name, iface.kind, iface.mtu, seg_shape))
            for address, prefix in iface.addresses:
                items.append(("address", iface.name, address, prefix))
        for r in ns.routes.routes():
            items.append(
                (
                    "route",
                    ("cidr", r.dest.network, r.dest.prefix),
                    r.dev,
                    r.via,
                    r.kind,
                    r.onlink,
                    r.src,
                )
            )
        for listener in world.listeners.get(ns.name, ()):
            items.append(
                (
                    "listen",
                    listener.proto,
                    listener.port,
                    listener.bind_address,
                    type(listener.app_factory).__name__,
                )
            )
        vx = world.vxlans.get(ns.name)
        if vx is not None:
            items.append(("vxlan", vx.iface, vx.local_underlay))
            items.extend(("fdb", a, b) for a, b in vx.fdb.items())
        return items

    def _node_of(self, f: Any) -> int | None:
        """The node an item field identifies, if any."""
        if isinstance(f, tuple) and len(f) == 3 and f[0] == "cidr":
            owner = self.podnets.get((f[1], f[2]))
            return owner if owner is not None or f[2] != 32 else self.owner.get(f[1])
        if isinstance(f, int) and not isinstance(f, bool):
            return self.owner.get(f)
        return None

    def _mentions(self, item: tuple[Any, ...]) -> set[int]:
        return {n for n in map(self._node_of, item) if n is not None}

    def _others_views(self) -> list[list[tuple[str, tuple[Any, ...]]]]:
        """Per node: (who, item) for every item of another namespace that mentions it."""
        views: list[list[tuple[str, tuple[Any, ...]]]] = [[] for _ in self.nodes]
        for name, ns in self.world.namespaces.items():
            owner = self._owned_ns.get(name)
            for item in (*self._ns_items(ns), *self._claims.get(name, ())):
                for i in self._mentions(item):
                    if i != owner:
                        who = name if owner is None else f"node#{owner}"
                        views[i].append((who, item))
        return views

    def _base_signature(self, i: int) -> tuple[Any, ...]:
        """Everything about node ``i`` that must match for it to stand in for another."""
        world = self.world
        spec = world.info["state"].node(self.nodes[i])
        ns = world.namespaces[f"node/{self.nodes[i]}"]
        own = tuple(sorted((self._item(i, it) for it in self._ns_items(ns)), key=repr))
        others = tuple(
            sorted(
                (
                    ("peer" if who.startswith("node#") else who, self._item(i, item))
                    for who, item in self._views[i]
                ),
                key=repr,
            )
        )
        # The prefixes of the world's configuration that contain each of the node's addresses
        # (a source range naming X's address alone makes X special): relabelled, so X's
        # pod CIDR and its own /32 literals compare equal to Y's.
        classes = tuple(
            sorted(
                (
                    (
                        role,
                        tuple(
                            sorted(
                                (
                                    self._rel(i, ("cidr", net, n))
                                    for n, net in self.classes.of(address)
                                ),
                                key=repr,
                            )
                        ),
                    )
                    for address, role in self.roles[i].items()
                ),
                key=repr,
            )
        )
        return (
            (
                spec.subnet,
                spec.gateway,
                spec.schedulable,
                # kubernetes.io/hostname names the node itself.
                tuple(
                    sorted((k, "{self}" if v == spec.name else v) for k, v in spec.labels.items())
                ),
            ),
            self._podnet_of.get(i, (0, -1))[1],
            own,
            others,
            classes,
        )

    def _pair(self, i: int, e: int) -> Any:
        """How node ``i`` and an involved node ``e`` see each other, ``e`` by name."""
        key = (i, e)
        out = self._pair_cache.get(key)
        if out is None:
            ns_i = self.world.namespaces[f"node/{self.nodes[i]}"]

            def named(item: tuple[Any, ...]) -> tuple[Any, ...]:
                # e's identifiers by name; everything else relabelled as i sees it.
                return self._item(
                    i,
                    (
                        (self.nodes[e], repr(self._rel(e, f))) if self._node_of(f) == e else f
                        for f in item
                    ),
                )

            mine = sorted(
                (named(it) for it in self._ns_items(ns_i) if e in self._mentions(it)), key=repr
            )
            theirs = sorted(
                (named(it) for who, it in self._views[i] if who == f"node#{e}"), key=repr
            )
            out = self._pair_cache[key] = (self.nodes[e], tuple(mine), tuple(theirs))
        return out

    # ------------------------------------------------------------------ per target

    def involved(self, addresses: set[int], pods_at: dict[int, str]) -> set[str]:
        """Nodes that hold, host or announce one of a target's ``addresses``, and the
        transit nodes (:meth:`_transit_nodes`), which every target involves."""
        out = {self.nodes[self.owner[a]] for a in addresses if a in self.owner} | self.transit
        out |= {pods_at[a] for a in addresses if a in pods_at}
        for a in addresses:
            for host in self._claimers.get(a, ()):
                if host.startswith("node/"):
                    out.add(host.removeprefix("node/"))
        return out

    def pod_class(self, ns_name: str) -> Any:
        """A pod namespace as its node sees it: its own address as ``src``, its node's
        identifiers as roles (pods on two interchangeable nodes compare equal)."""
        cached = self._pod_cache.get(ns_name)
        if cached is not None:
            return cached
        ns = self.world.namespaces[ns_name]
        i = self._owned_ns[ns_name]
        own = ns.primary_address()

        def rel(f: Any) -> Any:
            return "src" if isinstance(f, int) and f == own else self._rel(i, f)

        items = tuple(
            sorted((peer_numbered(rel(f) for f in it) for it in self._ns_items(ns)), key=repr)
        )
        prefixes = tuple(
            sorted(
                (
                    ("cidr", "src", n) if net == own and n == 32 else rel(("cidr", net, n))
                    for n, net in self.classes.of(own or 0)
                ),
                key=repr,
            )
        )
        out = self._pod_cache[ns_name] = ("pod", items, prefixes, ns.labels.get("pod") is not None)
        return out

    def node_class(self, node: str, involved: set[str]) -> Any:
        """The class of an uninvolved ``node`` for a target (equal classes: interchangeable)."""
        i = self._index[node]
        pairs = tuple(self._pair(i, self._index[e]) for e in sorted(involved) if e in self._index)
        return (self._base[i], pairs)


def pod_addresses_by_node(world: Any) -> dict[int, str]:
    """Pod address -> node name, for every pod of the cluster state."""
    return {ip(p.ip): p.node for p in world.info["state"].pods if p.ip and p.node}
