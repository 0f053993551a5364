"""common/daemon.py without Redis: the back-off policy, failures, and stopping after the step."""
from __future__ import annotations

import logging
import os
import signal

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import OperationalError

from common.daemon import Backoff, Daemon


class Scripted(Daemon):
    """Runs the given steps in turn (a callable each); sleeps are recorded, never slept."""

    name = "scripted"

    def __init__(self, steps, **kw):
        super().__init__(**kw)
        self.steps = list(steps)
        self.done, self.slept, self.failures, self.between, self.closed = 0, [], [], 0, 0

    def step(self):
        self.steps.pop(0)(self)
        self.done += 1

    def between_steps(self):
        self.between += 1

    def failed(self, exc):
        self.failures.append(type(exc).__name__)

    def sleep(self, seconds):
        self.slept.append(seconds)

    def close(self):
        self.closed += 1


@pytest.fixture(autouse=True)
def _signals_stay_here():
    """These tests send SIGTERM and SIGINT to the test process itself. An earlier async test's
    Socket.IO client (python-engineio) had the session's asyncio loop take SIGINT
    (loop.add_signal_handler, which sets signal.set_wakeup_fd): the C handler then writes every
    signal into that loop's pipe too, whatever Python handler is installed, and the next async
    test's loop runs engineio's SIGINT handler - it cancels every task and stops the loop (seen:
    tests/test_faults.py failing after this file). No wakeup fd during these tests; put back."""
    fd = signal.set_wakeup_fd(-1)
    yield
    signal.set_wakeup_fd(fd)


def ok(d):
    pass


def last(d):
    d.request_stop()


def raising(exc):
    def step(d):
        raise exc
    return step


def test_backoff_starts_at_first_grows_by_factor_up_to_most_and_resets():
    b = Backoff(first=0.5, factor=2, most=5)
    assert [b.next() for _ in range(6)] == [0.5, 1, 2, 4, 5, 5]
    b.reset()
    assert b.next() == 0.5
    with pytest.raises(ValueError):
        Backoff(first=2, most=1)


def test_failures_back_off_and_a_step_that_succeeds_resets_the_back_off(caplog):
    outage = RedisConnectionError("Connection refused")
    d = Scripted([raising(outage), raising(OperationalError("select", {}, Exception("down"))),
                  raising(KeyError("bug")), ok, raising(outage), last])
    with caplog.at_level(logging.INFO, logger="scripted"):
        assert d.run() == 0
    assert d.slept == [0.5, 1.0, 2.0, 0.5]  # reset by the step that succeeded
    assert d.failures == ["ConnectionError", "OperationalError", "KeyError", "ConnectionError"]
    assert d.done == 2 and d.between == 1 and d.closed == 1  # no wait after the last step
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "scripted started" and lines[-1] == "scripted stopped"
    failures = lines[1:-1]
    assert len(failures) == 4  # one record per failure
    assert failures[0] == "redis unavailable (Connection refused); retrying in 0.5s"
    assert failures[1].startswith("database unavailable (") and "retrying in 1.0s" in failures[1]
    assert failures[2] == "scripted step failed; retrying in 2.0s"
    assert caplog.records[3].exc_info  # a bug's record carries its traceback


def test_sigterm_during_a_step_lets_it_finish_then_run_returns_0():
    finished = []

    def signalled(d):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before kill() returns
        assert d.stopping
        finished.append(True)  # the rest of the step still runs

    before = signal.getsignal(signal.SIGTERM)
    d = Scripted([ok, signalled, raising(AssertionError("a step after the stop ran"))])
    assert d.run() == 0
    assert finished == [True] and d.done == 2 and d.between == 1 and d.slept == []
    assert signal.getsignal(signal.SIGTERM) is before  # put back


def test_sigint_during_the_back_off_stops_without_another_step():
    class Sleepy(Scripted):
        def sleep(self, seconds):
            super().sleep(seconds)
            os.kill(os.getpid(), signal.SIGINT)

    d = Sleepy([raising(RedisConnectionError("down")),
                raising(AssertionError("a step after the stop ran"))])
    assert d.run() == 0
    assert d.done == 0 and d.slept == [0.5] and d.closed == 1


def test_a_stop_request_wakes_the_sleep_early():
    d = Daemon()
    d.request_stop()
    d.sleep(60)  # returns at once: the test would time out otherwise
