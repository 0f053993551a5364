"""Validation of every client payload: hostile until checked.

Hand-written rather than a schema library: six tiny shapes, checked on the hot path of every
message, where a few isinstance() calls cost less than building a model object.
"""
from __future__ import annotations

import unicodedata
from typing import Any

from common.limits import (MAX_ID_LEN, MAX_INTEREST_LEN, MAX_INTERESTS, MAX_REPORT_LEN,
                           PRIVATE_KEY_ALPHABET, PRIVATE_KEY_LEN)

MAX_SEQ = 2**53 - 1  # the largest integer a JavaScript client can hold exactly


class Refused(Exception):
    """A client payload was refused; `code` is one of common.events.ERRORS."""

    def __init__(self, code: str):
        super().__init__(code)
        self.code = code


def _is_text(value: Any) -> bool:
    """A str that can be stored: JSON may carry lone surrogates ("\\ud800"), UTF-8 cannot, and
    NUL ("\\u0000"), which PostgreSQL's text cannot (the archiver's batch would fail forever)."""
    if not isinstance(value, str) or "\x00" in value:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _without_format_chars(text: str) -> str:
    """`text` without Unicode's invisible format characters (zero-width space and joiners,
    direction overrides, BOM): an interest made of them alone showed as a blank tag, and
    "ca\\u200bts" must match "cats"."""
    if text.isascii():
        return text
    return "".join(c for c in text if unicodedata.category(c) != "Cf")


def _object(data: Any) -> dict:
    """An optional object payload; unknown fields are ignored (the protocol may grow)."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise Refused("bad_payload")
    return data


def parse_join(data: Any) -> list[str] | None:
    """Interests, lower-cased, trimmed, without duplicates; None when not given (keep the last)."""
    d = _object(data)
    raw = d.get("interests")
    if raw is None:
        return None
    if not isinstance(raw, list) or len(raw) > MAX_INTERESTS:
        raise Refused("bad_payload")
    out: list[str] = []
    for item in raw:
        if not _is_text(item):
            raise Refused("bad_payload")
        item = " ".join(_without_format_chars(item).split()).lower()
        if len(item) > MAX_INTEREST_LEN:
            raise Refused("too_long")
        if item and item not in out:
            out.append(item)
    return out


def parse_message(data: Any, max_len: int) -> tuple[str, str]:
    """(id, text) with the text trimmed; raises Refused."""
    if not isinstance(data, dict):
        raise Refused("bad_payload")
    msg_id = data.get("id")
    if not isinstance(msg_id, str) or not 0 < len(msg_id) <= MAX_ID_LEN or not _is_text(msg_id):
        raise Refused("bad_id")
    text = data.get("text")
    if not _is_text(text):
        raise Refused("bad_payload")
    text = text.strip()
    if not text:
        raise Refused("empty")
    if len(text) > max_len:
        raise Refused("too_long")
    return msg_id, text


def parse_typing(data: Any) -> bool:
    if not isinstance(data, dict) or not isinstance(data.get("typing"), bool):
        raise Refused("bad_payload")
    return data["typing"]


def parse_empty(data: Any) -> None:
    """`next` and `leave` take nothing (or an empty object)."""
    _object(data)


def parse_report(data: Any) -> str:
    d = _object(data)
    reason = d.get("reason", "")
    if not _is_text(reason):
        raise Refused("bad_payload")
    reason = reason.strip()
    if len(reason) > MAX_REPORT_LEN:
        raise Refused("too_long")
    return reason


def parse_private_join(data: Any) -> str:
    """The room key of `private_join {key}`, upper-cased: exactly PRIVATE_KEY_LEN characters of
    the key alphabet (a key someone typed in lower case, or in full width with a Chinese or
    Japanese input method, is the same key). Surrounding spaces (a paste) are dropped."""
    if not isinstance(data, dict):
        raise Refused("bad_payload")
    key = data.get("key")
    if not isinstance(key, str) or len(key) > 4 * PRIVATE_KEY_LEN:
        raise Refused("bad_payload")
    key = unicodedata.normalize("NFKC", key).strip().upper()  # an IME's full-width ＡＢ２ too
    if len(key) != PRIVATE_KEY_LEN or any(c not in PRIVATE_KEY_ALPHABET for c in key):
        raise Refused("bad_payload")
    return key


def parse_auth(auth: Any) -> tuple[str | None, int]:
    """(token or None, since) from the connect `auth`; anything malformed is simply ignored."""
    if not isinstance(auth, dict):
        return None, 0
    token = auth.get("token")
    since = auth.get("since")
    token = token if isinstance(token, str) and 0 < len(token) <= 256 and token.isascii() else None
    if not isinstance(since, int) or isinstance(since, bool) or not 0 <= since <= MAX_SEQ:
        since = 0
    return token, since
