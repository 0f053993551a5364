"""Fixtures: a shared stack (Redis, two web workers, the matcher) and helpers to build others."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pg import postgres  # noqa: E402,F401  (one PostgreSQL server for the session)
from procs import ArchiverProc, MatcherProc, RedisServer, WebWorker, base_env  # noqa: E402


class Stack:
    """Redis + N web workers + M matchers, all real processes, stopped at the end."""

    def __init__(self, workers: int = 2, matchers: int = 1, redis: RedisServer | None = None,
                 archivers: int = 0, **env):
        self.own_redis = redis is None
        self.redis = redis or RedisServer()
        self.env = base_env(self.redis.url, **env)
        self.webs = [WebWorker(self.env, f"w{i + 1}") for i in range(workers)]
        self.matchers = [MatcherProc(self.env, f"matcher{i + 1}") for i in range(matchers)]
        self.archivers = [ArchiverProc(self.env, f"archiver{i + 1}") for i in range(archivers)]
        for w in self.webs:
            w.wait_ready()

    def urls(self) -> list[str]:
        return [w.url for w in self.webs]

    def procs(self):
        return [*self.webs, *self.matchers, *self.archivers]

    def logs(self) -> str:
        return "\n".join(f"----- {p.name} -----\n{p.output()[-4000:]}" for p in self.procs())

    def stop(self):
        for p in self.procs():
            p.stop()
        if self.own_redis:
            self.redis.stop()


@pytest.fixture(scope="session")
def stack():
    s = Stack()
    yield s
    s.stop()


def flushed(stack: Stack):
    """`stack` with an empty Redis for one test; afterwards, every process must still be alive."""
    stack.redis.client.flushall()
    yield stack
    for p in stack.procs():
        assert p.alive(), f"{p.name} died during the test:\n{p.output()[-4000:]}"


@pytest.fixture
def fresh(stack):
    """The shared stack with an empty Redis for this test (flushed, then the test runs)."""
    yield from flushed(stack)


@pytest.fixture(scope="session")
def redis_cluster():
    """A 3-master Redis Cluster (tests/rediscluster.py) for the session; tests flush() it."""
    from rediscluster import RedisClusterServer

    c = RedisClusterServer()
    yield c
    c.stop()


@pytest.fixture
def make_stack():
    made = []

    def build(**kw) -> Stack:
        s = Stack(**kw)
        made.append(s)
        return s

    yield build
    for s in made:
        s.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach the logs of the processes the test used."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        for name in ("fresh", "stack"):
            s = item.funcargs.get(name)
            if isinstance(s, Stack):
                rep.sections.append(("process logs", s.logs()))
                break
