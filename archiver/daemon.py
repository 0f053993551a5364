"""The archiver loop: read the history stream with a consumer group, write a batch, commit, ack.

An entry is acknowledged (and deleted from the stream) only after its batch is committed. If
the database is down, nothing is acked: the batch stays pending and is retried with back-off
while the chat goes on. Entries left pending by a dead archiver are claimed after ARCHIVER_CLAIM_IDLE seconds.

Under a steady trickle a blocking read returns one entry at a time; a commit (an fsync) and an
XACK per message cost more than the chat itself. So after a batch that was not full the archiver
lingers LINGER seconds before it reads again: one commit then carries everything that came
meanwhile, and the history reaches SQL at most about LINGER later. Progress is logged once per
LOG_EVERY seconds, not per batch.
"""
from __future__ import annotations

import logging
import os
import socket
import time

from redis.exceptions import RedisError, ResponseError
from sqlalchemy.exc import SQLAlchemyError

from common.config import Settings
from common.entry import pause
from common.db import make_engine
from common.keys import Keys
from common.store import redis_client

from .writer import write_batch

log = logging.getLogger("archiver")

GROUP = "archiver"
BATCH = 500
BLOCK_MS = 1000
CLAIM_EVERY = 2.0
LINGER = 0.2  # seconds to let a batch fill after one that was not full
LOG_EVERY = 60.0  # seconds between progress lines
MAX_BACKOFF = 10.0


class Archiver:
    def __init__(self, settings: Settings, consumer: str | None = None):
        self.s = settings
        self.stream = Keys(settings.redis_prefix).history
        # blocking reads: the socket timeout must outlast BLOCK_MS (redis-py #4119)
        self.r = redis_client(settings.redis_url, socket_timeout=BLOCK_MS / 1000 + 10)
        self.engine = make_engine(settings.database_url, settings.db_pool_size)
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.stopping = False
        self.pending_first = True  # after a start or a failure, our own pending entries first
        self._next_claim = 0.0
        self.written = 0
        self._logged = (time.monotonic(), 0, 0)  # when, entries and batches at the last line
        self.batches = 0

    def stop(self, *_):
        self.stopping = True

    def ensure_group(self) -> None:
        try:
            self.r.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
            log.info("created consumer group %s on the history stream", GROUP)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def claim_stale(self) -> int:
        """Take over entries another (dead) archiver read but never acknowledged."""
        claimed = self.r.xautoclaim(self.stream, GROUP, self.consumer,
                                    min_idle_time=int(self.s.archiver_claim_idle * 1000), start_id="0-0",
                                    count=BATCH, justid=True)  # with justid: a list of ids
        if claimed:
            log.info("claimed %d stale pending entries", len(claimed))
            self.pending_first = True
        return len(claimed)

    def read(self) -> list[tuple[str, dict]]:
        start = "0" if self.pending_first else ">"
        block = None if self.pending_first else BLOCK_MS
        res = self.r.xreadgroup(GROUP, self.consumer, {self.stream: start}, count=BATCH,
                                block=block)
        entries = res[0][1] if res else []
        if self.pending_first and not entries:
            self.pending_first = False
        return [(eid, fields) for eid, fields in entries if fields]  # deleted ones come empty

    def step(self) -> int:
        if time.monotonic() >= self._next_claim:
            self._next_claim = time.monotonic() + CLAIM_EVERY
            self.claim_stale()
        entries = self.read()
        if not entries:
            return 0
        counts = write_batch(self.engine, entries)
        ids = [eid for eid, _ in entries]
        pipe = self.r.pipeline(transaction=True)
        pipe.xack(self.stream, GROUP, *ids)
        pipe.xdel(self.stream, *ids)
        pipe.execute()
        self.written += len(ids)
        self.batches += 1
        log.debug("archived %d entries: %s", len(ids), counts)
        self._log_progress()
        if len(ids) < BATCH:
            pause(LINGER, lambda: self.stopping)
        return len(ids)

    def _log_progress(self) -> None:
        now = time.monotonic()
        since, written, batches = self._logged
        if now - since >= LOG_EVERY:
            log.info("archived %d entries in %d batches in the last %.0f s (%d in all)",
                     self.written - written, self.batches - batches, now - since, self.written)
            self._logged = (now, self.written, self.batches)

    def run(self) -> int:
        log.info("archiver %s started", self.consumer)
        backoff = 0.5
        while not self.stopping:
            try:
                self.ensure_group()
                break
            except RedisError as exc:
                log.warning("redis unavailable (%s); retrying in %.1fs", exc, backoff)
                pause(backoff, lambda: self.stopping)
                backoff = min(MAX_BACKOFF, backoff * 2)
        backoff = 0.5
        while not self.stopping:
            try:
                self.step()
                backoff = 0.5
            except (SQLAlchemyError, RedisError, OSError) as exc:
                kind = "database" if isinstance(exc, SQLAlchemyError) else "redis"
                log.warning("%s unavailable (%s); batch kept pending, retrying in %.1fs",
                            kind, str(exc).splitlines()[0][:200], backoff)
                self.pending_first = True
                if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                    self.ensure_group()
                pause(backoff, lambda: self.stopping)
                backoff = min(MAX_BACKOFF, backoff * 2)
            except Exception:  # a bug must not stop the history: log it, back off, go on
                log.exception("archiver step failed; retrying in %.1fs", backoff)
                self.pending_first = True
                pause(backoff, lambda: self.stopping)
                backoff = min(MAX_BACKOFF, backoff * 2)
        self.engine.dispose()
        log.info("archiver stopped after archiving %d entries", self.written)
        return 0

