"""The archiver loop: read every history stream with a consumer group, write a batch, commit, ack.

The history is one stream per tag (Keys.history_streams): `{chat}:history` alone on one Redis;
on a Redis Cluster the home stream (reports without a room) and one per chat shard, spread over
the masters. All the events of one room are in its shard's stream, in order, so a batch may mix
streams freely.

An entry is acknowledged (and deleted) only after its batch is committed. If the database is
down, nothing is acked: the batch stays pending and is retried with back-off while the chat goes
on. Entries left pending by a dead archiver are claimed after ARCHIVER_CLAIM_IDLE seconds; two
archivers share the streams through the consumer group.

Many streams, one client: a multi-stream XREADGROUP must stay within one slot, and a client
blocks on one node at a time. So on a Redis Cluster each step asks every stream's length (XLEN,
one pipeline per node), reads only the streams that hold entries (one non-blocking XREADGROUP
each, pipelined), and when none has anything new, blocks on one stream, the one that had the
most entries last, for BLOCK_MS. Idle, that is one probe and one blocking read per BLOCK_MS: no
spinning, and an entry in any other stream waits at most about BLOCK_MS. On one Redis there is
one stream, read without a probe, and the blocking read wakes as soon as an entry comes.

Under a steady trickle a read returns one entry at a time; a commit (an fsync) and an ack per
message cost more than the chat itself. So after a batch that was not full the archiver lingers
LINGER seconds before it reads again: one commit then carries everything that came meanwhile.
An entry reaches SQL about LINGER (or BLOCK_MS) after it was added, plus its batch's write.
The rooms already in SQL are remembered (writer.KnownRooms), so a batch of messages looks up
only the rooms it has not seen. Progress is logged once per LOG_EVERY seconds, not per batch. The loop itself, the signals and
the back-off are common/daemon.py's.
"""
from __future__ import annotations

import collections
import os
import socket
import time

import redis
from prometheus_client import Counter, Gauge, Histogram, start_http_server
from redis.cluster import RedisCluster
from redis.exceptions import ResponseError
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError

from common.config import Settings
from common.daemon import DATABASE_ERRORS, REDIS_ERRORS, Daemon
from common.history.db import make_engine
from common.redisconn import connect, keys_of

from .writer import KnownRooms, report_id, write_batch

GROUP = "archiver"
BATCH = 500  # entries per batch, about: each stream that holds entries gives its share
MIN_SHARE = 20  # entries per stream and read at least, however many streams hold entries
BLOCK_MS = 500  # the longest an entry waits in a stream other than the one blocked on
CLAIM_EVERY = 2.0
LINGER = 0.5  # seconds to let a batch fill after one that was not full (at most BLOCK_MS)
LOG_EVERY = 60.0  # seconds between progress lines

Entries = dict[str, list[tuple[str, dict]]]  # stream -> [(entry id, fields)], in stream order

# Prometheus (METRICS_PORT): this process's own, in prometheus_client's default registry.
WRITTEN = Counter("chat_archiver_entries",
                  "History entries (opened, message, closed, report) this archiver wrote to the "
                  "database and acknowledged")
BATCH_SIZE = Histogram("chat_archiver_batch_size", "Entries per batch this archiver committed",
                       buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000))
LAG = Gauge("chat_archiver_lag_seconds",
            "Age of the oldest entry of the last batch when it was committed: the time of its "
            "stream entry id (Redis's clock) to the commit (this process's clock)")
DB_ERRORS = Counter("chat_archiver_database_errors",
                    "Batches this archiver could not write because the database failed (the "
                    "batch stays pending and is retried)")
REFUSED = Counter("chat_archiver_refused_entries",
                  "History entries the database refused to store (not an outage: the entry's "
                  "own data), set aside in the history:refused stream")
REFUSED_KEEP = 10_000  # entries kept in history:refused, about (the newest)


# raised while the driver turns a value into SQL, before the database sees it: psycopg2 raises
# a bare ValueError for a NUL in a string (SQLAlchemy passes it on as it is from executemany,
# and wraps it in a StatementError without a DBAPI error elsewhere)
REFUSED_ERRORS = (*DATABASE_ERRORS, ValueError)


def refused_data(exc: BaseException) -> bool:
    """Whether the database refused a batch for its data, which no retry changes (a value it
    cannot store, a constraint), rather than because it is unreachable or busy."""
    if isinstance(exc, (DataError, IntegrityError, ValueError)):
        return True
    return isinstance(exc, StatementError) and not isinstance(exc, DBAPIError)


