"""Describe the kernel build of a simulated world: namespaces, links, addresses, routes, sysctls.

:func:`plan_world` reads the :class:`~k8snet_sim.sim.world.World` the simulator built from a
scenario — so the kernel gets exactly the interfaces and routes the simulator moves packets
through — and returns an :class:`EmulationPlan`: plain values, no side effects. The plan's
:meth:`EmulationPlan.steps` are the commands that build it, each bound to one of *our*
namespaces (``k8ns-<run>-…``); nothing ever runs in the root namespace.

Mapping (Mininet's lesson: describe, then build):

* every node, pod, router and outside host → one network namespace;
* every L2 subnet → a namespace of its own holding bridge ``br0``; members attach through veth
  pairs created *directly* inside the two namespaces (``ip -n A link add … peer … netns B``);
* a node's cni0 → a real bridge inside the node's namespace, pods' veths attached, hairpin on
  (the CNI bridge plugin's ``hairpinMode``);
* VXLAN (flannel) → a ``vxlan`` device with static fdb and neighbour entries, like flanneld;
* sysctls the simulator assumes: forwarding where it forwards, ``rp_filter=0`` and no ICMP
  redirects (not modelled), ``bridge-nf-call-iptables=1`` on bridges that own pods.

Example
-------
>>> from k8snet_sim.net.addr import ip
>>> from k8snet_sim.net.link import Interface, Segment
>>> from k8snet_sim.sim.namespace import Namespace
>>> from k8snet_sim.sim.world import World
>>> w = World()
>>> _ = w.add_segment(Segment("lan"))
>>> for name, addr in (("host/a", "10.0.0.1"), ("host/b", "10.0.0.2")):
...     ns = w.add_namespace(Namespace(name, kind="host"))
...     ns.add_interface(Interface("eth0", [(ip(addr), 24)]))
...     w.connect(ns, "eth0", "lan")
>>> plan = plan_world(w, "t1")
>>> plan.netns["host/a"]
'k8ns-t1-host-a'
>>> [v.describe() for v in plan.veths]
['k8ns-t1-host-a:eth0 <-> k8ns-t1-seg-lan:p0', 'k8ns-t1-host-b:eth0 <-> k8ns-t1-seg-lan:p1']
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from k8snet_sim.net.addr import ip_str
from k8snet_sim.net.link import Interface
from k8snet_sim.net.routing import Route
from k8snet_sim.sim.world import World

PREFIX = "k8ns-"
IFNAMSIZ = 15  # the kernel's limit on interface names (16 bytes with the NUL)
SEGMENT_BRIDGE = "br0"
VXLAN_ID = 1
VXLAN_PORT = 8472  # flannel's default (the Linux default 4789 is IANA's)
_RUN_ID = re.compile(r"^[a-z0-9]{1,12}$")


@dataclass(frozen=True)
class Step:
    """One command, run inside one of our namespaces (``ns``) — or creating one (``ns`` None
    only for ``ip netns add/del``, whose argument is always ours)."""

    ns: str | None
    argv: tuple[str, ...]
    stdin: str = ""
    why: str = ""

    def render(self) -> str:
        text = " ".join(self.argv)
        return text + (" <<EOF\n" + self.stdin + "EOF" if self.stdin else "")


@dataclass(frozen=True)
class Veth:
    """A veth pair: ``a_ns:a_name`` ↔ ``b_ns:b_name``; the ``b`` end is enslaved to ``master``."""

    a_ns: str
    a_name: str
    b_ns: str
    b_name: str
    master: str | None = None
    hairpin: bool = False
    mtu: int = 1500
    a_mac: str | None = None  # fixed, so other hosts can hold static neighbour entries for it

    def describe(self) -> str:
        return f"{self.a_ns}:{self.a_name} <-> {self.b_ns}:{self.b_name}"


@dataclass(frozen=True)
class VxlanDevice:
    """A flannel-style VTEP and its static forwarding entries (remote VTEP address → MAC →
    underlay address), written the way flanneld writes them."""

    ns: str
    name: str
    mac: str
    local: str
    dev: str
    mtu: int
    peers: tuple[tuple[str, str, str], ...]  # (vtep address, vtep mac, underlay address)


@dataclass(frozen=True)
class NetnsPlan:
    """One namespace: what it is, its devices, addresses, routes and sysctls."""

    key: str  # the simulator's name: node/node1, pod/default/web-0, segment/lan
    name: str  # the netns name: k8ns-<run>-node-node1
    kind: str
    bridges: tuple[str, ...] = ()
    dummies: tuple[str, ...] = ()
    addresses: tuple[tuple[str, str], ...] = ()  # (interface, "a.b.c.d/p"), primary first
    links_up: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()  # `ip route add` arguments
    sysctls: tuple[tuple[str, str], ...] = ()
    bridge_nf: bool = False  # needs net.bridge.bridge-nf-call-iptables=1
    neighbours: tuple[str, ...] = ()  # `ip neigh replace` arguments (announced addresses)


@dataclass(frozen=True)
class EmulationPlan:
    """Everything needed to build a world in network namespaces, as values."""

    run_id: str
    namespaces: tuple[NetnsPlan, ...]
    veths: tuple[Veth, ...]
    vxlans: tuple[VxlanDevice, ...]
    unsupported: tuple[str, ...] = ()  # parts of the world not built, with the reason
    netns: dict[str, str] = field(default_factory=dict)  # simulator name → netns name

    def steps(self) -> list[Step]:
        """The commands that build the plan, in order (see :mod:`.steps`)."""
        from k8snet_sim.emulate.steps import build_steps

        return build_steps(self)

    def names(self) -> list[str]:
        return [n.name for n in self.namespaces]


def netns_name(run_id: str, kind: str, key: str) -> str:
    """``k8ns-<run>-<kind>-<name>`` with characters a file name can hold.

    >>> netns_name("ab12", "pod", "pod/default/web-0")
    'k8ns-ab12-pod-default-web-0'
    """
    body = key.split("/", 1)[1] if "/" in key else key
    body = re.sub(r"[^A-Za-z0-9_.-]", "-", body)
    return f"{PREFIX}{run_id}-{kind}-{body}"


def check_run_id(run_id: str) -> str:
    if not _RUN_ID.match(run_id):
        raise ValueError(f"run id {run_id!r}: use 1-12 lowercase letters or digits")
    return run_id


def _mac(index: int, kind: int = 0x6E) -> str:
    """A locally administered unicast MAC, deterministic per VTEP (kind 0x6e) or per
    interface on a LAN (kind 0x65)."""
    return f"02:6b:38:{kind:02x}:{(index >> 8) & 255:02x}:{index & 255:02x}"


def _announcements(
    world: World, names: dict[str, str], macs: dict[tuple[str, str], str]
) -> dict[str, list[str]]:
    """Addresses a host answers ARP for without holding them (MetalLB's L2 speaker): every
    other member of the LAN gets the static neighbour entry such an answer would create."""
    out: dict[str, list[str]] = {}
    for seg in world.segments.values():
        claims: dict[int, tuple[str, str]] = getattr(seg, "_claims", {})
        for address, (host, iface) in sorted(claims.items()):
            mac = macs.get((host, iface))
            if mac is None:
                continue
            for member, member_iface in seg.members:
                if (member, member_iface) != (host, iface) and member in names:
                    out.setdefault(names[member], []).append(
                        f"{ip_str(address)} lladdr {mac} dev {member_iface} nud permanent"
                    )
    return out


def _route_args(route: Route) -> str | None:
    if route.kind in ("blackhole", "unreachable", "prohibit"):
        return f"{route.kind} {route.dest}"
    text = f"{route.dest}"
    if route.via is not None:
        text += f" via {ip_str(route.via)}"
    text += f" dev {route.dev}"
    if route.onlink:
        text += " onlink"
    if route.src is not None:
        text += f" src {ip_str(route.src)}"
    return text


def _check_ifname(name: str) -> str:
    if not name or len(name) > IFNAMSIZ or "/" in name or " " in name:
        raise ValueError(
            f"interface name {name!r} is not valid on Linux (1-15 chars, no / or space)"
        )
    return name


SYSCTLS = (
    # The simulator models neither reverse-path filtering nor ICMP redirects.
    ("net.ipv4.conf.all.rp_filter", "0"),
    ("net.ipv4.conf.default.rp_filter", "0"),
    ("net.ipv4.conf.all.send_redirects", "0"),
    ("net.ipv4.conf.default.send_redirects", "0"),
    ("net.ipv4.conf.all.accept_redirects", "0"),
    ("net.ipv4.conf.default.accept_redirects", "0"),
)
# Nor IPv6: no link-local addresses, router or neighbour solicitations on our links (a kernel
# without IPv6 lacks these keys: the sysctl step ignores unknown keys).
NO_IPV6 = (("net.ipv6.conf.all.disable_ipv6", "1"), ("net.ipv6.conf.default.disable_ipv6", "1"))
EMULATED_KINDS = ("node", "pod", "router", "host")


@dataclass
class _Devices:
    """What one namespace gets while its interfaces are planned."""

    bridges: list[str] = field(default_factory=list)
    dummies: list[str] = field(default_factory=list)
    addresses: list[tuple[str, str]] = field(default_factory=list)
    up: list[str] = field(default_factory=lambda: ["lo"])
    bridge_nf: bool = False


class _Planner:
    """Walks a world once; collects namespaces, veths, VXLAN devices and what it leaves out."""

    def __init__(self, world: World, run_id: str) -> None:
        self.world = world
        self.run_id = check_run_id(run_id)
        self.netns: dict[str, str] = {}
        self.veths: list[Veth] = []
        self.vxlans: list[VxlanDevice] = []
        self.unsupported: list[str] = []
        self.ports: dict[str, int] = {}  # netns → veth peers created there so far
        self.lan_macs: dict[tuple[str, str], str] = {}
        self.vtep_macs: dict[int, str] = {}

    def name(self, kind: str, key: str) -> str:
        """A unique netns name (two keys may sanitize to the same name)."""
        base = candidate = netns_name(self.run_id, kind, key)
        n = 1
        while candidate in self.netns.values():
            n += 1
            candidate = f"{base}-{n}"
        self.netns[key] = candidate
        return candidate

    def port(self, netns: str, stem: str) -> str:
        n = self.ports.get(netns, 0)
        self.ports[netns] = n + 1
        return _check_ifname(f"{stem}{n}")

    def plan(self) -> EmulationPlan:
        world = self.world
        # LANs get a namespace with a bridge; cni0 bridges live in their node.
        lans = {s.name: self.name("seg", f"segment/{s.name}")
                for s in world.segments.values() if s.kind == "lan"}  # fmt: skip
        for key, ns in world.namespaces.items():
            if ns.kind in EMULATED_KINDS:
                self.name(ns.kind, key)
            else:
                self.unsupported.append(f"{key}: namespaces of kind {ns.kind!r} are not emulated")
        vteps = [a for ns in world.namespaces.values() for i in ns.interfaces.values()
                 if i.kind == "vxlan" for a, _ in i.addresses]  # fmt: skip
        self.vtep_macs = {a: _mac(n) for n, a in enumerate(vteps, start=1)}
        plans = [self.namespace(key, lans) for key in world.namespaces if key in self.netns]
        announced = _announcements(world, self.netns, self.lan_macs)
        plans = [replace(p, neighbours=tuple(announced.get(p.name, ()))) for p in plans]
        plans += [NetnsPlan(f"segment/{lan}", me, "segment", (SEGMENT_BRIDGE,),
                            links_up=("lo", SEGMENT_BRIDGE),
                            sysctls=(("net.ipv4.ip_forward", "0"), *NO_IPV6))
                  for lan, me in lans.items()]  # fmt: skip
        return EmulationPlan(self.run_id, tuple(plans), tuple(self.veths), tuple(self.vxlans),
                             tuple(self.unsupported), dict(self.netns))  # fmt: skip

    def namespace(self, key: str, lans: dict[str, str]) -> NetnsPlan:
        ns = self.world.namespaces[key]
        me = self.netns[key]
        dev = _Devices()
        for iface in ns.interfaces.values():
            if iface.kind == "loopback":
                continue
            _check_ifname(iface.name)
            if not self.interface(key, me, iface, lans, dev):
                continue
            dev.addresses += [(iface.name, f"{ip_str(a)}/{p}") for a, p in iface.addresses]
            dev.up.append(iface.name)
        routes = [r for r in ns.routes.routes() if r.origin != "kernel"]
        # Less specific last: a route's gateway must already be reachable when it is added.
        routes.sort(key=lambda r: (-r.dest.prefix, r.dest.network))
        sysctls = (("net.ipv4.ip_forward", "1" if ns.ip_forward else "0"), *SYSCTLS, *NO_IPV6)
        return NetnsPlan(key, me, ns.kind, tuple(dev.bridges), tuple(dev.dummies),
                         tuple(dev.addresses), tuple(dev.up),
                         tuple(a for r in routes if (a := _route_args(r))), sysctls,
                         dev.bridge_nf)  # fmt: skip

    def interface(
        self, key: str, me: str, iface: Interface, lans: dict[str, str], dev: _Devices
    ) -> bool:
        """Plan one interface; False if it cannot be built (recorded as unsupported)."""
        if iface.kind == "bridge":
            dev.bridges.append(iface.name)
            seg = self.world.segments.get(iface.segment or "")
            dev.bridge_nf = dev.bridge_nf or bool(seg is not None and seg.bridge_nf)
            return True
        if iface.kind == "dummy":
            dev.dummies.append(iface.name)
            return True
        if iface.kind == "vxlan":
            return self.vxlan(key, me, iface)
        if iface.kind != "ether":
            self.unsupported.append(f"{key}: interface kind {iface.kind!r} is not emulated")
            return False
        seg = self.world.segments.get(iface.segment or "")
        if seg is not None and seg.kind == "lan":
            mac = self.lan_macs[(key, iface.name)] = _mac(len(self.lan_macs) + 1, 0x65)
            lan = lans[seg.name]
            self.veths.append(Veth(me, iface.name, lan, self.port(lan, "p"),
                                   master=SEGMENT_BRIDGE, mtu=iface.mtu, a_mac=mac))  # fmt: skip
            return True
        if seg is not None and seg.kind == "bridge" and seg.owner in self.netns:
            owner = self.netns[seg.owner]
            self.veths.append(Veth(me, iface.name, owner, self.port(owner, "veth"),
                                   master=seg.owner_iface or "cni0", hairpin=True,
                                   mtu=iface.mtu))  # fmt: skip
            return True
        where = f"a {seg.kind} segment" if seg is not None else "no segment"
        self.unsupported.append(f"{key}: {iface.name} on {where} is not emulated")
        return False

    def vxlan(self, key: str, me: str, iface: Interface) -> bool:
        ns = self.world.namespaces[key]
        vx = self.world.vxlans.get(key)
        if vx is None or not iface.addresses:
            self.unsupported.append(f"{key}: vxlan {iface.name} without tunnel configuration")
            return False
        peers = []
        for vtep, underlay in sorted(vx.fdb.items()):
            if vtep in self.vtep_macs:
                peers.append((ip_str(vtep), self.vtep_macs[vtep], ip_str(underlay)))
            else:
                self.unsupported.append(f"{key}: no VTEP owns {ip_str(vtep)}")
        holders = [i.name for i in ns.interfaces.values()
                   if any(a == vx.local_underlay for a, _ in i.addresses)]  # fmt: skip
        local_dev = holders[0] if holders else "eth0"
        self.vxlans.append(VxlanDevice(me, iface.name, self.vtep_macs[iface.addresses[0][0]],
                                       ip_str(vx.local_underlay), local_dev, iface.mtu,
                                       tuple(peers)))  # fmt: skip
        return True


def plan_world(world: World, run_id: str) -> EmulationPlan:
    """The kernel build of ``world`` for run ``run_id`` (pure: nothing is created)."""
    return _Planner(world, run_id).plan()
