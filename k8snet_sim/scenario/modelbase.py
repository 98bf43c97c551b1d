"""Building blocks shared by the scenario schema and the Kubernetes manifest models.

* :class:`StrictModel` — frozen pydantic v2 model, strict types (``"80"`` is not a port),
  unknown keys ignored (they are listed in ``Scenario.ignored`` by :func:`unknown_fields`).
* Annotated field types that validate and explain: :data:`IPv4`, :data:`CidrText`,
  :data:`PortNumber`, :data:`PortRef`.
* :func:`validation_diagnostics` turns a pydantic ``ValidationError`` into located
  :class:`~k8snet_sim.errors.Diagnostic` objects with messages that say what was expected and
  what was found.

Example
-------
>>> class Port(StrictModel):
...     port: PortNumber
>>> from k8snet_sim.scenario.yamlpos import load_yaml_documents
>>> [doc], _ = load_yaml_documents("port: 70000\\n", "p.yaml")
>>> try:
...     Port.model_validate(doc.data)
... except ValidationError as err:
...     print(validation_diagnostics(err, doc)[0].render())
p.yaml:1:7: port: expected a port number, got 70000 (ports are 1–65535)
    hint: use a port between 1 and 65535
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError
from rapidfuzz import process
from rapidfuzz.distance import OSA

from k8snet_sim.errors import Diagnostic
from k8snet_sim.scenario.yamlpos import YamlDocument, YamlPath, dotted

__all__ = [
    "CidrText",
    "IPv4",
    "PortNumber",
    "PortRef",
    "StrictModel",
    "ValidationError",
    "closest",
    "describe",
    "is_likely_typo",
    "unknown_fields",
    "validation_diagnostics",
    "without",
]


class StrictModel(BaseModel):
    """Frozen, strict, alias-populated; unknown keys are ignored here and reported elsewhere."""

    model_config = ConfigDict(strict=True, frozen=True, populate_by_name=True, extra="ignore")


def describe(value: object) -> str:
    """A short rendering of what the user wrote, for "expected …, got …" messages."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _ipv4(value: object) -> object:
    if not isinstance(value, str):
        raise ValueError(f"expected an IPv4 address like 10.0.0.1, got {describe(value)}")
    try:
        IPv4Address(value.strip())
    except ValueError:
        raise ValueError(f"expected an IPv4 address like 10.0.0.1, got {value!r}") from None
    return value.strip()


def _cidr(value: object) -> object:
    if not isinstance(value, str):
        raise ValueError(f"expected an IPv4 CIDR like 10.0.0.0/24, got {describe(value)}")
    text = value.strip()
    try:
        net = IPv4Network(text, strict=False)
    except ValueError:
        raise ValueError(f"expected an IPv4 CIDR like 10.0.0.0/24, got {value!r}") from None
    if "/" not in text:
        raise ValueError(f"expected an IPv4 CIDR with a prefix length, got {value!r}")
    if str(net) != text:
        raise ValueError(f"{value!r} has host bits set; the prefix is {net}")
    return text


def _port_number(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"expected a port number, got {describe(value)} (ports are 1–65535)")
    return value


_PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")


def _port_ref(value: object) -> object:
    """A port number, or an IANA service name (what Kubernetes accepts for targetPort)."""
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535:
        return value
    if (
        isinstance(value, str)
        and _PORT_NAME.match(value)
        and "--" not in value
        and re.search("[a-z]", value)
    ):
        return value
    raise ValueError(
        f"expected a port number or name, got {describe(value)} (ports are 1–65535, names are"
        " up to 15 lowercase letters, digits and '-')"
    )


IPv4 = Annotated[str, BeforeValidator(_ipv4)]
CidrText = Annotated[str, BeforeValidator(_cidr)]
PortNumber = Annotated[int, BeforeValidator(_port_number)]
PortRef = Annotated[int | str, BeforeValidator(_port_ref)]

_HINTS = {
    "missing": "add the field",
    "literal_error": "use one of the listed values",
    "int_type": "write a whole number without quotes",
    "bool_type": "write true or false without quotes",
    "string_type": "write a string (quote it if YAML reads it as something else)",
}


