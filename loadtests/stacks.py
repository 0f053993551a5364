"""What the load tests run their load against: a local chat cluster (LocalStack) or the baseline
relay (RelayProcess), each a process group of its own on a free loopback port, its output in a
log, stopped by stop(); and the names of the processes of a stack (classify, web_workers,
stack_processes). Used by run.py, capacity.py and overload.py (loadtests/ is not a package: each
runs as a script, with this folder on sys.path).
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import psutil

from stack.ports import free_port  # noqa: F401 (capacity.py and overload.py take it from here)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
LOOPBACK_NAMES = {"localhost"}
RELAY_SCRIPT = "loadtests/relay.py"


def check_loopback(url: str) -> str:
    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ValueError(f"{url!r}: an http:// URL is needed")
    host = u.hostname
    if host not in LOOPBACK_NAMES:
        try:
            if not ipaddress.ip_address(host).is_loopback:
                raise ValueError
        except ValueError:
            raise ValueError(f"{url!r}: only loopback targets (127.0.0.1, ::1, localhost) "
                             "are allowed") from None
    else:  # localhost must really be loopback here
        for info in socket.getaddrinfo(host, None):
            if not ipaddress.ip_address(info[4][0]).is_loopback:
                raise ValueError(f"{host} does not resolve to loopback here")
    return url.rstrip("/")


def get_json(url: str, timeout: float = 2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read().decode())


def stop_group(p: subprocess.Popen, grace: float) -> None:
    """SIGTERM to a process started with its own session, SIGKILL after `grace` seconds."""
    if p.poll() is not None:
        return
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)
    except ProcessLookupError:
        pass


# --------------------------------------------------------------------------- the processes

class Service:
    """A command started in a session of its own on self.port (free, loopback), its output in
    out/LOG; wait_ready() until ready() says so, stop() with SIGTERM, SIGKILL after GRACE s."""

    LOG = "service.log"
    GRACE = 30.0
    READY_TIMEOUT = 60.0
    POLL_S = 0.5
    EXITED = "the service exited"  # ... (exit code); see LOG
    NOT_READY = "the service"  # ... is not ready after N s

    def start(self, out: Path, cmd: list[str], env: dict) -> None:
        self.log = open(out / self.LOG, "w")
        self.p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        return bool(get_json(self.url + "/readyz").get("ok"))

    def wait_ready(self, timeout: float | None = None) -> None:
        timeout = self.READY_TIMEOUT if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.p.poll() is not None:
                raise RuntimeError(f"{self.EXITED} ({self.p.returncode}); see {self.LOG}")
            try:
                if self.ready():
                    return
            except (OSError, ValueError):
                pass
            time.sleep(self.POLL_S)
        raise TimeoutError(f"{self.NOT_READY} is not ready after {timeout:.0f} s")

    def stop(self) -> None:
        stop_group(self.p, self.GRACE)
        self.log.close()


class LocalStack(Service):
    """`python -m stack cluster` (or `run`) on free loopback ports, stopped by stop()."""

    LOG = "stack.log"
    READY_TIMEOUT = 120.0
    EXITED = "stack exited"

    def __init__(self, out: Path, workers: int, kind: str = "auto", extra_env: dict | None = None):
        self.kind = kind if kind != "auto" else self.pick()
        self.NOT_READY = f"the local {self.kind}"
        self.port = free_port()
        self.tmp = tempfile.mkdtemp(prefix="loadtest-instance-")
        env = {**os.environ, "PORT": str(self.port), "INSTANCE_DIR": self.tmp,
               "PYTHONUNBUFFERED": "1", "WORKERS": str(workers),
               # every simulated user comes from 127.0.0.1: no per-address cap (nginx's or a
               # worker's) for a load test; the attacks it guards against are tested elsewhere
               "MAX_CONNS_PER_ADDR": "0", "SESSION_RATE": "0"}
        for k in ("REDIS_URL", "DATABASE_URL"):  # a private Redis and SQLite, always
            env.pop(k, None)
        env.update(extra_env or {})
        self.start(out, [PY, "-m", "stack", self.kind], env)

    @staticmethod
    def pick() -> str:
        """`cluster` (nginx in front of the web workers) where nginx is installed, else `run`."""
        nginx = shutil.which("nginx") or Path("/usr/sbin/nginx").exists()
        return "cluster" if nginx else "run"

    def ready(self) -> bool:
        """Every web worker and then nginx (or the one worker of `run`) answer /readyz ok."""
        webs = web_workers(self.p.pid)
        return bool(webs and all(get_json(f"http://127.0.0.1:{port}/readyz").get("ok")
                                 for port in webs.values())
                    and super().ready())

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


class RelayProcess(Service):
    """The baseline: loadtests/relay.py on a free loopback port, stopped by stop()."""

    LOG = "relay.log"
    GRACE = 15.0
    POLL_S = 0.2
    EXITED = "the relay exited"
    NOT_READY = "the relay"

    def __init__(self, out: Path):
        self.port = free_port()
        self.start(out, [PY, RELAY_SCRIPT, "--port", str(self.port)],
                   {**os.environ, "PYTHONUNBUFFERED": "1"})


# --------------------------------------------------------------------------- which is which

def classify(p: psutil.Process) -> str | None:
    """A group name for a process of the stack, or None for shells and the like."""
    try:
        name = p.name()
        cmd = " ".join(p.cmdline())
    except (psutil.Error, OSError):
        return None
    if "redis-server" in name or "redis-server" in cmd:
        return "redis"
    if name.startswith("nginx") or cmd.startswith("nginx"):
        return "nginx"
    if RELAY_SCRIPT in cmd:
        return "relay"
    if "locust" in cmd:
        return "locust"
    if name in ("sh", "bash", "dash", "zsh"):
        return None
    if " -m web" in cmd or "gunicorn" in cmd or "chat-web" in cmd:
        # gunicorn: an arbiter process and its one worker (the one without children)
        try:
            is_worker = not p.children()
        except (psutil.Error, OSError):
            is_worker = False
        try:
            wid = p.environ().get("WORKER_ID", "web")
        except (psutil.Error, OSError):
            wid = "web"
        return f"{wid}" if is_worker else f"{wid} arbiter"
    if " -m matcher" in cmd:
        return "matcher"
    if " -m archiver" in cmd:
        return "archiver"
    if " -m stack" in cmd:
        return "honcho"
    return None


def stack_processes(root_pid: int) -> dict[int, tuple[psutil.Process, str]]:
    """{pid: (process, group)} of root_pid and every process under it that classify() names;
    psutil.Error when root_pid is gone."""
    root = psutil.Process(root_pid)
    out = {}
    for p in [root, *root.children(recursive=True)]:
        group = classify(p)
        if group:
            out[p.pid] = (p, group)
    return out


def web_workers(root_pid: int) -> dict[str, int]:
    """{worker id: listening port} of the gunicorn workers under root_pid."""
    out = {}
    try:
        procs = psutil.Process(root_pid).children(recursive=True)
    except psutil.Error:
        return out
    for p in procs:
        group = classify(p)
        if not group or group.endswith("arbiter") or not group.startswith("web"):
            continue
        try:
            for c in p.net_connections(kind="tcp"):
                if c.status == psutil.CONN_LISTEN:
                    out[group] = c.laddr.port
        except (psutil.Error, OSError):
            continue
    return out
