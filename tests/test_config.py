"""common.config.load: defaults, what production insists on, and one clear line for a bad value.

Pure unit tests with explicit env dicts, plus the two entry points run as real processes to see
what an operator sees when a setting is wrong.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import stat
import subprocess
import sys

import pytest

from common import config
from common.config import ConfigError, load
from procs import ROOT

SECRET = "unit-test-secret-" + "Q" * 30  # 47 characters
PROD = {
    "APP_ENV": "production",
    "SECRET_KEY": SECRET,
    "REDIS_URL": "redis://:redis-pw-XYZ@redis.internal:6379/0",
    "DATABASE_URL": "postgresql://chat:db-pw-XYZ@db.internal/chat",
}


@pytest.fixture(autouse=True)
def instance_dir(tmp_path, monkeypatch):
    """Development defaults keep generated secrets under INSTANCE_DIR: never the checkout's."""
    path = tmp_path / "instance"
    monkeypatch.setattr(config, "INSTANCE_DIR", path)
    return path


def dev(**env) -> dict:
    return {"SECRET_KEY": SECRET, "ADMIN_PASSWORD": "dev-admin-pw", **env}


def refused(env: dict, name: str) -> str:
    """load(env) must raise ConfigError with a one-line message that names `name`."""
    with pytest.raises(ConfigError) as info:
        load(env)
    msg = str(info.value)
    assert name in msg, f"the error does not name {name}: {msg!r}"
    assert "\n" not in msg and msg.strip() == msg and msg
    return msg


# -- defaults -----------------------------------------------------------------------------------
def test_development_defaults(instance_dir):
    s = load(dev())
    assert s.app_env == "development" and s.production is False
    assert (s.host, s.port) == ("127.0.0.1", 5000)
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.database_url.startswith("sqlite:///") and str(instance_dir) in s.database_url
    assert s.secret_key == SECRET
    assert (s.redis_prefix, s.socketio_channel, s.log_level) == ("chat", "flask-socketio", "INFO")
    assert (s.resume_grace, s.heartbeat_interval, s.interest_wait) == (20.0, 5.0, 3.0)
    assert (s.message_rate, s.message_burst) == (5.0, 10)
    assert (s.control_rate, s.control_burst) == (10.0, 30)
    assert (s.max_message_len, s.max_frame_bytes) == (500, 16384)
    assert (s.ping_interval, s.ping_timeout) == (15, 10)  # a silent loss noticed within 25 s
    assert (s.match_batch, s.stats_interval) == (256, 5.0)
    assert s.worker_id  # hostname-pid unless WORKER_ID is set


def test_empty_values_count_as_unset():
    s = load(dev(PORT="", RESUME_GRACE="", REDIS_URL="", LOG_LEVEL=""))
    assert (s.port, s.resume_grace, s.log_level) == (5000, 20.0, "INFO")
    assert s.redis_url == "redis://127.0.0.1:6379/0"


def test_values_are_read_and_typed():
    s = load(dev(PORT="8080", RESUME_GRACE="7.5", LOG_LEVEL="debug", REDIS_PREFIX="chat-2_b",
                 REDIS_URL="unix:///run/redis.sock", MESSAGE_BURST="3", INTEREST_WAIT="0"))
    assert (s.port, s.resume_grace, s.heartbeat_interval) == (8080, 7.5, 7.5 / 4)
    assert (s.log_level, s.redis_prefix, s.message_burst, s.interest_wait) == (
        "DEBUG", "chat-2_b", 3, 0.0)
    assert s.redis_url == "unix:///run/redis.sock"


def test_development_without_secret_key_makes_one_and_keeps_it(instance_dir):
    first = load({"ADMIN_PASSWORD": "dev-admin-pw"}).secret_key
    assert len(first) >= 32
    assert load({"ADMIN_PASSWORD": "dev-admin-pw"}).secret_key == first  # every process shares it
    path = instance_dir / "secret_key"
    assert path.read_text().strip() == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# -- production ---------------------------------------------------------------------------------
