"""Conformance extra: upstream's fixture-backed packet-flow cases through `iptables_trace`.

Runs only when the reference material (../shared/reference/kube-proxy) is present; it is
compared against, never copied into the repository.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from k8snet_sim.analysis.iptables_trace import iptables_trace
from k8snet_sim.netfilter.iptables_save import parse_iptables_save

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "kube-proxy"
pytestmark = pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"{REFERENCE} not present")


def _rows() -> list[dict[str, str]]:
    if not REFERENCE.is_dir():
        return []
    with (REFERENCE / "packet-flow-cases.csv").open() as fh:
        return [r for r in csv.DictReader(fh) if r["fixture"]]


@pytest.mark.parametrize("row", _rows(), ids=lambda r: r["id"])
def test_fixture_packet_flows(row: dict[str, str]) -> None:
    text = (REFERENCE / row["fixture"]).read_text()
    result = iptables_trace(
        text,
        src=row["source_ip"],
        dst=row["dest_ip"],
        dport=int(row["dest_port"]),
        local_ips=["192.168.0.2"],
    )
    assert ", ".join(result.output) == row["expected_output"]
    assert str(result.masquerade).lower() == row["expected_masq"]


@pytest.mark.parametrize(
    "name", ["overall.rules", "tracepackets.rules", "loadbalancer.rules", "onlylocal-lb.rules"]
)
def test_fixture_round_trip_is_byte_identical(name: str) -> None:
    text = (REFERENCE / "fixtures" / name).read_text()
    assert parse_iptables_save(text).render() == text
