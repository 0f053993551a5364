"""Fixtures: a shared stack (Redis, two web workers, the matcher) and helpers to build others."""
from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pg import postgres  # noqa: E402,F401  (one PostgreSQL server for the session)
from procs import ArchiverProc, MatcherProc, RedisServer, WebWorker, base_env, stop_all  # noqa: E402


class Stack:
    """Redis (or a Redis Cluster: `cluster`) + N web workers + M matchers, all real processes,
    stopped at the end."""

    def __init__(self, workers: int = 2, matchers: int = 1, redis: RedisServer | None = None,
                 archivers: int = 0, cluster=None, **env):
        self.cluster = cluster
        self.own_redis = redis is None and cluster is None
        self.redis = redis or (RedisServer() if cluster is None else None)
        if cluster is not None:
            env["REDIS_CLUSTER_URL"] = cluster.url
        self.env = base_env(cluster.url if cluster is not None else self.redis.url, **env)
        self.webs = [WebWorker(self.env, f"w{i + 1}") for i in range(workers)]
        self.matchers = [MatcherProc(self.env, f"matcher{i + 1}") for i in range(matchers)]
        self.archivers = [ArchiverProc(self.env, f"archiver{i + 1}") for i in range(archivers)]
        for w in self.webs:
            w.wait_ready()

    def urls(self) -> list[str]:
        return [w.url for w in self.webs]

    @property
    def client(self):
        """A client of this stack's Redis or Redis Cluster (str replies)."""
        if self.cluster is None:
            return self.redis.client
        if getattr(self, "_cluster_client", None) is None:
            from redis.cluster import RedisCluster

            self._cluster_client = RedisCluster.from_url(self.cluster.url, decode_responses=True)
        return self._cluster_client

    def home_key(self, name: str) -> str:
        """A key of the home slot (common/keys.py) under this stack's REDIS_PREFIX."""
        return "{" + self.env.get("REDIS_PREFIX", "chat") + "}:" + name

    def flush(self) -> None:
        if self.cluster is None:
            self.redis.client.flushall()
        else:
            self.cluster.flush()

    def procs(self):
        return [*self.webs, *self.matchers, *self.archivers]

    def logs(self) -> str:
        return "\n".join(f"----- {p.name} -----\n{p.output()[-4000:]}" for p in self.procs())

    def stop(self):
        stop_all(self.procs())
        if self.own_redis:
            self.redis.stop()


@pytest.fixture(scope="session")
def stack():
    s = Stack()
    yield s
    s.stop()


def flushed(stack: Stack):
    """`stack` with an empty Redis for one test; afterwards, every process must still be alive."""
    stack.flush()
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


@pytest.fixture(scope="session")
def cluster_stack(redis_cluster):
    """Like `stack`, on the session's Redis Cluster (REDIS_CLUSTER_URL)."""
    s = Stack(cluster=redis_cluster)
    yield s
    s.stop()


@pytest.fixture(params=["redis", "cluster"])
def fresh_any(request):
    """`fresh`, once on one Redis and once on the Redis Cluster (the tests of the chat itself)."""
    yield from flushed(request.getfixturevalue("stack" if request.param == "redis"
                                               else "cluster_stack"))


@pytest.fixture(params=["redis", "cluster"])
def backend(request) -> dict:
    """make_stack(**backend): one Redis of the stack's own, or the session's Redis Cluster under
    a prefix of its own (the session's `cluster_stack` and its matcher share that cluster)."""
    if request.param == "redis":
        return {}
    cluster = request.getfixturevalue("redis_cluster")
    return {"cluster": cluster, "REDIS_PREFIX": "own" + uuid.uuid4().hex[:8]}


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
        for name in ("fresh", "fresh_any", "stack"):
            s = item.funcargs.get(name)
            if isinstance(s, Stack):
                rep.sections.append(("process logs", s.logs()))
                break
