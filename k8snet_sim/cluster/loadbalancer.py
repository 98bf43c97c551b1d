"""LoadBalancer provisioning: which ingress IP each ``type: LoadBalancer`` Service gets.

A provider (``metallb-l2`` or ``cloud``) assigns addresses from the scenario's pool, like
MetalLB's IPAddressPool (every address of a range or CIDR is usable, as with MetalLB's default
``avoidBuggyIPs: false``). Order, so that the result depends only on the scenario:

1. ``status.loadBalancer.ingress[].ip`` written in a manifest is taken as already assigned
   (kube-proxy reads status only; such IPs need not be in the pool);
2. ``spec.loadBalancerIP`` is honoured if it is in the pool and free, else the Service stays
   pending with the reason;
3. the remaining Services get the lowest free pool address, in manifest order.

Without a provider, or with the pool exhausted, the Service stays ``<pending>`` with a reason.

Example
-------
>>> requests = [LoadBalancerRequest("default/a"), LoadBalancerRequest("default/b")]
>>> out = assign_load_balancers(requests, "metallb-l2", [(ip("10.0.0.200"), ip("10.0.0.200"))])
>>> out["default/a"].ips, out["default/b"].pending
(('10.0.0.200',), 'address pool exhausted (1 addresses)')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from k8snet_sim.net.addr import ip, ip_str

NO_PROVIDER = "no load-balancer provider configured"


@dataclass(frozen=True)
class LoadBalancerRequest:
    service: str  # "namespace/name"
    requested_ip: str | None = None  # spec.loadBalancerIP
    status_ips: tuple[str, ...] = ()  # status.loadBalancer.ingress[].ip given in the manifest


@dataclass(frozen=True)
class LoadBalancerResult:
    ips: tuple[str, ...]
    pending: str | None = None  # why no address was assigned


def assign_load_balancers(
    requests: Sequence[LoadBalancerRequest],
    provider: str | None,
    pool: Sequence[tuple[int, int]],
) -> dict[str, LoadBalancerResult]:
    """Ingress IPs (or a pending reason) per Service key; ``pool`` is (first, last) ranges."""
    size = sum(last - first + 1 for first, last in pool)
    used: dict[int, str] = {}
    out: dict[str, LoadBalancerResult] = {}

    def in_pool(address: int) -> bool:
        return any(first <= address <= last for first, last in pool)

    for r in requests:
        if r.status_ips:
            out[r.service] = LoadBalancerResult(r.status_ips)
            for address in r.status_ips:
                used.setdefault(ip(address), r.service)
    for r in requests:
        if r.service in out:
            continue
        if provider is None:
            out[r.service] = LoadBalancerResult((), NO_PROVIDER)
        elif r.requested_ip is not None:
            wanted = ip(r.requested_ip)
            if not in_pool(wanted):
                reason = f"requested loadBalancerIP {r.requested_ip} is not in the address pool"
                out[r.service] = LoadBalancerResult((), reason)
            elif wanted in used:
                reason = (
                    f"requested loadBalancerIP {r.requested_ip} is already used by {used[wanted]}"
                )
                out[r.service] = LoadBalancerResult((), reason)
            else:
                used[wanted] = r.service
                out[r.service] = LoadBalancerResult((r.requested_ip,))
    for r in requests:
        if r.service in out:
            continue
        free = _first_free(pool, used)
        if free is None:
            out[r.service] = LoadBalancerResult((), f"address pool exhausted ({size} addresses)")
        else:
            used[free] = r.service
            out[r.service] = LoadBalancerResult((ip_str(free),))
    return out


def _first_free(pool: Sequence[tuple[int, int]], used: dict[int, str]) -> int | None:
    for first, last in pool:
        for address in range(first, last + 1):
            if address not in used:
                return address
    return None
