"""The matcher's loop: wake on a join (or every tick), pair, reap; one step at a time.

Pairing and reaping publish their own `matched` / `partner_left` from their Lua scripts, in the
same atomic step as the change: nothing is left to emit if this process dies.

No gevent here: a plain blocking loop is all a daemon of one thread needs, and the Socket.IO
emitter it uses is write-only (it publishes to Redis and never listens).
"""
from __future__ import annotations

import logging
import time

from redis.exceptions import RedisError

from common import events as ev
from common.config import Settings
from common.entry import pause
from common.redisconn import connect as redis_connect
from common.store import Store

log = logging.getLogger("matcher")

TICK = 0.25  # seconds between passes when nobody joins: interest waits and reaping need them
MAX_BACKOFF = 5.0


class Matcher:
    def __init__(self, settings: Settings):
        self.s = settings
        self.store = Store(redis_connect(settings), settings)
        self.stopping = False
        self._next_stats = 0.0

    def stop(self, *_):
        self.stopping = True

    def step(self) -> None:
        """One pass: pair until the queue is done, reap, and now and then broadcast the counts."""
        while True:
            made = self.store.match()
            if made:
                log.info("matched %d pair(s)", made)
            if made < self.s.match_batch // 2:
                break
        gone = self.store.reap()
        if gone:
            log.info("reaped %d user(s) gone past the grace period", gone)
        left = self.store.finish_pending()
        if left:
            log.warning("carried out %d pairing/parting step(s) a killed process left", left)
        now = time.monotonic()
        if now >= self._next_stats:
            self._next_stats = now + self.s.stats_interval
            self.store.broadcast(ev.STATS, self.store.counts())

    def run(self) -> int:
        log.info("matcher started: %s", self.s.describe())
        backoff = 0.5
        while not self.stopping:
            try:
                self.step()
                backoff = 0.5
                if not self.stopping:
                    self.store.wait_for_work(TICK)
            except RedisError as exc:
                log.warning("redis unavailable (%s); retrying in %.1fs", exc, backoff)
                pause(backoff, lambda: self.stopping)
                backoff = min(MAX_BACKOFF, backoff * 2)
            except Exception:  # a bug must not stop matching for everyone: log, back off, go on
                log.exception("matcher step failed; retrying in %.1fs", backoff)
                pause(backoff, lambda: self.stopping)
                backoff = min(MAX_BACKOFF, backoff * 2)
        log.info("matcher stopped")
        return 0
