"""The `container` name rules: what users may type, and the NAME._.UID engine names behind them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ds01.errors import EXIT_USAGE, UsageError
from ds01.names import NAME_SEPARATOR, check_name, engine_name, plain_name

VALID = st.from_regex(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}", fullmatch=True).filter(lambda n: NAME_SEPARATOR not in n)


@pytest.mark.parametrize("name", ["train", "t", "Train-2", "exp_1.b", "9lives", "a" * 63, "a.b_c-d", "x._y", "x_.y"])
def test_valid_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", [
    "", "-x", ".x", "_x", "a" * 64, "bad name", "a/b", "a:b", "é", "a._.b", "a._.1001", "._.", "train\n", "\ntrain",
    "a\x00b", "a*", "a._.",
])
def test_invalid_names_are_usage_errors(name: str) -> None:
    with pytest.raises(UsageError, match="not a valid container name") as raised:
        check_name(name)
    assert raised.value.exit_code == EXIT_USAGE
    assert "for example" in str(raised.value)  # says what to do instead


def test_engine_name_is_name_dot_underscore_dot_uid() -> None:
    assert engine_name("train", 1001) == "train._.1001"
    assert engine_name("a.b", 0) == "a.b._.0"


def test_engine_name_checks_the_name() -> None:
    with pytest.raises(UsageError):
        engine_name("a._.b", 1001)


@pytest.mark.parametrize(("engine", "uid", "plain"), [
    ("train._.1001", 1001, "train"),
    ("/train._.1001", 1001, "train"),  # as the engine lists names
    ("train._.1001", 1002, None),  # someone else's
    ("train._.10011", 1001, None),
    ("train", 1001, None),  # not made by `container`
    ("._.1001", 1001, None),
    ("a._.b._.1001", 1001, None),  # the plain part would not be a valid name
    ("-x._.1001", 1001, None),
])
def test_plain_name(engine: str, uid: int, plain: str | None) -> None:
    assert plain_name(engine, uid) == plain


@given(VALID, st.integers(min_value=0, max_value=2**32 - 1))
def test_names_round_trip(name: str, uid: int) -> None:
    full = engine_name(name, uid)
    assert plain_name(full, uid) == name
    assert plain_name(full, uid + 1) is None


@given(VALID, VALID, st.integers(min_value=0, max_value=2**31), st.integers(min_value=0, max_value=2**31))
def test_different_users_never_collide(first: str, second: str, uid: int, other: int) -> None:
    if uid != other:
        assert engine_name(first, uid) != engine_name(second, other)
