"""The matcher's loop: wake on a join (or every tick), pair, reap; one step at a time.

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
        if settings.metrics_port:
            start_http_server(settings.metrics_port, addr=settings.host)

    def started(self) -> str:
        return f"matcher started: {self.s.describe()}"

    def step(self) -> None:
        """One pass: pair until the queue is done, reap, and now and then broadcast the counts."""
        began = time.perf_counter()
        if self.store is None:
            self.store = Store(redis_connect(self.s), self.s)
        while True:
            made = self.store.match(on_pair=self._observe_wait)
            MATCHES.inc(made)
            if made:
                self.log.info("matched %d pair(s)", made)
            if made < self.s.match_batch // 2:
                break
        gone = self.store.reap()
        REAPED.inc(gone)
        if gone:
            self.log.info("reaped %d user(s) gone past the grace period", gone)
        left = self.store.finish_pending()
        if left:
            self.log.warning("carried out %d pairing/parting step(s) a killed process left", left)
        now = time.monotonic()
        if now >= self._next_stats:
            self._next_stats = now + self.s.stats_interval
            self.store.broadcast(ev.STATS, self.store.counts())
        PASS.observe(time.perf_counter() - began)

    @staticmethod
    def _observe_wait(intent: dict) -> None:
        for since in (intent["sa"], intent["sb"]):
            MATCH_WAIT.observe(max(0.0, (intent["at"] - since) / 1000))

    def between_steps(self) -> None:
        """A join wakes us at once; otherwise a tick, for interest waits and reaping."""
        self.store.wait_for_work(TICK)
