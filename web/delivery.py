"""Marks of messages whose emit to the partner is done, written to Redis in batches.

A message is stored (message.lua) before it is emitted. If this worker dies in between, the
client resends the same id after reconnecting; message.lua then sees no mark and hands the stored
message back to be emitted, so it is not lost. The marks are batched off the hot path: a crash
costs at most a re-emit that receivers drop by its seq.
"""
from __future__ import annotations

import logging

log = logging.getLogger("web.delivery")

FLUSH_EVERY = 0.2  # seconds


class PublishedMarks:
    def __init__(self, store):
        self.store = store
        self.pending: list[tuple[str, str]] = []

    def add(self, user: str, msg_id: str) -> None:
        self.pending.append((user, msg_id))

    def flush(self) -> None:
        batch, self.pending = self.pending, []
        if not batch:
            return
        try:
            self.store.mark_published(batch)
        except Exception as exc:  # Redis down: keep them for the next try
            log.warning("could not mark %d messages published: %s", len(batch), exc)
            self.pending = batch + self.pending

    def loop(self, sleep, stopping) -> None:
        while not stopping():
            sleep(FLUSH_EVERY)
            self.flush()
        self.flush()
