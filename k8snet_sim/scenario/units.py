"""Quantities with units as scenarios write them: bandwidth, durations, sizes, rates.

Every parser accepts a bare number too (bits per second, seconds, bytes, per second) and
raises ``ValueError`` with a message that says what was expected and what was found.
Decimal prefixes (k, M, G, T) are powers of 1000; binary ones (Ki, Mi, Gi, Ti) powers of 1024,
as in Kubernetes quantities.

Example
-------
>>> parse_bandwidth("10Gbps"), parse_duration("50us"), parse_size("20KiB")
(10000000000.0, 5e-05, 20480.0)
>>> parse_size("200MB"), parse_rate("500/s"), parse_duration("10s")
(200000000.0, 500.0, 10.0)
"""

from __future__ import annotations

import math
import re

_NUMBER = r"(?P<num>[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+)"
_QUANTITY = re.compile(rf"^\s*{_NUMBER}\s*(?P<unit>[A-Za-zµ/]*)\s*$")

# Unit tables, not branches: add a spelling by adding a row.
_DURATION_UNITS: dict[str, float] = {
    "": 1.0,
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
}
_SIZE_UNITS: dict[str, float] = {
    "": 1.0,
    "B": 1.0,
    "kB": 1e3,
    "KB": 1e3,
    "MB": 1e6,
    "GB": 1e9,
    "TB": 1e12,
    "KiB": 1024.0,
    "MiB": 1024.0**2,
    "GiB": 1024.0**3,
    "TiB": 1024.0**4,
}
_BANDWIDTH_UNITS: dict[str, float] = {
    "": 1.0,
    "bps": 1.0,
    "kbps": 1e3,
    "Kbps": 1e3,
    "Mbps": 1e6,
    "Gbps": 1e9,
    "Tbps": 1e12,
    "kbit/s": 1e3,
    "Mbit/s": 1e6,
    "Gbit/s": 1e9,
}
_RATE_PER: dict[str, float] = {"": 1.0, "s": 1.0, "ms": 1e-3, "m": 60.0, "min": 60.0, "h": 3600.0}


def _parse(value: object, units: dict[str, float], what: str, example: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected {what} like {example}, got {value!r}")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        match = _QUANTITY.match(value)
        if not match or match["unit"] not in units:
            known = ", ".join(u for u in units if u)
            raise ValueError(
                f"expected {what} like {example}, got {value!r}"
                + (f" | hint: write a number and one of the units {known}" if known else "")
            )
        factor = units[match["unit"]]
        # Divide for sub-units so that "50us" is exactly 5e-05, not 4.9999999999999996e-05.
        number = (
            float(match["num"]) / round(1 / factor) if factor < 1 else float(match["num"]) * factor
        )
    else:
        raise ValueError(f"expected {what} like {example}, got {type(value).__name__}")
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"expected {what} of at least 0, got {value!r}")
    return number


def parse_duration(value: object) -> float:
    """Seconds from ``"50us"``, ``"100ms"``, ``"10s"``, ``"2min"`` or a number of seconds."""
    return _parse(value, _DURATION_UNITS, "a duration", "50us, 100ms or 10s")


def parse_size(value: object) -> float:
    """Bytes from ``"300"``, ``"20KiB"``, ``"200MB"`` or a number of bytes."""
    return _parse(value, _SIZE_UNITS, "a size", "300, 20KiB or 200MB")


def parse_bandwidth(value: object) -> float:
    """Bits per second from ``"10Gbps"``, ``"100Mbps"`` or a number of bits per second."""
    return _parse(value, _BANDWIDTH_UNITS, "a bandwidth", "10Gbps or 100Mbps")


def parse_rate(value: object) -> float:
    """Events per second from ``"500/s"``, ``"30/min"``, ``"2/ms"`` or a number per second."""
    hint = " | hint: write a count per unit of time: 500/s, 30/min, 2/ms or 100/h"
    try:
        if isinstance(value, str) and "/" in value:
            count, _, per = value.partition("/")
            per = per.strip()
            if per not in _RATE_PER or not count.strip():
                raise ValueError(f"expected a rate like 500/s or 30/min, got {value!r}")
            if count.strip().startswith("-"):
                raise ValueError(f"expected a rate of at least 0, got {value!r}")
            return _parse(count, {"": 1.0}, "a rate", "500/s or 30/min") / _RATE_PER[per]
        return _parse(value, {"": 1.0}, "a rate", "500/s or 30/min")
    except ValueError as err:
        raise ValueError(f"{err}{hint}") from None
