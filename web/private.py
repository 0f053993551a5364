"""Private rooms' keys and who is guessing them.

A key is drawn with `secrets` (never `random`: a key is all that keeps a room private) from
common/limits.py's alphabet. Guesses are counted per user and per client address in Redis
(common/lua/private_join.lua), so the count holds across web workers and reconnects; the
address is named there only by its keyed hash (common/moderation.py, made at connect), never
in clear.
"""
from __future__ import annotations

import secrets

from common.limits import PRIVATE_KEY_ALPHABET, PRIVATE_KEY_LEN


def new_key() -> str:
    return "".join(secrets.choice(PRIVATE_KEY_ALPHABET) for _ in range(PRIVATE_KEY_LEN))
