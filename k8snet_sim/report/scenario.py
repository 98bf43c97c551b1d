"""What ``validate`` shows: the cluster as the control plane built it, defaults, ignored input.

Example
-------
>>> _ports_text([{"port": 80, "targetPort": 8080, "nodePort": 0, "protocol": "TCP", "name": ""}])
'80→8080/TCP'
"""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text


def validate_report(scenario: Any, world: Any) -> dict[str, Any]:
    build = world.info["cluster"]
    state = build.state
    services = []
    for svc in state.services:
        ports = [
            {
                "name": p.name,
                "protocol": p.protocol,
                "port": p.port,
                "targetPort": p.target_port,
                "nodePort": p.node_port,
            }
            for p in svc.ports
        ]
        endpoints = {
            p.name or str(p.port): [
                e.address + ("" if e.ready else " (not ready)") for e in state.endpoints_for(svc, p)
            ]
            for p in svc.ports
        }
        services.append(
            {
                "name": svc.key,
                "type": svc.type,
                "clusterIP": svc.cluster_ip,
                "ports": ports,
                "externalIPs": list(svc.external_ips),
                "loadBalancerIPs": list(svc.load_balancer_ips),
                "pending": svc.load_balancer_pending,
                "externalTrafficPolicy": svc.external_traffic_policy,
                "internalTrafficPolicy": svc.internal_traffic_policy,
                "healthCheckNodePort": svc.health_check_node_port or None,
                "sessionAffinity": svc.session_affinity,
                "endpoints": endpoints,
            }
        )
    return {
        "name": scenario.name,
        "mode": scenario.mode,
        "cni": scenario.cluster.cni,
        "nodes": [
            {
                "name": n.name,
                "address": n.address,
                "podCIDR": n.pod_cidr,
                "schedulable": n.schedulable,
            }
            for n in state.nodes
        ],
        "pods": [
            {
                "name": p.key,
                "node": p.node,
                "ip": p.ip,
                "ready": p.ready,
                "ports": [
                    f"{c.port}/{c.protocol}" + (f" ({c.name})" if c.name else "") for c in p.ports
                ],
            }
            for p in state.pods
        ],
        "services": services,
        "namespaces": sorted(world.namespaces),
        "defaulted": list(scenario.defaulted),
        "ignored": [d.render() for d in scenario.ignored],
        "notes": list(scenario.notes) + list(getattr(build, "notes", [])),
    }


def _ports_text(ports: list[dict[str, Any]]) -> str:
    parts = []
    for p in ports:
        text = f"{p['port']}→{p['targetPort']}"
        if p["nodePort"]:
            text += f" (nodePort {p['nodePort']})"
        parts.append(f"{text}/{p['protocol']}")
    return ", ".join(parts)


def validate_view(report: dict[str, Any]) -> Group:
    parts: list[Any] = [
        Text(
            f"{report['name']}: valid — kube-proxy mode {report['mode']}, CNI {report['cni']}",
            style="bold green",
        )
    ]
    nodes = Table(title="nodes", title_justify="left")
    for col in ("node", "address", "pod CIDR", "schedulable"):
        nodes.add_column(col)
    for n in report["nodes"]:
        nodes.add_row(n["name"], n["address"], n["podCIDR"], "yes" if n["schedulable"] else "no")
    parts.append(nodes)
    pods = Table(title="pods", title_justify="left")
    for col in ("pod", "node", "IP", "ports", "ready"):
        pods.add_column(col)
    for p in report["pods"]:
        pods.add_row(
            p["name"], p["node"], p["ip"], ", ".join(p["ports"]), "yes" if p["ready"] else "NO"
        )
    parts.append(pods)
    svcs = Table(title="services", title_justify="left")
    for col in ("service", "type", "cluster IP", "ports", "external", "endpoints"):
        svcs.add_column(col)
    for s in report["services"]:
        ext = ", ".join(s["loadBalancerIPs"] + s["externalIPs"])
        if s["pending"]:
            ext = f"<pending: {s['pending']}>"
        eps = "; ".join(f"{k}: {', '.join(v) or 'none'}" for k, v in s["endpoints"].items())
        svcs.add_row(
            s["name"], s["type"], s["clusterIP"] or "None", _ports_text(s["ports"]), ext, eps
        )
    parts.append(svcs)
    for key, title in (
        ("defaulted", "defaults applied"),
        ("ignored", "ignored (not interpreted)"),
        ("notes", "notes"),
    ):
        if report[key]:
            parts.append(Text(f"{title}:", style="bold"))
            parts.extend(Text(f"  {line}") for line in report[key])
    return Group(*parts)
