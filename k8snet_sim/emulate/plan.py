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

from k8snet_sim.net.addr import Cidr, ip_str
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
        """The commands that build the plan, in order."""
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
    return "02:6b:38:{:02x}:{:02x}:{:02x}".format(kind, (index >> 8) & 255, index & 255)


def _announcements(world: World, names: dict[str, str],
                   macs: dict[tuple[str, str], str]) -> dict[str, list[str]]:
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
                        f"{ip_str(address)} lladdr {mac} dev {member_iface} nud permanent")
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
        raise ValueError(f"interface name {name!r} is not valid on Linux (1-15 chars, no / or space)")
    return name


class _Names:
    """Unique namespace names for one run (two keys may sanitize to the same name)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.used: set[str] = set()
        self.by_key: dict[str, str] = {}

    def name(self, kind: str, key: str) -> str:
        base = candidate = netns_name(self.run_id, kind, key)
        n = 1
        while candidate in self.used:
            n += 1
            candidate = f"{base}-{n}"
        self.used.add(candidate)
        self.by_key[key] = candidate
        return candidate


def plan_world(world: World, run_id: str) -> EmulationPlan:
    """The kernel build of ``world`` for run ``run_id`` (pure: nothing is created)."""
    check_run_id(run_id)
    names = _Names(run_id)
    unsupported: list[str] = []
    # L2 segments that are LANs get a namespace with a bridge; cni0 segments live in the node.
    seg_ns: dict[str, str] = {}
    for seg in world.segments.values():
        if seg.kind == "lan":
            seg_ns[seg.name] = names.name("seg", f"segment/{seg.name}")
    for key, ns in world.namespaces.items():
        if ns.kind in ("node", "pod", "router", "host"):
            names.name(ns.kind, key)
        else:
            unsupported.append(f"{key}: namespaces of kind {ns.kind!r} are not emulated")
    veths: list[Veth] = []
    vxlans: list[VxlanDevice] = []
    port_counter: dict[str, int] = {}
    lan_macs: dict[tuple[str, str], str] = {}
    vtep_macs: dict[int, str] = {}
    vtep_index = 0
    for key in world.namespaces:
        ns = world.namespaces[key]
        for iface in ns.interfaces.values():
            if iface.kind == "vxlan":
                for address, _ in iface.addresses:
                    vtep_index += 1
                    vtep_macs[address] = _mac(vtep_index)
    plans: list[NetnsPlan] = []
    for key, ns in world.namespaces.items():
        if key not in names.by_key:
            continue
        me = names.by_key[key]
        bridges: list[str] = []
        dummies: list[str] = []
        addresses: list[tuple[str, str]] = []
        up: list[str] = ["lo"]
        bridge_nf = False
        for iface in ns.interfaces.values():
            if iface.kind == "loopback":
                continue
            _check_ifname(iface.name)
            if iface.kind == "bridge":
                bridges.append(iface.name)
                seg = world.segments.get(iface.segment or "")
                bridge_nf = bridge_nf or bool(seg is not None and seg.bridge_nf)
            elif iface.kind == "dummy":
                dummies.append(iface.name)
            elif iface.kind == "vxlan":
                vx = world.vxlans.get(key)
                if vx is None:
                    unsupported.append(f"{key}: vxlan {iface.name} without tunnel configuration")
                    continue
                peers = []
                for vtep, underlay in sorted(vx.fdb.items()):
                    if vtep not in vtep_macs:
                        unsupported.append(f"{key}: no VTEP owns {ip_str(vtep)}")
                        continue
                    peers.append((ip_str(vtep), vtep_macs[vtep], ip_str(underlay)))
                local_dev = next((i.name for i in ns.interfaces.values()
                                  if any(a == vx.local_underlay for a, _ in i.addresses)), "eth0")
                mac = vtep_macs[iface.addresses[0][0]] if iface.addresses else _mac(0)
                vxlans.append(VxlanDevice(me, iface.name, mac, ip_str(vx.local_underlay),
                                          local_dev, iface.mtu, tuple(peers)))
            elif iface.kind == "ether":
                seg = world.segments.get(iface.segment or "")
                if seg is None:
                    unsupported.append(f"{key}: {iface.name} is attached to no segment")
                    continue
                if seg.kind == "lan":
                    peer_ns = seg_ns[seg.name]
                    n = port_counter.get(peer_ns, 0)
                    port_counter[peer_ns] = n + 1
                    mac = lan_macs[(key, iface.name)] = _mac(len(lan_macs) + 1, 0x65)
                    veths.append(Veth(me, iface.name, peer_ns, _check_ifname(f"p{n}"),
                                      master=SEGMENT_BRIDGE, mtu=iface.mtu, a_mac=mac))
                elif seg.kind == "bridge" and seg.owner in names.by_key:
                    owner = names.by_key[seg.owner]
                    n = port_counter.get(owner, 0)
                    port_counter[owner] = n + 1
                    veths.append(Veth(me, iface.name, owner, _check_ifname(f"veth{n}"),
                                      master=seg.owner_iface or "cni0", hairpin=True,
                                      mtu=iface.mtu))
                else:
                    unsupported.append(f"{key}: {iface.name} on a {seg.kind} segment is not emulated")
                    continue
            else:
                unsupported.append(f"{key}: interface kind {iface.kind!r} is not emulated")
                continue
            addresses += [(iface.name, f"{ip_str(a)}/{p}") for a, p in iface.addresses]
            up.append(iface.name)
        routes = [r for r in ns.routes.routes() if r.origin != "kernel"]
        # Less specific last: a route's gateway must already be reachable when it is added.
        routes.sort(key=lambda r: (-r.dest.prefix, r.dest.network))
        sysctls = [
            ("net.ipv4.ip_forward", "1" if ns.ip_forward else "0"),
            # The simulator models neither reverse-path filtering nor ICMP redirects.
            ("net.ipv4.conf.all.rp_filter", "0"), ("net.ipv4.conf.default.rp_filter", "0"),
            ("net.ipv4.conf.all.send_redirects", "0"),
            ("net.ipv4.conf.default.send_redirects", "0"),
            ("net.ipv4.conf.all.accept_redirects", "0"),
            ("net.ipv4.conf.default.accept_redirects", "0"),
        ]
        plans.append(NetnsPlan(key, me, ns.kind, tuple(bridges), tuple(dummies), tuple(addresses),
                               tuple(up), tuple(a for r in routes if (a := _route_args(r))),
                               tuple(sysctls), bridge_nf))
    announced = _announcements(world, names.by_key, lan_macs)
    plans = [replace(p, neighbours=tuple(announced.get(p.name, ()))) for p in plans]
    for seg_name, me in seg_ns.items():
        plans.append(NetnsPlan(f"segment/{seg_name}", me, "segment", (SEGMENT_BRIDGE,), (), (),
                               ("lo", SEGMENT_BRIDGE),
                               sysctls=(("net.ipv4.ip_forward", "0"),)))
    return EmulationPlan(run_id, tuple(plans), tuple(veths), tuple(vxlans), tuple(unsupported),
                         dict(names.by_key))


def build_steps(plan: EmulationPlan) -> list[Step]:
    """Commands in dependency order: namespaces, sysctls, devices, addresses, links up,
    enslaving, routes, VXLAN forwarding entries."""
    steps: list[Step] = [Step(None, ("ip", "netns", "add", n.name), why="namespace")
                         for n in plan.namespaces]
    for n in plan.namespaces:
        # Before any device exists: new devices inherit conf.default.
        args = [f"{k}={v}" for k, v in n.sysctls]
        steps.append(Step(n.name, ("sysctl", "-q", "-w", *args), why="sysctls"))
    devices: dict[str, list[str]] = {n.name: [] for n in plan.namespaces}
    for n in plan.namespaces:
        devices[n.name] += [f"link add {b} type bridge" for b in n.bridges]
        devices[n.name] += [f"link add {d} type dummy" for d in n.dummies]
    for v in plan.veths:
        # Created from inside a_ns with the peer placed directly in b_ns: no end ever exists
        # in the root namespace.
        mac = f" address {v.a_mac}" if v.a_mac else ""
        devices[v.a_ns].append(f"link add {v.a_name}{mac} mtu {v.mtu} type veth peer name "
                               f"{v.b_name} mtu {v.mtu} netns {v.b_ns}")
    for x in plan.vxlans:
        devices[x.ns].append(f"link add {x.name} address {x.mac} mtu {x.mtu} type vxlan id "
                             f"{VXLAN_ID} dstport {VXLAN_PORT} local {x.local} dev {x.dev} nolearning")
    for name, lines in devices.items():
        if lines:
            steps.append(_ip_batch(name, lines, "devices"))
    config: dict[str, list[str]] = {n.name: [] for n in plan.namespaces}
    for v in plan.veths:
        if v.master:
            config[v.b_ns].append(f"link set {v.b_name} master {v.master}")
        if v.hairpin:
            config[v.b_ns].append(f"link set {v.b_name} type bridge_slave hairpin on")
        config[v.b_ns].append(f"link set {v.b_name} up")
    for n in plan.namespaces:
        config[n.name] += [f"addr add {a} dev {i}" for i, a in n.addresses]
        config[n.name] += [f"link set {i} up" for i in n.links_up]
    for name, lines in config.items():
        if lines:
            steps.append(_ip_batch(name, lines, "addresses and links"))
    for n in plan.namespaces:
        bridge_nf = "1" if n.bridge_nf else "0"
        if n.bridges:
            steps.append(Step(n.name, ("sysctl", "-q", "-w",
                                       f"net.bridge.bridge-nf-call-iptables={bridge_nf}"),
                              why="br_netfilter"))
    for x in plan.vxlans:
        lines = [f"neigh replace {vtep} lladdr {mac} dev {x.name} nud permanent"
                 for vtep, mac, _ in x.peers]
        if lines:
            steps.append(_ip_batch(x.ns, lines, "vxlan neighbours"))
        for _, mac, underlay in x.peers:
            steps.append(Step(x.ns, ("bridge", "-n", x.ns, "fdb", "append", mac, "dev", x.name,
                                     "dst", underlay), why="vxlan fdb"))
    for n in plan.namespaces:
        if n.neighbours:
            steps.append(_ip_batch(n.name, [f"neigh replace {a}" for a in n.neighbours],
                                   "announced addresses"))
    for n in plan.namespaces:
        if n.routes:
            steps.append(_ip_batch(n.name, [f"route add {r}" for r in n.routes], "routes"))
    return steps


def _ip_batch(ns: str, lines: list[str], why: str) -> Step:
    return Step(ns, ("ip", "-n", ns, "-batch", "-"), "\n".join(lines) + "\n", why)
