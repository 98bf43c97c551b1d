"""Sources on interchangeable nodes share one reach computation (analysis/reach_nodes.py).

The grouped matrix must equal the brute-force one cell by cell (texts included, relabelled to
each member's node), in every mode and in the variants that break the symmetry; and the
premise the grouping rests on — kube-proxy's rules for a Service differ between two nodes
without local endpoints of it only by the nodes' own addresses — is checked against the
proxiers themselves.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

import k8snet_sim.analysis.reach as reach_module
from k8snet_sim.analysis.reach import reach
from k8snet_sim.analysis.reach_keys import AddressClasses
from k8snet_sim.analysis.reach_model import ReachResult
from k8snet_sim.analysis.reach_nodes import NodeSymmetry
from k8snet_sim.api import load
from k8snet_sim.cluster.model import ClusterState
from k8snet_sim.netfilter.ipset import render_sets
from k8snet_sim.proxy import iptables as iptables_proxy
from k8snet_sim.proxy import ipvs as ipvs_proxy
from k8snet_sim.proxy import nftables as nftables_proxy
from k8snet_sim.proxy import userspace as userspace_proxy

NODES = 7


def _scenario(
    *, cni: str = "host-gw", skip_route: int | None = None, transit: int | None = None
) -> dict[str, Any]:
    """7 nodes, 7 two-replica Deployments, 7 Services of every type, an office behind a
    router that routes the pod CIDRs (all of them, or all but ``skip_route``'s) and, with
    ``transit``, the service CIDR to that node (the founding lesson's route)."""
    nodes = [
        {
            "name": f"node{i}",
            "address": f"192.168.0.{10 + i}",
            "subnet": "lan",
            "gateway": "192.168.0.254",
            "podCIDR": f"10.244.{i}.0/24",
        }
        for i in range(NODES)
    ]
    manifests: list[dict[str, Any]] = []
    for d in range(NODES):
        labels = {"app": f"app{d}"}
        manifests.append(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": f"app{d}"},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "containers": [
                                {"name": "c", "image": "app", "ports": [{"containerPort": 8080}]}
                            ]
                        },
                    },
                },
            }
        )
    kinds = [
        ("ClusterIP", "Cluster"),
        ("ClusterIP", "Cluster"),
        ("NodePort", "Cluster"),
        ("NodePort", "Local"),
        ("LoadBalancer", "Cluster"),
        ("LoadBalancer", "Local"),
        ("ClusterIP", "Cluster"),
    ]
    for s, (kind, policy) in enumerate(kinds):
        spec: dict[str, Any] = {
            "type": kind,
            "selector": {"app": f"app{s}"},
            "ports": [{"port": 80, "targetPort": 8080}],
        }
        if kind != "ClusterIP":
            spec["externalTrafficPolicy"] = policy
        manifests.append(
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"svc{s}"}, "spec": spec}
        )
    return {
        "apiVersion": "k8snet-sim.io/v1alpha1",
        "kind": "Scenario",
        "metadata": {"name": "interchangeable-nodes"},
        "cluster": {"cni": cni, "nodes": nodes},
        "network": {
            "subnets": [
                {"name": "lan", "cidr": "192.168.0.0/24"},
                {"name": "office", "cidr": "172.16.0.0/24"},
            ],
            "routers": [
                {
                    "name": "core",
                    "interfaces": [
                        {"subnet": "lan", "address": "192.168.0.254"},
                        {"subnet": "office", "address": "172.16.0.1"},
                    ],
                    "routes": [
                        {"to": n["podCIDR"], "via": n["address"]}
                        for i, n in enumerate(nodes)
                        if i != skip_route
                    ]
                    + (
                        [{"to": "10.96.0.0/12", "via": nodes[transit]["address"]}]
                        if transit is not None
                        else []
                    ),
                }
            ],
            "hosts": [
                {
                    "name": "office",
                    "subnet": "office",
                    "address": "172.16.0.50",
                    "gateway": "172.16.0.1",
                }
            ],
        },
        "loadBalancer": {"provider": "metallb-l2", "pool": "192.168.0.200-192.168.0.220"},
        "manifests": manifests,
    }


