"""Configuration: read from the environment once, typed, validated at start-up.

Every setting any process reads is declared here, so that one table documents them all (the
README's table is generated from the same names) and a bad value stops the process at start with
one clear line instead of failing later under load.
"""
from __future__ import annotations

import os
import secrets
import socket
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping

ROOT = Path(__file__).resolve().parent.parent
INSTANCE_DIR = Path(os.environ.get("INSTANCE_DIR", ROOT / "instance"))


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names it and says what is expected."""


def _int(name: str, raw: str, lo: int, hi: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def _float(name: str, raw: str, lo: float, hi: float) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def _choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    if raw not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def _url(name: str, raw: str, schemes: tuple[str, ...]) -> str:
    if not raw.startswith(tuple(s + "://" for s in schemes)):
        raise ConfigError(f"{name} must start with one of {', '.join(s + '://' for s in schemes)}")
    return raw


def _dev_secret(name: str = "secret_key", nbytes: int = 48) -> str:
    """A per-checkout random secret, kept under instance/ so every local process shares it."""
    path = INSTANCE_DIR / name
    if path.exists():
        return path.read_text().strip()
    INSTANCE_DIR.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(nbytes)
    # Written whole under a name of its own, then linked into place: a process starting at the
    # same moment sees no file or a complete one, never an empty one being written (seen: two
    # matchers started together, one read "" and refused to start).
    fd, tmp = tempfile.mkstemp(dir=INSTANCE_DIR, prefix=f".{name}-")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(value)
        os.link(tmp, path)
    except FileExistsError:  # another local process made it first
        return path.read_text().strip()
    finally:
        os.unlink(tmp)
    return value


@dataclass(frozen=True)
class Settings:
    app_env: str
    host: str
    port: int
    redis_url: str
    redis_cluster_url: str | None
    database_url: str
    secret_key: str
    redis_prefix: str
    socketio_channel: str
    worker_id: str
    worker_connections: int
    max_connections: int
    log_level: str
    resume_grace: float
    heartbeat_interval: float
    interest_wait: float
    message_rate: float
    message_burst: int
    control_rate: float
    control_burst: int
    max_message_len: int
    max_frame_bytes: int
    ping_interval: int
    ping_timeout: int
    match_batch: int
    stats_interval: float
    admin_password: str | None
    display_tz: str | None
    retention_days: int
    db_pool_size: int
    archiver_claim_idle: float
    trusted_proxies: int
    token_ttl: int
    packet_rate: float
    packet_burst: int
    max_body_bytes: int
    header_timeout: float
    max_conns_per_addr: int
    session_rate: float
    session_burst: int
    drain_timeout: float

    @property
    def production(self) -> bool:
        return self.app_env == "production"

    def describe(self) -> str:
        """One log line of the settings, secrets and credentials left out."""
        hidden = {"secret_key", "redis_url", "redis_cluster_url", "database_url", "admin_password"}
        shown = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in hidden}
        return " ".join(f"{k}={v}" for k, v in shown.items())


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from the environment; raise ConfigError naming the first bad setting."""
    env = os.environ if env is None else env

    def get(name: str, default: str | None = None) -> str | None:
        value = env.get(name)
        return default if value is None or value == "" else value

    app_env = _choice("APP_ENV", get("APP_ENV", "development"), ("development", "production"))
    production = app_env == "production"

    redis_cluster_url = get("REDIS_CLUSTER_URL")  # one seed node of a Redis Cluster
    if redis_cluster_url is not None:
        _url("REDIS_CLUSTER_URL", redis_cluster_url, ("redis", "rediss"))
    redis_url = get("REDIS_URL")
    if redis_url is None:
        if production and redis_cluster_url is None:
            raise ConfigError("REDIS_URL (or REDIS_CLUSTER_URL) is required in production")
        redis_url = "redis://127.0.0.1:6379/0"
    _url("REDIS_URL", redis_url, ("redis", "rediss", "unix"))

    database_url = get("DATABASE_URL")
    if database_url is None:
        if production:
            raise ConfigError("DATABASE_URL is required in production")
        database_url = f"sqlite:///{INSTANCE_DIR / 'chat.db'}"
    _url("DATABASE_URL", database_url, ("postgresql", "postgresql+psycopg2", "postgres", "sqlite"))

    secret_key = get("SECRET_KEY")
    if secret_key is None:
        if production:
            raise ConfigError("SECRET_KEY is required in production (32 or more random characters)")
        secret_key = _dev_secret()
    if len(secret_key) < 32:
        raise ConfigError("SECRET_KEY must be at least 32 characters")

    resume_grace = _float("RESUME_GRACE", get("RESUME_GRACE", "20"), 1, 3600)
    heartbeat = get("HEARTBEAT_INTERVAL")
    heartbeat_interval = (
        _float("HEARTBEAT_INTERVAL", heartbeat, 0.1, resume_grace / 2)
        if heartbeat
        else resume_grace / 4
    )
    worker_connections = _int("WORKER_CONNECTIONS", get("WORKER_CONNECTIONS", "10000"), 10,
                              1_000_000)
    max_connections = _int("MAX_CONNECTIONS", get("MAX_CONNECTIONS", "3000"), 0, 1_000_000)
    if max_connections >= worker_connections:
        # past WORKER_CONNECTIONS gevent stops accepting and new clients wait without a word
        raise ConfigError("MAX_CONNECTIONS must be below WORKER_CONNECTIONS "
                          f"({max_connections} >= {worker_connections})")
    prefix = get("REDIS_PREFIX", "chat")
    if not prefix.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"REDIS_PREFIX must be letters, digits, - or _, got {prefix!r}")

    admin_password = get("ADMIN_PASSWORD")
    if admin_password is None and not production:
        admin_password = _dev_secret("admin_password", 12)  # 16 characters to type
    if admin_password is not None and len(admin_password) < 8:
        raise ConfigError("ADMIN_PASSWORD must be at least 8 characters")
    display_tz = get("DISPLAY_TZ")
    if display_tz is not None:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(display_tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"DISPLAY_TZ must be an IANA time zone such as Asia/Shanghai, "
                              f"got {display_tz!r}") from None

    return Settings(
        app_env=app_env,
        host=get("HOST", "127.0.0.1"),
        port=_int("PORT", get("PORT", "5000"), 1, 65535),
        redis_url=redis_url,
        redis_cluster_url=redis_cluster_url,
        database_url=database_url,
        secret_key=secret_key,
        redis_prefix=prefix,
        socketio_channel=get("SOCKETIO_CHANNEL", "flask-socketio"),
        worker_id=get("WORKER_ID", f"{socket.gethostname()}-{os.getpid()}"),
        worker_connections=worker_connections,
        max_connections=max_connections,
        log_level=_choice(
            "LOG_LEVEL", get("LOG_LEVEL", "INFO").upper(), ("DEBUG", "INFO", "WARNING", "ERROR")
        ),
        resume_grace=resume_grace,
        heartbeat_interval=heartbeat_interval,
        interest_wait=_float("INTEREST_WAIT", get("INTEREST_WAIT", "3"), 0, 600),
        message_rate=_float("MESSAGE_RATE", get("MESSAGE_RATE", "5"), 0.01, 10_000),
        message_burst=_int("MESSAGE_BURST", get("MESSAGE_BURST", "10"), 1, 100_000),
        control_rate=_float("CONTROL_RATE", get("CONTROL_RATE", "10"), 0.01, 10_000),
        control_burst=_int("CONTROL_BURST", get("CONTROL_BURST", "30"), 1, 100_000),
        max_message_len=_int("MAX_MESSAGE_LEN", get("MAX_MESSAGE_LEN", "500"), 1, 10_000),
        max_frame_bytes=_int("MAX_FRAME_BYTES", get("MAX_FRAME_BYTES", "16384"), 1024, 10_000_000),
        # 15 + 10: a silent network loss is noticed within 25 s on both ends.
        ping_interval=_int("PING_INTERVAL", get("PING_INTERVAL", "15"), 1, 600),
        ping_timeout=_int("PING_TIMEOUT", get("PING_TIMEOUT", "10"), 1, 600),
        match_batch=_int("MATCH_BATCH", get("MATCH_BATCH", "256"), 2, 10_000),
        stats_interval=_float("STATS_INTERVAL", get("STATS_INTERVAL", "5"), 0.1, 3600),
        admin_password=admin_password,
        display_tz=display_tz,
        retention_days=_int("RETENTION_DAYS", get("RETENTION_DAYS", "30"), 1, 36500),
        db_pool_size=_int("DB_POOL_SIZE", get("DB_POOL_SIZE", "5"), 1, 200),
        trusted_proxies=_int("TRUSTED_PROXIES", get("TRUSTED_PROXIES", "0"), 0, 5),
        archiver_claim_idle=_float("ARCHIVER_CLAIM_IDLE", get("ARCHIVER_CLAIM_IDLE", "30"), 0.1,
                                   86400),
        token_ttl=_int("TOKEN_TTL", get("TOKEN_TTL", "86400"), 60, 30 * 86400),
        packet_rate=_float("PACKET_RATE", get("PACKET_RATE", "20"), 1, 10_000),
        packet_burst=_int("PACKET_BURST", get("PACKET_BURST", "60"), 1, 100_000),
        max_body_bytes=_int("MAX_BODY_BYTES", get("MAX_BODY_BYTES", "65536"), 1024, 100_000_000),
        header_timeout=_float("HEADER_TIMEOUT", get("HEADER_TIMEOUT", "10"), 0.5, 600),
        max_conns_per_addr=_int("MAX_CONNS_PER_ADDR", get("MAX_CONNS_PER_ADDR", "256"), 0, 1_000_000),
        session_rate=_float("SESSION_RATE", get("SESSION_RATE", "10"), 0, 100_000),
        session_burst=_int("SESSION_BURST", get("SESSION_BURST", "100"), 1, 1_000_000),
        drain_timeout=_float("DRAIN_TIMEOUT", get("DRAIN_TIMEOUT", "3"), 0, 60),
    )


# The environment variables read anywhere in the project (checked against deploy files by tests).
ENV_VARS = (
    "APP_ENV HOST PORT REDIS_URL REDIS_CLUSTER_URL DATABASE_URL SECRET_KEY REDIS_PREFIX SOCKETIO_CHANNEL WORKER_ID "
    "WORKER_CONNECTIONS MAX_CONNECTIONS LOG_LEVEL RESUME_GRACE HEARTBEAT_INTERVAL INTEREST_WAIT "
    "MESSAGE_RATE MESSAGE_BURST CONTROL_RATE CONTROL_BURST MAX_MESSAGE_LEN MAX_FRAME_BYTES PING_INTERVAL "
    "PING_TIMEOUT MATCH_BATCH STATS_INTERVAL INSTANCE_DIR ADMIN_PASSWORD DISPLAY_TZ RETENTION_DAYS "
    "DB_POOL_SIZE ARCHIVER_CLAIM_IDLE TRUSTED_PROXIES TOKEN_TTL PACKET_RATE PACKET_BURST "
    "MAX_BODY_BYTES HEADER_TIMEOUT MAX_CONNS_PER_ADDR SESSION_RATE SESSION_BURST DRAIN_TIMEOUT"
).split()
