"""Configuration: read from the environment once, typed, validated at start-up.

Every setting any process reads is declared once, in SETTINGS below: its environment variable,
type, default (or how it is derived), bounds or choices, and its line of documentation. From that
one table come the Settings dataclass and load() (a bad value stops the process at start with one
clear line instead of failing later under load), ENV_VARS (checked against the deploy files by
tests/test_deploy_files.py) and the README's configuration table:

    python -m common.config --markdown       # print the table
    python -m common.config --write-readme   # put it into README.md (tests/test_config.py fails
                                             # while README.md's table differs from it)

Limits that are not settings (interests per user, interest and report lengths) are constants in
common/limits.py.
"""
from __future__ import annotations

import os
import secrets
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, make_dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Read at import (tests point it elsewhere); documented in SETTINGS like the others.
INSTANCE_DIR = Path(os.environ.get("INSTANCE_DIR") or ROOT / "instance")
README = ROOT / "README.md"
UNIX_PATH_MAX = 107  # bytes of a Unix socket's path (Linux's sun_path, less its NUL)


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


# -- the table ----------------------------------------------------------------------------------
class Reading:
    """load()'s state while it walks SETTINGS: the values read so far, by Settings field."""

    def __init__(self, env: Mapping[str, str]):
        self.env = env
        self.values: dict[str, Any] = {}

    def raw(self, name: str) -> str | None:
        """The variable as set; an empty value counts as unset."""
        value = self.env.get(name)
        return None if value is None or value == "" else value

    def __getitem__(self, field: str) -> Any:
        return self.values[field]

    @property
    def production(self) -> bool:
        return self.values.get("app_env") == "production"


Derived = Callable[[Reading], str | None]  # a default computed from what is read before it
Bound = float | Callable[[Reading], float] | None


@dataclass(frozen=True)
class Setting:
    """One setting: where it comes from, what it may be, and its row in the README."""

    env: str  # the environment variable
    field: str | None  # its Settings attribute; None: read at import, not in Settings (INSTANCE_DIR)
    kind: str  # int, float, text, choice (one of `choices`), url (a scheme of `choices`), path
    default: str | Derived | None  # the raw value when unset, or a function of what was read
    #                                 before it (returning None: stays unset); None: unset
    doc: str | None  # the README's meaning; None: shares the row of the setting above it
    lo: Bound = None  # int and float bounds, inclusive; a function for a bound from
    hi: Bound = None  # another setting
    choices: tuple[str, ...] = ()
    shown: str | None = None  # the README's default when not the literal `default`
    required: str = ""  # production refuses it unset, with this line
    unless: str = ""  # ... unless this other variable is set
    min_len: int = 0
    hidden: bool = False  # a secret or credential (or the filter's word list, which the start-up
    #                       line must not spell out): left out of Settings.describe()
    normalize: Callable[[str], str] | None = None
    check: Callable[[str, Any, Reading], None] | None = None  # more validation: raise ConfigError

    @property
    def type(self) -> Any:
        base = {"int": int, "float": float}.get(self.kind, str)
        return base if isinstance(self.default, str) else base | None

    def shown_default(self) -> str:
        if self.shown is not None:
            return self.shown
        return f"`{self.default}`" if isinstance(self.default, str) else "unset"

    def read(self, reading: Reading) -> Any:
        """The typed, validated value from the environment (or the default); ConfigError if bad."""
        raw = reading.raw(self.env)
        if raw is None:
            if self.required and reading.production and not (
                    self.unless and reading.raw(self.unless) is not None):
                raise ConfigError(self.required)
            raw = self.default(reading) if callable(self.default) else self.default
        if raw is None:
            return None
        if self.normalize:
            raw = self.normalize(raw)
        value = self.parse(raw, reading)
        if self.min_len and len(value) < self.min_len:
            raise ConfigError(f"{self.env} must be at least {self.min_len} characters")
        if self.check:
            self.check(self.env, value, reading)
        return value

    def parse(self, raw: str, reading: Reading) -> Any:
        def bound(b: Bound) -> float:
            return b(reading) if callable(b) else b

        if self.kind == "int":
            return _int(self.env, raw, bound(self.lo), bound(self.hi))
        if self.kind == "float":
            return _float(self.env, raw, bound(self.lo), bound(self.hi))
        if self.kind == "choice":
            return _choice(self.env, raw, self.choices)
        if self.kind == "url":
            return _url(self.env, raw, self.choices)
        return raw


