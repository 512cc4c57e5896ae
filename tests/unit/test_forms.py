"""Form bodies (RFC 6749 §3.1, §3.2, App. B) and error texts (§5.2)."""

from __future__ import annotations

import pytest

from swim_as.errors import (
    InvalidClient,
    InvalidRequest,
    InvalidToken,
    OAuthError,
    status_of,
)
from swim_as.http.forms import parse_form


def test_plain_form() -> None:
    form = parse_form(
        b"grant_type=client_credentials&scope=a+b&client_id=spiffe%3A%2F%2Fx"
    )
    assert form == {
        "grant_type": ["client_credentials"],
        "scope": ["a b"],
        "client_id": ["spiffe://x"],
    }


def test_empty_value_is_omitted() -> None:
    assert parse_form(b"scope=&grant_type=x&&") == {"grant_type": ["x"]}


def test_repeated_parameter_refused() -> None:
    with pytest.raises(InvalidRequest, match="parameter scope is repeated"):
        parse_form(b"scope=a&scope=b")


def test_repeatable_parameter() -> None:
    form = parse_form(b"resource=a&resource=b", frozenset({"resource"}))
    assert form["resource"] == ["a", "b"]


@pytest.mark.parametrize("body", [b"a=\xff", b"a=%ff%fe", "a=é".encode()])
def test_not_form_encoded(body: bytes) -> None:
    with pytest.raises(InvalidRequest):
        parse_form(body)


def test_repeated_odd_name_is_not_echoed() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_form(b"%22%5C=1&%22%5C=2")
    assert caught.value.description == "a parameter is repeated"


def test_descriptions_stay_in_the_rfc_charset() -> None:
    with pytest.raises(ValueError):
        InvalidRequest('bad "quote"')
    with pytest.raises(ValueError):
        InvalidRequest("back\\slash")
    with pytest.raises(ValueError):
        InvalidRequest("newline\n")


def test_detail_is_not_in_the_body() -> None:
    error = InvalidClient("client authentication failed", detail="secret internals")
    assert error.body() == {
        "error": "invalid_client",
        "error_description": "client authentication failed",
    }
    assert status_of(error) == 400 and error.headers() == {}


def test_invalid_client_with_a_scheme_is_401() -> None:
    error = InvalidClient(scheme="Basic")
    assert status_of(error) == 401
    assert error.headers() == {"WWW-Authenticate": 'Basic realm="swim-as"'}


def test_bearer_challenges() -> None:
    missing = InvalidToken(missing=True)
    assert missing.headers()["WWW-Authenticate"] == 'Bearer realm="swim-as"'
    assert missing.body() == {}
    wrong = InvalidToken()
    assert 'error="invalid_token"' in wrong.headers()["WWW-Authenticate"]
    assert isinstance(wrong, OAuthError) and status_of(wrong) == 401
