"""A per-connection token bucket for control events (join, next, typing, ...).

Hand-written (ten lines) rather than `limits`: it is per socket, lives and dies with the
connection, and must cost no I/O; message rate limiting, which must hold across workers and
reconnects, is done in Redis inside common/lua/message.lua.
"""
from __future__ import annotations

import time


class TokenBucket:
    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, float(burst)
        self.tokens, self.stamp = float(burst), time.monotonic()

    def refilled(self) -> bool:
        """Whether the bucket would be full now (its owner has been quiet long enough)."""
        return self.tokens + (time.monotonic() - self.stamp) * self.rate >= self.burst

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True
