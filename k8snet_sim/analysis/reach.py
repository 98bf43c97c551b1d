"""reach(): who can reach what — and if not, why not — for a whole scenario at once.

Every cell of the matrix is one question "can SOURCE open a connection to TARGET?", answered
by :func:`~k8snet_sim.analysis.trace.possible_endpoints` on forks of a *pristine* simulation of
the scenario: the same datapath as ``trace``, over every branch of the random choices, so a cell
is ``reachable`` (every possible endpoint answers), ``unreachable`` (none does) or ``partial``
(k of n), and each failing branch carries the reason its mechanism gave.

Sharing computations. Two sources may share one computation for a target when nothing the
datapath can observe tells them apart (:func:`computation_key`): the same
namespace (a node and its hostNetwork pods), or two pods on the same node whose namespaces
have the same shape, whose addresses fall in the same prefixes of every route, rule and
Service field, and neither of which is the target or one of its endpoints (a pod that backs the
target is masqueraded on hairpin, so it always gets its own computation). The member's answer
is the representative's with the representative's address and name replaced by its own; a
test compares this with the brute-force matrix (``share=False``). A *row* groups the pods of
one workload on one node only when their cells are identical for every target; otherwise the
group is split.

Example
-------
>>> status_of([{"reachable": True}, {"reachable": False}])
'partial'
>>> brace_label("pod/default/", ["web-0", "web-1", "web-3"])
'pod/default/web-{0,1,3}'
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from k8snet_sim.analysis.targets import Target, resolve_source, resolve_target
from k8snet_sim.analysis.trace import possible_endpoints, trace
from k8snet_sim.errors import UnknownEndpoint
from k8snet_sim.net.addr import Cidr, ip, ip_str
from k8snet_sim.net.packet import PROTO_NUMBERS
from k8snet_sim.scenario.refs import RefSyntaxError, parse_ref
from k8snet_sim.sim.simulation import Simulation

SYMBOLS = {"reachable": "✓", "partial": "◐", "unreachable": "✗"}
PROTO_NAMES = {v: k.upper() for k, v in PROTO_NUMBERS.items()}


def status_of(rows: Sequence[dict[str, Any]]) -> str:
    """``reachable`` when every possible-endpoint row answers, ``unreachable`` when none does."""
    ok = sum(1 for r in rows if r["reachable"])
    return "reachable" if ok == len(rows) and rows else "unreachable" if not ok else "partial"


def brace_label(prefix: str, names: Sequence[str]) -> str:
    """``prefix`` + the names, their common stem written once: ``web-{0,1,3}``."""
    if len(names) == 1:
        return prefix + names[0]
    stem = os.path.commonprefix(list(names))
    tails = [n[len(stem):] for n in names]
    shown = tails if len(tails) <= 4 else [*tails[:3], "…", tails[-1]]
    return f"{prefix}{stem}{{{','.join(shown)}}}"


# ---------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Source:
    """One source: a pod, node, outside host or router."""

    ref: str
    ns: str  # the network namespace it sends from (a hostNetwork pod: its node's)
    kind: str
    node: str | None = None
    owner: str | None = None  # "Deployment/web" (pods)
    address: str | None = None


@dataclass(frozen=True)
class SourceRow:
    """A row of the matrix: one source, or pods of one workload on one node with identical
    cells (``members``; the cells shown are the first member's)."""

    label: str
    kind: str
    node: str | None
    owner: str | None
    members: tuple[Source, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.label, "kind": self.kind, "node": self.node, "owner": self.owner,
                "members": [m.ref for m in self.members],
                "addresses": [m.address for m in self.members]}


@dataclass(frozen=True)
class TargetColumn:
    """A column: a Service frontend (or any target reference given)."""

    ref: str
    kind: str
    address: str
    protocol: str
    service: str | None
    target: Target = field(compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.ref, "kind": self.kind, "address": self.address,
                "protocol": self.protocol, "service": self.service}


@dataclass(frozen=True)
class Cell:
    """One answer: ``source`` (a row label or member ref) → ``target``."""

    source: str
    target: str
    status: str
    endpoints: tuple[dict[str, Any], ...]  # the possible-endpoint rows, one per branch outcome
    computed_from: str  # the source whose computation this is (itself, or an equivalent one)
    sample: dict[str, Any] | None = None  # the seeded trace (hops), when samples were asked for

    @property
    def symbol(self) -> str:
        return SYMBOLS[self.status]

    @property
    def reachable(self) -> int:
        return sum(1 for r in self.endpoints if r["reachable"])

    @property
    def total(self) -> int:
        return len(self.endpoints)

    @property
    def probability(self) -> float:
        """Probability that a new connection completes."""
        return round(sum(r["probability"] for r in self.endpoints if r["reachable"]), 10)

    @property
    def failures(self) -> list[tuple[str, str]]:
        """(disposition, reason) of each failing branch outcome, without repeats."""
        return list(dict.fromkeys((r["disposition"], r["reason"]) for r in self.endpoints
                                  if not r["reachable"]))

    @property
    def source_seen(self) -> list[str]:
        return sorted({r["sourceSeenByBackend"] for r in self.endpoints
                       if r["reachable"] and r.get("sourceSeenByBackend")})

    def verdict(self) -> str:
        """``reachable``, ``partial (1/3, REPLY_LOST)``, ``unreachable (REJECTED)``."""
        if self.status == "reachable":
            return "reachable"
        kinds = ", ".join(sorted({d for d, _ in self.failures}))
        if self.status == "partial":
            return f"partial ({self.reachable}/{self.total}, {kinds})"
        return f"unreachable ({kinds})"

    def to_dict(self, reason_ids: dict[tuple[str, str], int] | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "from": self.source, "to": self.target, "status": self.status,
            "reachable": self.reachable, "total": self.total, "probability": self.probability,
            "sourceSeenByBackend": self.source_seen, "endpoints": list(self.endpoints),
            "computedFrom": self.computed_from,
        }
        if reason_ids is not None:
            data["reasons"] = [reason_ids[f] for f in self.failures]
        if self.sample is not None:
            data["sample"] = self.sample
        return data


@dataclass
class _Computation:
    rep: Source
    target: int
    rows: tuple[dict[str, Any], ...] = ()
    sample: dict[str, Any] | None = None


# ---------------------------------------------------------------------------- result


@dataclass
class ReachResult:
    """The matrix. ``rows`` × ``targets``; :meth:`cell` and :attr:`cells` give the answers."""

    scenario: str
    mode: str
    seed: int
    rows: list[SourceRow]
    targets: list[TargetColumn]
    members: list[Source]
    computations: list[_Computation] = field(repr=False)
    table: list[list[int]] = field(repr=False)  # [target][member] -> computation index
    shared: bool = True

    def member_cell(self, member: int | str, target: int | str) -> Cell:
        """The cell of one member source (a pod of a grouped row too)."""
        m = member if isinstance(member, int) else self._member_index(member)
        t = target if isinstance(target, int) else self._target_index(target)
        comp = self.computations[self.table[t][m]]
        src = self.members[m]
        rows = tuple(_substitute_row(r, comp.rep, src) for r in comp.rows)
        sample = comp.sample
        if sample is not None and comp.rep != src:
            sample = _substitute_obj(sample, comp.rep, src)
        return Cell(src.ref, self.targets[t].ref, status_of(rows), rows, comp.rep.ref, sample)

    def cell(self, row: int | str, target: int | str) -> Cell:
        """The cell of a row (by index, label, or the ref of one of its members)."""
        r = self.rows[row] if isinstance(row, int) else self._row(row)
        inner = self.member_cell(r.members[0].ref, target)
        return Cell(r.label, inner.target, inner.status, inner.endpoints, inner.computed_from,
                    inner.sample)

    def iter_cells(self) -> Iterator[Cell]:
        """Row-major, without building the whole list (large matrices)."""
        for i in range(len(self.rows)):
            for t in range(len(self.targets)):
                yield self.cell(i, t)

    @property
    def cells(self) -> list[Cell]:
        return list(self.iter_cells())

    def reasons(self) -> list[tuple[str, str]]:
        """Every distinct (disposition, reason) of the matrix, in order of first appearance;
        reason *n* in the reports is ``reasons()[n - 1]``."""
        seen: dict[tuple[str, str], None] = {}
        for c in self.iter_cells():
            for f in c.failures:
                seen.setdefault(f, None)
        return list(seen)

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(SYMBOLS, 0)
        for i, row in enumerate(self.rows):
            m = self._member_index(row.members[0].ref)
            for t in range(len(self.targets)):
                out[status_of(self.computations[self.table[t][m]].rows)] += 1
        return out

    def summary(self) -> str:
        c = self.counts()
        return (f"{self.scenario} ({self.mode}, seed {self.seed}): {len(self.rows)} sources × "
                f"{len(self.targets)} targets — {c['reachable']} reachable, {c['partial']} "
                f"partial, {c['unreachable']} unreachable ({len(self.computations)} "
                "computations)")

    def to_dict(self) -> dict[str, Any]:
        reasons = self.reasons()
        ids = {r: i + 1 for i, r in enumerate(reasons)}
        return {
            "format": "k8snet-sim/reach/v1", "scenario": self.scenario, "mode": self.mode,
            "seed": self.seed, "summary": self.summary(), "counts": self.counts(),
            "computations": len(self.computations), "shared": self.shared,
            "sources": [r.to_dict() for r in self.rows],
            "targets": [t.to_dict() for t in self.targets],
            "reasons": [{"id": ids[r], "disposition": r[0], "text": r[1]} for r in reasons],
            "cells": [c.to_dict(ids) for c in self.iter_cells()],
        }

    def _repr_html_(self) -> str:
        from k8snet_sim.report.reach_html import matrix_fragment

        return matrix_fragment(self)

    def __str__(self) -> str:
        return self.summary()

    def _row(self, ref: str) -> SourceRow:
        for r in self.rows:
            if r.label == ref or any(m.ref == ref for m in r.members):
                return r
        raise UnknownEndpoint(ref, hint="not a source of this reachability result")

    def _member_index(self, ref: str) -> int:
        index = self.__dict__.setdefault("_members_by_ref",
                                         {m.ref: i for i, m in enumerate(self.members)})
        if ref not in index:
            raise UnknownEndpoint(ref, hint="not a source of this reachability result")
        return int(index[ref])

    def _target_index(self, ref: str) -> int:
        for i, t in enumerate(self.targets):
            if t.ref == ref:
                return i
        raise UnknownEndpoint(ref, hint="not a target of this reachability result")


# ---------------------------------------------------------------------------- substitution


def _pattern(token: str) -> re.Pattern[str]:
    # Whole tokens only: 10.244.1.2 must not match inside 10.244.1.23, web-1 not inside web-10.
    return re.compile(rf"(?<![\w.\-/]){re.escape(token)}(?![\w\-]|\.\w)")


def _replace(text: str, old: Source, new: Source) -> str:
    if old.address and new.address and old.address in text:
        text = _pattern(old.address).sub(new.address, text)
    if old.ref in text:
        text = _pattern(old.ref).sub(new.ref, text)
    if old.ns != old.ref and old.ns in text and old.ns != new.ns:
        text = _pattern(old.ns).sub(new.ns, text)
    return text


def _substitute_row(row: dict[str, Any], old: Source, new: Source) -> dict[str, Any]:
    if old == new:
        return row
    out = dict(row)
    for key in ("reason", "sourceSeenByBackend"):
        if isinstance(out.get(key), str):
            out[key] = _replace(out[key], old, new)
    return out


def _substitute_obj(obj: Any, old: Source, new: Source) -> Any:
    if isinstance(obj, str):
        return _replace(obj, old, new)
    if isinstance(obj, list):
        return [_substitute_obj(x, old, new) for x in obj]
    if isinstance(obj, dict):
        return {k: _substitute_obj(v, old, new) for k, v in obj.items()}
    return obj


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
        for name, ns in world.namespaces.items():
            if ns.kind == kind:
                address = ns.primary_address()
                out.append(Source(name, name, kind, ns.labels.get("node"), None,
                                  ip_str(address) if address is not None else None))
    return out


def default_target_refs(sim: Simulation) -> list[str]:
    """Every Service frontend: ClusterIP ports, NodePorts on each node, LoadBalancer IPs,
    external IPs, then Ingress URLs (when the world can resolve them)."""
    state = sim.world.info["state"]
    services = [s for s in state.services if s.type != "ExternalName" and s.ports]
    refs = [f"service/{s.key}:{p.port}" for s in services if s.cluster_ip for p in s.ports]
    refs += [f"nodeport/{n.name}/{s.key}:{p.port}" for s in services for p in s.ports
             if p.node_port for n in state.nodes]
    refs += [f"loadbalancer/{s.key}:{p.port}" for s in services for p in s.ports
             if s.load_balancer_ips]
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
    return TargetColumn(ref, target.kind, target.address, PROTO_NAMES.get(target.proto, "TCP"),
                        target.service.key if target.service else None, target)


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
    return Source(ref, ns, ref.split("/", 1)[0], None, None,
                  ip_str(address) if address is not None else None)



# ---------------------------------------------------------------------------- equivalence

_ADDRESS = re.compile(r"(?<![\d.])(\d{1,3}(?:\.\d{1,3}){3})(?:/(\d{1,2}))?(?![\d.]*\d)")


class AddressClasses:
    """Which prefixes of the world's configuration contain an address: every route, every
    interface network, the cluster's CIDRs and Service source ranges, and every address or
    prefix written in a node's kube-proxy configuration — except the endpoint addresses
    kube-proxy writes only inside that endpoint's own chains (the hairpin masquerade match),
    which :func:`computation_key` handles per target instead."""

    def __init__(self, world: Any) -> None:
        state = world.info["state"]
        endpoint_ips = {ip(e.ip) for eps in state.endpoints.values() for e in eps}
        found: set[Cidr] = set()
        for ns in world.namespaces.values():
            found.update(r.dest for r in ns.routes.routes())
            for iface in ns.interfaces.values():
                found.update(Cidr(a & Cidr(0, p).mask, p) for a, p in iface.addresses if p < 32)
        proxy = state.kube_proxy
        texts = [state.pod_cidr, state.service_cidr, proxy.cluster_cidr or "",
                 *proxy.nodeport_addresses, *(n.pod_cidr for n in state.nodes),
                 *(r for s in state.services for r in s.load_balancer_source_ranges)]
        for configs in world.info.get("rules", {}).values():
            texts.extend(str(v) for v in configs.values())
        for text in texts:
            for address, prefix in _ADDRESS.findall(text):
                try:
                    cidr = Cidr.parse(f"{address}/{prefix or 32}")
                except ValueError:
                    continue
                if cidr.prefix < 32 or cidr.network not in endpoint_ips:
                    found.add(cidr)
        self._by_len: dict[int, set[int]] = {}
        for cidr in found:
            self._by_len.setdefault(cidr.prefix, set()).add(cidr.network)
        self._cache: dict[str, Any] = {}
        policies = world.info["scenario"].objects("NetworkPolicy")
        self._labels = {f"pod/{p.key}": (p.namespace, tuple(sorted(p.labels.items())))
                        for p in state.pods} if policies else {}

    def of(self, address: int) -> frozenset[tuple[int, int]]:
        """The (prefix length, network) of every known prefix containing ``address``."""
        return frozenset((n, address & Cidr(0, n).mask) for n, nets in self._by_len.items()
                         if address & Cidr(0, n).mask in nets)

    def pod_key(self, world: Any, ns_name: str) -> tuple[Any, ...]:
        """Everything about a pod namespace the datapath can see, its own address aside."""
        key = self._cache.get(ns_name)
        if key is None:
            ns = world.namespaces[ns_name]
            own = ns.primary_address()

            def rel(a: int | None) -> Any:
                return "self" if a is not None and a == own else a

            shape = (
                tuple((i.name, i.kind, i.mtu, i.segment, tuple((rel(a), p) for a, p in i.addresses))
                      for i in ns.interfaces.values()),
                tuple(sorted((r.dest.prefix, r.dest.network, r.dev, rel(r.via), r.kind, r.onlink,
                              rel(r.src)) for r in ns.routes.routes())),
                tuple(ns.stack.names()), ns.ip_forward, ns.martian_check, ns.conntrack_max,
            )
            key = self._cache[ns_name] = ("pod", ns.labels.get("node"), shape,
                                          self.of(own or 0), self._labels.get(ns_name))
        return key


def _target_addresses(world: Any, target: Target) -> set[int]:
    """The target's own address and every endpoint behind it: a source with one of these
    addresses is seen differently by the datapath (local delivery, hairpin masquerade)."""
    state = world.info["state"]
    out = {target.ip}
    services = {target.service.key} if target.service else set()
    for svc in state.services:
        addresses = {svc.cluster_ip, *svc.external_ips, *svc.load_balancer_ips}
        if ip_str(target.ip) in addresses or any(p.node_port == target.port for p in svc.ports):
            services.add(svc.key)
    if target.kind == "http":
        build = world.info.get("cluster")
        for ing in getattr(build, "ingresses", ()):
            services.update(r.service for r in ing.routes)
            if ing.default_backend:
                services.add(ing.default_backend[0])
    for (key, _), eps in state.endpoints.items():
        if key in services:
            out.update(ip(e.ip) for e in eps)
    return out


def computation_key(world: Any, classes: AddressClasses, source: Source,
                    addresses: set[int]) -> tuple[Any, ...]:
    """Sources with equal keys get the same answer for a target (up to their own address and
    name); ``addresses`` are the target's :func:`_target_addresses`."""
    ns = world.namespaces[source.ns]
    own = ns.primary_address()
    if ns.kind != "pod" or own is None or own in addresses:
        return ("namespace", source.ns)
    return classes.pod_key(world, source.ns)


# ---------------------------------------------------------------------------- computing


def _compute_one(pristine: Simulation, rep: Source, column: TargetColumn,
                 samples: bool) -> tuple[tuple[dict[str, Any], ...], dict[str, Any] | None]:
    rows = tuple(possible_endpoints(pristine, rep.ns, column.target, settle=0.0))
    sample = None
    if samples:
        # The seeded connection, exactly as `k8snet-sim trace` shows it for this seed.
        res = trace(pristine.fork(), rep.ref, column.ref, explore_all=False)
        keep = ("t", "node", "action", "packet", "rules", "rewrites", "verdict")
        sample = {"disposition": res.disposition, "reason": res.reason,
                  "endpoint": res.endpoint, "sourceSeenByBackend": res.source_seen_by_backend,
                  "hops": [{k: h.to_dict()[k] for k in keep} for h in res.hops],
                  "replyHops": [{k: h.to_dict()[k] for k in keep} for h in res.reply_hops]}
    return rows, sample


def _compute(pristine: Simulation, comps: list[_Computation], targets: list[TargetColumn],
             samples: bool, jobs: int) -> None:
    """Fill every computation; with ``jobs`` > 1, in forked worker processes (the world is
    shared copy-on-write; results come back pickled and are placed by index, so the outcome
    does not depend on scheduling)."""
    jobs = max(1, min(jobs, len(comps)))
    if jobs == 1 or not hasattr(os, "fork"):
        for c in comps:
            c.rows, c.sample = _compute_one(pristine, c.rep, targets[c.target], samples)
        return
    with tempfile.TemporaryDirectory(prefix="k8snet-reach-") as tmp:
        children = []
        for j in range(1, jobs):
            path = os.path.join(tmp, f"{j}.pickle")
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                code = 0
                try:
                    out: Any = [_compute_one(pristine, c.rep, targets[c.target], samples)
                                for c in comps[j::jobs]]
                except BaseException as err:  # noqa: BLE001 - handed to the parent
                    out, code = err, 1
                with open(path, "wb") as fh:
                    pickle.dump(out, fh, protocol=pickle.HIGHEST_PROTOCOL)
                os._exit(code)
            children.append((pid, path, j))
        for c in comps[0::jobs]:
            c.rows, c.sample = _compute_one(pristine, c.rep, targets[c.target], samples)
        for pid, path, j in children:
            os.waitpid(pid, 0)
            with open(path, "rb") as fh:
                out = pickle.load(fh)  # noqa: S301 - our own child's file
            if isinstance(out, BaseException):
                raise out
            for c, (rows, sample) in zip(comps[j::jobs], out, strict=True):
                c.rows, c.sample = rows, sample


def reach(sim: Simulation, sources: Sequence[str] | None = None,
          targets: Sequence[str] | None = None, *, expand_pods: bool = False,
          share: bool = True, samples: bool = False, jobs: int = 1) -> ReachResult:
    """The reachability matrix of ``sim``'s scenario.

    ``sources`` / ``targets``: references or glob patterns (``pod/default/*``) over the
    defaults (:func:`default_sources`, :func:`default_target_refs`). ``expand_pods`` gives one
    row per pod. ``share=False`` computes every cell on its own (brute force). ``samples``
    also keeps each computation's seeded trace (hops) for the HTML report. ``jobs`` > 1 spreads
    the computations over forked processes. ``sim`` itself is never run: cells are computed
    on forks of a pristine simulation of the same world and seed.

    Raises :class:`~k8snet_sim.errors.UnknownEndpoint` for references that name nothing.
    """
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
    comps: list[_Computation] = []
    table: list[list[int]] = []
    # What a pod's key would be for a target it is not part of, and its own address.
    own = [world.namespaces[s.ns].primary_address() for s in members]
    plain = [computation_key(world, classes, s, set()) for s in members]
    for t, column in enumerate(columns):
        index: dict[Any, int] = {}
        row = []
        addresses = _target_addresses(world, column.target)
        for m, src in enumerate(members):
            key: Any = m
            if share:
                key = plain[m] if own[m] not in addresses else ("namespace", src.ns)
            if key not in index:
                index[key] = len(comps)
                comps.append(_Computation(src, t))
            row.append(index[key])
        table.append(row)
    _compute(pristine, comps, columns, samples, jobs)
    scenario = world.info["scenario"]
    result = ReachResult(scenario.name, world.info["state"].kube_proxy.mode, sim.seed, [],
                         columns, members, comps, table, share)
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
    parts: list[list[int]] = []
    signatures: list[tuple[Any, ...]] = []
    for m in members:
        sig = tuple(_normal(result, t, m) for t in range(len(result.targets)))
        for i, other in enumerate(signatures):
            if other == sig:
                parts[i].append(m)
                break
        else:
            signatures.append(sig)
            parts.append([m])
    return parts


def _normal(result: ReachResult, t: int, m: int) -> Any:
    """A cell with the member's own address and name replaced by placeholders."""
    comp = result.computations[result.table[t][m]]
    anon = Source("{source}", "{source}", "pod", address="{address}")
    return tuple(tuple(sorted(_substitute_row(r, comp.rep, anon).items(), key=lambda kv: kv[0]))
                 for r in comp.rows)




# ---------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class CellChange:
    """One source → target whose answer differs between two matrices."""

    source: str
    target: str
    kind: str  # "verdict" | "source" (same verdict, the backend sees another address)
    before: str
    after: str
    why: str = ""

    def text(self, before: str, after: str) -> str:
        head = f"{self.source} → {self.target}: "
        if self.kind == "source":
            line = (f"{self.before} under {before}, {self.after} under {after}")
        else:
            line = f"{self.before} under {before}, {self.after} under {after}"
        return head + line + (f" — {self.why}" if self.why else "")


@dataclass
class ReachDiff:
    """What changed from one matrix (``before``) to another (``after``)."""

    before: str
    after: str
    changes: list[CellChange]
    compared: int
    only_before: list[str] = field(default_factory=list)
    only_after: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.changes or self.only_before or self.only_after)

    def lines(self) -> list[str]:
        out = [c.text(self.before, self.after) for c in self.changes]
        out += [f"only under {self.before}: {r}" for r in self.only_before]
        out += [f"only under {self.after}: {r}" for r in self.only_after]
        return out

    def summary(self) -> str:
        if not self:
            return f"{self.before} vs {self.after}: no differences in {self.compared} cells"
        return (f"{self.before} vs {self.after}: {len(self.changes)} of {self.compared} cells "
                f"changed" + (f", {len(self.only_before) + len(self.only_after)} sources or "
                              "targets on one side only" if self.only_before or self.only_after
                              else ""))

    def to_dict(self) -> dict[str, Any]:
        return {"before": self.before, "after": self.after, "compared": self.compared,
                "summary": self.summary(), "onlyBefore": self.only_before,
                "onlyAfter": self.only_after,
                "changes": [{"from": c.source, "to": c.target, "kind": c.kind,
                             "before": c.before, "after": c.after, "why": c.why,
                             "text": c.text(self.before, self.after)} for c in self.changes]}


