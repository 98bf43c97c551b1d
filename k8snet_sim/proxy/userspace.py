"""kube-proxy's userspace mode (removed in v1.26) as a pure function of the cluster state.

For each Service port the node's kube-proxy opens a *proxy socket* on a port of its own and
installs iptables "portal" rules that steer traffic for the Service's addresses to it:
containers' and forwarded packets are REDIRECTed (``KUBE-PORTALS-CONTAINER``,
``KUBE-NODEPORT-CONTAINER``), the node's own packets are DNATed to ``<nodeIP>:<proxyPort>``
(``KUBE-PORTALS-HOST``, ``KUBE-NODEPORT-HOST``). The proxy process then opens a second
connection, from the node, to an endpoint chosen round-robin (K19
``pkg/proxy/userspace/{proxier,roundrobin}.go``, reference §6).

Simplified (docs/fidelity.md): proxy ports are allocated sequentially from
``PROXY_PORT_BASE`` in Service order (upstream: random free ports); externalIP portals omit the
``-m physdev ! --physdev-is-in`` match; endpoints are not shuffled on change.

Example
-------
>>> from k8snet_sim.cluster.model import ClusterState, Node, Service, ServicePort
>>> svc = Service("default", "web", "ClusterIP", "10.96.0.10",
...               (ServicePort("http", "TCP", 80, 8080),))
>>> state = ClusterState("10.96.0.0/16", "10.244.0.0/16", (30000, 32767),
...     (Node("n1", "192.168.0.2", "10.244.0.0/24", "lan"),), (), (svc,), {})
>>> cfg = sync(state, "n1")
>>> cfg.ports[0].proxy_port, cfg.ports[0].name
(40000, 'default/web:http')
>>> rule = next(line for line in cfg.rules.splitlines() if "REDIRECT" in line)
>>> rule.split(" -j ")[1]
'REDIRECT --to-ports 40000'
"""

from __future__ import annotations

from dataclasses import dataclass

from k8snet_sim.cluster.model import ClusterState, Endpoint, Service, ServicePort
from k8snet_sim.proxy.topology import external_ips, load_balancer_vips, should_skip_service

PROXY_PORT_BASE = 40000


@dataclass(frozen=True)
class ProxyPort:
    """One Service port served by the node's kube-proxy process."""

    name: str  # "ns/svc:port"
    protocol: str
    proxy_port: int
    service: str  # "ns/svc"
    port_name: str
    endpoints: tuple[Endpoint, ...]  # ready endpoints, in "ip:port" order
    session_affinity: bool
    affinity_timeout: int


@dataclass(frozen=True)
class UserspaceConfig:
    """What userspace kube-proxy sets up on one node: portal rules and proxy sockets."""

    node: str
    rules: str  # iptables-save text (filter and nat tables)
    ports: tuple[ProxyPort, ...]

    def port_table(self) -> str:
        """The proxy-port table, as ``rules`` prints it after the iptables text."""
        lines = [
            "# kube-proxy (userspace) proxy sockets on " + self.node,
            "# SERVICE-PORT                         PROTO  PROXY-PORT  ENDPOINTS",
        ]
        for p in self.ports:
            eps = ",".join(e.address for e in p.endpoints) or "<none>"
            affinity = f"  (ClientIP affinity {p.affinity_timeout}s)" if p.session_affinity else ""
            lines.append(f"# {p.name:<36} {p.protocol:<6} {p.proxy_port:<11} {eps}{affinity}")
        return "\n".join(lines) + "\n"


def _common(name: str, proto: str, dport: int, dest: str | None) -> str:
    p = proto.lower()
    text = f"-m comment --comment {_quote(name)} -p {p} -m {p} --dport {dport}"
    return text + (f" -d {dest}/32" if dest else "")


def _quote(text: str) -> str:
    return f'"{text}"' if " " in text else text


