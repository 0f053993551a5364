"""Fixtures: a shared stack (Redis, two web workers, the matcher) and helpers to build others."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pg import postgres  # noqa: E402,F401  (one PostgreSQL server for the session)
from procs import (ROOT, ArchiverProc, MatcherProc, RedisServer, WebWorker,  # noqa: E402
                   base_env, kill_named, stop_all, stop_in_background, wait_stopped)


class Stack:
    """Redis (or a Redis Cluster: `cluster`) + N web workers + M matchers, all real processes,
    stopped at the end."""

    def __init__(self, workers: int = 2, matchers: int = 1, redis: RedisServer | None = None,
                 archivers: int = 0, cluster=None, sockets: Path | None = None, **env):
        """`sockets`: a folder where each web worker listens on a Unix socket too, `<id>.sock`
        (as `python -m stack cluster` runs them for its nginx)."""
        self.cluster = cluster
        self.own_redis = redis is None and cluster is None
        self.redis = redis or (RedisServer() if cluster is None else None)
        if cluster is not None:
            env["REDIS_CLUSTER_URL"] = cluster.url
        self.env = base_env(cluster.url if cluster is not None else self.redis.url, **env)
        self.webs = [WebWorker(self.env, f"w{i + 1}",
                               unix_socket=str(sockets / f"w{i + 1}.sock") if sockets else None)
                     for i in range(workers)]
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

    def kill_listeners(self, nodes=None) -> int:
        """Cut this stack's queue listener connections (named `<prefix>:pubsub:<worker>`, see
        common/keys.py) on every node of its Redis or Redis Cluster, or on the `nodes` given;
        the connections of other stacks on a shared cluster stay. How many."""
        from common.keys import Keys

        if nodes is None:
            nodes = [self.redis] if self.cluster is None else self.cluster.nodes
        name = Keys(self.env.get("REDIS_PREFIX", "chat")).client_name("pubsub", "")
        return sum(kill_named(n.client, name) for n in nodes)

    def flush(self) -> None:
        if self.cluster is None:
            self.redis.client.flushall()
        else:
            self.cluster.flush()

    def procs(self):
        return [*self.webs, *self.matchers, *self.archivers]

    def logs(self) -> str:
        return "\n".join(f"----- {p.name} -----\n{p.output()[-4000:]}" for p in self.procs())

    def stop(self, background: bool = False, then=None):
        """Stop every process at once (and the stack's own Redis after them), then `then()`.
        `background`: only signal them now; a thread waits for their graceful stop while the
        tests go on (procs.stop_in_background; the session waits for it at its end)."""
        def after():
            if self.own_redis:
                self.redis.stop()
            if then is not None:
                then()

        if background:
            stop_in_background(self.procs(), after)
        else:
            stop_all(self.procs())
            after()


@pytest.fixture(scope="session", autouse=True)
def _stops_finished():
    """Set up first, torn down last: the session ends once every stop in the background has."""
    yield
    wait_stopped()


def in_xdist_worker() -> bool:
    """True in a process of `pytest -n N` (make test): the other processes go on meanwhile."""
    return "PYTEST_XDIST_WORKER" in os.environ


class LoadtestRun:
    """One CI-sized run of loadtests/run.py, asserted by tests/test_loadtest_smoke.py: 20 users
    for 15 s against the baseline relay, then against two web workers of a stack of its own
    (--target, --baseline). It is mostly waiting (the locust load is light, the drains and the
    reports are short): in a serial session it starts when the session starts and runs beside
    the other tests instead of adding its minute; under `pytest -n N` the test starts it itself
    (the other test processes are what goes on beside it)."""

    ARGS = ("--users", "20", "--spawn-rate", "10", "--duration", "15", "--processes", "2")

    def __init__(self, folder: Path):
        self.stack = Stack(workers=2)
        self.out = folder / "results"
        self.stdout, self.stderr = folder / "run.stdout", folder / "run.stderr"
        self.cmd = [sys.executable, str(ROOT / "loadtests" / "run.py"), *self.ARGS,
                    "--target", ",".join(self.stack.urls()), "--baseline",
                    "--results-dir", str(self.out)]
        try:
            with open(self.stdout, "w") as out, open(self.stderr, "w") as err:
                self.p = subprocess.Popen(self.cmd, cwd=ROOT, stdout=out, stderr=err)
        except BaseException:
            self.stack.stop()
            raise

    @staticmethod
    def started(fixture_value) -> LoadtestRun:
        """The run, or the exception that kept it from starting, raised."""
        if isinstance(fixture_value, BaseException):
            raise fixture_value
        return fixture_value

    def wait(self, timeout: float) -> subprocess.CompletedProcess:
        """Its end (run.py's exit code, stdout, stderr); TimeoutExpired past `timeout`."""
        self.p.wait(timeout)
        return subprocess.CompletedProcess(self.cmd, self.p.returncode,
                                           self.stdout.read_text(errors="replace"),
                                           self.stderr.read_text(errors="replace"))

    def stop(self) -> None:
        if self.p.poll() is None:  # the session ends before the test asserted it
            self.p.send_signal(signal.SIGINT)  # run.py's own finally: stops its relay
            try:
                self.p.wait(60)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.stack.stop(background=True)


LOADTEST_SMOKE = "test_loadtest_smoke.py::"


@pytest.fixture(scope="session", autouse=True)
def loadtest_in_background(request, tmp_path_factory):
    """The LoadtestRun of a serial session when tests/test_loadtest_smoke.py is among the tests
    selected, started before the first test; else None (and under `pytest -n N`, where every
    process collects every test, but one of them runs that one). A failure to start it is that
    test's to report (`LoadtestRun.started`), not the first test's."""
    if in_xdist_worker() or not any(LOADTEST_SMOKE in item.nodeid for item in request.session.items):
        yield None
        return
    try:
        run = LoadtestRun(tmp_path_factory.mktemp("loadtest"))
    except Exception as exc:  # noqa: BLE001 - raised again by the test
        yield exc
        return
    yield run
    run.stop()


@pytest.fixture(scope="session")
def stack():
    s = Stack()
    yield s
    s.stop(background=True)


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
    wait_stopped()  # the stacks on it first
    c.stop()


@pytest.fixture(scope="session")
def cluster_stack(redis_cluster):
    """Like `stack`, on the session's Redis Cluster (REDIS_CLUSTER_URL)."""
    s = Stack(cluster=redis_cluster)
    yield s
    s.stop(background=True)


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

    build.made = made  # for the failure report's logs
    yield build
    for s in made:
        s.stop(background=True)


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
        for s in getattr(item.funcargs.get("make_stack"), "made", ()):
            rep.sections.append(("process logs", s.logs()))


@pytest.fixture
async def peers():
    """make(url, name, **kw) -> a connected Peer, closed at the end of the test even when it
    fails (a client left open keeps a worker's connection, and its events, into the next test)."""
    from peer import Peer, close_all

    made: list[Peer] = []

    async def make(url: str, name: str = "", **kw) -> Peer:
        p = Peer(url, name, **kw)
        made.append(p)
        await p.connect()
        return p

    yield make
    await close_all(made)
