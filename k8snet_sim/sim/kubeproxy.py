"""Install a node's kube-proxy datapath, whichever mode the scenario runs.

The proxiers (``k8snet_sim.proxy``) are pure: cluster state in, configuration out
(``iptables-restore`` text, IPVS tables, an nftables ruleset, a userspace proxy-port table).
This module loads that configuration into the node's namespace the way the kernel would:
iptables tables register at their hooks, NAT rules behind conntrack.

Example
-------
>>> sorted(MODES)
['iptables', 'ipvs', 'nftables', 'userspace']
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from k8snet_sim.cluster.model import ClusterState
from k8snet_sim.errors import NotSupported
from k8snet_sim.net.addr import ip, ip_str
from k8snet_sim.net.link import Interface
from k8snet_sim.net.packet import PROTO_NUMBERS
from k8snet_sim.netfilter.hooks import IPTABLES_TABLE_HOOKS
from k8snet_sim.netfilter.iptables_save import parse_iptables_save
from k8snet_sim.netfilter.ipvs import IpvsTable, install_ipvs
from k8snet_sim.netfilter.nat import install_conntrack
from k8snet_sim.netfilter.nftables import install_nftables, parse_nft
from k8snet_sim.proxy import iptables as iptables_proxy
from k8snet_sim.proxy import ipvs as ipvs_proxy
from k8snet_sim.proxy import nftables as nftables_proxy
from k8snet_sim.proxy import userspace as userspace_proxy
from k8snet_sim.sim.sockets import Listener
from k8snet_sim.sim.userspace import UserspaceProxy

if TYPE_CHECKING:
    from k8snet_sim.netfilter.rules import IptablesRuleset
    from k8snet_sim.sim.namespace import Namespace
    from k8snet_sim.sim.world import World

MODES = ("userspace", "iptables", "ipvs", "nftables")


def install_iptables(ns: Namespace, ruleset: IptablesRuleset) -> None:
    """Register an iptables ruleset's tables at their hooks (NAT behind conntrack)."""
    nat_tables = {}
    for table, hooks in IPTABLES_TABLE_HOOKS.items():
        if table not in ruleset.tables:
            continue
        for hook, priority in hooks.items():
            fn = ruleset.hook_function(table, hook)
            if table == "nat":
                nat_tables[hook] = (priority, "iptables nat", fn)
            else:
                ns.stack.register(hook, priority, f"iptables {table}", fn)
    install_conntrack(ns.stack, nat_tables)


def install_kube_proxy(world: World, state: ClusterState, node: str) -> None:
    mode = state.kube_proxy.mode
    ns = world.namespaces[f"node/{node}"]
    rules = world.info.setdefault("rules", {})
    if mode == "iptables":
        text = iptables_proxy.node_rules(state, node)
        install_iptables(ns, parse_iptables_save(text, file=f"node/{node} iptables"))
        rules[node] = {"iptables": text}
        return
    if mode == "userspace":
        config = userspace_proxy.sync(state, node)
        install_iptables(
            ns, parse_iptables_save(config.rules, file=f"node/{node} userspace portals")
        )
        for port in config.ports:
            world.listen(
                ns.name,
                Listener(
                    PROTO_NUMBERS[port.protocol.lower()],
                    port.proxy_port,
                    UserspaceProxy(ns.name, port),
                    name=f"kube-proxy (userspace) {port.name}",
                ),
            )
        rules[node] = {"iptables": config.rules, "proxy-ports": config.port_table()}
        return
    if mode == "nftables":
        text = nftables_proxy.sync(state, node)
        # Lazy: chains compile on first use (a 10,000-Service ruleset parses in ~1 s).
        install_nftables(ns.stack, parse_nft(text, file=f"node/{node} nftables", lazy=True))
        rules[node] = {"nftables": text}
        return
    if mode == "ipvs":
        install_ipvs_mode(world, ns, state, node, rules)
        return
    raise NotSupported(f"kube-proxy mode {mode!r} is not available yet")


def install_ipvs_mode(
    world: World, ns: Namespace, state: ClusterState, node: str, rules: dict[str, object]
) -> None:
    """IPVS mode: bind the service addresses to ``kube-ipvs0``, load the ipsets and the iptables
    rules that use them, then register IPVS behind conntrack."""
    own = sorted(
        {a for i in ns.interfaces.values() if i.kind != "loopback" for a, _ in i.addresses}
    )
    config = ipvs_proxy.sync(state, node, node_ips=[ip_str(a) for a in own])
    # A dummy device: its addresses are local (packets to them take INPUT) but it sits on no
    # segment, so the node does not answer ARP for them (kube-proxy's --ipvs-strict-arp).
    ns.add_interface(
        Interface(ipvs_proxy.DUMMY_DEVICE, [(ip(a), 32) for a in config.addresses], kind="dummy")
    )
    ruleset = parse_iptables_save(
        config.iptables, file=f"node/{node} iptables (ipvs)", ipsets=config.registry()
    )
    install_iptables(ns, ruleset)
    install_ipvs(ns.stack, IpvsTable(config.virtual_servers))
    rules[node] = {
        "ipvsadm": config.ipvsadm(),
        "ipset": config.ipset_list(),
        "iptables": config.iptables,
    }
