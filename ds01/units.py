"""Parsing and printing of the units admins write: sizes ("64g"), durations ("30m") and GPU-equivalents."""

from __future__ import annotations

import re
from fractions import Fraction

MIG_SLICES_PER_GPU = 7
_SIZE = re.compile(r"^(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[kmgt]?)(?:i?b)?$", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?[smhdw])+$")
_DURATION_FACTORS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_size(text: str) -> int:
    """Bytes from "512m", "64g", "1.5t" or a plain byte count; binary units, as Docker uses them."""
    match = _SIZE.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a size: write a number with k, m, g or t, like 64g")
    return int(Fraction(match["number"]) * _SIZE_FACTORS[match["unit"].lower()])


def parse_duration(text: str) -> int:
    """Seconds from "90s", "30m", "48h", "7d", "2w" or combinations such as "1h30m"."""
    compact = text.strip().replace(" ", "")
    if not _DURATION.match(compact):
        raise ValueError(f"{text!r} is not a duration: write a number with s, m, h, d or w, like 30m or 48h")
    return int(sum(Fraction(number) * _DURATION_FACTORS[unit] for number, unit in _DURATION_PART.findall(compact)))


def parse_gpu_equivalents(value: object) -> Fraction:
    """A quota in GPU-equivalents, kept exact: 2, 1.5 or "3/7" (three MIG compute slices)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{value!r} is not a number of GPU-equivalents: write 1, 1.5 or 3/7")
    try:
        amount = Fraction(str(value).strip())
    except ValueError:
        raise ValueError(f"{value!r} is not a number of GPU-equivalents: write 1, 1.5 or 3/7") from None
    if amount < 0:
        raise ValueError(f"{value!r} is negative: GPU-equivalents are 0 or more")
    return amount


def mig_equivalents(slices: int) -> Fraction:
    return Fraction(slices, MIG_SLICES_PER_GPU)


def format_equivalents(amount: Fraction) -> str:
    """Exact when short ("1", "3/7"), with a decimal for reading ("3/7 (0.43)")."""
    if amount.denominator == 1:
        return str(amount.numerator)
    return f"{amount} ({float(amount):.2f})"


def format_duration(seconds: int | None) -> str:
    if seconds is None:
        return "unlimited"
    for unit, factor in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % factor == 0 and seconds >= factor:
            return f"{seconds // factor}{unit}"
    return f"{seconds}s"


def format_elapsed(seconds: float) -> str:
    """A human reading of a span of time, to the minute past an hour: "6h59m", "3d4h", "45s"."""
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m{secs}s" if secs else f"{minutes}m"
    return f"{secs}s"


def format_size(size_bytes: int) -> str:
    for unit, factor in (("t", 2**40), ("g", 2**30), ("m", 2**20), ("k", 2**10)):
        if size_bytes % factor == 0 and size_bytes >= factor:
            return f"{size_bytes // factor}{unit}"
    return str(size_bytes)


def format_bytes(size: int | None) -> str:
    """A size for people to read, to a tenth: 15.3MiB ("-" for none); format_size is the exact one configs use."""
    if size is None:
        return "-"
    for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= factor:
            return f"{size / factor:.1f}{unit}"
    return f"{size}B"
