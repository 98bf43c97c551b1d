"""Chain names and probabilities exactly as kube-proxy computes them.

kube-proxy names its per-service chains after a hash so that names stay within iptables'
28-character limit and stay stable across restarts: a node's ``iptables-save`` can be laid
beside ours only if every hash agrees. Upstream sources: ``portProtoHash`` and
``servicePortEndpointChainName`` (iptables), ``hashAndTruncate`` (nftables), and
``computeProbability`` (iptables), all in ``pkg/proxy``.

Example
-------
>>> service_port_chain_suffix("ns1/svc1:p80", "TCP")
'XPGD46QRK7WJZT7O'
>>> endpoint_chain("ns1/svc1:p80", "tcp", "10.180.0.1:80")
'KUBE-SEP-SXIVWICOYRO3J4NJ'
>>> compute_probability(3)
'0.3333333333'
>>> nft_chain("service", nft_service_base("ns1", "svc1", "tcp", "p80"))
'service-ULMVA6XW-ns1/svc1/tcp/p80'
"""

from __future__ import annotations

import hashlib

# Prefixes of the iptables per-service chains (K28 pkg/proxy/iptables/proxier.go).
SVC_PREFIX = "KUBE-SVC-"  # Cluster traffic policy: every usable endpoint
SVL_PREFIX = "KUBE-SVL-"  # Local traffic policy: node-local endpoints only
EXT_PREFIX = "KUBE-EXT-"  # external destinations (NodePort, externalIP, LB IP)
FW_PREFIX = "KUBE-FW-"  # loadBalancerSourceRanges filtering
SEP_PREFIX = "KUBE-SEP-"  # one endpoint: hairpin masquerade + DNAT


_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"  # RFC 4648 alphabet


def _base32_sha256(text: str, chars: int) -> str:
    """The first ``chars`` characters of base32(sha256(text)), ``chars`` a multiple of 8.

    Equal to ``base64.b32encode(digest).decode()[:chars]``, but encodes only the bytes needed
    (five per eight characters): the stdlib encoder dominated a 10,000-Service sync.
    """
    nbytes = chars * 5 // 8
    bits = int.from_bytes(hashlib.sha256(text.encode()).digest()[:nbytes], "big")
    return "".join(_BASE32[(bits >> shift) & 31] for shift in range(chars * 5 - 5, -1, -5))


def service_port_chain_suffix(port_name: str, protocol: str) -> str:
    """The 16-character hash shared by a service port's SVC/SVL/EXT/FW chains.

    ``port_name`` is kube-proxy's ServicePortName string (``ns/name:port`` or ``ns/name``);
    the protocol is lowercased before hashing, as upstream hashes ``"tcp"`` not ``"TCP"``.

    >>> service_port_chain_suffix("ns1/svc1", "tcp")
    'AQI2S6QIMU7PVVRP'
    """
    return _base32_sha256(port_name + protocol.lower(), 16)


def service_chain(port_name: str, protocol: str) -> str:
    """``KUBE-SVC-<hash>``: dispatch to the Cluster-policy endpoints.

    >>> service_chain("ns2/svc2:p80", "tcp")
    'KUBE-SVC-GNZBNJ2PO5MGZ6GT'
    """
    return SVC_PREFIX + service_port_chain_suffix(port_name, protocol)


def local_service_chain(port_name: str, protocol: str) -> str:
    """``KUBE-SVL-<hash>``: dispatch to the node-local endpoints.

    >>> local_service_chain("ns1/svc1:p80", "tcp")
    'KUBE-SVL-XPGD46QRK7WJZT7O'
    """
    return SVL_PREFIX + service_port_chain_suffix(port_name, protocol)


def external_chain(port_name: str, protocol: str) -> str:
    """``KUBE-EXT-<hash>``: entry for traffic to NodePorts, external IPs and LB IPs.

    >>> external_chain("ns3/svc3:p80", "tcp")
    'KUBE-EXT-X27LE4BHSL4DOUIK'
    """
    return EXT_PREFIX + service_port_chain_suffix(port_name, protocol)


def firewall_chain(port_name: str, protocol: str) -> str:
    """``KUBE-FW-<hash>``: the loadBalancerSourceRanges allow-list.

    >>> firewall_chain("ns5/svc5:p80", "tcp")
    'KUBE-FW-NUKIZ6OKUXPJNT4C'
    """
    return FW_PREFIX + service_port_chain_suffix(port_name, protocol)


def endpoint_chain(port_name: str, protocol: str, endpoint: str) -> str:
    """``KUBE-SEP-<hash>`` for one endpoint (``"ip:port"``) of a service port.

    The hashed string is the plain concatenation ``port_name + protocol + endpoint``.

    >>> endpoint_chain("ns4/svc4:p80", "tcp", "10.180.0.4:80")
    'KUBE-SEP-UKSFD7AGPMPPLUHC'
    """
    return SEP_PREFIX + _base32_sha256(port_name + protocol.lower() + endpoint, 16)


def compute_probability(n: int) -> str:
    """The ``--probability`` text for picking 1 of ``n`` remaining endpoints (Go ``%0.10f``).

    Python's ``%`` formatting rounds exactly like Go's ``fmt`` for these values.

    >>> [compute_probability(n) for n in (1, 2, 10, 100001)]
    ['1.0000000000', '0.5000000000', '0.1000000000', '0.0000099999']
    """
    return f"{1.0 / n:0.10f}"


# --- nftables (KEP-3866) --------------------------------------------------------------------


def nft_service_base(namespace: str, name: str, protocol: str, port_name: str) -> str:
    """The readable part of an nftables service chain name: ``ns/svc/proto/portName``.

    >>> nft_service_base("ns1", "svc1", "TCP", "p80")
    'ns1/svc1/tcp/p80'
    """
    return f"{namespace}/{name}/{protocol.lower()}/{port_name}"


def nft_endpoint_base(service_base: str, endpoint: str) -> str:
    """The readable part of an nftables endpoint chain: ``<service base>__ip/port``.

    >>> nft_endpoint_base("ns1/svc1/tcp/p80", "10.180.0.1:80")
    'ns1/svc1/tcp/p80__10.180.0.1/80'
    """
    ip, _, port = endpoint.rpartition(":")
    return f"{service_base}__{ip.strip('[]')}/{port}"


def nft_chain(prefix: str, base: str) -> str:
    """An nftables chain name ``<prefix>-<H8>-<base>``, H8 = 8 chars of base32(sha256(base)).

    ``prefix`` is one of ``service``, ``local``, ``external``, ``firewall``, ``endpoint``,
    ``affinity``.

    >>> nft_chain("endpoint", "ns1/svc1/tcp/p80__10.180.0.1/80")
    'endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80'
    """
    return f"{prefix}-{_base32_sha256(base, 8)}-{base}"