def test_production_loads_with_its_required_settings(instance_dir):
    s = load(PROD)
    assert s.production is True
    assert (s.secret_key, s.redis_url, s.database_url) == (
        SECRET, PROD["REDIS_URL"], PROD["DATABASE_URL"])
    # production never invents secrets or files of its own
    assert not instance_dir.exists() or not any(instance_dir.iterdir())


@pytest.mark.parametrize("name", ["SECRET_KEY", "REDIS_URL", "DATABASE_URL"])
@pytest.mark.parametrize("how", ["missing", "empty"])
def test_production_refuses_a_missing_required_setting(name, how, instance_dir):
    env = dict(PROD)
    if how == "missing":
        del env[name]
    else:
        env[name] = ""
    refused(env, name)
    assert not instance_dir.exists() or not any(instance_dir.iterdir())


@pytest.mark.parametrize("base", [dev(), PROD], ids=["development", "production"])
def test_a_short_secret_key_is_refused(base):
    refused({**base, "SECRET_KEY": "s" * 31}, "SECRET_KEY")
    assert load({**base, "SECRET_KEY": "s" * 32}).secret_key == "s" * 32


# -- malformed values ---------------------------------------------------------------------------
BAD = [
    ("PORT", "abc"), ("PORT", "0"), ("PORT", "70000"), ("PORT", "-1"), ("PORT", "80.5"),
    ("RESUME_GRACE", "abc"), ("RESUME_GRACE", "0"), ("RESUME_GRACE", "-5"),
    ("RESUME_GRACE", "3601"), ("RESUME_GRACE", "nan"), ("RESUME_GRACE", "inf"),
    ("APP_ENV", "prod"), ("APP_ENV", "Production"), ("APP_ENV", "test"),
    ("REDIS_URL", "http://127.0.0.1:6379"), ("REDIS_URL", "127.0.0.1:6379"),
    ("REDIS_URL", "postgresql://db/chat"), ("REDIS_URL", "redis:/x"),
    ("DATABASE_URL", "mysql://db/chat"), ("DATABASE_URL", "chat.db"),
    ("HEARTBEAT_INTERVAL", "15"),  # more than half the 20 s grace
    ("HEARTBEAT_INTERVAL", "0"),
    ("INTEREST_WAIT", "-1"), ("MESSAGE_RATE", "fast"), ("MESSAGE_BURST", "0"),
    ("CONTROL_BURST", "1.5"), ("MAX_FRAME_BYTES", "100"), ("LOG_LEVEL", "loud"),
    ("REDIS_PREFIX", "a b"), ("REDIS_PREFIX", "{chat}"), ("MATCH_BATCH", "1"),
    ("UNIX_SOCKET", "/tmp/" + "s" * 103 + ".sock"),  # past the 107 bytes of a socket's path
    ("UNIX_SOCKET", "/no-such-folder-here/web1.sock"),
]


@pytest.mark.parametrize("name,value", BAD, ids=[f"{n}={v}" for n, v in BAD])
def test_a_malformed_value_is_refused_naming_the_variable(name, value):
    refused(dev(**{name: value}), name)


def test_a_database_url_that_cannot_be_opened_is_refused_at_start():
    # "sqlite:" without "//" passes the scheme check but SQLAlchemy cannot parse it: the process
    # would start and fail later, on first use, instead of stopping with one clear line.
    refused(dev(DATABASE_URL="sqlite:chat.db"), "DATABASE_URL")


def test_a_unix_socket_in_an_existing_folder_is_accepted(tmp_path):
    path = str(tmp_path / "web1.sock")
    assert load(dev(UNIX_SOCKET=path)).unix_socket == path
    assert load(dev()).unix_socket is None


@pytest.mark.parametrize("port", ["1", "65535"])
def test_port_limits_are_accepted(port):
    assert load(dev(PORT=port)).port == int(port)