class Archiver(Daemon):
    name = "archiver"

    def __init__(self, settings: Settings, consumer: str | None = None):
        super().__init__()
        self.s = settings
        keys = keys_of(settings)
        self.streams = keys.history_streams
        # a stream's shard number qualifies its report ids (writer.report_id); home's: None
        self.shard = {keys.history_of(t): n for n, t in enumerate(keys.shard_tags)}
        self.shard[keys.history_of(keys.home)] = None
        self.refused_stream = keys.history_refused
        # connected, and the groups made, in step(): a cluster client fails at once while no
        # node answers, and Redis may come up after the archiver
        self.r: redis.Redis | RedisCluster | None = None
        self.grouped = False
        self.engine = make_engine(settings.database_url, settings.db_pool_size)
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        # after a start or a failure, read our own pending entries ("0") before new ones (">")
        self.pending = set(self.streams)
        self.blocking_on = self.streams[0]
        self.known = KnownRooms()  # rooms in SQL already: their messages need no look-up
        self._next_claim = 0.0
        self.written = 0
        self._logged = (time.monotonic(), 0, 0)  # when, entries and batches at the last line
        self.batches = 0
        if settings.metrics_port:
            start_http_server(settings.metrics_port, addr=settings.host)

    # Redis --------------------------------------------------------------------------------------
    def _each(self, streams, command, raise_on_error: bool = True) -> list:
        """`command(pipe, stream)` for each stream in one pipeline (on a cluster, redis-py's sends
        one per node and follows redirections); the replies in the streams' order."""
        pipe = self.r.pipeline(transaction=False)
        for stream in streams:
            command(pipe, stream)
        return pipe.execute(raise_on_error=raise_on_error)

    def ensure_groups(self) -> None:
        replies = self._each(self.streams, lambda p, s: p.xgroup_create(s, GROUP, id="0",
                                                                         mkstream=True),
                             raise_on_error=False)
        for reply in replies:
            if isinstance(reply, Exception) and "BUSYGROUP" not in str(reply):
                raise reply
        made = sum(reply is True for reply in replies)
        if made:
            self.log.info("created consumer group %s on %d history stream(s)", GROUP, made)
        self.grouped = True

    def probe(self) -> list[str]:
        """The streams that hold entries (XLEN; what is archived is deleted, so 0 is done).

        One stream (one Redis) is not probed: reading it says as much, in one round trip less.

        Straight to each node, not through a cluster pipeline: redis-py's costs ~60 µs of CPU a
        command, which idle, 49 streams twice a second, would be most of the archiver's CPU.
        On an error (a moved slot, a node down) through the cluster client instead, which
        follows redirections and refreshes its map of the slots."""
        if len(self.streams) == 1:
            return self.streams
        lengths: dict[str, int] = {}
        try:
            for node, streams in self._by_node():
                pipe = node.pipeline(transaction=False)
                for stream in streams:
                    pipe.xlen(stream)
                lengths.update(zip(streams, pipe.execute()))
        except REDIS_ERRORS as exc:
            self.log.debug("probing through the cluster client: %s", exc)
            lengths = dict(zip(self.streams, self._each(self.streams, lambda p, s: p.xlen(s))))
        return [s for s in self.streams if lengths[s]]

    def _by_node(self):
        if not isinstance(self.r, RedisCluster):
            return [(self.r, self.streams)]
        nodes: dict[str, tuple] = {}
        for stream in self.streams:
            node = self.r.get_node_from_key(stream)
            nodes.setdefault(node.name, (self.r.get_redis_connection(node), []))[1].append(stream)
        return list(nodes.values())

    def claim_stale(self, streams: list[str]) -> int:
        """Take over entries another (dead) archiver read but never acknowledged, in the
        streams that hold entries (in an empty one, nothing pending holds anything)."""
        claimed = self._each(streams, lambda p, s: p.xautoclaim(
            s, GROUP, self.consumer, min_idle_time=int(self.s.archiver_claim_idle * 1000),
            start_id="0-0", count=BATCH, justid=True))  # with justid: a list of ids
        for stream, ids in zip(streams, claimed):
            if ids:
                self.pending.add(stream)
        total = sum(len(ids) for ids in claimed)
        if total:
            self.log.info("claimed %d stale pending entries", total)
        return total

    def read(self, holding: list[str]) -> tuple[Entries, bool]:
        """Without blocking: our own pending entries of the streams in self.pending, new ones of
        the other streams that hold entries. Also whether a stream gave all that was asked."""
        wanted = [s for s in self.streams if s in self.pending or s in holding]
        if not wanted:
            return {}, False
        share = max(MIN_SHARE, BATCH // len(wanted))
        since = {s: "0" if s in self.pending else ">" for s in wanted}
        replies = self._each(wanted, lambda p, s: p.xreadgroup(GROUP, self.consumer,
                                                               {s: since[s]}, count=share))
        got: Entries = {}
        for stream, reply in zip(wanted, replies):
            entries = reply[0][1] if reply else []
            if entries:
                got[stream] = entries
            elif since[stream] == "0":
                self.pending.discard(stream)
        return got, any(len(e) == share for e in got.values())

    def wait(self) -> tuple[Entries, bool]:
        """Block up to BLOCK_MS for new entries of one stream."""
        stream = self.blocking_on
        reply = self.r.xreadgroup(GROUP, self.consumer, {stream: ">"}, count=BATCH,
                                  block=BLOCK_MS)
        entries = reply[0][1] if reply else []
        return ({stream: entries} if entries else {}), len(entries) == BATCH

    def done(self, got: Entries) -> None:
        """Delete, then acknowledge. An archiver that dies between the two leaves a deleted
        entry pending, which holds nothing and a claim clears; the other order would leave an
        archived entry in its stream."""
        pipe = self.r.pipeline(transaction=False)
        for stream, entries in got.items():
            ids = [eid for eid, _ in entries]
            pipe.xdel(stream, *ids)
            pipe.xack(stream, GROUP, *ids)
        pipe.execute()

    # the loop -----------------------------------------------------------------------------------
    def step(self) -> int:
        if self.r is None:
            # blocking reads: the socket timeout must outlast BLOCK_MS (redis-py #4119)
            self.r = connect(self.s, socket_timeout=BLOCK_MS / 1000 + 10)
        if not self.grouped:
            self.ensure_groups()
        holding = self.probe()
        if time.monotonic() >= self._next_claim:
            self._next_claim = time.monotonic() + CLAIM_EVERY
            if holding:
                self.claim_stale(holding)
        pending = bool(self.pending)
        got, full = self.read(holding)
        if not got and pending:  # none of our own was pending: the new entries, then
            got, full = self.read(holding)
        if not got:
            got, full = self.wait()
            if not got:
                return 0
        # a deleted entry (trimmed, or archived by an archiver that died before its ack) comes
        # back without fields while pending: nothing to write, only to acknowledge
        batch = [(report_id(self.shard[s], eid), fields)
                 for s, entries in got.items() for eid, fields in entries if fields]
        counts = self.write(batch) if batch else {}
        self.done(got)
        if batch:
            WRITTEN.inc(len(batch))
            BATCH_SIZE.observe(len(batch))
            oldest = min(int(eid.split("-")[0])
                         for entries in got.values() for eid, fields in entries if fields)
            LAG.set(max(0.0, time.time() - oldest / 1000))
        self.blocking_on = max(got, key=lambda s: len(got[s]))
        self.written += len(batch)
        self.batches += 1
        self.log.debug("archived %d entries from %d stream(s): %s", len(batch), len(got), counts)
        self._log_progress()
        if not full:
            self.sleep(LINGER)
        return len(batch)

    def write(self, batch: list[tuple[str, dict]]) -> dict:
        """Write the batch in one transaction; if the database refuses it for its data, write
        its entries one at a time and set aside those it refuses (history:refused, with the
        error's class), so that one bad entry does not hold back everyone's history forever."""
        try:
            return write_batch(self.engine, batch, self.known)
        except REFUSED_ERRORS as exc:
            if not refused_data(exc):
                raise
        self.known.clear()  # a room purged meanwhile is made again rather than refused
        counts: collections.Counter = collections.Counter()
        for entry_id, fields in batch:
            try:
                counts.update(write_batch(self.engine, [(entry_id, fields)], self.known))
            except REFUSED_ERRORS as exc:
                if not refused_data(exc):
                    raise
                self.r.xadd(self.refused_stream, {**fields, "stream_id": entry_id,
                                                  "error": type(exc).__name__},
                            maxlen=REFUSED_KEEP, approximate=True)
                REFUSED.inc()
                self.log.error("the database refused history entry %s (%s, %s): set aside in "
                               "%s", entry_id, fields.get("type"), type(exc).__name__,
                               self.refused_stream)
        return dict(counts)

    def _log_progress(self) -> None:
        now = time.monotonic()
        since, written, batches = self._logged
        if now - since >= LOG_EVERY:
            self.log.info("archived %d entries in %d batches in the last %.0f s (%d in all)",
                     self.written - written, self.batches - batches, now - since, self.written)
            self._logged = (now, self.written, self.batches)

    def failed(self, exc: BaseException) -> None:
        """Nothing of the failed batch was acknowledged: read our own pending entries again
        first. A stream lost with its node's data (or flushed) answers NOGROUP while Redis is
        up: make the groups again, at once rather than after an outage's back-off."""
        self.pending = set(self.streams)
        self.known.clear()  # a room purged behind our back fails its messages' foreign key
        if isinstance(exc, DATABASE_ERRORS):
            DB_ERRORS.inc()
        if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
            self.grouped = False
            self.backoff.reset()

    def close(self) -> None:
        self.engine.dispose()
        if self.r is not None:
            self.r.close()

    def started(self) -> str:
        return f"archiver {self.consumer} started on {len(self.streams)} history stream(s)"

    def stopped(self) -> str:
        return f"archiver stopped after archiving {self.written} entries"
