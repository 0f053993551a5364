"""LOG_FORMAT=json: every line a process writes is one JSON object, and no line carries a chat
message's text (at DEBUG, the most that is ever logged)."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import uuid

from conftest import Stack
from peer import pair, wait_for
from procs import ROOT, stop_all
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError, ProgrammingError

from common.logs import JsonFormatter

FIELDS = {"time", "level", "logger", "process", "worker", "pid", "message"}


def test_the_formatter_makes_one_line_with_the_fields_extras_and_the_traceback():
    fmt = JsonFormatter("chat-test", "w9")
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        exc_info = sys.exc_info()
    record = logging.LogRecord("web.x", logging.ERROR, __file__, 1, "a %s\nb\u2028c", ("你好",),
                               exc_info)
    record.user = "u1"
    record._private = "never shown"
    line = fmt.format(record)
    assert "\n" not in line and "\u2028" not in line
    got = json.loads(line)
    assert FIELDS <= set(got)
    assert got["time"].endswith("Z") and got["time"][10] == "T"
    assert (got["level"], got["logger"], got["process"], got["worker"]) == (
        "ERROR", "web.x", "chat-test", "w9")
    assert got["message"] == "a 你好\nb\u2028c"
    assert got["user"] == "u1" and "_private" not in got
    assert got["exc"].startswith("Traceback") and "ValueError: boom" in got["exc"]


def test_warnings_and_a_greenlets_uncaught_exception_are_json_lines_too():
    """What Python and gevent would print to stderr by themselves becomes records."""
    code = (
        "from gevent import monkey; monkey.patch_all()\n"
        "import gevent, warnings\n"
        "from common.logs import setup_logging\n"
        "setup_logging('INFO', 'json', 'chat-test', 'w1')\n"
        "warnings.warn('careful')\n"
        "def boom(secret): raise RuntimeError('kaput')\n"
        "gevent.spawn(boom, 'the-args-stay-out').join()\n"
        "import threading\n"
        "t = threading.Thread(target=lambda: 1 / 0, name='worker-thread'); t.start(); t.join()\n"
        "raise LookupError('the end')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr  # the uncaught exception still ends the process
    lines = _lines(done.stderr + done.stdout)
    assert [o["logger"] for o in lines] == ["py.warnings", "gevent.hub", "uncaught",
                                            "uncaught"], lines
    failed = lines[1]
    assert failed["level"] == "ERROR" and "RuntimeError: kaput" in failed["exc"]
    assert "the-args-stay-out" not in json.dumps(failed)
    assert "ZeroDivisionError" in lines[2]["exc"] and "worker-thread" in lines[2]["message"]
    assert lines[3]["level"] == "CRITICAL" and "LookupError: the end" in lines[3]["exc"]


def _lines(output: str) -> list[dict]:
    """Every line parsed; a line that is not one JSON object fails, naming it."""
    out = []
    for i, line in enumerate(output.split("\n")):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {i + 1} is not JSON: {line[:300]!r}") from None
        assert isinstance(obj, dict) and FIELDS <= set(obj), line[:300]
        out.append(obj)
    return out


async def test_json_logs_of_a_chat_never_carry_its_text(peers):
    secret = f"secret-{uuid.uuid4().hex[:12]}"
    texts = [f"{secret} hello", f"你好 {secret}", f"{secret} zorkbad", f'{{"{secret}": 1}}']
    s = Stack(workers=1, archivers=1, LOG_FORMAT="json", LOG_LEVEL="DEBUG",
              FILTER_WORDS="zorkbad")
    try:
        url = s.urls()[0]
        a, b = await peers(url, "a"), await peers(url, "b")
        await pair(a, b)
        for i, t in enumerate(texts):
            ack = await a.send(f"m{i}", t)
            assert ack["ok"] or ack["error"]["code"] == "filtered", ack
        await b.next("message", where=lambda m: m["id"] == "m3")
        # refusals and oddities are logged too: none of them with the text
        assert (await a.call("message", {"id": "x" * 99, "text": secret}))["ok"] is False
        assert (await a.call("no-such-event", {"text": secret}))["ok"] is False
        await b.send("back", f"{secret} back")
        await a.next("message", where=lambda m: m["id"] == "back")
        await a.call("next")

        # the archiver wrote the messages (their text went through it too)
        db = create_engine(f"sqlite:///{s.env['INSTANCE_DIR']}/chat.db")

        def archived() -> bool:
            try:
                with db.connect() as conn:
                    return conn.execute(text("select count(*) from messages where text like :t"),
                                        {"t": f"%{secret}%"}).scalar() == 4
            except (OperationalError, ProgrammingError):  # no tables yet: the archiver makes them
                return False

        await wait_for(archived, 20, "the archiver to write the messages")
        db.dispose()
    finally:
        stop_all(s.procs())
        s.redis.stop()

    seen = {}
    for p in s.procs():
        out = p.output()
        lines = _lines(out)
        assert lines, f"{p.name} logged nothing"
        assert secret not in out, f"{p.name} logged a message's text"
        for obj in lines:
            assert secret not in json.dumps(obj, ensure_ascii=False)
        seen[p.name] = lines
    web = seen["web-w1"]
    assert {o["process"] for o in web} == {"chat-web"} and {o["worker"] for o in web} == {"w1"}
    assert any(o["logger"] == "gunicorn.error" for o in web), "gunicorn's own lines"
    assert any("filter" in o["message"] for o in web)
    assert {o["process"] for o in seen["matcher1"]} == {"chat-matcher"}
    assert {o["process"] for o in seen["archiver1"]} == {"chat-archiver"}


async def test_json_logs_never_carry_a_room_key_a_cookie_an_address_or_a_password(peers):
    """Private rooms, a browser cookie, a client address behind one proxy hop and the admin's
    sign-in, out and refusals, at INFO: none of their values in any line."""
    import requests

    addr, bid, password = "198.51.100.77", "5eed" * 8, f"pw-{uuid.uuid4().hex}"
    s = Stack(workers=1, LOG_FORMAT="json", LOG_LEVEL="INFO", TRUSTED_PROXIES="1",
              ADMIN_PASSWORD=password)
    keys = []
    try:
        url = s.urls()[0]
        headers = {"X-Forwarded-For": addr, "Cookie": f"bid={bid}"}
        host = await peers(url, "host", headers=headers)
        friend = await peers(url, "friend", headers=headers)
        made = await host.call("private_create")
        keys.append(made["key"])
        wrong = "ABCDEFGH" if made["key"] != "ABCDEFGH" else "HGFEDCBA"
        keys.append(wrong)
        assert (await friend.call("private_join", {"key": wrong}))["ok"] is False
        assert (await friend.call("private_join", {"key": made["key"]}))["ok"]
        await host.next("matched")
        http = requests.Session()
        http.headers["X-Forwarded-For"] = addr
        http.cookies.set("bid", bid)
        assert http.get(f"{url}/?room={made['key']}", timeout=10).status_code == 200
        page = http.get(f"{url}/admin/login", timeout=10).text
        token = page.split('name="csrf_token"', 1)[1].split('value="', 1)[1].split('"', 1)[0]
        for pw in ("wrong", password):
            http.post(f"{url}/admin/login", data={"password": pw, "csrf_token": token},
                      allow_redirects=False, timeout=10)
        http.post(f"{url}/admin/logout", data={"csrf_token": "forged"}, timeout=10)
    finally:
        stop_all(s.procs())
        s.redis.stop()

    for p in s.procs():
        out = p.output()
        _lines(out)
        for value in (*keys, bid, addr, password):
            assert value not in out, f"{p.name} logged {value!r}:\n" + "\n".join(
                ln for ln in out.splitlines() if value in ln)
    web = s.procs()[0].output()
    assert "signed in from address " in web and "wrong password from address " in web


def test_a_web_worker_that_cannot_start_says_so_in_json_lines_only():
    """A Redis Cluster that cannot be reached at start: the worker fails to boot and the
    process ends, every line a JSON object (gunicorn printed the error once more, bare)."""
    import os

    from procs import PY, base_env, free_port

    env = {**os.environ, **base_env("redis://127.0.0.1:1", LOG_FORMAT="json",
                                    REDIS_CLUSTER_URL=f"redis://127.0.0.1:{free_port()}",
                                    PORT=free_port(), WORKER_ID="w1")}
    done = subprocess.run([PY, "-m", "web"], check=False, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=90)
    assert done.returncode != 0
    lines = _lines(done.stderr + done.stdout)
    assert any(o["message"] == "the web app could not start" and "exc" in o for o in lines)
    assert any("Worker failed to boot" in o["message"] for o in lines), lines