def _load(tmp_path: Path, mode: str, sets: tuple[str, ...] = (), **kwargs: Any) -> Any:
    path = tmp_path / "nodes.yaml"
    path.write_text(yaml.safe_dump(_scenario(**kwargs), sort_keys=False), encoding="utf-8")
    return load(path, mode=mode, overrides=sets)


def _assert_equal_to_brute_force(shared: ReachResult, brute: ReachResult) -> None:
    assert len(brute.computations) == len(brute.members) * len(brute.targets)
    for member in brute.members:
        for column in brute.targets:
            a = shared.member_cell(member.ref, column.ref)
            b = brute.member_cell(member.ref, column.ref)
            assert (a.status, a.endpoints) == (b.status, b.endpoints), (
                member.ref,
                column.ref,
                a.computed_from,
            )


def _across(result: ReachResult) -> list[tuple[str, str, str]]:
    """(member, target, representative) of the cells answered from another node."""
    out = []
    for t, column in enumerate(result.targets):
        for m, member in enumerate(result.members):
            rep = result.computations[result.table[t][m]].rep
            if rep.node != member.node:
                out.append((member.ref, column.ref, rep.ref))
    return out


VARIANTS = [
    ("iptables", (), {}),
    ("ipvs", (), {}),
    ("nftables", (), {}),
    ("userspace", (), {}),
    ("iptables", (), {"cni": "vxlan"}),
    ("iptables", ("cluster.kubeProxy.clusterCIDR=10.244.0.0/16",), {}),
    ("ipvs", (), {"skip_route": 3}),
    ("iptables", (), {"transit": 2}),
]


@pytest.mark.parametrize(
    ("mode", "sets", "shape"),
    VARIANTS,
    ids=[
        "iptables",
        "ipvs",
        "nftables",
        "userspace",
        "vxlan",
        "clusterCIDR",
        "missing-route",
        "transit",
    ],
)
def test_sharing_across_nodes_equals_brute_force(
    tmp_path: Path, mode: str, sets: tuple[str, ...], shape: dict[str, Any]
) -> None:
    sim = _load(tmp_path, mode, sets, **shape)
    shared, brute = reach(sim), reach(sim, share=False)
    _assert_equal_to_brute_force(shared, brute)
    assert _across(shared), "no cell was answered from another node"


def test_sharing_across_nodes_saves_computations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = _load(tmp_path, "iptables")
    across = len(reach(sim).computations)
    monkeypatch.setattr(reach_module, "nodes_interchangeable_for", lambda _w, _t: False)
    per_node = len(reach(sim).computations)
    assert across < 0.7 * per_node, (across, per_node)


def test_answers_are_relabelled_to_the_member_node(tmp_path: Path) -> None:
    """A node's own address is what the backend sees from it, even when the cell was
    computed on another node."""
    result = reach(_load(tmp_path, "iptables"), targets=["service/default/svc0:80"])
    moved = [(m, r) for m, _, r in _across(result) if m.startswith("node/")]
    assert moved
    member, rep = moved[0]
    cell = result.member_cell(member, "service/default/svc0:80")
    assert cell.computed_from == rep != member
    own = result.members[result._member_index(member)].address
    other = result.members[result._member_index(rep)].address
    assert cell.source_seen == [own] and own != other


def test_a_node_the_router_treats_differently_stands_alone(tmp_path: Path) -> None:
    result = reach(_load(tmp_path, "iptables", skip_route=3))
    for member, _, rep in _across(result):
        assert "node3" not in member and "node3" not in rep


