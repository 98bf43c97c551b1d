"""How an ingress controller picks a backend for an HTTP request (pure).

Kubernetes' Ingress matching rules (networking.k8s.io/v1): a rule's host matches exactly, or
as a single-label wildcard (``*.example.com``), or — no host — any host; an exact host beats a
wildcard, which beats a host-less rule. Among the matching paths the longest wins, and at equal
length ``Exact`` beats ``Prefix`` (``ImplementationSpecific`` is matched as ``Prefix``, which is
what ingress-nginx does without regex annotations). Nothing matching → the default backend, or
404.

Example
-------
>>> from k8snet_sim.cluster.ingress import IngressInfo, IngressRoute
>>> ing = IngressInfo("shop", "web", "nginx", (
...     IngressRoute("shop.example", "/", "Prefix", "shop/front", 80),
...     IngressRoute("shop.example", "/cart", "Prefix", "shop/cart", 80)), None)
>>> choose_backend([ing], "shop.example", "/cart/42").route.service
'shop/cart'
>>> choose_backend([ing], "other.example", "/").status
404
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from k8snet_sim.cluster.ingress import IngressInfo, IngressRoute


@dataclass(frozen=True)
class Backend:
    """The routing decision for one request."""

    status: int  # 0 = forward to ``service``; else the HTTP status the controller answers
    ingress: str | None = None
    route: IngressRoute | None = None
    service: str | None = None
    port: int | str | None = None
    reason: str = ""


def _host_rank(route: IngressRoute, host: str) -> int:
    if route.host is None:
        return 1
    return 3 if not route.host.startswith("*.") else 2


def choose_backend(ingresses: Sequence[IngressInfo], host: str, path: str) -> Backend:
    """The backend for ``host`` + ``path`` among the Ingresses of one class. Rules match the
    URL's path only: a query (``?id=7``) or fragment (``#top``) does not take part."""
    host = host.split(":", 1)[0].lower()
    path = path.split("#", 1)[0].split("?", 1)[0] or "/"
    best: tuple[tuple[int, int, int], IngressInfo, IngressRoute] | None = None
    for ing in ingresses:
        for route in ing.routes:
            if not route.matches(host, path):
                continue
            rank = (
                _host_rank(route, host),
                len(route.path.rstrip("/")) if route.path != "/" else 0,
                1 if route.path_type == "Exact" else 0,
            )
            if best is None or rank > best[0]:
                best = (rank, ing, route)
    if best is not None:
        _, ing, route = best
        return Backend(
            0,
            ing.key,
            route,
            route.service,
            route.port,
            f"Ingress {ing.key}: host {route.host or '*'} path {route.path} ({route.path_type})",
        )
    for ing in ingresses:
        if ing.default_backend is not None:
            service, port = ing.default_backend
            return Backend(0, ing.key, None, service, port, f"Ingress {ing.key}: default backend")
    return Backend(
        404, reason=f"no Ingress rule matches {host}{path} and there is no default backend"
    )