def _max_below_worker_connections(name: str, value: int, reading: Reading) -> None:
    # past WORKER_CONNECTIONS gevent stops accepting and new clients wait without a word
    if value >= reading["worker_connections"]:
        raise ConfigError(f"{name} must be below WORKER_CONNECTIONS "
                          f"({value} >= {reading['worker_connections']})")


def _unix_socket_path(name: str, value: str, reading: Reading) -> None:
    # sun_path holds 107 bytes and a NUL; gunicorn binds `unix:` + the path
    if len(os.fsencode(value)) > UNIX_PATH_MAX:
        raise ConfigError(f"{name} must be at most {UNIX_PATH_MAX} bytes long, got {value!r}")
    if not os.path.isdir(os.path.dirname(os.path.abspath(value))):
        raise ConfigError(f"{name}: the folder of {value!r} does not exist")


def _key_prefix(name: str, value: str, reading: Reading) -> None:
    if not value.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"{name} must be letters, digits, - or _, got {value!r}")


def _filter_words(name: str, value: str, reading: Reading) -> None:
    """The list must load and compile now, not at the first message."""
    from .textfilter import TextFilter

    try:
        TextFilter(TextFilter.terms_of(value))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{name}: cannot read the word list {value!r}: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _time_zone(name: str, value: str, reading: Reading) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{name} must be an IANA time zone such as Asia/Shanghai, "
                          f"got {value!r}") from None


