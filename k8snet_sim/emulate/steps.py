"""The commands that build an :class:`~k8snet_sim.emulate.plan.EmulationPlan`, in order.

Namespaces first, then sysctls (before any device exists, so new devices inherit
``conf.default``), devices, addresses and links, enslaving, br_netfilter, VXLAN forwarding
entries, announced neighbours and routes. ``ip``/``bridge`` commands carry ``-n NS`` and are
batched per namespace; everything else runs through ``ip netns exec NS``.

Example
-------
>>> from k8snet_sim.emulate.plan import EmulationPlan, NetnsPlan
>>> plan = EmulationPlan("d1", (NetnsPlan("host/a", "k8ns-d1-host-a", "host",
...                                        routes=("0.0.0.0/0 via 10.0.0.1 dev eth0",)),), (), ())
>>> [s.render().splitlines()[0] for s in build_steps(plan)]
['ip netns add k8ns-d1-host-a', 'sysctl -q -e -w', 'ip -n k8ns-d1-host-a -batch - <<EOF']
"""

from __future__ import annotations

from k8snet_sim.emulate.plan import VXLAN_ID, VXLAN_PORT, EmulationPlan, Step


def build_steps(plan: EmulationPlan) -> list[Step]:
    """Commands in dependency order: namespaces, sysctls, devices, addresses, links up,
    enslaving, routes, VXLAN forwarding entries."""
    steps: list[Step] = [
        Step(None, ("ip", "netns", "add", n.name), why="namespace") for n in plan.namespaces
    ]
    for n in plan.namespaces:
        # Before any device exists: new devices inherit conf.default. -e: skip unknown keys
        # (IPv6 ones on a kernel without IPv6); the IPv4 keys always exist.
        args = [f"{k}={v}" for k, v in n.sysctls]
        steps.append(Step(n.name, ("sysctl", "-q", "-e", "-w", *args), why="sysctls"))
    devices: dict[str, list[str]] = {n.name: [] for n in plan.namespaces}
    for n in plan.namespaces:
        devices[n.name] += [f"link add {b} type bridge" for b in n.bridges]
        devices[n.name] += [f"link add {d} type dummy" for d in n.dummies]
    for v in plan.veths:
        # Created from inside a_ns with the peer placed directly in b_ns: no end ever exists
        # in the root namespace.
        mac = f" address {v.a_mac}" if v.a_mac else ""
        devices[v.a_ns].append(
            f"link add {v.a_name}{mac} mtu {v.mtu} type veth peer name "
            f"{v.b_name} mtu {v.mtu} netns {v.b_ns}"
        )
    for x in plan.vxlans:
        devices[x.ns].append(
            f"link add {x.name} address {x.mac} mtu {x.mtu} type vxlan id "
            f"{VXLAN_ID} dstport {VXLAN_PORT} local {x.local} dev {x.dev} nolearning"
        )
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
            steps.append(
                Step(
                    n.name,
                    ("sysctl", "-q", "-w", f"net.bridge.bridge-nf-call-iptables={bridge_nf}"),
                    why="br_netfilter",
                )
            )
    for x in plan.vxlans:
        lines = [
            f"neigh replace {vtep} lladdr {mac} dev {x.name} nud permanent"
            for vtep, mac, _ in x.peers
        ]
        if lines:
            steps.append(_ip_batch(x.ns, lines, "vxlan neighbours"))
        for _, mac, underlay in x.peers:
            steps.append(
                Step(
                    x.ns,
                    ("bridge", "-n", x.ns, "fdb", "append", mac, "dev", x.name, "dst", underlay),
                    why="vxlan fdb",
                )
            )
    for n in plan.namespaces:
        if n.neighbours:
            steps.append(
                _ip_batch(
                    n.name, [f"neigh replace {a}" for a in n.neighbours], "announced addresses"
                )
            )
    for n in plan.namespaces:
        if n.routes:
            steps.append(_ip_batch(n.name, [f"route add {r}" for r in n.routes], "routes"))
    return steps


def _ip_batch(ns: str, lines: list[str], why: str) -> Step:
    return Step(ns, ("ip", "-n", ns, "-batch", "-"), "\n".join(lines) + "\n", why)