def sync(state: ClusterState, node: str) -> UserspaceConfig:
    """The portal rules and proxy sockets of ``node`` (pure, deterministic)."""
    node_ip = state.node(node).address
    container: list[str] = []
    host: list[str] = []
    np_container: list[str] = []
    np_host: list[str] = []
    np_filter: list[str] = []
    ports: list[ProxyPort] = []
    services = sorted(
        (s for s in state.services if not should_skip_service(s)), key=lambda s: s.key
    )
    next_port = PROXY_PORT_BASE
    for svc in services:
        for port in svc.ports:
            proxy_port, next_port = next_port, next_port + 1
            name = svc.port_name(port)
            proto = port.protocol
            ports.append(_proxy_port(state, svc, port, name, proxy_port))
            # ClusterIP, then each externalIP and LoadBalancer ingress IP get portals.
            for address in (svc.cluster_ip, *external_ips(svc), *load_balancer_vips(svc)):
                container.append(
                    f"-A KUBE-PORTALS-CONTAINER {_common(name, proto, port.port, address)}"
                    f" -j REDIRECT --to-ports {proxy_port}"
                )
                host.append(
                    f"-A KUBE-PORTALS-HOST {_common(name, proto, port.port, address)}"
                    f" -j DNAT --to-destination {node_ip}:{proxy_port}"
                )
            if port.node_port:
                np_container.append(
                    f"-A KUBE-NODEPORT-CONTAINER {_common(name, proto, port.node_port, None)}"
                    f" -j REDIRECT --to-ports {proxy_port}"
                )
                np_host.append(
                    f"-A KUBE-NODEPORT-HOST {_common(name, proto, port.node_port, None)}"
                    f" -j DNAT --to-destination {node_ip}:{proxy_port}"
                )
                p = proto.lower()
                np_filter.append(
                    f"-A KUBE-NODEPORT-NON-LOCAL -m comment --comment {_quote(name)}"
                    f" -p {p} -m {p} --dport {proxy_port} -m state --state NEW -j ACCEPT"
                )
    portal = '"handle ClusterIPs; NOTE: this must be before the NodePort rules"'
    nodeports = '"handle service NodePorts; NOTE: this must be the last rule in the chain"'
    lines = [
        "*filter",
        ":INPUT ACCEPT [0:0]",
        ":FORWARD ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":KUBE-NODEPORT-NON-LOCAL - [0:0]",
        '-A INPUT -m comment --comment "Ensure that non-local NodePort traffic can flow"'
        " -j KUBE-NODEPORT-NON-LOCAL",
        *np_filter,
        "COMMIT",
        "*nat",
        ":PREROUTING ACCEPT [0:0]",
        ":INPUT ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":POSTROUTING ACCEPT [0:0]",
        ":KUBE-NODEPORT-CONTAINER - [0:0]",
        ":KUBE-NODEPORT-HOST - [0:0]",
        ":KUBE-PORTALS-CONTAINER - [0:0]",
        ":KUBE-PORTALS-HOST - [0:0]",
        f"-A PREROUTING -m comment --comment {portal} -j KUBE-PORTALS-CONTAINER",
        f"-A PREROUTING -m addrtype --dst-type LOCAL -m comment --comment {nodeports}"
        " -j KUBE-NODEPORT-CONTAINER",
        f"-A OUTPUT -m comment --comment {portal} -j KUBE-PORTALS-HOST",
        f"-A OUTPUT -m addrtype --dst-type LOCAL -m comment --comment {nodeports}"
        " -j KUBE-NODEPORT-HOST",
        *np_container,
        *np_host,
        *container,
        *host,
        "COMMIT",
    ]
    return UserspaceConfig(node, "\n".join(lines) + "\n", tuple(ports))


def _proxy_port(
    state: ClusterState, svc: Service, port: ServicePort, name: str, proxy_port: int
) -> ProxyPort:
    # The userspace proxier predates traffic policies: every ready endpoint, anywhere.
    ready = tuple(e for e in state.endpoints_for(svc, port) if e.ready)
    return ProxyPort(
        name,
        port.protocol,
        proxy_port,
        svc.key,
        port.name,
        ready,
        svc.session_affinity == "ClientIP",
        svc.session_affinity_timeout,
    )