# -- describe -----------------------------------------------------------------------------------
def test_describe_never_shows_secrets_or_urls():
    env = {**PROD, "ADMIN_PASSWORD": "admin-pw-XYZ-123"}
    s = load(env)
    line = s.describe()
    assert "\n" not in line and "port=5000" in line and "app_env=production" in line
    for secret in (SECRET, env["REDIS_URL"], env["DATABASE_URL"], env["ADMIN_PASSWORD"],
                   "redis-pw-XYZ", "db-pw-XYZ", "redis://", "postgresql://", "redis.internal",
                   "db.internal"):
        assert secret not in line, f"describe() shows {secret!r}: {line}"


def test_describe_in_development_hides_the_generated_secret(instance_dir):
    s = load({"ADMIN_PASSWORD": "dev-admin-pw"})
    assert s.secret_key not in s.describe()
    assert "127.0.0.1:6379" not in s.describe() and "sqlite" not in s.describe()


# -- the entry points ---------------------------------------------------------------------------
def clean_env(tmp_path, **extra) -> dict:
    """The parent's environment without any setting of ours, plus `extra`."""
    ours = set(config.ENV_VARS) | {"APP_ENV", "PORT", "SECRET_KEY", "REDIS_URL", "DATABASE_URL",
                                   "RESUME_GRACE", "INSTANCE_DIR"}
    env = {k: v for k, v in os.environ.items() if k not in ours}
    env.update({"INSTANCE_DIR": str(tmp_path / "instance"), "PYTHONUNBUFFERED": "1", **extra})
    return env


ENTRY_CASES = [
    ("web", {"PORT": "abc", "SECRET_KEY": SECRET}, "PORT"),
    ("archiver", {"PORT": "abc", "SECRET_KEY": SECRET, "LOG_FORMAT": "json"}, "PORT"),
    ("matcher", {"PORT": "abc", "SECRET_KEY": SECRET}, "PORT"),
    ("web", {k: v for k, v in PROD.items() if k != "SECRET_KEY"}, "SECRET_KEY"),
    ("matcher", {k: v for k, v in PROD.items() if k != "SECRET_KEY"}, "SECRET_KEY"),
]


@pytest.mark.parametrize("module,env,name", ENTRY_CASES,
                         ids=[f"{m}-{n}" for m, _e, n in ENTRY_CASES])
