"""YAML loading that remembers where every value came from (file, line, column, path).

Only ``yaml.SafeLoader`` is used: the text is *composed* into a node tree by the safe loader and
each scalar is constructed with ``SafeConstructor``, so tags such as ``!!python/object`` are
refused exactly as ``yaml.safe_load`` refuses them. While converting nodes to plain Python
values we record the (1-based) line and column of every value and every mapping key, keyed by
its path (a tuple of mapping keys and list indexes). Multi-document files give one
:class:`YamlDocument` per document.

Example
-------
>>> docs, problems = load_yaml_documents("a: 1\\nb:\\n  - x\\n  - {c: 2}\\n", "demo.yaml")
>>> docs[0].data
{'a': 1, 'b': ['x', {'c': 2}]}
>>> docs[0].locate(("b", 1, "c")), problems
((4, 9), [])
>>> dotted(("spec", "ports", 0, "targetPort"))
'spec.ports[0].targetPort'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from k8snet_sim.errors import Diagnostic

YamlPath = tuple[str | int, ...]
Position = tuple[int, int]

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"


def dotted(path: YamlPath) -> str:
    """Render a path the way diagnostics print it: ``cluster.nodes[1].address``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


@dataclass
class YamlDocument:
    """One YAML document: its plain value plus the position of every value and key in it."""

    file: str
    data: Any
    index: int = 0  # position of the document in a multi-document file
    start: Position = (1, 1)
    values: dict[YamlPath, Position] = field(default_factory=dict)
    keys: dict[YamlPath, Position] = field(default_factory=dict)
    # Subtrees replaced from elsewhere (``--set``): path -> (file, line, col) of the new value.
    origins: dict[YamlPath, tuple[str, int, int]] = field(default_factory=dict)

    def locate(self, path: YamlPath) -> Position:
        """Position of the value at ``path``; for a missing path, its nearest existing ancestor.

        A missing field is reported where its parent mapping starts, which is where the user
        has to add it.
        """
        probe = tuple(path)
        while probe:
            if probe in self.values:
                return self.values[probe]
            probe = probe[:-1]
        return self.values.get((), self.start)

    def locate_key(self, path: YamlPath) -> Position:
        """Position of the mapping key that introduces ``path`` (falls back to :meth:`locate`)."""
        return self.keys.get(tuple(path)) or self.locate(path)

    def where(self, path: YamlPath, *, key: bool = False) -> tuple[str, int, int]:
        """File, line and column of ``path``, following subtrees overridden from elsewhere."""
        path = tuple(path)
        for n in range(len(path), -1, -1):
            if path[:n] in self.origins:
                return self.origins[path[:n]]
        line, col = self.locate_key(path) if key else self.locate(path)
        return self.file, line, col

    def diagnostic(
        self, path: YamlPath, message: str, hint: str = "", *, shown: YamlPath | None = None
    ) -> Diagnostic:
        """A :class:`Diagnostic` at ``path``; ``shown`` is the path printed (default ``path``)."""
        file, line, col = self.where(path)
        return Diagnostic(file, line, col, dotted(path if shown is None else shown), message, hint)


def load_yaml_documents(text: str, file: str) -> tuple[list[YamlDocument], list[Diagnostic]]:
    """Parse every document of ``text`` safely. Problems come back as diagnostics, never raised.

    Empty documents (``---`` with nothing after it) are skipped.
    """
    # The C (libyaml) safe loader when available: the same nodes and marks, several times
    # faster on big scenarios. Its error messages are terser, so a text with problems is
    # parsed again by the pure-Python safe loader, whose messages say what it found.
    fast = getattr(yaml, "CSafeLoader", None)
    if fast is not None:
        docs, problems = _load_documents(text, file, fast)
        if not problems:
            return docs, problems
    return _load_documents(text, file, yaml.SafeLoader)


def _load_documents(
    text: str, file: str, loader_class: Any
) -> tuple[list[YamlDocument], list[Diagnostic]]:
    problems: list[Diagnostic] = []
    docs: list[YamlDocument] = []
    loader = loader_class(text)
    try:
        index = 0
        while loader.check_node():
            node = loader.get_node()
            if node is None:  # pragma: no cover - check_node guarantees a node
                break
            doc = YamlDocument(file, None, index, _pos(node))
            builder = _Builder(doc, problems)
            try:
                doc.data = builder.build(node, ())
            except ConstructorError as err:
                problems.append(_yaml_error(err, file))
            else:
                if doc.data is not None:
                    docs.append(doc)
            index += 1
    except yaml.MarkedYAMLError as err:
        problems.append(_yaml_error(err, file))
    except yaml.YAMLError as err:  # pragma: no cover - reader errors without a mark
        problems.append(Diagnostic(file, 0, 0, "", f"YAML error: {err}", "fix the YAML"))
    finally:
        loader.dispose()
    return docs, problems


def load_yaml_file(path: str) -> tuple[list[YamlDocument], list[Diagnostic]]:
    """Read and parse a file; a missing or unreadable file is one diagnostic at line 0."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as err:
        reason = err.strerror or str(err)
        return [], [Diagnostic(path, 0, 0, "", f"cannot read file: {reason}", "check the path")]
    return load_yaml_documents(text, path)


def _pos(node: Node) -> Position:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


def _yaml_error(err: yaml.MarkedYAMLError, file: str) -> Diagnostic:
    mark = err.problem_mark or err.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
    what = " ".join(p for p in (err.context, err.problem) if p)
    if isinstance(err, ConstructorError):
        hint = "only plain YAML values are accepted (no language-specific tags)"
        return Diagnostic(file, line, col, "", f"YAML error: {what}", hint)
    return Diagnostic(file, line, col, "", f"YAML syntax error: {what}", "fix the YAML syntax")


class _Builder:
    """Turns composed nodes into plain values, recording positions on the way."""

    def __init__(self, doc: YamlDocument, problems: list[Diagnostic]) -> None:
        self.doc = doc
        self.problems = problems
        self.constructor = SafeConstructor()

    def build(self, node: Node, path: YamlPath) -> Any:
        self.doc.values[path] = _pos(node)
        if isinstance(node, MappingNode) and node.tag == _MAP_TAG:
            return self._mapping(node, path)
        if isinstance(node, SequenceNode) and node.tag == _SEQ_TAG:
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        if isinstance(node, ScalarNode):
            return self.constructor.construct_object(node, deep=True)
        # Other collection tags (!!set, !!omap, ...): the safe constructor decides, no positions.
        return self.constructor.construct_object(node, deep=True)

    def _mapping(self, node: MappingNode, path: YamlPath) -> dict[Any, Any]:
        self.constructor.flatten_mapping(node)  # resolves `<<` merge keys as safe_load does
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = self.constructor.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool) and key is not None:
                line, col = _pos(key_node)
                self.problems.append(
                    Diagnostic(
                        self.doc.file,
                        line,
                        col,
                        dotted(path),
                        "mapping keys must be scalars",
                        "write plain `key: value` pairs",
                    )
                )
                continue
            child: YamlPath = (*path, key if isinstance(key, str | int) else str(key))
            if key in out:
                line, col = _pos(key_node)
                self.problems.append(
                    Diagnostic(
                        self.doc.file,
                        line,
                        col,
                        dotted(child),
                        f"duplicate key {key!r} in the same mapping",
                        "remove one of the two entries; YAML would silently keep the last",
                    )
                )
            self.doc.keys[child] = _pos(key_node)
            out[key] = self.build(value_node, child)
        return out
