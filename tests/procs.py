"""Real processes for the tests: a Redis server, web workers, the matcher, on free loopback ports."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from stack.ports import free_port  # noqa: F401 (the tests' one way to pick a port)
from stack.services import redis_args, redis_binary

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
TEST_SECRET = "test-secret-" + "x" * 40


class Fatal(RuntimeError):
    """Raised by a check that can never succeed (the process died): stop waiting at once."""


def wait_until(check, timeout: float, what: str, interval: float = 0.05):
    """Poll `check` until it returns a truthy value; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Fatal:
            raise
        except Exception as exc:  # not up yet
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc})")


class Proc:
    """A child process whose output goes to a log file that a failing test prints."""

    def __init__(self, name: str, args: list[str], env: dict | None = None, cwd: Path = ROOT):
        self.name = name
        self.log = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False)
        self.args, self.cwd = args, cwd
        self.full_env = {**os.environ, **(env or {})}
        self._spawn()

    def _spawn(self) -> None:
        self.p = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT,
                                  env=self.full_env, cwd=self.cwd, start_new_session=True)

    def respawn(self) -> None:
        """Start the same command again (same port, same data folder), after it stopped."""
        assert not self.alive(), f"{self.name} is still running"
        self._spawn()

    def alive(self) -> bool:
        return self.p.poll() is None

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.alive():
            os.killpg(self.p.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.p.wait(10)

    def stop(self, timeout: float = 15) -> int:
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.p.returncode


def stop_all(procs, timeout: float = 15) -> None:
    """Proc.stop() of each, at once: every one gets SIGTERM first, then each is waited for
    (SIGKILL past `timeout`), so their graceful stops (a web worker's drain) overlap instead of
    adding up."""
    procs = list(procs)
    for p in procs:
        p.signal(signal.SIGTERM)
    _wait_all(procs, timeout)


def _wait_all(procs, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()


_stopping: list[threading.Thread] = []


def stop_in_background(procs, then=None, timeout: float = 15) -> None:
    """stop_all(procs), then `then()`, without waiting for it: every one gets SIGTERM now, and
    a thread waits for their graceful stop (a web worker's takes a second or more: gunicorn's
    loop, the drain) while the tests go on. wait_stopped() waits for every such stop; so does
    the interpreter's exit (the threads are not daemons)."""
    procs = list(procs)
    for p in procs:
        p.signal(signal.SIGTERM)

    def finish():
        _wait_all(procs, timeout)
        if then is not None:
            then()

    t = threading.Thread(target=finish, name="stopping " + ",".join(p.name for p in procs))
    t.start()
    _stopping.append(t)


def wait_stopped() -> None:
    """Wait until every stop_in_background() has finished: nothing of those processes is left
    (for a test that counts what reaches a shared Redis, and at the end of the session)."""
    while _stopping:
        _stopping.pop().join()


class RedisServer(Proc):
    """A private redis-server; `aof=True` keeps its data across `shutdown()` + `start_again()`."""

    def __init__(self, port: int | None = None, aof: bool = False):
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="redis-")
        super().__init__("redis", redis_args(redis_binary(), self.port, self.dir, aof=aof))
        self.url = f"redis://127.0.0.1:{self.port}/0"
        import redis

        self.client = redis.Redis.from_url(self.url, decode_responses=True)
        wait_until(self.client.ping, 10, "redis to answer PING")

    def shutdown(self, timeout: float = 10) -> None:
        """SHUTDOWN as an operator would (the AOF is flushed), and wait for the process to end."""
        self.client.shutdown()
        self.p.wait(timeout)

    def start_again(self, timeout: float = 10) -> None:
        """The same server on the same port and data folder, answering PING."""
        self.respawn()
        wait_until(self.client.ping, timeout, "redis to answer PING again")

    def kill_clients(self, kind: str = "pubsub") -> int:
        """CLIENT KILL TYPE `kind` (normal, pubsub, …) while Redis stays up; how many."""
        return int(self.client.client_kill_filter(_type=kind))


def kill_named(client, name_prefix: str, kind: str = "pubsub") -> int:
    """CLIENT KILL ID of each connection of type `kind` whose client name starts with
    `name_prefix` (Keys.client_name): one stack's connections, not those of others sharing the
    server; how many."""
    ids = [c["id"] for c in client.client_list(_type=kind)
           if c.get("name", "").startswith(name_prefix)]
    return sum(int(client.client_kill_filter(_id=i)) for i in ids)


def base_env(redis_url: str, **extra) -> dict:
    env = {
        "APP_ENV": "development",
        "REDIS_URL": redis_url,
        "SECRET_KEY": TEST_SECRET,
        "RESUME_GRACE": "3",
        "HEARTBEAT_INTERVAL": "0.5",
        "INTEREST_WAIT": "1",
        "ARCHIVER_CLAIM_IDLE": "2",
        "LOG_LEVEL": "INFO",
        "INSTANCE_DIR": tempfile.mkdtemp(prefix="instance-"),
        "PYTHONUNBUFFERED": "1",
        # Tests run hundreds of clients from 127.0.0.1 in a few seconds: the per-address limit
        # of new sessions is off unless a test turns it on (tests/test_guard.py).
        "SESSION_RATE": "0",
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


class WebWorker(Proc):
    def __init__(self, env: dict, worker_id: str, port: int | None = None,
                 unix_socket: str | None = None):
        """`unix_socket`: a path it listens on besides its port (UNIX_SOCKET), for nginx."""
        self.port = port or free_port()
        self.worker_id = worker_id
        self.unix_socket = unix_socket
        super().__init__(f"web-{worker_id}", [PY, "-m", "web"],
                         {**env, "PORT": str(self.port), "WORKER_ID": worker_id,
                          **({"UNIX_SOCKET": unix_socket} if unix_socket else {})})
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30) -> None:
        def ready():
            if not self.alive():
                raise Fatal(f"{self.name} exited:\n{self.output()}")
            with urllib.request.urlopen(self.url + "/readyz", timeout=2) as r:
                return r.status == 200

        wait_until(ready, timeout, f"{self.name} /readyz")


class MatcherProc(Proc):
    def __init__(self, env: dict, name: str = "matcher"):
        super().__init__(name, [PY, "-m", "matcher"], env)


@contextlib.contextmanager
def one_worker(name: str, **env):
    """A web worker `name` and a matcher on a Redis of their own (base_env, then `env`): the
    worker once ready; all three stopped after (in the background)."""
    redis = RedisServer()
    full = base_env(redis.url, **env)
    web = WebWorker(full, name)
    matcher = MatcherProc(full, f"{name}-matcher")
    try:
        web.wait_ready()
        yield web
    finally:
        stop_in_background([web, matcher], redis.stop)


class ArchiverProc(Proc):
    def __init__(self, env: dict, name: str = "archiver"):
        super().__init__(name, [PY, "-m", "archiver"], env)
