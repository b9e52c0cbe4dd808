"""Human sizes ("64M", "1.5G", 4096) to bytes, and back."""

from __future__ import annotations

import re

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
# ASCII digits only (``\d`` would take any Unicode digit), spaces and tabs around the parts,
# matched with fullmatch (``$`` would also match before a trailing newline).
_SIZE = re.compile(r"[ \t]*([0-9]+)(?:\.([0-9]+))?[ \t]*([KMGT]?)(?:i?B)?[ \t]*", re.IGNORECASE | re.ASCII)

MAX_SIZE = (1 << 63) - 1
"""The largest size accepted: what fits a signed 64-bit byte count (about 8 exabytes)."""

# A whole part of more digits cannot be below MAX_SIZE (19 digits), and more decimals than
# this are refused rather than rounded; checking lengths first keeps int() (and its limit of
# 4300 digits) away from huge digit strings, and float() (inf) out of it altogether.
_MAX_INT_DIGITS = 19
_MAX_FRACTION_DIGITS = 16


def _shown(value: str) -> str:
    """The user's text in a message: ASCII-escaped (a KELVIN SIGN is not a 'K') and shortened."""
    return ascii(value) if len(value) <= 40 else ascii(value[:20]) + f"... ({len(value)} characters)"


def parse_size(value: int | str) -> int:
    """Return a byte count; accepts ints and strings with K/M/G/T suffixes (powers of 1024).

    Fractions are exact (``"1.5G"`` is 1610612736 bytes; a fraction of a byte is dropped);
    anything above :data:`MAX_SIZE` is refused with a ``ValueError`` like any malformed size.
    """
    if isinstance(value, bool):
        raise ValueError("a size must be a number of bytes or a string like '64M'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        if value > MAX_SIZE:
            raise ValueError(f"a size cannot be more than {MAX_SIZE} bytes")
        return value
    if not isinstance(value, str):
        raise ValueError("a size must be a number of bytes or a string like '64M'")
    match = _SIZE.fullmatch(value)
    if not match:
        raise ValueError(f"{_shown(value)} is not a size (use bytes or a K/M/G/T suffix, e.g. '64M')")
    whole, fraction, unit = match.groups()
    fraction = (fraction or "").rstrip("0")
    whole = whole.lstrip("0") or "0"
    if len(whole) > _MAX_INT_DIGITS:
        raise ValueError(f"{_shown(value)} is too large for a size (at most {MAX_SIZE} bytes)")
    if len(fraction) > _MAX_FRACTION_DIGITS:
        raise ValueError(f"{_shown(value)} has too many decimals for a size (at most {_MAX_FRACTION_DIGITS})")
    scale = _UNITS[unit.upper()]
    size = int(whole) * scale
    if fraction:
        size += int(fraction) * scale // 10 ** len(fraction)
    if size > MAX_SIZE:
        raise ValueError(f"{_shown(value)} is too large for a size (at most {MAX_SIZE} bytes)")
    return size


def format_size(value: int) -> str:
    for unit in ("T", "G", "M", "K"):
        scale = _UNITS[unit]
        if value >= scale and value % scale == 0:
            return f"{value // scale}{unit}"
    return str(value)
