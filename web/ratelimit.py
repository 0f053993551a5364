"""Token buckets: per user for control events (join, next, typing, ...), per address for new
sessions, per connection for packets.

Hand-written (ten lines) rather than `limits`: it is per socket, lives and dies with the
connection, and must cost no I/O; message rate limiting, which must hold across workers and
reconnects, is done in Redis inside common/lua/message.lua.
"""
from __future__ import annotations

import itertools
from time import monotonic


class TokenBucket:
    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, float(burst)
        self.tokens, self.stamp = float(burst), monotonic()

    def refilled(self) -> bool:
        """Whether the bucket would be full now (its owner has been quiet long enough)."""
        return self.tokens + (monotonic() - self.stamp) * self.rate >= self.burst

    def take(self) -> bool:
        # Called for every packet: locals and a comparison instead of min() and attribute
        # updates (a third of its cost).
        now = monotonic()
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.stamp = now
        if tokens < 1:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1
        return True


class KeyedBuckets:
    """One bucket per key (a user, an address), kept after its owner leaves: a budget that a
    reconnect could reset would be no budget. Buckets that have gone quiet (full again) are
    dropped when there are many, so the table stays small whatever the number of keys seen."""

    PRUNE_AT = 10_000

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self.buckets: dict[str, TokenBucket] = {}

    def take(self, key: str) -> bool:
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= self.PRUNE_AT:
                self.prune()
            bucket = self.buckets[key] = TokenBucket(self.rate, self.burst)
        return bucket.take()

    def prune(self) -> None:
        for key, bucket in list(self.buckets.items()):
            if bucket.refilled():
                del self.buckets[key]
        if len(self.buckets) >= self.PRUNE_AT // 2:
            # Still crowded (many keys busy at once): forget the oldest half rather than scan
            # them all again on the next new key. A forgotten key starts again with a full
            # bucket, which costs less than a worker scanning thousands on every arrival.
            for key in list(itertools.islice(self.buckets, len(self.buckets) // 2)):
                del self.buckets[key]
