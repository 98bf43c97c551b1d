"""Benchmark: the full reachability report of a 50-node, 500-Service, 2,000-pod cluster.

Builds the scenario programmatically in a temporary directory (nothing is written to the
repository), loads it, runs :func:`k8snet_sim.analysis.reach.reach` with every default source
and target, streams the CSV report (one line per cell) to a temporary file, and prints the
figures: sources, targets, cells, distinct computations and the seconds of each phase.
Asserts nothing. (CSV rather than JSON: at this size the JSON report would be gigabytes.)

The cluster: N nodes on one LAN (host-gw), an office host behind a router that routes every
node's pod CIDR, ``pods / replicas`` Deployments listening on 8080, and S Services over them —
every 50th a NodePort, every 100th (offset 7) a MetalLB LoadBalancer, half of those with
``externalTrafficPolicy: Local``, the rest ClusterIP.

Run: ``python benchmarks/reach_scale.py [--nodes 50 --services 500 --pods 2000] [--jobs 2]``
(``--sample N`` limits the sources to N members, to extrapolate on a slow machine).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from k8snet_sim.analysis.reach import reach
from k8snet_sim.api import load
from k8snet_sim.report.files import atomic_write_text
from k8snet_sim.report.reach_formats import write_csv


def scenario(nodes: int, services: int, pods: int, replicas: int, mode: str) -> dict[str, Any]:
    """The scenario as a dict (YAML-ready)."""
    node_specs = [
        {
            "name": f"node{i}",
            "address": f"192.168.{i // 200}.{10 + i % 200}",
            "subnet": "lan",
            "gateway": "192.168.3.254",
            "podCIDR": f"10.244.{i}.0/24",
        }
        for i in range(nodes)
    ]
    workloads = max(1, pods // replicas)
    manifests: list[dict[str, Any]] = []
    for d in range(workloads):
        labels = {"app": f"app{d}"}
        manifests.append(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": f"app{d}"},
                "spec": {
                    "replicas": replicas,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "containers": [
                                {
                                    "name": "c",
                                    "image": "app",
                                    "ports": [{"name": "http", "containerPort": 8080}],
                                }
                            ]
                        },
                    },
                },
            }
        )
    for s in range(services):
        kind = "LoadBalancer" if s % 100 == 7 else "NodePort" if s % 50 == 3 else "ClusterIP"
        spec: dict[str, Any] = {
            "type": kind,
            "selector": {"app": f"app{s % workloads}"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        }
        if kind != "ClusterIP" and (s // 50) % 2:
            spec["externalTrafficPolicy"] = "Local"
        manifests.append(
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"svc{s}"}, "spec": spec}
        )
    return {
        "apiVersion": "k8snet-sim.io/v1alpha1",
        "kind": "Scenario",
        "metadata": {"name": f"scale-{nodes}n-{services}s-{pods}p"},
        "cluster": {
            "serviceCIDR": "10.96.0.0/16",
            "podCIDR": "10.244.0.0/16",
            "kubeProxy": {"mode": mode, "clusterCIDR": "10.244.0.0/16"},
            "nodes": node_specs,
        },
        "network": {
            "subnets": [
                {"name": "lan", "cidr": "192.168.0.0/22"},
                {"name": "office", "cidr": "172.16.0.0/24"},
            ],
            "routers": [
                {
                    "name": "core",
                    "interfaces": [
                        {"subnet": "lan", "address": "192.168.3.254"},
                        {"subnet": "office", "address": "172.16.0.1"},
                    ],
                    "routes": [{"to": n["podCIDR"], "via": n["address"]} for n in node_specs],
                }
            ],
            "hosts": [
                {
                    "name": "laptop",
                    "subnet": "office",
                    "address": "172.16.0.50",
                    "gateway": "172.16.0.1",
                }
            ],
        },
        "loadBalancer": {"provider": "metallb-l2", "pool": "192.168.3.100-192.168.3.200"},
        "manifests": manifests,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--services", type=int, default=500)
    parser.add_argument("--pods", type=int, default=2000)
    parser.add_argument("--replicas", type=int, default=5)
    parser.add_argument("--mode", default="iptables")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--sample", type=int, default=0, help="only the first N sources")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="k8snet-reach-bench-") as tmp:
        path = Path(tmp) / "scale.yaml"
        t0 = time.perf_counter()
        data = scenario(args.nodes, args.services, args.pods, args.replicas, args.mode)
        atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
        t1 = time.perf_counter()
        sim = load(path)
        t2 = time.perf_counter()
        sources = None
        if args.sample:
            from k8snet_sim.analysis.reach import default_sources

            sources = [s.ref for s in default_sources(sim)[: args.sample]]
        result = reach(sim, sources, jobs=args.jobs)
        t3 = time.perf_counter()
        out = Path(tmp) / "reach.csv"
        with out.open("w", encoding="utf-8") as fh:  # a throwaway file: streamed, not atomic
            write_csv(result, fh, jobs=args.jobs)
        t4 = time.perf_counter()
        cells = len(result.members) * len(result.targets)
        print(f"scenario      {result.scenario} ({args.mode}), jobs {args.jobs}")
        print(f"sources       {len(result.members)} ({len(result.rows)} rows)")
        print(f"targets       {len(result.targets)}")
        print(f"cells         {cells}")
        print(
            f"computations  {len(result.computations)} "
            f"({cells / max(1, len(result.computations)):.1f} cells each)"
        )
        print(f"write yaml    {t1 - t0:8.2f} s")
        print(f"load + build  {t2 - t1:8.2f} s")
        print(f"reach()       {t3 - t2:8.2f} s")
        print(f"csv report    {t4 - t3:8.2f} s ({out.stat().st_size / 1e6:.1f} MB)")
        print(f"report total  {t4 - t2:8.2f} s (reach + csv; target 60 s)")
        print(f"summary       {result.summary()}")


if __name__ == "__main__":
    main()
