"""sanitize_username: examples from real directories, and the properties every output must have."""

from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from ds01.identity.accounts import MAX_SANITIZED_LENGTH, sanitize_username

SAFE = re.compile(r"[a-z0-9][a-z0-9_]*")
safe_names = st.from_regex(r"[a-z0-9][a-z0-9_]{0,31}", fullmatch=True)


def digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:6]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("jane.doe@lab.example", f"jane_doe_lab_example_{digest('jane.doe@lab.example')}"),
        ("248835@hertie-school.lan", f"248835_hertie_school_lan_{digest('248835@hertie-school.lan')}"),
        ("Alice", f"alice_{digest('Alice')}"),
        ("alice", "alice"),
        ("248835", "248835"),
        ("svc_backup_01", "svc_backup_01"),
        ("", f"user_{digest('')}"),
        ("@@@", f"user_{digest('@@@')}"),
        ("_alice", f"alice_{digest('_alice')}"),
        ("jane..doe", f"jane_doe_{digest('jane..doe')}"),
        ("Zoë", f"zo_{digest('Zoë')}"),
    ],
)
def test_examples(name: str, expected: str) -> None:
    assert sanitize_username(name) == expected


def test_long_names_are_cut_and_keep_their_digest() -> None:
    name = "a.very.long.login.name.from.some.directory@example.org"
    result = sanitize_username(name)
    assert result == f"a_very_long_login_name_fr_{digest(name)}"
    assert len(result) == MAX_SANITIZED_LENGTH


def test_safe_name_longer_than_the_limit_is_cut() -> None:
    name = "a" * 40
    assert sanitize_username(name) == f"{'a' * 25}_{digest(name)}"


def test_cut_never_leaves_a_double_underscore() -> None:
    # The 25th character of the cleaned base is "_", which must not sit next to the digest's "_".
    name = "abcdefghijklmnopqrstuvwx.yz"
    assert sanitize_username(name) == f"abcdefghijklmnopqrstuvwx_{digest(name)}"


def test_lone_surrogate_does_not_raise() -> None:
    result = sanitize_username("\ud800bob")
    assert result.startswith("bob_")
    assert SAFE.fullmatch(result)


@given(st.text())
@example("")
@example("-")
@example("İ" * 40)
def test_output_shape(name: str) -> None:
    result = sanitize_username(name)
    assert SAFE.fullmatch(result), result
    assert len(result) <= MAX_SANITIZED_LENGTH


@given(safe_names)
def test_safe_names_map_to_themselves(name: str) -> None:
    assert sanitize_username(name) == name


@given(st.text())
def test_idempotent(name: str) -> None:
    once = sanitize_username(name)
    assert sanitize_username(once) == once


@given(st.text(), st.text())
@example("alice", "Alice")
@example("jane.doe", "jane_doe")
@example("jane.doe", "jane@doe")
def test_distinct_names_stay_distinct(a: str, b: str) -> None:
    assume(a != b)
    assert sanitize_username(a) != sanitize_username(b)


@given(safe_names, st.text())
def test_distinct_names_stay_distinct_when_one_is_safe(a: str, b: str) -> None:
    assume(a != b)
    assert sanitize_username(a) != sanitize_username(b)