S = Setting
# Every setting, in the README's order; load() reads them in this order, so a derived default or
# bound may use any setting above it.
SETTINGS: tuple[Setting, ...] = (
    S("APP_ENV", "app_env", "choice", "development",
      "`production` refuses defaults for secrets and URLs", choices=("development", "production")),
    S("HOST", "host", "text", "127.0.0.1", "where a web worker listens"),
    S("PORT", "port", "int", "5000", None, 1, 65535),
    S("UNIX_SOCKET", "unix_socket", "text", None,
      "a Unix socket path a web worker listens on as well, for an nginx on the same machine "
      "(`python -m stack cluster` uses one per worker: cheaper than loopback TCP)",
      check=_unix_socket_path),
    S("REDIS_URL", "redis_url", "url", "redis://127.0.0.1:6379/0",
      "shared state and the Socket.IO queue", choices=("redis", "rediss", "unix"),
      shown="`redis://127.0.0.1:6379/0` (`make run`: a private Redis)",
      required="REDIS_URL (or REDIS_CLUSTER_URL) is required in production",
      unless="REDIS_CLUSTER_URL", hidden=True),
    S("REDIS_CLUSTER_URL", "redis_cluster_url", "url", None,
      "one node of a Redis Cluster (7 or newer; redis-py finds the others): used instead of "
      "`REDIS_URL` by every process, the chats spread over its masters (common/keys.py, "
      "docs/SCALING.md)", choices=("redis", "rediss"), hidden=True),
    S("DATABASE_URL", "database_url", "url", lambda r: f"sqlite:///{INSTANCE_DIR / 'chat.db'}",
      "history (PostgreSQL in production)",
      choices=("postgresql", "postgresql+psycopg2", "postgres", "sqlite"),
      shown="`sqlite:///instance/chat.db`",
      required="DATABASE_URL is required in production", hidden=True),
    S("SECRET_KEY", "secret_key", "text", lambda r: _dev_secret(),
      "signs user tokens and sessions", shown="generated in development",
      required="SECRET_KEY is required in production (32 or more random characters)",
      min_len=32, hidden=True),
    S("REDIS_PREFIX", "redis_prefix", "text", "chat",
      "prefix (and Cluster hash tag) of every Redis key", check=_key_prefix),
    S("SOCKETIO_CHANNEL", "socketio_channel", "text", "flask-socketio",
      "pub/sub channel; the same in web and matcher"),
    S("WORKER_ID", "worker_id", "text", lambda r: f"{socket.gethostname()}-{os.getpid()}",
      "a web process's name in `hello` and logs", shown="`hostname-pid`"),
    S("WORKER_CONNECTIONS", "worker_connections", "int", "10000",
      "gevent connections per web process", 10, 1_000_000),
    S("MAX_CONNECTIONS", "max_connections", "int", "3000",
      "Socket.IO sessions per web process; past it new ones get `503` with the reason, and nginx "
      "tries the next worker (`0`: no cap; docs/SCALING.md has the measured capacity)",
      0, 1_000_000, check=_max_below_worker_connections),
    S("RESUME_GRACE", "resume_grace", "float", "20",
      "seconds a vanished user keeps their chat", 1, 3600),
    S("HEARTBEAT_INTERVAL", "heartbeat_interval", "float", lambda r: str(r["resume_grace"] / 4),
      "seconds between presence refreshes", 0.1, lambda r: r["resume_grace"] / 2,
      shown="grace / 4"),
    S("INTEREST_WAIT", "interest_wait", "float", "3",
      "seconds a user with interests waits for a shared one", 0, 600),
    S("MESSAGE_RATE", "message_rate", "float", "5",
      "messages per second per user, and the burst", 0.01, 10_000),
    S("MESSAGE_BURST", "message_burst", "int", "10", None, 1, 100_000),
    S("CONTROL_RATE", "control_rate", "float", "10",
      "other events per second per connection", 0.01, 10_000),
    S("CONTROL_BURST", "control_burst", "int", "30", None, 1, 100_000),
    S("MAX_MESSAGE_LEN", "max_message_len", "int", "500", "characters per message", 1, 10_000),
    S("FILTER_WORDS", "filter_words", "text", None,
      "words and phrases a message may not contain: a comma-separated list, or the path of a "
      "UTF-8 file (starting with `/`, `./` or `../`) of one per line (`#` starts a comment). "
      "Case-insensitive after NFKC, whole words only (`ass` never refuses `class`); Chinese, "
      "Japanese, Korean and Thai terms match anywhere. A match is refused with `filtered`",
      shown="unset (off)", hidden=True, check=_filter_words),
    S("FILTER_LINKS", "filter_links", "choice", "off",
      "`on`: refuse messages with a link (`http(s)://`, `www.`, or a bare domain such as "
      "`example.com` or an e-mail address) with `filtered`", choices=("off", "on")),
    S("MAX_FRAME_BYTES", "max_frame_bytes", "int", "16384",
      "larger Socket.IO frames close the connection", 1024, 10_000_000),
    # 1 MiB: the packets are ASCII JSON (one character, one byte); a chat message is at most
    # ~6 KB of it (500 characters, each escaped as \uXXXX or a surrogate pair) and usually far
    # less: 1 MiB is 170 of the largest, over half a minute of a partner sending them at
    # MESSAGE_RATE (5/s), thousands of ordinary ones. A client that far behind is not reading (a
    # silent one is gone at the ping timeout anyway), and its reconnect loses nothing: the resume
    # replays the chat's `sent:` list. A worker holds at most about twice this per session
    # (web/direct.py).
    S("MAX_QUEUED_BYTES", "max_queued_bytes", "int", "1048576",
      "bytes of packets waiting for one client (for its WebSocket writer or its next long-poll); "
      "past it the client is closed and resumes with its token (docs/RELIABILITY.md)",
      16_384, 1_000_000_000),
    # 15 + 10: a silent network loss is noticed within 25 s on both ends.
    S("PING_INTERVAL", "ping_interval", "int", "15",
      "Engine.IO keep-alive: a silent network loss is noticed within their sum", 1, 600),
    S("PING_TIMEOUT", "ping_timeout", "int", "10", None, 1, 600),
    S("TOKEN_TTL", "token_ttl", "int", "86400",
      "seconds a user token stays valid; every connection gets a fresh one", 60, 30 * 86400),
    S("PACKET_RATE", "packet_rate", "float", "20",
      "Socket.IO and Engine.IO packets per second per connection, valid or not (WebSocket pings "
      "and fragments too, in a budget of their own); past the burst the connection "
      "is closed", 1, 10_000),
    S("PACKET_BURST", "packet_burst", "int", "60", None, 1, 100_000),
    S("MAX_BODY_BYTES", "max_body_bytes", "int", "65536",
      "largest HTTP request body outside Socket.IO (413 and closed above it)", 1024, 100_000_000),
    S("HEADER_TIMEOUT", "header_timeout", "float", "10",
      "seconds a client has to send its request headers", 0.5, 600),
    S("MAX_CONNS_PER_ADDR", "max_conns_per_addr", "int", "256",
      "open connections per client address: nginx's `limit_conn`, and a worker's own cap when "
      "reached directly (`0`: off; a worker behind a proxy never counts the proxy's address)",
      0, 1_000_000),
    S("SESSION_RATE", "session_rate", "float", "10",
      "new Socket.IO sessions per second per client address, and the burst (nginx's "
      "`limit_req`, and a worker's own limit when reached directly; `0`: off)", 0, 100_000),
    S("SESSION_BURST", "session_burst", "int", "100", None, 1, 1_000_000),
    S("NGINX_WORKERS", "nginx_workers", "int", "1",
      "nginx worker processes in front of the web workers (`0`: one per core, nginx's `auto`); "
      "one proxies thousands of chatting users at a fraction of a core and leaves the other "
      "cores to the web workers and Redis", 0, 1024),
    S("DRAIN_TIMEOUT", "drain_timeout", "float", "3",
      "seconds a stopping worker gives its clients to reconnect elsewhere before it closes them",
      0, 60),
    S("PRIVATE_ROOM_TTL", "private_room_ttl", "int", "1800",
      "seconds a private room's key works while nobody has joined it", 60, 7 * 86400),
    S("PRIVATE_GUESS_RATE", "private_guess_rate", "float", "6",
      "wrong private room keys per minute per user and per client address, and the burst "
      "(past it `rate_limited`)", 0.1, 10_000),
    S("PRIVATE_GUESS_BURST", "private_guess_burst", "int", "10", None, 1, 10_000),
    S("MATCH_BATCH", "match_batch", "int", "256",
      "waiting users the matcher looks at per pass", 2, 10_000),
    S("STATS_INTERVAL", "stats_interval", "float", "5",
      "seconds between `stats` broadcasts", 0.1, 3600),
    S("METRICS_PORT", "metrics_port", "int", "0",
      "the matcher's and the archiver's Prometheus `/metrics` port, on `HOST` (`0`: off); a web "
      "worker serves `/metrics` on its own `PORT`", 0, 65535),
    S("LOG_LEVEL", "log_level", "choice", "INFO", "",
      choices=("DEBUG", "INFO", "WARNING", "ERROR"), normalize=str.upper),
    S("LOG_FORMAT", "log_format", "choice", "text",
      "`json`: one JSON object per line (time in UTC, level, logger, process, worker, message, "
      "extra fields, `exc` for a traceback), for every process and gunicorn's own lines",
      choices=("text", "json"), normalize=str.lower),
    S("ADMIN_PASSWORD", "admin_password", "text",
      lambda r: None if r.production else _dev_secret("admin_password", 12),  # 16 characters
      "the admin console's password",
      shown="generated in development; none in production (admin disabled)",
      min_len=8, hidden=True),
    S("DISPLAY_TZ", "display_tz", "text", None,
      "e.g. `Asia/Shanghai`: admin times shown in this zone", shown="the viewer's zone",
      check=_time_zone),
    S("RETENTION_DAYS", "retention_days", "int", "30",
      "`python -m archiver purge` deletes older history", 1, 36500),
    S("DB_POOL_SIZE", "db_pool_size", "int", "5",
      "SQL connections per process (PostgreSQL)", 1, 200),
    S("ARCHIVER_CLAIM_IDLE", "archiver_claim_idle", "float", "30",
      "seconds before a dead archiver's pending entries are taken over", 0.1, 86400),
    S("BLOCK_TTL", "block_ttl", "int", "86400",
      "seconds a report keeps the reporter's browser from being matched with the reported one "
      "again (both directions)", 1, 365 * 86400),
    S("TRUSTED_PROXIES", "trusted_proxies", "int", "0",
      "proxy hops (nginx = 1) whose `X-Forwarded-For`/`-Proto` are believed", 0, 5),
    S("INSTANCE_DIR", None, "path", None, "local data of the embedded default",
      shown="`instance/`"),
)
del S

