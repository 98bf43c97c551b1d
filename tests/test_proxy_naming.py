"""Chain-name hashing and endpoint probabilities, checked against kube-proxy's own values."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from k8snet_sim.proxy import naming

# (service port name, protocol) -> 16-character portProtoHash (values from upstream tests)
PORT_HASHES = [
    ("ns1/svc1:p80", "tcp", "XPGD46QRK7WJZT7O"),
    ("ns1/svc1:p80", "TCP", "XPGD46QRK7WJZT7O"),  # protocol is lowercased first
    ("ns1/svc1", "tcp", "AQI2S6QIMU7PVVRP"),  # unnamed port
    ("ns1/svc1:p80", "sctp", "GFCIFIA5VTFSTMSM"),
    ("ns2/svc2:p80", "tcp", "GNZBNJ2PO5MGZ6GT"),
    ("ns3/svc3:p80", "tcp", "X27LE4BHSL4DOUIK"),
    ("ns4/svc4:p80", "tcp", "4SW47YFZTEDKD3PK"),
    ("ns5/svc5:p80", "tcp", "NUKIZ6OKUXPJNT4C"),
]

# (service port name, protocol, endpoint) -> KUBE-SEP chain
ENDPOINT_CHAINS = [
    ("ns1/svc1:p80", "tcp", "10.180.0.1:80", "KUBE-SEP-SXIVWICOYRO3J4NJ"),
    ("ns4/svc4:p80", "tcp", "10.180.0.4:80", "KUBE-SEP-UKSFD7AGPMPPLUHC"),
    ("ns4/svc4:p80", "tcp", "10.180.0.5:80", "KUBE-SEP-C6EBXVWJJZMIWKLZ"),
    ("ns1/svc1:p80", "tcp", "10.180.2.1:80", "KUBE-SEP-ZX7GRIZKSNUQ3LAJ"),
    ("ns5/svc5:p80", "tcp", "10.180.0.3:80", "KUBE-SEP-I77PXRDZVX7PMWMN"),
]


@pytest.mark.parametrize(("name", "proto", "expected"), PORT_HASHES)
def test_service_port_chain_suffix(name: str, proto: str, expected: str) -> None:
    assert naming.service_port_chain_suffix(name, proto) == expected


def test_service_chains_share_one_hash() -> None:
    chains = [
        naming.service_chain("ns1/svc1:p80", "tcp"),
        naming.local_service_chain("ns1/svc1:p80", "tcp"),
        naming.external_chain("ns1/svc1:p80", "tcp"),
        naming.firewall_chain("ns1/svc1:p80", "tcp"),
    ]
    assert chains == [
        "KUBE-SVC-XPGD46QRK7WJZT7O",
        "KUBE-SVL-XPGD46QRK7WJZT7O",
        "KUBE-EXT-XPGD46QRK7WJZT7O",
        "KUBE-FW-XPGD46QRK7WJZT7O",
    ]
    assert all(len(c) <= 28 for c in chains)  # iptables' chain-name limit


@pytest.mark.parametrize(("name", "proto", "endpoint", "expected"), ENDPOINT_CHAINS)
def test_endpoint_chain(name: str, proto: str, endpoint: str, expected: str) -> None:
    assert naming.endpoint_chain(name, proto, endpoint) == expected


def test_protocol_changes_the_hash() -> None:
    assert naming.service_chain("shop/dns:dns", "udp") != naming.service_chain(
        "shop/dns:dns", "tcp"
    )


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (1, "1.0000000000"),
        (2, "0.5000000000"),
        (3, "0.3333333333"),
        (4, "0.2500000000"),
        (10, "0.1000000000"),
        (100001, "0.0000099999"),
    ],
)
def test_compute_probability(n: int, expected: str) -> None:
    assert naming.compute_probability(n) == expected


@pytest.mark.parametrize(
    ("prefix", "base", "expected"),
    [
        ("service", "ns1/svc1/tcp/p80", "service-ULMVA6XW-ns1/svc1/tcp/p80"),
        (
            "endpoint",
            "ns1/svc1/tcp/p80__10.180.0.1/80",
            "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80",
        ),
        ("service", "ns2/svc2/tcp/p80", "service-42NFTM6N-ns2/svc2/tcp/p80"),
        ("service", "ns4/svc4/tcp/p80", "service-LAUZTJTB-ns4/svc4/tcp/p80"),
        ("service", "ns5/svc5/tcp/p80", "service-HVFWP5L3-ns5/svc5/tcp/p80"),
    ],
)
def test_nft_chain_names(prefix: str, base: str, expected: str) -> None:
    assert naming.nft_chain(prefix, base) == expected


def test_nft_bases() -> None:
    base = naming.nft_service_base("ns1", "svc1", "TCP", "p80")
    assert base == "ns1/svc1/tcp/p80"
    assert naming.nft_endpoint_base(base, "10.180.0.1:80") == "ns1/svc1/tcp/p80__10.180.0.1/80"


@given(st.text(max_size=80), st.sampled_from(["tcp", "udp", "sctp"]))
def test_hash_equals_stdlib_base32_of_sha256(name: str, proto: str) -> None:
    # The fast encoder must agree with the reference Python spelling from upstream's docs.
    full = base64.b32encode(hashlib.sha256((name + proto).encode()).digest()).decode()
    assert naming.service_port_chain_suffix(name, proto) == full[:16]
    assert naming.nft_chain("service", name + proto) == f"service-{full[:8]}-{name}{proto}"