def test_a_node_the_router_sends_service_traffic_through_keeps_its_name(tmp_path: Path) -> None:
    sim = _load(tmp_path, "iptables", transit=2)
    result = reach(sim, sources=["host/office", "node/*"], targets=["service/default/svc0:80"])
    symmetry = NodeSymmetry(sim.world, AddressClasses(sim.world))
    assert symmetry.transit == {"node2"}
    for member, _, rep in _across(result):
        assert "node2" not in member and "node2" not in rep
    # The office's SYN crosses node2, which DNATs it: the founding lesson.
    failures = result.cell("host/office", "service/default/svc0:80").failures
    assert failures and all("through node/node2" in reason for _, reason in failures)


def test_nodeport_columns_mirror_each_other_across_interchangeable_nodes(
    tmp_path: Path,
) -> None:
    """svc2's NodePort on a node without its pods is answered as the mirror image of its
    NodePort on another such node; a node's own source still sees its own address."""
    result = reach(_load(tmp_path, "iptables"), targets=["nodeport/*/default/svc2:80"])
    assert result.swaps
    t, (t0, a, b, _) = next(iter(result.swaps.items()))
    assert result.targets[t].ref == f"nodeport/{b}/default/svc2:80"
    assert result.targets[t0].ref == f"nodeport/{a}/default/svc2:80"
    own = result.member_cell(f"node/{b}", t)
    mirror = result.member_cell(f"node/{a}", t0)
    assert own.status == mirror.status
    address = {m.ref: m.address for m in result.members}
    assert own.source_seen == [address[f"node/{b}"]] != mirror.source_seen


def test_not_across_nodes_where_the_path_picks_a_node() -> None:
    """Ingress controllers and cloud load balancer devices choose among nodes themselves."""
    root = Path(__file__).resolve().parents[1] / "scenarios"
    for name, prefix in (("ingress.yaml", "http://"), ("loadbalancer-cloud.yaml", "loadbalancer/")):
        sim = load(root / name)
        targets = [t for t in reach_module.default_target_refs(sim) if t.startswith(prefix)]
        assert targets
        for ref in targets:
            column = reach_module._column(sim, ref)
            assert not reach_module.nodes_interchangeable_for(sim.world, column.target)


# ---------------------------------------------------------------------------- the premise


def _config(mode: str, state: ClusterState, node: str) -> str:
    if mode == "iptables":
        return iptables_proxy.node_rules(state, node)
    if mode == "nftables":
        return nftables_proxy.sync(state, node)
    if mode == "ipvs":
        cfg = ipvs_proxy.sync(state, node)
        return "\n".join(
            (cfg.ipvsadm(), render_sets(cfg.ipsets), cfg.iptables, *cfg.addresses, *cfg.node_ips)
        )
    return repr(userspace_proxy.sync(state, node)).replace(f"node={node!r}", "node={name}")


def _relabel(text: str, tokens: dict[str, str]) -> str:
    """``text`` with a node's identifiers (longest first) replaced by their roles."""
    for role, token in sorted(tokens.items(), key=lambda kv: -len(kv[1])):
        text = re.sub(rf"(?<![\d.]){re.escape(token)}(?![\d]|\.\d)", f"{{{role}}}", text)
    return text


@pytest.mark.parametrize("mode", ["iptables", "ipvs", "nftables", "userspace"])
def test_proxier_rules_differ_between_uninvolved_nodes_only_by_their_addresses(
    tmp_path: Path, mode: str
) -> None:
    """For each Service alone, any two nodes without a local endpoint of it get the same
    kube-proxy configuration once each node's address is replaced by a placeholder."""
    world = _load(tmp_path, mode).world
    state: ClusterState = world.info["state"]
    symmetry = NodeSymmetry(world, AddressClasses(world))
    checked = 0
    for svc in state.services:
        alone = dataclasses.replace(
            state,
            services=(svc,),
            endpoints={k: v for k, v in state.endpoints.items() if k[0] == svc.key},
        )
        hosts = {e.node_name for eps in alone.endpoints.values() for e in eps}
        texts = {
            _relabel(_config(mode, alone, n.name), symmetry.tokens(n.name))
            for n in state.nodes
            if n.name not in hosts
        }
        assert len(texts) == 1, svc.key
        checked += 1
    assert checked == len(state.services)
