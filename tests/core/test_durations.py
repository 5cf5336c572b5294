"""Durations are how operators write policy; a typo must be refused, never misread."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.core.durations import MAX, format_duration, parse_duration
from worker.core.errors import InvalidInput


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", timedelta(days=30)),
        ("6h", timedelta(hours=6)),
        ("5m", timedelta(minutes=5)),
        ("90s", timedelta(seconds=90)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        ("300", timedelta(seconds=300)),
        ("0", timedelta(0)),
        ("0s", timedelta(0)),
        (" 5M ", timedelta(minutes=5)),
        ("3650d", MAX),
    ],
)
def test_parse_operator_spellings(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (90, timedelta(seconds=90)),
        (1.5, timedelta(seconds=1.5)),
        (timedelta(hours=2), timedelta(hours=2)),
    ],
)
def test_parse_accepts_numbers_of_seconds_and_timedeltas(
    value: int | float | timedelta, expected: timedelta
) -> None:
    assert parse_duration(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (timedelta(days=30), "30d"),
        (timedelta(hours=1, minutes=30), "1h30m"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(hours=1, minutes=1), "1h1m"),
        (timedelta(0), "0s"),
    ],
)
def test_format_is_the_shortest_exact_spelling(value: timedelta, expected: str) -> None:
    assert format_duration(value) == expected


@given(st.integers(min_value=0, max_value=int(MAX.total_seconds())))
def test_format_then_parse_round_trips(seconds: int) -> None:
    value = timedelta(seconds=seconds)
    assert parse_duration(format_duration(value)) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "abc",
        "5x",
        "-5s",
        "-5",
        "+5",
        "1e9d",
        "1.5h",
        "1h 30m",
        "h",
        "5 m",
        "3651d",
        "3650d1s",
        "9999999999999",
        "9" * 41 + "d",
        -5,
        True,
    ],
)
def test_refusals_raise_invalid_input_on_one_line(value: object) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_duration(value)
    assert "\n" not in str(caught.value)


def test_refusal_message_shows_the_input_and_the_accepted_forms() -> None:
    with pytest.raises(InvalidInput, match=r"invalid duration 'abc' \(use e\.g\. 30d, 6h"):
        parse_duration("abc")


def test_out_of_range_message_says_the_range() -> None:
    with pytest.raises(InvalidInput, match=r"out of range \(0s to 3650d\)"):
        parse_duration("3651d")


@given(st.text(alphabet="0123456789dhms -+.e", max_size=9))
def test_short_text_either_parses_or_is_refused_as_invalid_input(text: str) -> None:
    try:
        value = parse_duration(text)
    except InvalidInput:
        return
    assert timedelta(0) <= value <= MAX


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("99999999999d", id="huge-days"),
        pytest.param("9" * 30, id="huge-bare-seconds"),
        pytest.param(10**30, id="huge-int"),
        pytest.param(1e300, id="huge-float"),
        pytest.param(float("inf"), id="infinity"),
        pytest.param(float("nan"), id="nan"),
        pytest.param("\u00b2", id="superscript-digit"),
        pytest.param("\u0663d", id="arabic-indic-digit"),
    ],
)
def test_huge_or_odd_values_are_refused_as_invalid_input(value: object) -> None:
    with pytest.raises(InvalidInput):
        parse_duration(value)


@pytest.mark.parametrize("value", [None, [30], {"d": 30}, b"30d"])
def test_values_of_other_types_are_refused_as_invalid_input(value: object) -> None:
    with pytest.raises(InvalidInput, match=r"^invalid duration .* \(use e\.g\. 30d"):
        parse_duration(value)
