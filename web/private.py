"""Private rooms' keys and who is guessing them.

A key is drawn with `secrets` (never `random`: a key is all that keeps a room private) from
common/limits.py's alphabet. Guesses are counted per user and per client address in Redis
(common/lua/private_join.lua), so the count holds across web workers and reconnects; the
address is named there only by a keyed hash (HMAC-SHA256 with SECRET_KEY), never in clear.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets

from common.limits import PRIVATE_KEY_ALPHABET, PRIVATE_KEY_LEN


def new_key() -> str:
    return "".join(secrets.choice(PRIVATE_KEY_ALPHABET) for _ in range(PRIVATE_KEY_LEN))


def client_address(environ: dict, trusted_proxies: int) -> str:
    """The client's address as the connection's environ tells it: behind `trusted_proxies`
    hops, the entry of X-Forwarded-For they added (the Socket.IO middleware sits outside
    web/app.py's ProxyFix, so its environ is the raw one)."""
    if trusted_proxies:
        hops = [h.strip() for h in environ.get("HTTP_X_FORWARDED_FOR", "").split(",")]
        if len(hops) >= trusted_proxies and hops[-trusted_proxies]:
            return hops[-trusted_proxies]
    return environ.get("REMOTE_ADDR") or "?"


def address_id(address: str, secret: str) -> str:
    """The keyed hash that stands for an address in Redis: the same for every worker (one
    SECRET_KEY), useless to anyone without the key."""
    mac = hmac.new(secret.encode(), b"private-guess:" + address.encode(), hashlib.sha256)
    return mac.hexdigest()[:32]
