"""reach(): who can reach what — and if not, why not — for a whole scenario at once.

Every cell of the matrix is one question "can SOURCE open a connection to TARGET?", answered
by :func:`~k8snet_sim.analysis.trace.possible_endpoints` on forks of a *pristine* simulation of
the scenario: the same datapath as ``trace``, over every branch of the random choices, so a cell
is ``reachable`` (every possible endpoint answers), ``unreachable`` (none does) or ``partial``
(k of n), and each failing branch carries the reason its mechanism gave.

Sources the datapath cannot tell apart share one computation per target
(:mod:`~k8snet_sim.analysis.reach_keys`); a member's answer is the representative's with the
representative's address and name replaced by its own, and ``share=False`` computes the
brute-force matrix a test compares it with. A *row* groups the pods of one workload on one
node only when their cells are identical for every target; otherwise the group is split.
Comparisons live in :mod:`~k8snet_sim.analysis.reach_compare`.

Example
-------
>>> from k8snet_sim.api import load
>>> result = reach(load("scenarios/external-clusterip.yaml"), targets=["service/*"])
>>> result.cell("host/office", "service/default/web:80").verdict()
'partial (1/3, REPLY_LOST)'
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from fnmatch import fnmatchcase
from typing import Any

from k8snet_sim.analysis.reach_compare import CellChange, ReachDiff, compare_reach
from k8snet_sim.analysis.reach_keys import AddressClasses, computation_key, target_addresses
from k8snet_sim.analysis.reach_model import (
    SYMBOLS,
    Cell,
    Computation,
    ReachResult,
    Source,
    SourceRow,
    TargetColumn,
    brace_label,
    status_of,
    substitute_row,
)
from k8snet_sim.analysis.reach_nodes import NodeSymmetry, pod_addresses_by_node
from k8snet_sim.analysis.reach_plan import mirror_column, node_places, nodes_interchangeable_for
from k8snet_sim.analysis.targets import Target, resolve_source, resolve_target
from k8snet_sim.analysis.trace import possible_endpoints, trace
from k8snet_sim.errors import UnknownEndpoint
from k8snet_sim.net.addr import ip_str
from k8snet_sim.net.packet import PROTO_NUMBERS
from k8snet_sim.scenario.refs import RefSyntaxError, parse_ref
from k8snet_sim.sim.simulation import Simulation

__all__ = [
    "SYMBOLS",
    "Cell",
    "CellChange",
    "ReachDiff",
    "ReachResult",
    "Source",
    "SourceRow",
    "TargetColumn",
    "compare_reach",
    "default_sources",
    "default_target_refs",
    "reach",
    "status_of",
]

PROTO_NAMES = {v: k.upper() for k, v in PROTO_NUMBERS.items()}


# ---------------------------------------------------------------------------- enumeration


def default_sources(sim: Simulation) -> list[Source]:
    """Every pod, node, outside host and router of the world, in scenario order."""
    world = sim.world
    state = world.info["state"]
    out = []
    for pod in state.pods:
        ns = f"pod/{pod.key}" if f"pod/{pod.key}" in world.namespaces else f"node/{pod.node}"
        if ns in world.namespaces:
            out.append(Source(f"pod/{pod.key}", ns, "pod", pod.node, pod.owner, pod.ip))
    for kind in ("node", "host", "router"):
        for name, namespace in world.namespaces.items():
            if namespace.kind == kind:
                address = namespace.primary_address()
                text = ip_str(address) if address is not None else None
                out.append(Source(name, name, kind, namespace.labels.get("node"), None, text))
    return out


def default_target_refs(sim: Simulation) -> list[str]:
    """Every Service frontend: ClusterIP ports, NodePorts on each node, LoadBalancer IPs,
    external IPs, then Ingress URLs (when the world can resolve them)."""
    state = sim.world.info["state"]
    services = [s for s in state.services if s.type != "ExternalName" and s.ports]
    refs = [f"service/{s.key}:{p.port}" for s in services if s.cluster_ip for p in s.ports]
    refs += [
        f"nodeport/{n.name}/{s.key}:{p.port}"
        for s in services
        for p in s.ports
        if p.node_port
        for n in state.nodes
    ]
    refs += [
        f"loadbalancer/{s.key}:{p.port}" for s in services for p in s.ports if s.load_balancer_ips
    ]
    refs += [f"{e}:{p.port}" for s in services for p in s.ports for e in s.external_ips]
    build = sim.world.info.get("cluster")
    for ing in getattr(build, "ingresses", ()):
        for route in ing.routes:
            if route.host and not route.host.startswith("*."):
                refs.append(f"http://{route.host}{route.path or '/'}")
    return list(dict.fromkeys(refs))


def _column(sim: Simulation, ref: str) -> TargetColumn:
    target = resolve_target(sim.world, ref)
    state = sim.world.info["state"]
    if target.kind == "ip":
        # An external IP of a UDP/SCTP Service port keeps that port's protocol.
        for svc in state.services:
            for port in svc.ports:
                if port.port == target.port and ip_str(target.ip) in svc.external_ips:
                    proto = PROTO_NUMBERS[port.protocol.lower()]
                    target = Target(ref, "ip", target.ip, target.port, proto, svc, port)
    return TargetColumn(
        ref,
        target.kind,
        target.address,
        PROTO_NAMES.get(target.proto, "TCP"),
        target.service.key if target.service else None,
        target,
    )


def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _select(items: list[Any], wanted: Sequence[str] | None, what: str, key: Any) -> list[Any]:
    if wanted is None:
        return items
    out: list[Any] = []
    for pattern in wanted:
        hits = [x for x in items if fnmatchcase(key(x), pattern)]
        if not hits and _is_glob(pattern):
            raise UnknownEndpoint(pattern, hint=f"the pattern matches no {what}")
        out.extend(x for x in hits if x not in out)
        if not hits:
            out.append(pattern)  # an exact reference outside the defaults: resolved by caller
    return out


def _canonical_source(sim: Simulation, text: str, known: dict[str, Source]) -> Source:
    try:
        ref = str(parse_ref(text, role="source"))
    except RefSyntaxError as err:
        raise UnknownEndpoint(text, hint=f"{err}; {err.hint}") from None
    if ref in known:
        return known[ref]
    ns = resolve_source(sim.world, ref)
    address = sim.world.namespaces[ns].primary_address()
    return Source(
        ref, ns, ref.split("/", 1)[0], None, None, ip_str(address) if address is not None else None
    )


# ---------------------------------------------------------------------------- computing


def _compute_one(
    pristine: Simulation, rep: Source, column: TargetColumn, samples: bool
) -> tuple[tuple[dict[str, Any], ...], dict[str, Any] | None]:
    rows = tuple(possible_endpoints(pristine, rep.ns, column.target, settle=0.0))
    sample = None
    if samples:
        # The seeded connection, exactly as `k8snet-sim trace` shows it for this seed.
        res = trace(pristine.fork(), rep.ref, column.ref, explore_all=False)
        keep = ("t", "node", "action", "packet", "rules", "rewrites", "verdict")
        sample = {
            "disposition": res.disposition,
            "reason": res.reason,
            "endpoint": res.endpoint,
            "sourceSeenByBackend": res.source_seen_by_backend,
            "hops": [{k: h.to_dict()[k] for k in keep} for h in res.hops],
            "replyHops": [{k: h.to_dict()[k] for k in keep} for h in res.reply_hops],
        }
    return rows, sample


def _compute(
    pristine: Simulation,
    comps: list[Computation],
    targets: list[TargetColumn],
    samples: bool,
    jobs: int,
) -> None:
    """Fill every computation; with ``jobs`` > 1, in forked worker processes (the world is
    shared copy-on-write; results come back pickled and are placed by index, so the outcome
    does not depend on scheduling)."""
    jobs = max(1, min(jobs, len(comps)))
    if jobs == 1 or not hasattr(os, "fork"):
        for c in comps:
            c.rows, c.sample = _compute_one(pristine, c.rep, targets[c.target], samples)
        return
    with tempfile.TemporaryDirectory(prefix="k8snet-reach-") as tmp:
        children: dict[int, tuple[str, int]] = {}
        try:
            for j in range(1, jobs):
                path = os.path.join(tmp, f"{j}.pickle")
                pid = os.fork()
                if pid == 0:  # pragma: no cover - runs in the child
                    _child(pristine, comps[j::jobs], targets, samples, path)
                children[pid] = (path, j)
            for c in comps[0::jobs]:
                c.rows, c.sample = _compute_one(pristine, c.rep, targets[c.target], samples)
            for pid in list(children):
                _, status = os.waitpid(pid, 0)
                path, j = children.pop(pid)
                if not os.path.exists(path):
                    raise RuntimeError(f"reach worker {pid} died (wait status {status})")
                with open(path, "rb") as fh:
                    out = pickle.load(fh)
                if isinstance(out, BaseException):
                    raise out
                for c, (rows, sample) in zip(comps[j::jobs], out, strict=True):
                    c.rows, c.sample = rows, sample
        finally:
            for pid in children:  # only after a failure: stop our own workers, then reap them
                os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)


def _child(
    pristine: Simulation,
    comps: list[Computation],
    targets: list[TargetColumn],
    samples: bool,
    path: str,
) -> None:  # pragma: no cover - runs in a forked worker
    code = 0
    try:
        out: Any = [_compute_one(pristine, c.rep, targets[c.target], samples) for c in comps]
    except BaseException as err:
        out, code = err, 1
    try:
        with open(path, "wb") as fh:
            pickle.dump(out, fh, protocol=pickle.HIGHEST_PROTOCOL)
    finally:
        os._exit(code)


def reach(
    sim: Simulation,
    sources: Sequence[str] | None = None,
    targets: Sequence[str] | None = None,
    *,
    expand_pods: bool = False,
    share: bool = True,
    samples: bool = False,
    jobs: int = 1,
) -> ReachResult:
    """The reachability matrix of ``sim``'s scenario.

    ``sources`` / ``targets``: references or glob patterns (``pod/default/*``) over the
    defaults (:func:`default_sources`, :func:`default_target_refs`). ``expand_pods`` gives one
    row per pod. ``share=False`` computes every cell on its own (brute force). ``samples``
    also keeps each computation's seeded trace (hops) for the HTML report. ``jobs`` > 1 spreads
    the computations over forked processes. ``sim`` itself is never run: cells are computed
    on forks of a pristine simulation of the same world and seed.

    Raises :class:`~k8snet_sim.errors.UnknownEndpoint` for references that name nothing.
    """
    with _long_lived_frozen():
        return _reach(sim, sources, targets, expand_pods, share, samples, jobs)


@contextmanager
def _long_lived_frozen() -> Iterator[None]:
    """Keep the cyclic garbage collector off the world while the matrix is computed.

    A built world is millions of long-lived objects (compiled rules, routes, namespaces). Every
    full collection rescans all of them, and the thousands of short simulations of a report
    trigger many: on a 20-node world that was 60% of the time. ``gc.freeze()`` sets the objects
    that exist now aside (the documented pre-fork idiom, which also keeps forked workers from
    copying pages the collector would touch); they are handed back afterwards unless someone
    else had frozen objects before us.
    """
    mine = gc.get_freeze_count() == 0
    gc.freeze()
    try:
        yield
    finally:
        if mine:
            gc.unfreeze()


def _reach(
    sim: Simulation,
    sources: Sequence[str] | None,
    targets: Sequence[str] | None,
    expand_pods: bool,
    share: bool,
    samples: bool,
    jobs: int,
) -> ReachResult:
    world = sim.world
    pristine = Simulation(world, seed=sim.seed, costs=sim.costs)
    defaults = default_sources(sim)
    known = {s.ref: s for s in defaults}
    picked = _select(defaults, sources, "source", lambda s: s.ref)
    members = [s if isinstance(s, Source) else _canonical_source(sim, s, known) for s in picked]
    members = list(dict.fromkeys(members))
    refs = _select(default_target_refs(sim), targets, "target", lambda r: r)
    columns = []
    for ref in dict.fromkeys(refs):
        try:
            columns.append(_column(sim, ref))
        except UnknownEndpoint:
            if targets is not None and not ref.startswith("http://"):
                raise
            # A default Ingress URL the world cannot route to is left out, not fatal.
    classes = AddressClasses(world)
    comps: list[Computation] = []
    table: list[list[int]] = []
    # What a pod's key would be for a target it is not part of, and its own address.
    own = [world.namespaces[s.ns].primary_address() for s in members]
    # Keys are big nested tuples: number each distinct one once, compare small ints after.
    numbering: dict[Any, int] = {}
    plain = [
        numbering.setdefault(computation_key(world, classes, s, set()), len(numbering))
        for s in members
    ]
    # Across nodes (reach_nodes): off for the brute force, and with samples, whose hops carry
    # values (VXLAN source ports) that a relabelling would not fix.
    symmetry = NodeSymmetry(world, classes) if share and not samples else None
    across = node_places(world, members, symmetry, numbering)
    pods_at = pod_addresses_by_node(world) if symmetry is not None else {}
    mirrors: dict[Any, tuple[int, str]] = {}
    swaps: dict[int, tuple[int, str, str, dict[int, int]]] = {}
    for t, column in enumerate(columns):
        index: dict[Any, int] = {}
        row = []
        addresses = target_addresses(world, column.target, classes)
        if symmetry is not None:
            swap = mirror_column(symmetry, column, t, addresses, pods_at, across, mirrors, members)
            if swap is not None:
                t0, _, _, sigma = swap
                table.append([table[t0][sigma.get(m, m)] for m in range(len(members))])
                swaps[t] = swap
                continue
        involved: set[str] | None = None
        classes_at: dict[str, int] = {}
        if symmetry is not None and nodes_interchangeable_for(world, column.target):
            involved = symmetry.involved(addresses, pods_at)
        for m, src in enumerate(members):
            key: Any = m
            if share:
                key = plain[m] if own[m] not in addresses else ("namespace", src.ns)
                place = across[m]
                if (
                    symmetry is not None
                    and involved is not None
                    and place is not None
                    and place[0] not in involved
                    and own[m] not in addresses
                ):
                    node, shape = place
                    if node not in classes_at:
                        cls = symmetry.node_class(node, involved)
                        classes_at[node] = numbering.setdefault(cls, len(numbering))
                    key = ("across", classes_at[node], shape)
            if key not in index:
                index[key] = len(comps)
                comps.append(Computation(src, t))
            row.append(index[key])
        table.append(row)
    _compute(pristine, comps, columns, samples, jobs)
    scenario = world.info["scenario"]
    result = ReachResult(
        scenario.name,
        world.info["state"].kube_proxy.mode,
        sim.seed,
        [],
        columns,
        members,
        comps,
        table,
        share,
        {n: symmetry.tokens(n) for n in symmetry.nodes} if symmetry is not None else {},
        swaps,
    )
    result.rows = _group_rows(result, expand_pods)
    return result


def _group_rows(result: ReachResult, expand: bool) -> list[SourceRow]:
    """Pods of one workload on one node share a row when their cells match for every target
    (up to their own address and name); otherwise each pod has its own row."""
    groups: dict[tuple[str | None, str | None], list[int]] = {}
    order: list[tuple[str, Any]] = []
    for i, src in enumerate(result.members):
        if src.kind == "pod" and src.owner and not expand:
            key = (src.owner, src.node)
            if key not in groups:
                groups[key] = []
                order.append(("group", key))
            groups[key].append(i)
        else:
            order.append(("one", i))
    rows = []
    for what, key in order:
        if what == "one":
            src = result.members[key]
            rows.append(SourceRow(src.ref, src.kind, src.node, src.owner, (src,)))
            continue
        for part in _split(result, groups[key]):
            srcs = tuple(result.members[i] for i in part)
            label = srcs[0].ref
            if len(srcs) > 1:
                ns_prefix = srcs[0].ref.rsplit("/", 1)[0] + "/"
                label = brace_label(ns_prefix, [s.ref.rsplit("/", 1)[1] for s in srcs])
            rows.append(SourceRow(label, "pod", srcs[0].node, srcs[0].owner, srcs))
    return rows


def _split(result: ReachResult, members: list[int]) -> list[list[int]]:
    """Partition ``members`` into groups whose cells are identical for every target."""
    parts: list[list[int]] = []
    for m in members:
        for part in parts:
            if _same_cells(result, part[0], m):
                part.append(m)
                break
        else:
            parts.append([m])
    return parts


def _same_cells(result: ReachResult, a: int, b: int) -> bool:
    # The same computation answers both the same way; only different ones need a look.
    return all(
        row[a] == row[b] or _normal(result, t, a) == _normal(result, t, b)
        for t, row in enumerate(result.table)
    )


def _normal(result: ReachResult, t: int, m: int) -> Any:
    """A cell with the member's own address and name replaced by placeholders."""
    src = result.members[m]
    anon = Source("{source}", "{source}", "pod", src.node, address="{address}")
    return tuple(
        tuple(sorted(substitute_row(r, src, anon).items(), key=lambda kv: kv[0]))
        for r in result.member_cell(m, t).endpoints
    )
