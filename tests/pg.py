"""A throw-away PostgreSQL server for tests: initdb in a temporary folder, a free loopback port,
its Unix socket inside that folder, stopped and removed at the end.

The `postgres` fixture FAILS (never skips) when PostgreSQL can't be found or started: a green run
must mean the PostgreSQL checks ran. It looks for initdb/pg_ctl in PG_BINDIR, then in
/usr/lib/postgresql/<newest>/bin, then on PATH (Debian/Ubuntu: `apt-get install postgresql`).
PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from procs import free_port


def pg_bindir() -> Path | None:
    candidates = []
    if os.environ.get("PG_BINDIR"):
        candidates.append(Path(os.environ["PG_BINDIR"]))

    def version(path: str) -> tuple:
        try:
            return tuple(int(x) for x in Path(path).parent.name.split("."))
        except ValueError:
            return (0,)

    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version,
                                           reverse=True)]
    found = shutil.which("pg_ctl")
    if found:
        candidates.append(Path(found).parent)
    for d in candidates:
        if (d / "initdb").exists() and (d / "pg_ctl").exists():
            return d
    return None


class PostgresServer:
    def __init__(self):
        bindir = pg_bindir()
        if bindir is None:
            raise RuntimeError("initdb/pg_ctl not found (set PG_BINDIR, or install PostgreSQL: "
                               "apt-get install postgresql)")
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="pg-"))
        self.data = self.dir / "data"
        self.logfile = self.dir / "server.log"
        self.port = free_port()
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root and there is no `postgres` user to run "
                                   "PostgreSQL as (PostgreSQL refuses to run as root)") from None
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self.started = False

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")
        self.resume()
        self.started = True

    def resume(self) -> None:
        """Start the server on its data folder (again, after `pause`)."""
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                f"-c synchronous_commit=off -c full_page_writes=off")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-o", opts, "-w",
                  "-t", "60", "start")

    def pause(self) -> None:
        """Stop the server but keep its data: a database outage."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def _run(self, tool: str, *args: str) -> None:
        cmd = [*self.prefix, str(self.bindir / tool), *args]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            log = self.logfile.read_text(errors="replace")[-3000:] if self.logfile.exists() else ""
            raise RuntimeError(f"{tool} failed ({res.returncode}): {res.stdout}{res.stderr}\n{log}")

    def url(self, database: str) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres",
                                dbname="postgres", connect_timeout=10)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
                cur.execute(f'CREATE DATABASE "{name}" ENCODING \'UTF8\' TEMPLATE template0')
        finally:
            conn.close()
        return self.url(name)

    def stop(self) -> None:
        if getattr(self, "started", False):
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
            except Exception:
                pass
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres():
    server = None
    try:
        server = PostgresServer()
        server.start()
    except Exception as exc:  # noqa: BLE001 - any reason is a failure, with its message
        if server is not None:
            server.stop()
        pytest.fail(f"PostgreSQL is required for these tests and could not be started: {exc}",
                    pytrace=False)
    yield server
    server.stop()



def history_database(request, tmp_path_factory, name: str) -> str:
    """The URL of an empty history database `name` for a fixture parametrized over "sqlite" and
    "postgresql" (the session's PostgreSQL server)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp(name) / 'chat.db'}"
    return request.getfixturevalue("postgres").create_database(name)
