"""The matcher's loop: wake on a join (or every tick), pair, reap; one step at a time.

A join wakes a pass that only pairs. Reaping and the intents a killed process left are due once
per TICK, whatever wakes the pass: under a stream of joins they cost a few round trips a second,
not a few per join, and they are never later than on an idle matcher (at most TICK after due).
Pairings are logged at most once per LOG_EVERY, with their count.

Pairing and reaping publish their own `matched` / `partner_left` from their Lua scripts, in the
same atomic step as the change: nothing is left to emit if this process dies.

No gevent here: a plain blocking loop is all a daemon of one thread needs, and the Socket.IO
emitter it uses is write-only (it publishes to Redis and never listens). The loop itself, the
signals and the back-off are common/daemon.py's.
"""
from __future__ import annotations

import time

from prometheus_client import Counter, Histogram, start_http_server

from common import events as ev
from common.config import Settings
from common.daemon import Daemon
from common.redisconn import connect as redis_connect
from common.store import Store

TICK = 0.25  # seconds between passes when nobody joins: interest waits and reaping need them
LOG_EVERY = 1.0  # seconds between two "matched" lines at most (the first one at once)
FIRST_PAIRS = 8  # room ids a pass offers first; x4 while a call uses them all (to MATCH_BATCH/2)

# Prometheus (METRICS_PORT): this process's own, in prometheus_client's default registry.
MATCHES = Counter("chat_matches", "Pairs this matcher made")
MATCH_WAIT = Histogram(
    "chat_match_wait_seconds",
    "Seconds a paired user waited in the queue before this matcher paired them (the pairing's "
    "time minus the user's place in the queue, both written by match.lua in the pairing's "
    "intent, on Redis's clock). One observation per user, two per pair",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300))
REAPED = Counter("chat_reaped", "Users this matcher let go past the resume grace")
PASS = Histogram(
    "chat_matcher_pass_seconds",
    "Seconds one matcher pass took: pairing until the queue is done, reaping, intents left "
    "by killed processes, and now and then the `stats` broadcast",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))


class Matcher(Daemon):
    name = "matcher"

    def __init__(self, settings: Settings):
        super().__init__()
        self.s = settings
        # connected in step(): a cluster client fails at once while no node answers, and Redis
        # may come up after the matcher (the loop retries with its back-off)
        self.store: Store | None = None
        self._next_stats = 0.0
        self._next_tick = 0.0  # when reaping and stale intents are due
        self._next_log = 0.0  # when the pairs made since the last "matched" line may be logged
        self._unlogged = 0
        if settings.metrics_port:
            start_http_server(settings.metrics_port, addr=settings.host)

    def started(self) -> str:
        return f"matcher started: {self.s.describe()}"

    def stopped(self) -> str:
        if self._unlogged:
            self.log.info("matched %d pair(s)", self._unlogged)
        return "matcher stopped"

    def step(self) -> None:
        """One pass: pair until the queue is done; when due, reap and finish stale intents; now
        and then broadcast the counts."""
        began = time.perf_counter()
        if self.store is None:
            self.store = Store(redis_connect(self.s), self.s)
        self._unlogged += self._pair()
        now = time.monotonic()
        if now >= self._next_tick:
            self._next_tick = now + TICK
            gone = self.store.reap()
            REAPED.inc(gone)
            if gone:
                self.log.info("reaped %d user(s) gone past the grace period", gone)
            left = self.store.finish_pending()
            if left:
                self.log.warning("carried out %d pairing/parting step(s) a killed process left",
                                 left)
        if self._unlogged and now >= self._next_log:
            self.log.info("matched %d pair(s)", self._unlogged)
            self._unlogged, self._next_log = 0, now + LOG_EVERY
        if now >= self._next_stats:
            self._next_stats = now + self.s.stats_interval
            self.store.broadcast(ev.STATS, self.store.counts())
        PASS.observe(time.perf_counter() - began)

    def _pair(self) -> int:
        """Pair until the queue is done: a call that used every room id it was given may have
        left pairs, so another follows with more ids (most passes pair one or none, and need
        few); a call that used fewer was done with the waiting users it looked at."""
        most = self.s.match_batch // 2
        offered, total = min(FIRST_PAIRS, most), 0
        while True:
            made = self.store.match(on_pair=self._observe_wait, pairs=offered)
            MATCHES.inc(made)
            total += made
            if made < offered:
                return total
            offered = min(offered * 4, most)

    @staticmethod
    def _observe_wait(intent: dict) -> None:
        for since in (intent["sa"], intent["sb"]):
            MATCH_WAIT.observe(max(0.0, (intent["at"] - since) / 1000))

    def between_steps(self) -> None:
        """A join wakes us at once; otherwise a tick, for interest waits and reaping."""
        self.store.wait_for_work(TICK)
