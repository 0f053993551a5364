"""Payload validation (web/protocol.py) as plain functions: every bad payload of the tables in
tests/test_validation.py, fast, with no process. A few of each table also go over the wire there
(`*_OVER_THE_WIRE`), which shows the handlers use these functions and answer with the code."""
from __future__ import annotations

import pytest

from test_validation import (EMPTY_BAD, JOIN_BAD, MAX_ID, MAX_INTEREST, MAX_INTERESTS, MAX_REASON,
                             MAX_TEXT, MESSAGE_BAD, NOTHING, REPORT_BAD, TYPING_BAD, describe)
from web.protocol import (Refused, parse_auth, parse_empty, parse_join, parse_message,
                          parse_report, parse_typing)


def handler_argument(payload):
    """What a handler is given for a payload as the client sent it: its first argument, None
    when there was none (`NOTHING`) or an explicit null (`(None,)`)."""
    if payload is NOTHING:
        return None
    return payload[0] if isinstance(payload, tuple) else payload


PARSERS = {
    "join": parse_join,
    "message": lambda data: parse_message(data, MAX_TEXT),
    "typing": parse_typing,
    "next/leave": parse_empty,
    "report": parse_report,
}
CASES = [(event, payload, code)
         for event, table in (("join", JOIN_BAD), ("message", MESSAGE_BAD), ("typing", TYPING_BAD),
                              ("next/leave", EMPTY_BAD), ("report", REPORT_BAD))
         for payload, code in table]


@pytest.mark.parametrize(("event", "payload", "code"), CASES,
                         ids=[f"{e}-{describe(p)}" for e, p, _ in CASES])
def test_a_bad_payload_is_refused_with_its_code(event, payload, code):
    with pytest.raises(Refused) as refused:
        PARSERS[event](handler_argument(payload))
    assert refused.value.code == code


def test_invisible_format_characters_leave_interests():
    # zero-width space, joiner, a right-to-left override and a BOM: nothing to show or to match
    assert parse_join({"interests": ["\u200b\u200d", "\u202e\ufeff", "ca\u200bts"]}) == ["cats"]
    assert parse_join({"interests": ["\u200b"]}) == []


def test_the_limits_themselves_are_accepted():
    interests = parse_join({"interests": ["A", "b", "c", "d", "  " + "Z" * MAX_INTEREST + " "]})
    assert interests == ["a", "b", "c", "d", "z" * MAX_INTEREST]
    assert len(parse_join({"interests": [f"i{k}" for k in range(MAX_INTERESTS)]})) == MAX_INTERESTS
    assert parse_join({}) is None and parse_join(None) is None
    assert parse_message({"id": "i" * MAX_ID, "text": " " + "界" * MAX_TEXT + "\n"}, MAX_TEXT) == \
        ("i" * MAX_ID, "界" * MAX_TEXT)
    assert parse_typing({"typing": False}) is False
    assert parse_empty(None) is None and parse_empty({}) is None
    assert parse_report({"reason": "  " + "r" * MAX_REASON + " "}) == "r" * MAX_REASON
    assert parse_report(None) == ""


@pytest.mark.parametrize(("auth", "expected"), [
    (None, (None, 0)),
    ("token", (None, 0)),
    ({"token": "t", "since": 7}, ("t", 7)),
    ({"since": -1}, (None, 0)),
    ({"since": "7"}, (None, 0)),
    ({"token": 5}, (None, 0)),
])
def test_a_malformed_auth_is_ignored_not_refused(auth, expected):
    assert parse_auth(auth) == expected
