"""The loop every daemon (matcher, archiver) runs: one step at a time until SIGTERM or SIGINT.

A signal only asks to stop; the loop looks at that request once per pass, so the step under way
finishes (a batch is committed and acknowledged, a pairing is opened) and the process exits 0.
A step that fails does not end the process: an outage (Redis, the database) or a bug is logged in
one record, and the step is tried again after the back-off, which a step that succeeds resets.
"""
from __future__ import annotations

import logging
import signal
import time

from redis.exceptions import RedisClusterException, RedisError
from sqlalchemy.exc import SQLAlchemyError

# a cluster client raises RedisClusterException (not a RedisError) when no node answers, and a
# refused or reset connection can surface as a bare OSError
REDIS_ERRORS = (RedisError, RedisClusterException, OSError)
DATABASE_ERRORS = (SQLAlchemyError,)


class Backoff:
    """Seconds to wait after each failure in a row: `first`, times `factor` each time, at most
    `most`. Short at first (a blip of Redis is over in a moment), bounded (a long outage is
    noticed within `most` seconds of its end)."""

    def __init__(self, first: float = 0.5, factor: float = 2.0, most: float = 5.0):
        if not (0 < first <= most and factor >= 1):
            raise ValueError(f"bad back-off: first={first} factor={factor} most={most}")
        self.first, self.factor, self.most = first, factor, most
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(self.most, delay * self.factor)
        return delay

    def reset(self) -> None:
        self._next = self.first


class Daemon:
    """Subclasses override step(); the hooks below are for what differs between daemons."""

    name = "daemon"
    SLICE = 0.1  # seconds: how soon a sleep notices a stop request

    def __init__(self, backoff: Backoff | None = None):
        self.log = logging.getLogger(self.name)
        self.backoff = backoff or Backoff()
        self.stopping = False

    # what a subclass fills in ------------------------------------------------------------------
    def step(self) -> None:
        raise NotImplementedError

    def between_steps(self) -> None:
        """After a step that succeeded, unless stopping: e.g. block until there is work."""

    def failed(self, exc: BaseException) -> None:
        """After a step that raised, before the back-off: e.g. forget what the step assumed."""

    def close(self) -> None:
        """Once, when the loop is over (stopped or not): release connections."""

    def started(self) -> str:
        return f"{self.name} started"

    def stopped(self) -> str:
        return f"{self.name} stopped"

    # the loop ----------------------------------------------------------------------------------
    def request_stop(self, *_) -> None:
        """A signal handler: it only sets a flag, so it is safe whatever the step is doing."""
        self.stopping = True

    def sleep(self, seconds: float) -> None:
        """Sleep up to `seconds`, waking early when a stop is requested."""
        deadline = time.monotonic() + seconds
        while not self.stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(self.SLICE, left))

    def run(self) -> int:
        """Loop until a stop is requested; the exit code (0). SIGTERM and SIGINT request the
        stop while it runs (in the main thread); the handlers before it are put back after."""
        previous = self._handle_signals()
        self.log.info(self.started())
        try:
            while not self.stopping:
                self._one_pass()
        finally:
            try:
                self.close()
            finally:
                self._restore_signals(previous)
        self.log.info(self.stopped())
        return 0

    def _one_pass(self) -> None:
        try:
            self.step()
            self.backoff.reset()
            if not self.stopping:
                self.between_steps()
            return
        except (*REDIS_ERRORS, *DATABASE_ERRORS) as exc:
            self.failed(exc)
            kind = "database" if isinstance(exc, DATABASE_ERRORS) else "redis"
            delay = self.backoff.next()
            self.log.warning("%s unavailable (%s); retrying in %.1fs", kind,
                             str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__,
                             delay)
        except Exception as exc:  # a bug must not stop the daemon for everyone: log, back off
            self.failed(exc)
            delay = self.backoff.next()
            self.log.exception("%s step failed; retrying in %.1fs", self.name, delay)
        self.sleep(delay)

    def _handle_signals(self) -> dict:
        previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                previous[sig] = signal.signal(sig, self.request_stop)
            except ValueError:  # not the main thread: whoever runs us calls request_stop()
                break
        return previous

    @staticmethod
    def _restore_signals(previous: dict) -> None:
        for sig, handler in previous.items():
            if handler is not None:  # None: set outside Python, nothing to put back
                signal.signal(sig, handler)
