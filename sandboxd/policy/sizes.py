"""Human sizes ("64M", "1.5G", 4096) to bytes, and back."""

from __future__ import annotations

import re

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)


def parse_size(value: int | str) -> int:
    """Return a byte count; accepts ints and strings with K/M/G/T suffixes (powers of 1024)."""
    if isinstance(value, bool):
        raise ValueError("a size must be a number of bytes or a string like '64M'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if not isinstance(value, str):
        raise ValueError("a size must be a number of bytes or a string like '64M'")
    match = _SIZE.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a size (use bytes or a K/M/G/T suffix, e.g. '64M')")
    number, unit = match.groups()
    return int(float(number) * _UNITS[unit.upper()])


def format_size(value: int) -> str:
    for unit in ("T", "G", "M", "K"):
        scale = _UNITS[unit]
        if value >= scale and value % scale == 0:
            return f"{value // scale}{unit}"
    return str(value)
