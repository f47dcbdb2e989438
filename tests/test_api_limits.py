"""``api.limits.json_text_problem``: text in a JSON body that no store can keep."""

from __future__ import annotations

import json

import pytest

from api.limits import json_text_problem


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'{"note": "a\\u0000b"}', "NUL"),
        (b'{"a\\u0000": 1}', "NUL"),  # in a key
        (b'{"x": [1, {"y": ["\\u0000"]}]}', "NUL"),  # nested
        (b'["\\\\\\u0000"]', "NUL"),  # an escaped backslash, then a NUL
        (b'{"note": "a\\ud800b"}', "surrogate"),
        (b'{"note": "\\uDFFF"}', "surrogate"),  # a low half alone, upper-case hex
        (b'{"note": "\\ude00\\ud83d"}', "surrogate"),  # the halves in the wrong order
    ],
)
def test_unstorable_text_is_named(body: bytes, problem: str) -> None:
    found = json_text_problem(body)
    assert found is not None and problem in found


@pytest.mark.parametrize(
    "body",
    [
        b'{"note": "a\\\\u0000b"}',  # a backslash followed by the letters u0000: plain text
        b'{"note": "\\ud83d\\ude00"}',  # a valid pair (an emoji)
        json.dumps({"vehicle": "沪A12345", "note": "tab\tline\n"}).encode(),  # \\u escapes
        b'{"note": "plain"}',
        b"",
        b"not json at all \\u0000",  # the route's own parser answers that
        b"[" * 100_000 + b'"\\u0000"' + b"]" * 100_000,  # too deep to decode: same
    ],
)
def test_storable_or_not_json_is_none(body: bytes) -> None:
    assert json_text_problem(body) is None