# The environment variables read anywhere in the project (checked against deploy files by tests).
ENV_VARS: tuple[str, ...] = tuple(s.env for s in SETTINGS)


# -- Settings, made from the table ----------------------------------------------------------------
class _SettingsMethods:
    @property
    def production(self) -> bool:
        return self.app_env == "production"

    def describe(self) -> str:
        """One log line of the settings, secrets and credentials left out."""
        hidden = {s.field for s in SETTINGS if s.hidden}
        return " ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self)
                        if f.name not in hidden)


# One frozen dataclass field per setting of SETTINGS with a `field`, in the table's order.
Settings = make_dataclass("Settings", [(s.field, s.type) for s in SETTINGS if s.field],
                          bases=(_SettingsMethods,), frozen=True)
Settings.__module__ = __name__
Settings.__doc__ = "The typed settings of one process: see SETTINGS for each field."


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from the environment; raise ConfigError naming the first bad setting."""
    reading = Reading(os.environ if env is None else env)
    for setting in SETTINGS:
        if setting.field:
            reading.values[setting.field] = setting.read(reading)
    return Settings(**reading.values)


# -- the README's table -------------------------------------------------------------------------
TABLE_HEAD = ("| variable | default | meaning |", "|----------|---------|---------|")


def markdown_table() -> str:
    """The README's configuration table, one row per setting (pairs such as HOST, PORT share one)."""
    rows: list[list[str]] = []
    for s in SETTINGS:
        if s.doc is None:  # the second of a pair: joins the row above
            rows[-1][0] += f", `{s.env}`"
            rows[-1][1] += f", {s.shown_default()}"
        else:
            rows.append([f"`{s.env}`", s.shown_default(), s.doc])
    lines = [*TABLE_HEAD]
    lines += ["|" + "|".join(f" {cell} " if cell else " " for cell in row) + "|" for row in rows]
    return "\n".join(lines) + "\n"


def readme_table_span(text: str) -> tuple[int, int]:
    """(start, end) offsets of the configuration table in the README's text."""
    section = text.index("\n## Configuration\n")
    start = text.index("\n" + TABLE_HEAD[0] + "\n", section) + 1
    end = start
    for line in text[start:].splitlines(keepends=True):
        if not line.startswith("|"):
            break
        end += len(line)
    return start, end


def readme_table(path: Path = README) -> str:
    text = path.read_text(encoding="utf-8")
    start, end = readme_table_span(text)
    return text[start:end]


def write_readme(path: Path = README) -> bool:
    """Put the generated table into the README; True if it changed."""
    text = path.read_text(encoding="utf-8")
    start, end = readme_table_span(text)
    new = text[:start] + markdown_table() + text[end:]
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


if __name__ == "__main__":
    if sys.argv[1:] == ["--markdown"]:
        print(markdown_table(), end="")
    elif sys.argv[1:] == ["--write-readme"]:
        print("README.md " + ("updated" if write_readme() else "already up to date"))
    else:
        sys.exit("usage: python -m common.config --markdown | --write-readme")
