"""Load a scenario file: YAML with positions, ``--set`` overrides, schema, manifests, checks.

Every problem found is collected and raised at once as one
:class:`~k8snet_sim.errors.ScenarioError` whose diagnostics render as
``file:line:col: dotted.path: message`` plus a hint. Paths inside manifests are the dotted
path from the root of the YAML document in the file named (``spec.ports[0].targetPort`` in a
manifest file, ``manifests[3].spec.ports[0].targetPort`` for an object written inline in the
scenario). A YAML syntax error stops loading of that file (nothing after it can be trusted).

Example
-------
>>> text = '''
... metadata: {name: demo}
... cluster:
...   nodes: [{name: node1, address: 192.168.10.11, subnet: lan}]
... network:
...   subnets: [{name: lan, cidr: 192.168.10.0/24}]
... manifests:
...   - {apiVersion: v1, kind: Service, metadata: {name: web},
...      spec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}}
... '''
>>> scenario = load_scenario_text(text, file="demo.yaml", mode="ipvs")
>>> scenario.name, scenario.mode, [m.key for m in scenario.manifests]
('demo', 'ipvs', ['default/web'])
>>> scenario.locate(("cluster", "nodes", 0, "address"))
('demo.yaml', 4, 34)
>>> try:
...     load_scenario_text(text, file="demo.yaml", overrides=["cluster.cni=flannel"])
... except ScenarioError as err:
...     print(err.render())
--set:1:13: cluster.cni: expected one of 'host-gw' or 'vxlan', got 'flannel'
    hint: use one of the listed values
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from k8snet_sim.errors import Diagnostic, ScenarioError
from k8snet_sim.scenario.manifests import ManifestSet, check_duplicates, parse_document
from k8snet_sim.scenario.modelbase import (
    ValidationError,
    did_you_mean,
    ignored_diagnostic,
    unknown_fields,
    validation_diagnostics,
    without,
)
from k8snet_sim.scenario.overrides import apply_overrides
from k8snet_sim.scenario.refs import RefSyntaxError, parse_ref, unknown_machine
from k8snet_sim.scenario.schema import ClusterSpec, KubeProxySpec, Scenario, ScenarioFile
from k8snet_sim.scenario.topology import check_topology
from k8snet_sim.scenario.yamlpos import (
    YamlDocument,
    YamlPath,
    dotted,
    load_yaml_documents,
    load_yaml_file,
)

__all__ = ["ScenarioError", "load_scenario", "load_scenario_text"]


def load_scenario(
    path: str | Path, *, overrides: Sequence[str] = (), mode: str | None = None
) -> Scenario:
    """Load and validate the scenario at ``path``; manifest files are relative to it.

    ``overrides`` are ``dotted.key=value`` strings (``--set``); ``mode`` replaces
    ``cluster.kubeProxy.mode``. Raises :class:`ScenarioError` with every problem found.
    """
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        reason = err.strerror or str(err)
        raise ScenarioError(
            [Diagnostic(file, 0, 0, "", f"cannot read scenario file: {reason}", "check the path")]
        ) from None
    return load_scenario_text(
        text,
        file=file,
        base_dir=Path(path).parent,
        overrides=overrides,
        mode=mode,
        path=Path(path),
    )


def load_scenario_text(
    text: str,
    *,
    file: str = "<scenario>",
    base_dir: Path | None = None,
    overrides: Sequence[str] = (),
    mode: str | None = None,
    path: Path | None = None,
) -> Scenario:
    """Load a scenario from its text; ``file`` names it in diagnostics, ``base_dir`` anchors
    manifest files (default: the current directory)."""
    docs, problems = load_yaml_documents(text, file)
    if problems:
        raise ScenarioError(problems)
    if len(docs) != 1 or not isinstance(docs[0].data, dict):
        where = docs[1].start if len(docs) > 1 else (docs[0].start if docs else (1, 1))
        raise ScenarioError(
            [
                Diagnostic(
                    file,
                    *where,
                    "",
                    "expected exactly one YAML document holding a mapping",
                    "a scenario is one mapping with metadata, cluster, network, manifests …",
                )
            ]
        )
    doc = docs[0]
    # One override passed as a plain string is one override, not one per character.
    problems.extend(apply_overrides(doc, [overrides] if isinstance(overrides, str) else overrides))
    if mode is not None:
        problems.extend(apply_overrides(doc, [f"cluster.kubeProxy.mode={mode}"], file="--mode"))
        doc.origins[("cluster", "kubeProxy", "mode")] = ("--mode", 1, 1)
    # The scenario's own fields are this simulator's: a key it does not know is a typo (or a
    # field of a newer version), never something to skip silently. Kubernetes objects are
    # another matter: they carry many real fields the simulator has no use for.
    unknown = unknown_fields(ScenarioFile, doc.data)
    problems.extend(_unknown_field(doc, path, model) for path, model in unknown)
    spec: ScenarioFile | None = None
    try:
        spec = ScenarioFile.model_validate(without(doc.data, [path for path, _ in unknown]))
    except ValidationError as err:
        problems.extend(validation_diagnostics(err, doc))
    found = _load_manifests(doc, base_dir)
    problems.extend(found.errors)
    duplicates = check_duplicates(found.manifests)
    problems.extend(duplicates)
    topo_problems, notes = check_topology(doc, found.manifests)
    problems.extend(topo_problems)
    notes = [*found.notes, *notes]
    if spec is None:
        # No Scenario to run the control plane on; nodes, hosts and routers are named in the
        # file itself, so references to them can still be checked in this run.
        problems.extend(_machine_references(doc))
        raise ScenarioError(problems)
    scenario = Scenario(
        path=path,
        name=spec.metadata.name,
        description=spec.metadata.description,
        cluster=spec.cluster,
        network=spec.network,
        load_balancer=spec.load_balancer,
        ingress_controllers=spec.ingress_controllers,
        manifests=found.manifests,
        expect=spec.expect,
        traffic=spec.traffic,
        costs=spec.costs,
        pod_status=spec.pod_status,
        ignored=found.ignored,
        defaulted=[*_cluster_defaults(spec.cluster), *found.defaulted],
        notes=notes,
        document=doc,
    )
    for i, expect in enumerate(scenario.expect):
        for key in expect.when:
            try:
                scenario.value(key)
            except KeyError as err:
                when_path: YamlPath = ("expect", i, "when", key)
                problems.append(
                    Diagnostic(
                        *doc.where(when_path, key=True),
                        dotted(when_path),
                        str(err.args[0]),
                        "write a dotted scenario key such as cluster.kubeProxy.mode",
                    )
                )
    if problems:
        # Every object parsed and none is declared twice: the control plane can still run on
        # this scenario and find its own problems (placement, references) to report at once.
        whole = not found.errors and not duplicates
        raise ScenarioError(problems, partial=scenario if whole else None)
    return scenario


def _machine_references(doc: YamlDocument) -> list[Diagnostic]:
    """References in ``expect:`` and ``traffic:`` to nodes, hosts or routers the file does not
    define, read from the raw document (for a file the schema rejected). A kind whose list
    is malformed is not checked: every reference to it would look unknown."""
    data = doc.data if isinstance(doc.data, dict) else {}

    def names(section: Any, key: str) -> list[str] | None:
        entries = section.get(key) if isinstance(section, dict) else None
        if entries is None:
            return []
        if not isinstance(entries, list) or not all(
            isinstance(e, dict) and isinstance(e.get("name"), str) for e in entries
        ):
            return None
        return [e["name"] for e in entries]

    known = {
        kind: found
        for kind, found in (
            ("node", names(data.get("cluster"), "nodes")),
            ("host", names(data.get("network"), "hosts")),
            ("router", names(data.get("network"), "routers")),
        )
        if found is not None
    }
    out = []
    for section in ("expect", "traffic"):
        entries = data.get(section)
        for i, entry in enumerate(entries if isinstance(entries, list) else []):
            for field in ("from", "to"):
                text = entry.get(field) if isinstance(entry, dict) else None
                if not isinstance(text, str):
                    continue
                try:
                    ref = parse_ref(text)
                except RefSyntaxError:
                    continue  # the schema reported it
                unknown = unknown_machine(ref, known)
                if unknown is not None:
                    out.append(doc.diagnostic((section, i, field), *unknown))
    return out


def _unknown_field(doc: YamlDocument, path: YamlPath, model: type[BaseModel]) -> Diagnostic:
    known = [(f.alias or name) for name, f in model.model_fields.items()]
    return Diagnostic(
        *doc.where(path, key=True),
        dotted(path),
        "unknown field",
        did_you_mean(str(path[-1]), model) or "the fields here are " + ", ".join(known),
    )


def _load_manifests(doc: YamlDocument, base_dir: Path | None) -> ManifestSet:
    out = ManifestSet()
    entries: Any = doc.data.get("manifests") if isinstance(doc.data, dict) else None
    if not isinstance(entries, list):
        return out  # a wrong type was already reported by the schema
    for i, entry in enumerate(entries):
        if isinstance(entry, dict) and "file" in entry and "kind" not in entry:
            _load_manifest_file(doc, i, entry, base_dir, out)
        else:
            parse_document(doc, entry, ("manifests", i), out)
    return out


def _load_manifest_file(
    doc: YamlDocument, i: int, entry: dict[str, Any], base_dir: Path | None, out: ManifestSet
) -> None:
    name = entry["file"]
    if not isinstance(name, str) or not name:
        out.errors.append(
            doc.diagnostic(
                ("manifests", i, "file"),
                f"expected a file name, got {name!r}",
                "write `- {file: manifests/app.yaml}`",
            )
        )
        return
    for key in entry:
        if key != "file":
            out.ignored.append(
                ignored_diagnostic(doc, ("manifests", i, key), ("manifests", i, key))
            )
    path = os.path.normpath(os.path.join(base_dir, name)) if base_dir is not None else name
    if not os.path.isfile(path):
        out.errors.append(
            doc.diagnostic(
                ("manifests", i, "file"),
                f"manifest file not found: {path}",
                "manifest files are relative to the scenario file",
            )
        )
        return
    docs, problems = load_yaml_file(path)
    out.errors.extend(problems)
    for manifest_doc in docs:
        parse_document(manifest_doc, manifest_doc.data, (), out)


def _cluster_defaults(cluster: ClusterSpec) -> list[str]:
    """Scenario-level defaults worth showing (the ranges the control plane allocates from)."""
    out = []
    for name in ("service_cidr", "pod_cidr", "node_port_range", "cni"):
        if name not in cluster.model_fields_set:
            alias = ClusterSpec.model_fields[name].alias or name
            value = getattr(cluster, name)
            shown = f"{value[0]}-{value[1]}" if isinstance(value, tuple) else value
            out.append(f"cluster.{alias} = {shown}")
    proxy: KubeProxySpec = cluster.kube_proxy
    if "kube_proxy" not in cluster.model_fields_set or "mode" not in proxy.model_fields_set:
        out.append(f"cluster.kubeProxy.mode = {proxy.mode}")
    return out
