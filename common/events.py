"""Socket.IO event names and error codes: the public contract of docs/protocol.md."""

# client -> server
JOIN = "join"
MESSAGE = "message"
TYPING = "typing"
NEXT = "next"
LEAVE = "leave"
REPORT = "report"
PRIVATE_CREATE = "private_create"
PRIVATE_JOIN = "private_join"

# server -> client
HELLO = "hello"
RESUMED = "resumed"
WAITING = "waiting"
MATCHED = "matched"
# MESSAGE and TYPING are also sent to the partner under the same names.
PARTNER_LEFT = "partner_left"
PARTNER_AWAY = "partner_away"
PARTNER_BACK = "partner_back"
DRAINING = "draining"
STATS = "stats"
ERROR = "error"

# The events the Lua scripts publish, handed to them by name (common/store.py lua_prelude): the
# scripts say EV.matched, never a string of their own.
LUA_EVENTS = (MESSAGE, TYPING, RESUMED, MATCHED, PARTNER_LEFT, PARTNER_AWAY, PARTNER_BACK, ERROR)

# partner_left reasons (`disconnected` is given by common/lua/reap.lua)
REASON_NEXT = "next"
REASON_LEFT = "left"
REASON_DISCONNECTED = "disconnected"

# error codes, with the English message sent beside them (the page translates by code)
ERRORS = {
    "bad_payload": "The request is malformed.",
    "empty": "The message is empty.",
    "too_long": "The text is too long.",
    "bad_id": "The message id must be a string of 1 to 64 characters.",
    "rate_limited": "Too many requests; slow down.",
    "not_chatting": "You are not in a chat.",
    "already_chatting": "You are already in a chat; press Next for a new stranger.",
    "unknown_event": "Unknown event.",
    "replaced": "This chat was opened in another tab or window, which took it over.",
    "room_not_found": "No room has this key: it is unknown, expired or used.",
    "room_full": "This room already has two people.",
    "unavailable": "The service is briefly unavailable; try again.",
    "filtered": "The message contains a word or a link that is not allowed here.",
    "internal": "Something went wrong on our side.",
    "banned": "You are banned from chatting until the time given.",
}


def error(code: str, message: str | None = None) -> dict:
    return {"code": code, "message": message or ERRORS[code]}


def failed(code: str, message: str | None = None) -> dict:
    """The acknowledgement of a refused client event."""
    return {"ok": False, "error": error(code, message)}


def banned(until_ms: int) -> dict:
    """The `banned` error: when the ban ends (ms since the epoch), and nothing about whom."""
    return {**error("banned"), "until": int(until_ms)}
