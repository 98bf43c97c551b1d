"""What kube-proxy writes on each node, taken from the simulator, and loading it into the kernel.

The rules are exactly the text the simulator generated and installed (``world.info["rules"]``):
``iptables-restore`` input in iptables and userspace mode, an ``nft -f`` ruleset in nftables
mode. Userspace mode also needs the proxy process: its ports and endpoints come from the same
pure ``sync`` the simulator used. IPVS needs the ``ip_vs`` kernel module, which we never load.

Example
-------
>>> support_problem("ipvs", proc_ip_vs="/nonexistent")[:4]
'ipvs'
>>> support_problem("iptables") is None
True
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from dataclasses import dataclass
from typing import Any

from k8snet_sim.cluster.model import ClusterState
from k8snet_sim.emulate.janitor import EmulationError, Janitor
from k8snet_sim.emulate.plan import EmulationPlan, Step

MODES = ("iptables", "userspace", "nftables", "ipvs")
TOOLS = {"iptables": "iptables-restore", "userspace": "iptables-restore", "nftables": "nft"}


@dataclass(frozen=True)
class ProxyPortSpec:
    """One socket of the userspace proxy: where it listens and where it sends."""

    name: str
    proto: str
    port: int
    endpoints: tuple[str, ...]  # "ip:port", in the simulator's round-robin order
    affinity_s: int = 0  # ClientIP affinity timeout (0: none)


@dataclass(frozen=True)
class NodeDatapath:
    """Everything kube-proxy puts on one node, ready to load."""

    node: str
    mode: str
    iptables: str | None = None
    nftables: str | None = None
    proxy_ports: tuple[ProxyPortSpec, ...] = ()

    def proxy_config(self) -> str:
        return json.dumps(
            {
                "ports": [
                    {
                        "name": p.name,
                        "proto": p.proto,
                        "port": p.port,
                        "endpoints": list(p.endpoints),
                        "affinitySeconds": p.affinity_s,
                    }
                    for p in self.proxy_ports
                ]
            }
        )

    def affinity_sets(self) -> list[str]:
        """The nftables sets that remember ClientIP affinity (``affinity-…``)."""
        return re.findall(r"^\s*set (affinity-\S+) \{", self.nftables or "", re.M)


def support_problem(mode: str, *, proc_ip_vs: str = "/proc/net/ip_vs") -> str | None:
    """Why ``mode`` cannot be emulated on this machine (None: it can)."""
    if mode not in MODES:
        return f"unknown kube-proxy mode {mode!r}"
    if mode == "ipvs":
        if not os.path.exists(proc_ip_vs):
            return (
                "ipvs mode needs the kernel's IPVS support (ip_vs module); this kernel lacks "
                f"it ({proc_ip_vs} is missing) and emulate never loads kernel modules"
            )
        if shutil.which("ipvsadm") is None:
            return "ipvs mode needs ipvsadm, which is not installed"
        return (
            "ipvs mode is not emulated yet: loading the virtual servers and ipsets into the "
            "kernel is not implemented (it could not be tested where it was written)"
        )
    tool = TOOLS[mode]
    if shutil.which(tool) is None:
        return f"{mode} mode needs {tool}, which is not installed"
    return None


def node_datapaths(world: Any, state: ClusterState, mode: str) -> list[NodeDatapath]:
    """Each node's kube-proxy configuration for ``mode``: the rules the simulator installed
    (``world.info["rules"]``), and for userspace mode the proxy sockets of the same pure
    ``sync`` the simulator's proxy uses."""
    rules: dict[str, dict[str, str]] = world.info.get("rules", {})
    out = []
    for node in state.nodes:
        mine = rules.get(node.name, {})
        if mode == "iptables":
            out.append(NodeDatapath(node.name, mode, iptables=_need(mine, "iptables", node.name)))
        elif mode == "userspace":
            from k8snet_sim.proxy import userspace

            config = userspace.sync(state, node.name)
            ports = tuple(
                ProxyPortSpec(
                    p.name,
                    p.protocol,
                    p.proxy_port,
                    tuple(e.address for e in p.endpoints),
                    p.affinity_timeout if p.session_affinity else 0,
                )
                for p in config.ports
            )
            out.append(
                NodeDatapath(
                    node.name, mode, iptables=mine.get("iptables", config.rules), proxy_ports=ports
                )
            )
        elif mode == "nftables":
            out.append(NodeDatapath(node.name, mode, nftables=_need(mine, "nftables", node.name)))
        else:
            raise EmulationError(support_problem(mode) or f"mode {mode} cannot be emulated")
    return out


def _need(rules: dict[str, str], key: str, node: str) -> str:
    if key not in rules:
        raise EmulationError(f"the simulator produced no {key} rules for node {node}")
    return rules[key]


def load(janitor: Janitor, plan: EmulationPlan, datapaths: list[NodeDatapath]) -> None:
    """Load every node's rules into its namespace (``iptables-restore`` / ``nft -f``)."""
    for dp in datapaths:
        ns = plan.netns[f"node/{dp.node}"]
        if dp.iptables is not None:
            janitor.run(
                Step(ns, ("iptables-restore",), dp.iptables, f"iptables rules of {dp.node}")
            )
        if dp.nftables is not None:
            janitor.run(Step(ns, ("nft", "-f", "-"), dp.nftables, f"nftables rules of {dp.node}"))


XT_RECENT_FLUSH = 'for f in /proc/net/xt_recent/*; do [ -e "$f" ] && echo / > "$f"; done; true'


def forget_affinity(
    janitor: Janitor, plan: EmulationPlan, datapaths: list[NodeDatapath], proxies: dict[str, int]
) -> None:
    """Forget every ClientIP affinity on every node, as if the timeout had passed: flush the
    ``xt_recent`` lists (iptables), the ``affinity-*`` sets (nftables), and tell the userspace
    proxies (SIGUSR1 to the PIDs we started)."""
    for d in datapaths:
        ns = plan.netns[f"node/{d.node}"]
        if d.iptables is not None and "-m recent" in d.iptables:
            janitor.exec(ns, ["sh", "-c", XT_RECENT_FLUSH])
        sets = d.affinity_sets()
        if sets:
            text = "".join(f"flush set ip kube-proxy {name}\n" for name in sets)
            janitor.run(Step(ns, ("nft", "-f", "-"), text, "forget affinity"))
        pid = proxies.get(d.node)
        if pid is not None and any(p.affinity_s for p in d.proxy_ports):
            os.kill(pid, signal.SIGUSR1)


def has_br_netfilter(janitor: Janitor, ns: str) -> bool:
    """Whether ``net.bridge.bridge-nf-call-iptables`` exists inside namespace ``ns``."""
    done = janitor.exec(ns, ["sysctl", "-n", "net.bridge.bridge-nf-call-iptables"], check=False)
    return done.returncode == 0
