"""Prometheus metrics of a web worker, served at /metrics (web/app.py) in the text format.

One registry per process, prometheus_client's default: gunicorn runs exactly one worker per web
process here (web/__main__.py, "workers": 1), so each process's counters are that worker's own
and Prometheus scrapes every worker directly (no multiprocess mode, no shared files). nginx
answers 404 for /metrics (nginx/nginx.conf.j2), and so does the worker itself to a request that
came through a proxy (web/app.py), so the metrics are never public.

What is counted where:
- refusals: web/sockets.py `refuse`, the one road of every refusal, by code; the filter's
  (`filtered`) also by reason in web/sockets.py `screen`;
- messages and their latency: web/sockets.py `on_message`;
- Redis errors: the `except RedisError` branches of web/sockets.py, and the counts below;
- connections closed for a backlog over MAX_QUEUED_BYTES: web/direct.py `DirectSocket.overflow`;
- connections and users: read when scraped (the Connections map; Store.counts(), the numbers
  the matcher broadcasts as `stats`: one Lua script and one pipeline per scrape).

The metrics updated per message or per refused event (messages, their latency, refusals, the
filter's) are web/hotmetrics.py's lock-free ones; the rest are prometheus_client's own.
"""
from __future__ import annotations

import logging

from prometheus_client import REGISTRY, Counter
from prometheus_client.core import GaugeMetricFamily
from redis.exceptions import RedisError

from common import events as ev
from common.textfilter import REASONS

from .hotmetrics import HotCounter, HotHistogram

log = logging.getLogger("web.metrics")

MESSAGES = HotCounter(
    "chat_messages",
    "Chat messages accepted by this worker: stored, numbered and published to the partner by "
    "message.lua (a resend of an id already stored is not counted again)")
MESSAGES_HERE = HotCounter(
    "chat_messages_here",
    "Of chat_messages, those this worker delivered to the partner itself, without the queue: "
    "the partner's connections were on this worker and had been sent everything published "
    "to them (message.lua)")
REFUSALS = HotCounter(
    "chat_refusals",
    "Client events this worker refused (a failed ack or an `error` event), by the refusal's "
    "code (docs/protocol.md)", ["code"])
for _code in ev.ERRORS:  # every code present from the start (0), so rate() sees the first one
    REFUSALS.labels(_code)
FILTERED = HotCounter(
    "chat_filtered",
    "Messages the word and link filter refused (also counted in chat_refusals as `filtered`), "
    "by reason: words or links", ["reason"])
for _reason in REASONS:
    FILTERED.labels(_reason)
DELIVERY = HotHistogram(
    "chat_delivery_seconds",
    "Server side of a message's delivery: seconds from this worker receiving a `message` event "
    "to its Redis script (message.lua: store, number, publish to the partner's workers) "
    "returning (for a partner on this worker: and its emit to them). Not included: the "
    "client's network, the pub/sub hop to the partner's worker and its write to the partner's "
    "socket",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
REDIS_ERRORS = Counter(
    "chat_redis_errors",
    "Redis calls of this worker that failed (connection lost, timeout, script error), by what "
    "was being done: an event's name, connect, resume, disconnect, or metrics (a scrape's "
    "counts)", ["op"])
QUEUE_OVERFLOWS = Counter(
    "chat_queue_overflows",
    "Connections this worker closed because more than MAX_QUEUED_BYTES of packets waited for "
    "them (a client that does not read, or a long-polling one that does not poll); each "
    "resumes with its token when it reconnects (web/direct.py)")
for _op in ("connect", "resume", "disconnect", "metrics", "filtered"):  # present from the start, as 0
    REDIS_ERRORS.labels(_op)


class _Live:
    """Collected at scrape time from the worker's app (the last one made in this process)."""

    def __init__(self):
        self.store = None
        self.conns = None

    def describe(self):  # names not known ahead: nothing for the registry to check
        return []

    def collect(self):
        if self.conns is None:
            return
        conns = GaugeMetricFamily(
            "chat_connections", "Socket.IO connections open on this worker")
        conns.add_metric([], len(self.conns))
        yield conns
        try:
            counts = self.store.counts()
        except RedisError as exc:  # the scrape still answers, without the users' gauges
            log.warning("metrics: counts: redis unavailable: %s", exc)
            REDIS_ERRORS.labels("metrics").inc()
            return
        for state, what in (("online", "online (a live connection, or within the resume "
                                       "grace)"),
                            ("waiting", "waiting to be matched"),
                            ("chatting", "in a chat")):
            g = GaugeMetricFamily(
                f"chat_users_{state}",
                f"Users {what}, in the whole chat (the matcher's `stats`; every worker reports "
                f"the same number: aggregate with max, not sum)")
            g.add_metric([], counts[state])
            yield g


_live = _Live()
REGISTRY.register(_live)


def install(store, conns) -> None:
    """Report this app's connections and its Redis's counts (called by web/app.py)."""
    _live.store, _live.conns = store, conns