def _change(a: Cell, b: Cell, labels: tuple[str, str]) -> tuple[str, str, str, str] | None:
    if a.verdict() != b.verdict():
        side, cell = (labels[1], b) if b.failures else (labels[0], a)
        disposition, reason = cell.failures[0]
        return "verdict", a.verdict(), b.verdict(), f"{side}: {disposition}: {reason}"
    if a.source_seen != b.source_seen:
        def seen(c: Cell) -> str:
            return f"{c.verdict()}, backend sees {' or '.join(c.source_seen) or 'nothing'}"

        return "source", seen(a), seen(b), ""
    return None


def compare_reach(before: ReachResult, after: ReachResult, *,
                  labels: tuple[str, str] | None = None) -> ReachDiff:
    """Every cell whose verdict (or the source address its backends see) differs, for the
    sources and targets both matrices have. Pods are compared one by one and reported by
    their row in ``before`` when the whole row changed the same way."""
    if labels is None:
        same_mode = before.mode == after.mode
        labels = ((before.scenario, after.scenario) if same_mode else (before.mode, after.mode))
    a_members = {m.ref for m in before.members}
    b_members = {m.ref for m in after.members}
    a_targets = {t.ref for t in before.targets}
    b_targets = {t.ref for t in after.targets}
    targets = [t.ref for t in before.targets if t.ref in b_targets]
    changes: list[CellChange] = []
    compared = 0
    for row in before.rows:
        members = [m.ref for m in row.members if m.ref in b_members]
        for target in targets:
            found = []
            for ref in members:
                compared += 1
                got = _change(before.member_cell(ref, target), after.member_cell(ref, target),
                              labels)
                if got is not None:
                    found.append((ref, got))
            whole = len(found) == len(row.members) > 1 and len({g[:3] for _, g in found}) == 1
            if whole:
                changes.append(CellChange(row.label, target, *found[0][1]))
            else:
                changes.extend(CellChange(ref, target, *g) for ref, g in found)
    only_a = sorted(a_members - b_members) + sorted(a_targets - b_targets)
    only_b = sorted(b_members - a_members) + sorted(b_targets - a_targets)
    return ReachDiff(labels[0], labels[1], changes, compared, only_a, only_b)