def _message(error: Any) -> tuple[str, str]:
    kind = error["type"]
    got = describe(error.get("input"))
    if kind == "missing":
        return "required field is missing", _HINTS[kind]
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        return f"expected one of {expected}, got {got}", _HINTS[kind]
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected an integer, got {got}", _HINTS["int_type"]
    if kind in ("float_type", "float_parsing"):
        return f"expected a number, got {got}", "write a number without quotes"
    if kind in ("bool_type", "bool_parsing"):
        return f"expected true or false, got {got}", _HINTS["bool_type"]
    if kind == "string_type":
        return f"expected a string, got {got}", _HINTS[kind]
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping, got {got}", "write `key: value` pairs"
    if kind in ("list_type", "tuple_type"):
        return f"expected a list, got {got}", "write a YAML list (`- item` or `[a, b]`)"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        return f"{error['msg'].lower()}, got {got}", "change the number"
    if kind == "value_error":
        text = str(error.get("ctx", {}).get("error", error["msg"]))
        message, _, hint = text.partition(" | hint: ")
        return message, hint
    return f"{error['msg']}, got {got}", ""


def _default_hint(message: str) -> str:
    if "port number" in message and re.search(r"got '\d+'", message):
        return "remove the quotes: a port number is written as a number"
    if "port number" in message:
        return "use a port between 1 and 65535"
    if "IPv4 address" in message:
        return "write a dotted-quad address"
    if "CIDR" in message or "host bits" in message:
        return "write the network address and prefix length, e.g. 10.0.0.0/24"
    return ""


def validation_diagnostics(
    err: ValidationError,
    doc: YamlDocument,
    prefix: YamlPath = (),
    shown_prefix: YamlPath | None = None,
) -> list[Diagnostic]:
    """Locate every error of ``err`` in ``doc``. ``prefix`` is where the validated value sits.

    ``shown_prefix`` is the part of the path that is printed (default: the same as ``prefix``).
    A ``ValueError`` text may carry a hint after ``" | hint: "``.
    """
    out: list[Diagnostic] = []
    show = prefix if shown_prefix is None else shown_prefix
    for error in err.errors(include_url=False):
        loc = tuple(p for p in error["loc"] if isinstance(p, str | int))
        # Annotated/function validators add their own names to loc; keep only data keys.
        loc = tuple(p for p in loc if not (isinstance(p, str) and p.startswith("function-")))
        message, hint = _message(error)
        file, line, col = doc.where((*prefix, *loc))
        shown = dotted((*show, *loc))
        out.append(Diagnostic(file, line, col, shown, message, hint or _default_hint(message)))
    return out


