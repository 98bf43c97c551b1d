"""The published shapes (performance.md §6), asserted on small cases of benchmarks/shapes.py:
slopes, ratios and p-values of simulated quantities — never wall-clock time."""

from __future__ import annotations

import pytest

from benchmarks import shapes

scipy_stats = pytest.importorskip("scipy.stats")

COUNTS = (1, 250, 500, 1000)
KERNEL_MODES = [m for m in ("ipvs", "nftables") if shapes.available(m)]


@pytest.fixture(scope="module")
def iptables_points() -> dict[bool, list[shapes.SetupPoint]]:
    points: dict[bool, list[shapes.SetupPoint]] = {False: [], True: []}
    for n in COUNTS:  # one world per size serves both passes
        for keepalive in (False, True):
            point = shapes.setup_point("iptables", n, keepalive=keepalive, samples=4, per_sample=10)
            points[keepalive].append(point)
    return points


def test_iptables_setup_grows_linearly_with_services(
    iptables_points: dict[bool, list[shapes.SetupPoint]],
) -> None:
    slope, r2 = shapes.slope(iptables_points[False])
    # One KUBE-SERVICES rule per Service, 20 ns each, and the mean target sits mid-chain.
    assert 7e-9 < slope < 13e-9
    assert r2 > 0.99


@pytest.mark.parametrize("mode", KERNEL_MODES)
def test_ipvs_and_nftables_setup_is_flat(mode: str) -> None:
    few = shapes.setup_point(mode, COUNTS[0], samples=4, per_sample=10)
    many = shapes.setup_point(mode, COUNTS[-1], samples=4, per_sample=10)
    assert many.setup_mean == pytest.approx(few.setup_mean, rel=0.02)


def test_keepalive_hides_the_rule_walk(
    iptables_points: dict[bool, list[shapes.SetupPoint]],
) -> None:
    fresh, reused = iptables_points[False], iptables_points[True]
    growth_fresh = fresh[-1].latency_mean / fresh[0].latency_mean - 1
    growth_reused = reused[-1].latency_mean / reused[0].latency_mean - 1
    assert growth_fresh > 0.15
    assert growth_reused < 0.2 * growth_fresh


def test_userspace_bulk_is_about_a_third_of_iptables() -> None:
    iptables = shapes.bulk_throughput("iptables", size="200MB")
    userspace = shapes.bulk_throughput("userspace", size="200MB")
    direct = shapes.bulk_throughput("iptables", "pod/default/store:9000", size="200MB")
    assert 0.28 < userspace / iptables < 0.45
    assert iptables / direct == pytest.approx(1.0, abs=0.05)


def test_iptables_random_choice_is_uniform() -> None:
    counts = shapes.spread("iptables", requests=2000)
    assert 1800 < sum(counts) < 2200  # Poisson arrivals at 1000/s for 2 s
    assert scipy_stats.chisquare(counts).pvalue > 0.01


@pytest.mark.parametrize("mode", [m for m in ("userspace", "ipvs") if shapes.available(m)])
def test_round_robin_is_even(mode: str) -> None:
    counts = shapes.spread(mode, requests=1000)
    assert 900 < sum(counts) < 1100 and max(counts) - min(counts) <= 1
