"""Sizes, durations and GPU-equivalents as admins write them."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ds01.units import (
    format_duration,
    format_equivalents,
    format_size,
    mig_equivalents,
    parse_duration,
    parse_gpu_equivalents,
    parse_size,
)


@pytest.mark.parametrize(("text", "size"), [("64g", 64 * 2**30), ("512m", 512 * 2**20), ("1.5t", 3 * 2**39),
                                             ("100", 100), ("2GiB", 2 * 2**30), ("8 G", 8 * 2**30)])
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "g", "-1g", "1x", "1.2.3g", "lots"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


@pytest.mark.parametrize(("text", "seconds"), [("30m", 1800), ("48h", 172800), ("1h30m", 5400), ("90s", 90),
                                                ("2w", 1209600), ("1.5h", 5400)])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "h", "-5m", "5 minutes", "1y"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@given(st.integers(min_value=1, max_value=10**7))
def test_duration_round_trip(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(min_value=1, max_value=2**50))
def test_size_round_trip(size: int) -> None:
    assert parse_size(format_size(size)) == size


def test_gpu_equivalents_are_exact() -> None:
    assert parse_gpu_equivalents("3/7") == Fraction(3, 7)
    assert parse_gpu_equivalents(1.5) == Fraction(3, 2)
    assert sum(mig_equivalents(s) for s in (3, 2, 1, 1)) == 1
    assert format_equivalents(Fraction(3, 7)) == "3/7 (0.43)"
    for bad in ("-1", True, None, "x", [1]):
        with pytest.raises(ValueError, match=r"GPU-equivalents|negative"):
            parse_gpu_equivalents(bad)


@given(st.lists(st.integers(min_value=1, max_value=7), max_size=30))
def test_mig_sums_never_drift(slices: list[int]) -> None:
    total = sum((mig_equivalents(s) for s in slices), Fraction(0))
    assert total == Fraction(sum(slices), 7)
