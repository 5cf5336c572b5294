"""The claims of a token signed over HTTP: what the server stamps, and every refusal in one line
naming what is wrong."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.core.errors import InvalidInput
from worker.core.tokens import SERVER_CLAIMS, Stamp, token_claims

STAMP = Stamp(issuer="https://keys.example/realms/acme", now=1_800_000_000, jti="tok_1")
HOUR = timedelta(hours=1)


def claims(value: object = None, **options: Any) -> dict[str, Any]:
    return token_claims({} if value is None else value, max_ttl=HOUR, stamp=STAMP, **options)


def refusal(value: object = None, **options: Any) -> str:
    with pytest.raises(InvalidInput) as refused:
        claims(value, **options)
    (line,) = refused.value.messages
    return line


def test_the_server_stamps_iat_exp_iss_and_jti_over_the_callers_claims() -> None:
    assert claims({"sub": "u", "roles": ["a"]}, ttl="5m") == {
        "sub": "u",
        "roles": ["a"],
        "iat": 1_800_000_000,
        "exp": 1_800_000_300,
        "iss": "https://keys.example/realms/acme",
        "jti": "tok_1",
    }


def test_ttl_defaults_to_the_max_and_takes_seconds_or_durations() -> None:
    assert claims()["exp"] - claims()["iat"] == 3600
    assert claims(ttl=90)["exp"] == 1_800_000_090
    assert claims(ttl="1h")["exp"] == 1_800_003_600


@pytest.mark.parametrize(
    ("ttl", "line"),
    [
        ("61m", "Ttl (1h1m) is longer than the realm's max token ttl (1h)"),
        (3601, "Ttl (1h1s) is longer than the realm's max token ttl (1h)"),
        (0, "Ttl must be positive"),
        ("0s", "Ttl must be positive"),
        ("soon", "Ttl must be seconds or a duration such as 5m or 1h"),
        (True, "Ttl must be seconds or a duration such as 5m or 1h"),
        ([5], "Ttl must be seconds or a duration such as 5m or 1h"),
        (-5, "Ttl must be seconds or a duration such as 5m or 1h"),
    ],
)
def test_a_bad_ttl_is_refused(ttl: object, line: str) -> None:
    assert refusal(ttl=ttl) == line


@pytest.mark.parametrize("name", SERVER_CLAIMS)
def test_claims_may_not_set_a_server_claim(name: str) -> None:
    assert refusal({"sub": "u", name: 1}) == f"Claims must not set {name}: the server does"


def test_every_server_claim_set_is_named_in_one_line() -> None:
    line = refusal({"jti": "x", "iss": "me", "exp": 1})
    assert line == "Claims must not set exp, iss, jti: the server does"


@pytest.mark.parametrize("value", [[], "sub", 3, ("sub",), {1: "x"}])
def test_claims_must_be_a_json_object(value: object) -> None:
    assert refusal(value) == "Claims must be a JSON object"


def test_claims_must_be_json_values() -> None:
    assert refusal({"n": float("nan")}) == "Claims must be JSON values (not NaN or Infinity)"
    assert refusal({"n": float("inf")}) == "Claims must be JSON values (not NaN or Infinity)"


def test_the_audience_comes_from_one_place() -> None:
    assert claims(audience="api")["aud"] == "api"
    assert claims(audience=["api", "web"])["aud"] == ["api", "web"]
    assert claims({"aud": ["api"]})["aud"] == ["api"]
    assert refusal({"aud": "api"}, audience="web") == (
        "Give the audience once: as audience or as the aud claim"
    )


@pytest.mark.parametrize("value", ["", [], [""], ["a", 3], 3, {"a": 1}])
def test_a_bad_audience_is_refused(value: object) -> None:
    assert refusal(audience=value) == "Audience must be a non-empty string or a list of them"
    line = refusal({"aud": value})
    assert line == "The aud claim must be a non-empty string or a list of them"


@given(
    st.dictionaries(
        st.text(max_size=8).filter(lambda name: name not in (*SERVER_CLAIMS, "aud")),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=8),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=4), inner, max_size=3)
            ),
            max_leaves=8,
        ),
        max_size=5,
    )
)
def test_any_other_json_claims_are_kept_as_given(given_claims: dict[str, Any]) -> None:
    result = claims(given_claims)
    assert {k: v for k, v in result.items() if k in given_claims} == given_claims
    assert set(result) == set(given_claims) | {"iat", "exp", "iss", "jti"}