def test_entry_point_exits_2_with_one_clear_line(module, env, name, tmp_path):
    proc = subprocess.run([sys.executable, "-m", module], cwd=ROOT, env=clean_env(tmp_path, **env),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert name in lines[0] and "configuration error" in lines[0], lines[0]
    if env.get("LOG_FORMAT") == "json":  # the one line is a JSON object like every other
        got = json.loads(lines[0])
        assert got["level"] == "CRITICAL" and got["process"] == f"chat-{module}", got
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    for secret in ("redis-pw-XYZ", "db-pw-XYZ", SECRET):
        assert secret not in proc.stderr


def test_processes_starting_together_share_one_whole_dev_secret(tmp_path):
    """Local processes started at once (two matchers) all read the same complete secret."""
    code = ("import sys; from pathlib import Path; from common import config; "
            "config.INSTANCE_DIR = Path(sys.argv[1]); "
            "print(config._dev_secret('admin_password', 12))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True) for _ in range(12)]
    got = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert len(got) == 1 and len(got.pop()) == 16
    assert [f.name for f in tmp_path.iterdir()] == ["admin_password"]  # no temp file left


# -- the one table: SETTINGS --------------------------------------------------------------------
def test_every_setting_is_declared_once_and_makes_one_field():
    names = [s.env for s in config.SETTINGS]
    assert len(names) == len(set(names)) and tuple(names) == config.ENV_VARS
    table_fields = [s.field for s in config.SETTINGS if s.field]
    assert len(table_fields) == len(set(table_fields))
    assert [f.name for f in dataclasses.fields(config.Settings)] == table_fields
    for s in config.SETTINGS:
        assert s.kind in {"int", "float", "text", "choice", "url", "path"}, s.env
        assert (s.kind in {"choice", "url"}) == bool(s.choices), s.env
        assert (s.kind in {"int", "float"}) == (s.lo is not None and s.hi is not None), s.env
    assert config.SETTINGS[0].env == "APP_ENV"  # read first: production changes the others
    assert config.SETTINGS[0].doc is not None  # a shared row needs a row above it


def test_the_literal_defaults_are_what_development_gets():
    s = load(dev())
    for setting in config.SETTINGS:
        if setting.field and isinstance(setting.default, str) and setting.env != "SECRET_KEY":
            assert getattr(s, setting.field) == setting.parse(setting.default, None), setting.env


def test_hidden_settings_are_left_out_of_describe():
    env = {**PROD, "ADMIN_PASSWORD": "admin-pw-XYZ-123", "REDIS_CLUSTER_URL": "redis://c:7000"}
    shown = {kv.split("=", 1)[0] for kv in load(env).describe().split()}
    hidden = {s.field for s in config.SETTINGS if s.hidden}
    assert hidden == {"secret_key", "redis_url", "redis_cluster_url", "database_url",
                      "admin_password", "filter_words"}
    assert shown == {f.name for f in dataclasses.fields(config.Settings)} - hidden


def test_the_heartbeat_bound_follows_the_grace():
    assert load(dev(HEARTBEAT_INTERVAL="10")).heartbeat_interval == 10.0  # grace 20 / 2
    assert "between 0.1 and 10.0" in refused(dev(HEARTBEAT_INTERVAL="10.5"), "HEARTBEAT_INTERVAL")
    s = load(dev(RESUME_GRACE="40", HEARTBEAT_INTERVAL="15"))
    assert (s.resume_grace, s.heartbeat_interval) == (40.0, 15.0)
    assert load(dev(RESUME_GRACE="6")).heartbeat_interval == 1.5


def test_max_connections_must_stay_below_worker_connections():
    assert load(dev(MAX_CONNECTIONS="0")).max_connections == 0
    assert load(dev(WORKER_CONNECTIONS="100", MAX_CONNECTIONS="99")).max_connections == 99
    msg = refused(dev(WORKER_CONNECTIONS="100", MAX_CONNECTIONS="100"), "MAX_CONNECTIONS")
    assert "WORKER_CONNECTIONS" in msg and "100 >= 100" in msg


def test_production_takes_a_cluster_url_instead_of_redis_url(instance_dir):
    env = {k: v for k, v in PROD.items() if k != "REDIS_URL"}
    s = load({**env, "REDIS_CLUSTER_URL": "redis://node-1:7000"})
    assert s.redis_cluster_url == "redis://node-1:7000"
    assert "REDIS_CLUSTER_URL" in refused(env, "REDIS_URL")
    refused({**PROD, "REDIS_CLUSTER_URL": "unix:///run/redis.sock"}, "REDIS_CLUSTER_URL")


def test_admin_password_and_display_tz():
    assert load(PROD).admin_password is None  # production: the admin console is off
    refused(dev(ADMIN_PASSWORD="short"), "ADMIN_PASSWORD")
    assert load(dev(DISPLAY_TZ="Asia/Shanghai")).display_tz == "Asia/Shanghai"
    assert load(dev()).display_tz is None
    refused(dev(DISPLAY_TZ="Mars/Olympus"), "DISPLAY_TZ")


# -- the README's table, generated from SETTINGS ------------------------------------------------
def test_the_readme_table_is_the_generated_one():
    fresh, current = config.markdown_table(), config.readme_table()
    if current != fresh:
        print("README.md's configuration table differs from common/config.py SETTINGS:")
        print("".join(difflib.unified_diff(current.splitlines(keepends=True),
                                           fresh.splitlines(keepends=True), "README.md",
                                           "SETTINGS", n=0)))
        print("Run `.venv/bin/python -m common.config --write-readme`, or paste this table:\n")
        print(fresh)
        pytest.fail("README.md's configuration table is not the one SETTINGS makes "
                    "(the fresh table is printed above)")


def test_the_table_has_a_row_for_every_variable():
    table = config.markdown_table()
    lines = table.splitlines()
    assert tuple(lines[:2]) == config.TABLE_HEAD
    assert all(line.startswith("| `") and line.endswith("|") for line in lines[2:])
    assert all(line.count(" | ") == 2 for line in lines[2:]), "a `|` inside a cell"
    for name in config.ENV_VARS:
        assert table.count(f"`{name}`") >= 1, name
    assert "| `HOST`, `PORT` | `127.0.0.1`, `5000` | where a web worker listens |" in lines
    assert "| `LOG_LEVEL` | `INFO` | |" in lines


def test_write_readme_puts_the_table_back(tmp_path):
    copy = tmp_path / "README.md"
    text = config.README.read_text(encoding="utf-8")
    start, end = config.readme_table_span(text)
    copy.write_text(text[:start] + config.TABLE_HEAD[0] + "\n| `OLD` | x | y |\n" + text[end:],
                    encoding="utf-8")
    assert config.write_readme(copy) is True
    assert config.readme_table(copy) == config.markdown_table()
    assert config.write_readme(copy) is False
    assert copy.read_text(encoding="utf-8").replace(config.markdown_table(), "") == \
        text.replace(text[start:end], "")


def test_python_m_common_config_markdown_prints_the_table():
    proc = subprocess.run([sys.executable, "-m", "common.config", "--markdown"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout == config.markdown_table()


# -- fixed limits: common/limits.py, used by the protocol, the page and the history ------------
def test_the_protocol_uses_the_fixed_limits():
    from common import limits
    from web import protocol

    for name in ("MAX_INTERESTS", "MAX_INTEREST_LEN", "MAX_REPORT_LEN", "MAX_ID_LEN"):
        assert getattr(protocol, name) == getattr(limits, name), name
    protocol.parse_join({"interests": ["x" * limits.MAX_INTEREST_LEN] * 1})
    with pytest.raises(protocol.Refused):
        protocol.parse_join({"interests": [f"i{k}" for k in range(limits.MAX_INTERESTS + 1)]})
    assert len(protocol.parse_report({"reason": "r" * limits.MAX_REPORT_LEN})) == \
        limits.MAX_REPORT_LEN
    with pytest.raises(protocol.Refused):
        protocol.parse_report({"reason": "r" * (limits.MAX_REPORT_LEN + 1)})


def test_the_history_schema_and_the_page_agree_with_the_fixed_limits():
    from archiver.writer import rows_from_entries
    from common import limits
    from common.history.models import Message, Report, Room

    assert Report.__table__.c.reason.type.length == limits.MAX_REPORT_LEN
    assert Message.__table__.c.client_id.type.length == limits.MAX_ID_LEN
    assert Room.__table__.c.close_reason.type.length == limits.CLOSE_REASON_LEN
    entries = [("1-0", {"type": "report", "user": "u1", "reported": "u2", "ts": "1000",
                        "reason": "r" * 500}),
               ("2-0", {"type": "closed", "room": "r1", "user": "u1", "ts": "1000",
                        "reason": "c" * 50})]
    _rooms, _messages, closes, reports = rows_from_entries(entries)
    assert len(reports[0]["reason"]) == limits.MAX_REPORT_LEN
    assert len(closes[0]["close_reason"]) == limits.CLOSE_REASON_LEN
    page = (ROOT / "web/templates/index.html").read_text(encoding="utf-8")
    for attr, value in (("data-max-interests", limits.MAX_INTERESTS),
                        ("data-max-interest-len", limits.MAX_INTEREST_LEN)):
        found = re.search(rf'{attr}="([^"]*)"', page)
        assert found, attr
        # a literal there (today) must be the same number; better, the template's variable
        assert not found.group(1).isdigit() or int(found.group(1)) == value, (attr, found[1])
