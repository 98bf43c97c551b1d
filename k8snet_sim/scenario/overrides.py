"""``--set dotted.key=value`` overrides, applied to the raw scenario before validation.

Keys are checked against the scenario schema (so a typo is an error, not a silently ignored
field); inside free-form parts (``manifests``, ``costs``) any key is accepted. Numeric segments
index lists (``network.routers.0.routes=[]``); the index one past the end appends. Values are
read as YAML flow values with the safe loader (``true``, ``30080``, ``[a, b]``,
``{pod: default/web-0, ready: false}``).
A replaced subtree remembers that it came from ``--set`` so that later errors point there:
file ``--set``, line = which override (1-based), column = where in that text.

Example
-------
>>> from k8snet_sim.scenario.yamlpos import load_yaml_documents
>>> [doc], _ = load_yaml_documents("cluster: {kubeProxy: {mode: iptables}}\\n", "s.yaml")
>>> apply_overrides(doc, ["cluster.kubeProxy.mode=ipvs"]), doc.data
([], {'cluster': {'kubeProxy': {'mode': 'ipvs'}}})
>>> [d.render() for d in apply_overrides(doc, ["cluster.kubeProxi.mode=ipvs"])]
['--set:1:9: cluster.kubeProxi: unknown field kubeProxi\\n    hint: did you mean `kubeProxy`?']
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Sequence
from typing import Any

import yaml
from pydantic import BaseModel

from k8snet_sim.errors import Diagnostic
from k8snet_sim.scenario.modelbase import did_you_mean
from k8snet_sim.scenario.schema import ScenarioFile
from k8snet_sim.scenario.yamlpos import YamlDocument, YamlPath, dotted

SET_FILE = "--set"


def _step(annotation: Any) -> tuple[str, Any]:
    """What an annotation holds: ("model", cls), ("list", item annotation) or ("free", None)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _step(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if arg is not type(None):
                return _step(arg)
    if origin is list:
        return ("list", typing.get_args(annotation)[0])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return ("model", annotation)
    return ("free", None)


def _parse_key(text: str) -> list[tuple[str | int, int]]:
    """Segments with their 1-based column in the override text."""
    out: list[tuple[str | int, int]] = []
    col = 1
    # ``a[1].b`` is accepted as ``a.1.b`` (the path style of diagnostics).
    text = re.sub(r"\[(\d+)\]", r".\1", text)
    for part in text.split("."):
        out.append((int(part) if part.isdigit() else part, col))
        col += len(part) + 1
    return out


def apply_overrides(
    doc: YamlDocument, overrides: Sequence[str], *, file: str = SET_FILE
) -> list[Diagnostic]:
    """Apply ``overrides`` in order to ``doc.data`` (in place); return problems found."""
    problems: list[Diagnostic] = []
    for number, text in enumerate(overrides, start=1):
        problem = _apply_one(doc, text, number, file)
        if problem is not None:
            problems.append(problem)
    return problems


def _apply_one(doc: YamlDocument, text: str, number: int, file: str) -> Diagnostic | None:
    def bad(col: int, path: YamlPath, message: str, hint: str = "") -> Diagnostic:
        return Diagnostic(file, number, col, dotted(path), message, hint)

    key, eq, raw = text.partition("=")
    if not eq or not key.strip():
        return bad(
            1, (), f"expected dotted.key=value, got {text!r}", "e.g. --set cluster.cni=vxlan"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        return bad(len(key) + 2, (), f"cannot read the value {raw!r}: {err}", "quote the value")
    segments = _parse_key(key.strip())
    if not isinstance(doc.data, dict):
        doc.data = {}
    container: Any = doc.data
    shape: tuple[str, Any] = ("model", ScenarioFile)
    path: YamlPath = ()
    for i, (segment, col) in enumerate(segments):
        last = i == len(segments) - 1
        kind, detail = shape
        if kind == "model":
            model: type[BaseModel] = detail
            fields = {(f.alias or n): f for n, f in model.model_fields.items()}
            if not isinstance(segment, str) or segment not in fields:
                hint = did_you_mean(str(segment), model) or "known fields: " + ", ".join(fields)
                return bad(col, (*path, segment), f"unknown field {segment}", hint)
            shape = _step(fields[segment].annotation)
        elif kind == "list":
            shape = _step(detail)
        if isinstance(container, list):
            size = len(container)
            # The index one past the end appends, as the last segment: `routes[1]={…}` adds a
            # second route.
            if not isinstance(segment, int) or segment > size or (segment == size and not last):
                return bad(
                    col,
                    (*path, segment),
                    f"expected a list index up to {size}, got {segment!r}",
                    (
                        f"the list has {size} item(s): indexes 0–{size - 1} replace one, {size} "
                        "appends"
                    )
                    if size
                    else "the list is empty: index 0 appends",
                )
            if segment == size:
                container.append(None)
        elif isinstance(container, dict):
            if kind == "list":
                return bad(
                    col,
                    (*path, segment),
                    f"expected a list index, got {segment!r}",
                    "lists are indexed by number: network.routers.0.routes=[]",
                )
            if not last and not isinstance(container.get(segment), dict | list):
                # A number next (`podStatus.0=…`) starts a list the file does not have yet.
                container[segment] = [] if isinstance(segments[i + 1][0], int) else {}
        else:
            return bad(
                col,
                path,
                f"cannot set {segment!r} inside a {type(container).__name__}",
                f"set {dotted(path)} itself",
            )
        path = (*path, segment)
        if last:
            container[segment] = value
            doc.origins[path] = (file, number, len(key) + 2)
        else:
            container = container[segment]
    return None
