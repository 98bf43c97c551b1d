"""References to things in a scenario, as written in ``expect:``, ``traffic:`` and on the CLI.

Sources: ``pod/NS/NAME`` (``pod/NAME`` is in ``default``), ``node/NAME``, ``host/NAME``,
``router/NAME``. Targets: ``IP:PORT``, ``pod/NS/NAME:PORT``, ``node/NAME:PORT``,
``host/NAME:PORT``, ``service/NS/NAME:PORT`` (the ClusterIP; PORT is the Service port number
or name), ``nodeport/NODE/NS/NAME:PORT``, ``loadbalancer/NS/NAME:PORT`` and
``http://HOST[:PORT]/PATH`` (through the Ingress controller).

:func:`parse_ref` checks syntax only; whether the named thing exists is known after the
control plane ran (``k8snet_sim.cluster.build.check_refs``).

Example
-------
>>> ref = parse_ref("service/shop/web:http")
>>> ref.kind, ref.key, ref.port, str(ref)
('service', 'shop/web', 'http', 'service/shop/web:http')
>>> parse_ref("pod/db-0").namespace, parse_ref("10.96.0.10:53").ip
('default', '10.96.0.10')
>>> r = parse_ref("http://shop.example/cart")
>>> r.host, r.port, r.path
('shop.example', 80, '/cart')
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Literal

from k8snet_sim.scenario.modelbase import closest

Role = Literal["source", "target"]

SOURCE_KINDS = ("pod", "node", "host", "router")
TARGET_KINDS = ("ip", "pod", "node", "host", "service", "nodeport", "loadbalancer", "http")

_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")
_PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_HTTP = re.compile(r"^http://(?P<host>[^/:]+)(?::(?P<port>[0-9]+))?(?P<path>/[^\s]*)?$")

SYNTAX = (
    "sources are pod/NS/NAME, pod/NAME, node/NAME, host/NAME or router/NAME; targets are "
    "IP:PORT, pod/NS/NAME:PORT, service/NS/NAME:PORT, nodeport/NODE/NS/NAME:PORT, "
    "loadbalancer/NS/NAME:PORT or http://HOST/PATH"
)


class RefSyntaxError(ValueError):
    """A reference that cannot be read. ``hint`` spells out the accepted syntax."""

    hint = SYNTAX


@dataclass(frozen=True)
class Ref:
    """A parsed reference. Fields that do not apply to ``kind`` are None."""

    kind: str  # "pod" | "node" | "host" | "router" | "ip" | "service" | "nodeport" | ...
    namespace: str | None = None
    name: str | None = None
    port: int | str | None = None  # a number, or a Service / container port name
    node: str | None = None  # nodeport/NODE/...
    host: str | None = None  # http://HOST/...
    path: str | None = None  # http://HOST/PATH
    ip: str | None = None  # IP:PORT

    @property
    def key(self) -> str:
        """``namespace/name`` for namespaced kinds, else the name."""
        return f"{self.namespace}/{self.name}" if self.namespace else (self.name or "")

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        if self.kind == "ip":
            return f"{self.ip}{port}"
        if self.kind == "http":
            return f"http://{self.host}{'' if self.port == 80 else port}{self.path}"
        if self.kind == "nodeport":
            return f"nodeport/{self.node}/{self.namespace}/{self.name}{port}"
        return f"{self.kind}/{self.key}{port}"


def _port(text: str, whole: str) -> int | str:
    if text.isdigit():
        number = int(text)
        if not 1 <= number <= 65535:
            raise RefSyntaxError(f"port {number} in {whole!r} is out of range (ports are 1–65535)")
        return number
    if not _PORT_NAME.match(text):
        raise RefSyntaxError(f"expected a port number or name after ':' in {whole!r}, got {text!r}")
    return text


def _names(parts: list[str], whole: str) -> None:
    for part in parts:
        if not _NAME.match(part):
            raise RefSyntaxError(f"{part!r} in {whole!r} is not a valid name")


def parse_ref(text: str, *, role: Role | None = None) -> Ref:
    """Parse a source or target reference. Raises :class:`RefSyntaxError` (a ``ValueError``).

    ``role`` restricts the kinds: sources have no port, targets need one (except http://).
    """
    if not isinstance(text, str) or not text.strip():
        raise RefSyntaxError(f"expected a reference, got {text!r}")
    text = text.strip()
    ref = _parse(text)
    if role == "source" and (ref.kind not in SOURCE_KINDS or ref.port is not None):
        raise RefSyntaxError(f"{text!r} is not a source")
    if role == "target" and (ref.kind not in TARGET_KINDS or ref.port is None):
        raise RefSyntaxError(f"{text!r} is not a target (a port is needed)")
    return ref


def _parse(text: str) -> Ref:
    scheme = re.match(r"^([a-z][a-z0-9+.-]*)://", text, re.IGNORECASE)
    if scheme and scheme[1] != "http":
        # The ingress controller is modelled for plain HTTP: TLS termination is not.
        raise RefSyntaxError(f"{text!r}: only http:// URLs are modelled, not {scheme[1]}://")
    if text.startswith("http://"):
        match = _HTTP.match(text)
        if not match:
            raise RefSyntaxError(f"expected http://HOST/PATH, got {text!r}")
        http_port = _port(match["port"], text) if match["port"] else 80
        return Ref("http", host=match["host"], port=http_port, path=match["path"] or "/")
    body, port_text = text, None
    if ":" in text:
        body, _, port_text = text.rpartition(":")
    port = _port(port_text, text) if port_text is not None else None
    kind, slash, rest = body.partition("/")
    if not slash:
        try:
            IPv4Address(body)
        except ValueError:
            raise RefSyntaxError(f"cannot read {text!r} as a reference") from None
        if port is None:
            raise RefSyntaxError(f"{text!r} needs a port (IP:PORT)")
        return Ref("ip", ip=body, port=port)
    parts = rest.split("/")
    _names(parts, text)
    if kind in ("node", "host", "router") and len(parts) == 1:
        return Ref(kind, name=parts[0], port=port)
    if kind in ("pod", "service", "loadbalancer") and len(parts) in (1, 2):
        namespace, name = (parts[0], parts[1]) if len(parts) == 2 else ("default", parts[0])
        if kind != "pod" and port is None:
            raise RefSyntaxError(f"{text!r} needs a port: {kind}/NS/NAME:PORT")
        return Ref(kind, namespace=namespace, name=name, port=port)
    if kind == "nodeport" and len(parts) in (2, 3):
        node, namespace, name = parts if len(parts) == 3 else (parts[0], "default", parts[1])
        if port is None:
            raise RefSyntaxError(f"{text!r} needs a port: nodeport/NODE/NS/NAME:PORT")
        return Ref("nodeport", namespace=namespace, name=name, node=node, port=port)
    raise RefSyntaxError(f"cannot read {text!r} as a reference")


def unknown_machine(ref: Ref, names: Mapping[str, Collection[str]]) -> tuple[str, str] | None:
    """``(message, hint)`` when ``ref`` names a node, host or router (a nodeport's node too)
    missing from ``names`` (by kind), else None. Kinds absent from ``names`` are not checked.

    >>> unknown_machine(parse_ref("host/lapotp"), {"host": ["laptop", "phone"]})
    ("unknown host 'lapotp'", 'did you mean `laptop`? (hosts: laptop, phone)')
    """
    if ref.kind not in ("node", "host", "router", "nodeport"):
        return None
    kind = "node" if ref.kind == "nodeport" else ref.kind
    name = (ref.node if ref.kind == "nodeport" else ref.name) or ""
    if kind not in names or name in names[kind]:
        return None
    listed = f"{kind}s: {', '.join(names[kind]) or 'none'}"
    typo = closest(name, names[kind])
    return f"unknown {kind} {name!r}", f"{typo} ({listed})" if typo else listed
