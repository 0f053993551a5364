"""The matcher's loop: wake on a join (or every tick), pair, reap; one step at a time.

Pairing and reaping publish their own `matched` / `partner_left` from their Lua scripts, in the
same atomic step as the change: nothing is left to emit if this process dies.

No gevent here: a plain blocking loop is all a daemon of one thread needs, and the Socket.IO
emitter it uses is write-only (it publishes to Redis and never listens). The loop itself, the
signals and the back-off are common/daemon.py's.
"""
from __future__ import annotations

import time

from common import events as ev
from common.config import Settings
from common.daemon import Daemon
from common.redisconn import connect as redis_connect
from common.store import Store

TICK = 0.25  # seconds between passes when nobody joins: interest waits and reaping need them


class Matcher(Daemon):
    name = "matcher"

    def __init__(self, settings: Settings):
        super().__init__()
        self.s = settings
        self.store = Store(redis_connect(settings), settings)
        self._next_stats = 0.0

    def started(self) -> str:
        return f"matcher started: {self.s.describe()}"

    def step(self) -> None:
        """One pass: pair until the queue is done, reap, and now and then broadcast the counts."""
        while True:
            made = self.store.match()
            if made:
                self.log.info("matched %d pair(s)", made)
            if made < self.s.match_batch // 2:
                break
        gone = self.store.reap()
        if gone:
            self.log.info("reaped %d user(s) gone past the grace period", gone)
        left = self.store.finish_pending()
        if left:
            self.log.warning("carried out %d pairing/parting step(s) a killed process left", left)
        now = time.monotonic()
        if now >= self._next_stats:
            self._next_stats = now + self.s.stats_interval
            self.store.broadcast(ev.STATS, self.store.counts())

    def between_steps(self) -> None:
        """A join wakes us at once; otherwise a tick, for interest waits and reaping."""
        self.store.wait_for_work(TICK)