def _models_in(annotation: Any) -> list[tuple[str, type[BaseModel]]]:
    """The models a field annotation may hold, tagged "one", "list" or "dict"."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _models_in(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        found: list[tuple[str, type[BaseModel]]] = []
        for arg in typing.get_args(annotation):
            found.extend(_models_in(arg))
        return found
    if origin in (list, tuple):
        return [("list", m) for _, m in _models_in(typing.get_args(annotation)[0])]
    if origin is dict:
        return [("dict", m) for _, m in _models_in(typing.get_args(annotation)[1])]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [("one", annotation)]
    return []


def unknown_fields(
    model: type[BaseModel], data: Any, path: YamlPath = ()
) -> list[tuple[YamlPath, type[BaseModel]]]:
    """Keys in ``data`` that ``model`` (recursively) does not interpret, with the model that
    did not know them (for "did you mean" hints).

    Free-form fields (``dict[str, Any]``, labels) are interpreted as a whole.
    """
    if not isinstance(data, dict):
        return []
    found: list[tuple[YamlPath, type[BaseModel]]] = []
    by_alias = {(f.alias or name): f for name, f in model.model_fields.items()}
    for key, value in data.items():
        field = by_alias.get(key) if isinstance(key, str) else None
        if field is None:
            found.append(((*path, key), model))
            continue
        for shape, sub in _models_in(field.annotation):
            if shape == "one":
                found.extend(unknown_fields(sub, value, (*path, key)))
            elif shape == "list" and isinstance(value, list):
                for i, item in enumerate(value):
                    found.extend(unknown_fields(sub, item, (*path, key, i)))
            elif shape == "dict" and isinstance(value, dict):
                for k, item in value.items():
                    found.extend(unknown_fields(sub, item, (*path, key, k)))
            break
    return found


def without(data: Any, paths: Sequence[YamlPath]) -> Any:
    """``data`` with the keys at ``paths`` left out, copying only the containers on the way.

    A model validates what remains: a key the model does not know by its alias
    (``service_cidr`` for ``serviceCIDR``) must not populate the field by its Python name, as
    it would otherwise, since it is listed as not interpreted.

    >>> data = {"a": 1, "b": {"c": 2, "d": 3}}
    >>> without(data, [("b", "d")]), data["b"]
    ({'a': 1, 'b': {'c': 2}}, {'c': 2, 'd': 3})
    """
    if not paths:
        return data
    trie: dict[Any, Any] = {}
    for path in paths:
        node = trie
        for segment in path[:-1]:
            node = node.setdefault(segment, {})
        node[path[-1]] = None
    return _prune(data, trie)


def _prune(data: Any, trie: dict[Any, Any]) -> Any:
    if not isinstance(data, dict | list):
        return data
    out: Any = dict(data) if isinstance(data, dict) else list(data)
    for segment, below in trie.items():
        if isinstance(out, dict):
            if below is None:
                out.pop(segment, None)
            elif segment in out:
                out[segment] = _prune(out[segment], below)
        elif below is not None and isinstance(segment, int) and 0 <= segment < len(out):
            out[segment] = _prune(out[segment], below)
    return out


DID_YOU_MEAN = "did you mean"


# Real Kubernetes fields one slip away from a field the simulator reads: never typos.
# (``kubectl get svc -o yaml`` prints ``clusterIPs`` beside ``clusterIP``.)
NOT_TYPOS = frozenset({"clusterIPs", "podIPs", "hostIPs"})


def did_you_mean(word: str, model: type[BaseModel]) -> str:
    """A hint naming the field of ``model`` that ``word`` is a likely typo of, or "".

    >>> from k8snet_sim.scenario.kinds import ServiceSpec
    >>> did_you_mean("cluster_ip", ServiceSpec), did_you_mean("clusterIPs", ServiceSpec)
    ('did you mean `clusterIP`?', '')
    """
    if word in NOT_TYPOS:
        return ""
    return closest(word, [(f.alias or n) for n, f in model.model_fields.items()])


def closest(word: str, names: Iterable[str]) -> str:
    """A hint naming the name ``word`` is a likely typo of, or "".

    A typo is one or two slips (a letter wrong, missing, extra, or two swapped; one per four
    letters): ``selecter`` for ``selector``, ``Servcie`` for ``Service``. Real Kubernetes
    fields the simulator does not model are usually further from every modelled name
    (``appProtocol`` is three letters from ``protocol``), so they are not mistaken for typos.

    >>> closest("selecter", ["selector", "ports"]), closest("appProtocol", ["protocol"])
    ('did you mean `selector`?', '')
    """
    names = list(names)
    # Another spelling of the same name is no slip at all: ``cluster_ip``, ``ClusterIP``.
    flat = word.replace("_", "").replace("-", "").lower()
    same = [n for n in names if n.replace("_", "").replace("-", "").lower() == flat]
    if same:
        return f"{DID_YOU_MEAN} `{same[0]}`?"
    slips = min(2, max(1, len(word) // 4))
    best = process.extractOne(word, names, scorer=OSA.distance, score_cutoff=slips)
    return f"{DID_YOU_MEAN} `{best[0]}`?" if best is not None else ""


def is_likely_typo(diagnostic: Diagnostic) -> bool:
    """Whether an ignored entry names a field or kind close to one the simulator knows."""
    return diagnostic.hint.startswith(DID_YOU_MEAN)


def ignored_diagnostic(
    doc: YamlDocument, path: YamlPath, shown: YamlPath, hint: str = ""
) -> Diagnostic:
    """The entry listed in ``Scenario.ignored`` for a field the simulator does not interpret."""
    line, col = doc.locate_key(path)
    return Diagnostic(
        doc.file, line, col, dotted(shown), "field not interpreted by the simulator", hint
    )
