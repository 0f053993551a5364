"""The admin console, end to end: a real Redis, a real web worker (`python -m web`, gunicorn +
gevent) started with DATABASE_URL and ADMIN_PASSWORD, a real HTTP client (requests), and history
rows written straight into the worker's database (SQLite file, and a real PostgreSQL).

Every test of `site` runs against both backends. The memory figures of the export are printed,
not asserted (they depend on the machine); the export must stay correct at 100,000 messages.
"""
from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psutil
import pytest
import requests
from requests.adapters import HTTPAdapter
from sqlalchemy import insert

from common.history.db import make_engine
from common.history.migrate import upgrade
from common.history.models import Message, Report, Room
from pg import history_database
from procs import PY, ROOT, RedisServer, WebWorker, base_env, stop_in_background

PASSWORD = "correct horse battery staple 马"
KNOWN_ROOM = "known0room0000000000000000000001"
KNOWN_A, KNOWN_B = "user-a-known", "user-b-known"
PRIVATE_ROOM = "private0room00000000000000000001"
KNOWN_TS = datetime(2026, 3, 1, 12, 34, 56, tzinfo=timezone.utc)  # 20:34:56 in Shanghai/Taipei
NEEDLE = "xyzzy-needle"
KNOWN_TEXTS = [
    f"你好，世界 {NEEDLE}",
    "<b>not bold</b> & 'quotes' \"double\"",
    '=HYPERLINK("http://example.invalid","click")',
]
N_MESSAGES = 100_000  # in total, the known room's included
PER_ROOM = 100


# ------------------------------------------------------------------------------ data


def seed(url: str, bulk: bool = True) -> dict:
    """The schema (alembic) and the rows: one known room, two reports, and bulk rooms."""
    upgrade(url)
    engine = make_engine(url)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    rooms_t, msgs_t, reps_t = Room.__table__, Message.__table__, Report.__table__
    with engine.begin() as conn:
        conn.execute(insert(rooms_t), [{
            "id": KNOWN_ROOM, "user1": KNOWN_A, "user2": KNOWN_B, "interests": ["音乐", "chess"],
            "opened_at": KNOWN_TS - timedelta(seconds=5), "closed_at": KNOWN_TS + timedelta(minutes=3),
            "close_reason": "next", "closed_by": KNOWN_B}])
        conn.execute(insert(rooms_t), [{  # a private room (one of the rooms counted below)
            "id": PRIVATE_ROOM, "user1": "host", "user2": "friend", "interests": [],
            "kind": "private", "opened_at": KNOWN_TS + timedelta(days=2)}])
        conn.execute(insert(msgs_t), [
            {"room_id": KNOWN_ROOM, "sender": KNOWN_A if i != 1 else KNOWN_B, "client_id": f"k{i}",
             "seq": i + 1, "text": text, "sent_at": KNOWN_TS + timedelta(seconds=i)}
            for i, text in enumerate(KNOWN_TEXTS)])
        conn.execute(insert(reps_t), [
            {"stream_id": "1-1", "room_id": KNOWN_ROOM, "reporter": KNOWN_B, "reported": KNOWN_A,
             "reason": "骚扰 spam", "created_at": KNOWN_TS + timedelta(minutes=2),
             "resolved_at": None},  # executemany takes its columns from the first row
            {"stream_id": "1-2", "room_id": KNOWN_ROOM, "reporter": KNOWN_A, "reported": KNOWN_B,
             "reason": "already handled", "created_at": KNOWN_TS + timedelta(minutes=2, seconds=1),
             "resolved_at": KNOWN_TS + timedelta(hours=1)},
        ])
    n_bulk = N_MESSAGES - len(KNOWN_TEXTS) if bulk else 0
    n_rooms = -(-n_bulk // PER_ROOM)
    with engine.begin() as conn:
        if n_rooms:
            conn.execute(insert(rooms_t), [{
                "id": f"bulk{j:028d}", "user1": f"ua{j}", "user2": f"ub{j}", "interests": [],
                "opened_at": now - timedelta(minutes=7 * j + 10),
                "closed_at": now - timedelta(minutes=7 * j + 5), "close_reason": "left",
                "closed_by": f"ua{j}"} for j in range(n_rooms)])
        rows = ({"room_id": f"bulk{j:028d}", "sender": f"ua{j}" if seq % 2 else f"ub{j}",
                 "client_id": f"c{seq}", "seq": seq + 1, "text": f"消息 {i} 你好 — bulk ünïcødé",
                 "sent_at": now - timedelta(minutes=7 * j + 10) + timedelta(seconds=seq)}
                for i in range(n_bulk) for j, seq in [divmod(i, PER_ROOM)])
        if conn.dialect.name == "postgresql":  # COPY: a few times faster than INSERTs
            buf = io.StringIO()
            w = csv.writer(buf)
            for r in rows:
                w.writerow([r["room_id"], r["sender"], r["client_id"], r["seq"], r["text"],
                            r["sent_at"].isoformat()])
            buf.seek(0)
            cur = conn.connection.dbapi_connection.cursor()
            # the rows are consistent by construction: skip the per-row foreign-key triggers
            cur.execute("SET LOCAL session_replication_role = replica")
            cur.copy_expert("COPY messages (room_id, sender, client_id, seq, text, sent_at) "
                            "FROM STDIN WITH (FORMAT csv)", buf)
            cur.close()
        else:  # SQLAlchemy Core bulk INSERTs (executemany) in one transaction
            batch = []
            for r in rows:
                batch.append(r)
                if len(batch) == 20_000:
                    conn.execute(insert(msgs_t), batch)
                    batch = []
            if batch:
                conn.execute(insert(msgs_t), batch)
    engine.dispose()
    return {"rooms": 2 + n_rooms, "messages": len(KNOWN_TEXTS) + n_bulk}


@dataclass
class Site:
    backend: str
    url: str
    web: WebWorker
    redis: RedisServer
    env: dict
    counts: dict

    @property
    def base(self) -> str:
        return self.web.url


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def site(request, tmp_path_factory):
    url = history_database(request, tmp_path_factory, "admin_test")
    redis = RedisServer()
    env = base_env(redis.url, DATABASE_URL=url, ADMIN_PASSWORD=PASSWORD, DISPLAY_TZ="")
    # the worker opens the database on its first admin request only: seed while it starts
    web = WebWorker(env, f"admin-{request.param}")
    try:
        counts = seed(url)
        web.wait_ready()
        yield Site(request.param, url, web, redis, env, counts)
    finally:
        web.stop()
        redis.stop()
    assert PASSWORD not in web.output(), "the admin password appeared in the worker's log"


@pytest.fixture(scope="module")
def other_workers(tmp_path_factory):
    """Workers with other settings over a database holding the known room only: one with
    DISPLAY_TZ=Asia/Shanghai, one in production without ADMIN_PASSWORD (started together)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('admin-small') / 'chat.db'}"
    redis = RedisServer()
    workers = {
        "shanghai": WebWorker(base_env(redis.url, DATABASE_URL=url, ADMIN_PASSWORD=PASSWORD,
                                       DISPLAY_TZ="Asia/Shanghai"), "admin-shanghai"),
        "disabled": WebWorker(base_env(redis.url, APP_ENV="production", DATABASE_URL=url,
                                       ADMIN_PASSWORD="", DISPLAY_TZ=""), "admin-disabled"),
    }
    try:
        seed(url, bulk=False)
        for w in workers.values():
            w.wait_ready()
        yield workers
    finally:
        # both shut down at once, then their Redis, while the tests go on
        stop_in_background(workers.values(), redis.stop)


# ------------------------------------------------------------------------------ helpers


class SourceAddressAdapter(HTTPAdapter):
    """Connect from another loopback address: a second "client address" for the lockout."""

    def __init__(self, source: str, **kw):
        self.source = source
        super().__init__(**kw)

    def init_poolmanager(self, *args, **kw):
        kw["source_address"] = (self.source, 0)
        super().init_poolmanager(*args, **kw)


def client(source: str | None = None) -> requests.Session:
    s = requests.Session()
    if source:
        s.mount("http://", SourceAddressAdapter(source))
    return s


def csrf_from(html: str) -> str:
    m = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html)
    assert m, "no CSRF token in the page"
    return m.group(1)


def login_page(s: requests.Session, base: str) -> str:
    r = s.get(base + "/admin/login", timeout=10)
    assert r.status_code == 200
    return csrf_from(r.text)


def post_login(s: requests.Session, base: str, password: str, token: str | None = "fetch"):
    if token == "fetch":
        token = login_page(s, base)
    data = {"password": password}
    if token is not None:
        data["csrf_token"] = token
    return s.post(base + "/admin/login", data=data, allow_redirects=False, timeout=10)


def signed_in(base: str, **cookies) -> requests.Session:
    s = client()
    for k, v in cookies.items():
        s.cookies.set(k, v, path="/admin")
    r = post_login(s, base, PASSWORD)
    assert r.status_code == 302 and r.headers["Location"].endswith("/admin/"), r.text[:500]
    return s


def page_token(s: requests.Session, url: str) -> str:
    r = s.get(url, timeout=10)
    assert r.status_code == 200
    return csrf_from(r.text)


def is_dashboard(r: requests.Response) -> bool:
    return r.status_code == 200 and 'id="live-online"' in r.text


def worker_rss_kib(web: WebWorker) -> tuple[int, int]:
    """(pid, VmRSS in KiB) of the gunicorn worker: the one child of the `python -m web` process."""
    children = psutil.Process(web.p.pid).children(recursive=True)
    assert len(children) == 1, children
    pid = children[0].pid
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return pid, int(line.split()[1])
    raise AssertionError("no VmRSS")


def download(s: requests.Session, url: str, web: WebWorker, dest: Path) -> dict:
    """Stream `url` to `dest` while sampling the worker's RSS; return the figures."""
    pid, before = worker_rss_kib(web)
    samples = [before]
    done = threading.Event()

    def sample():
        while not done.wait(0.02):
            samples.append(worker_rss_kib(web)[1])

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    size = 0
    try:
        with s.get(url, stream=True, timeout=120) as r:
            assert r.status_code == 200, r.text[:500]
            headers = dict(r.headers)
            with dest.open("wb") as fh:
                for chunk in r.iter_content(64 * 1024):
                    fh.write(chunk)
                    size += len(chunk)
    finally:
        done.set()
        t.join()
    after = worker_rss_kib(web)[1]
    return {"pid": pid, "before": before, "peak": max(samples), "after": after, "bytes": size,
            "samples": len(samples), "headers": headers}


# ------------------------------------------------------------------------------ sign-in


def test_wrong_password_and_csrf_are_refused(site):
    base = site.base
    s = client()
    r = post_login(s, base, "not the password")
    assert r.status_code == 401 and "Wrong password" in r.text
    assert s.get(base + "/admin/", allow_redirects=False).status_code == 302

    # the right password without a CSRF token, or with a wrong one, signs nobody in
    r = post_login(s, base, PASSWORD, token=None)
    assert r.status_code == 400
    r = post_login(s, base, PASSWORD, token="forged-token")
    assert r.status_code == 400
    assert s.get(base + "/admin/", allow_redirects=False).status_code == 302
    # a token from another browser's session does not work either
    other = client()
    r = post_login(s, base, PASSWORD, token=login_page(other, base))
    assert r.status_code == 400

    r = post_login(s, base, PASSWORD)
    assert r.status_code == 302 and r.headers["Location"].endswith("/admin/")
    assert PASSWORD not in r.headers["Location"]
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # development; production sets it (SESSION_COOKIE_SECURE)
    r = s.get(base + "/admin/")
    assert is_dashboard(r)
    assert r.headers["Cache-Control"] == "no-store"
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    assert "<script>" not in r.text and " style=" not in r.text  # nothing inline (the CSP)


def test_the_console_carries_the_products_one_name(site):
    """One product name, the README's (its title line), is the chat page's (web/i18n.json) and
    the console's: in the title of every page and in the top bar."""
    root = Path(__file__).resolve().parent.parent
    readme_title = (root / "README.md").read_text("utf-8").splitlines()[0]
    product = readme_title.removeprefix("# ").split(" — ")[0]
    assert product == "Strangers", readme_title
    table = json.loads((root / "web" / "i18n.json").read_text("utf-8"))
    assert {lang: t["app_name"] for lang, t in table.items()} == dict.fromkeys(table, product)
    r = client().get(site.base + "/admin/login", timeout=10)
    assert f"<title>Sign in · {product} admin</title>" in r.text, r.text[:600]
    assert f'<span>{product} <span class="brand__sub">admin</span></span>' in r.text
    r = signed_in(site.base).get(site.base + "/admin/", timeout=10)
    assert f"<title>Dashboard · {product} admin</title>" in r.text
    assert "Stranger Chat" not in r.text


def test_a_next_with_control_characters_is_a_safe_redirect_never_a_500(site):
    """`next=/admin/%0D%0A...` once made the redirect a 500 with a traceback (CR/LF in a
    Location header): any such target now sends the admin to the dashboard."""
    base = site.base
    seen = len(site.web.output())
    bad = ["/admin/%0D%0ASet-Cookie:%20x=1", "/admin/%0Ax", "/admin/%09rooms", "/admin/%00",
           "/admin/%E2%80%A8", "/admin/" + "a" * 5000]
    s = signed_in(base)
    for target in bad:
        r = s.get(f"{base}/admin/login?next={target}", allow_redirects=False, timeout=10)
        assert r.status_code == 302, (target, r.status_code, r.text[:300])
        assert r.headers["Location"].endswith("/admin/"), (target, r.headers["Location"])
        assert "Set-Cookie: x" not in str(r.headers)
    # the same target carried through the sign-in form
    for target in ("/admin/\r\nX-Injected: 1", "/admin/\nrooms"):
        s = client()
        token = login_page(s, base)
        r = s.post(base + "/admin/login", data={"password": PASSWORD, "csrf_token": token,
                                                  "next": target},
                   allow_redirects=False, timeout=10)
        assert r.status_code == 302 and r.headers["Location"].endswith("/admin/"), r.text[:300]
        assert "X-Injected" not in r.headers
    assert "Traceback" not in site.web.output()[seen:]


def test_lockout_after_repeated_failures_per_address(site):
    base = site.base
    s = client("127.0.0.2")
    for i in range(5):
        r = post_login(s, base, f"wrong-{i}")
        assert r.status_code == (401 if i < 4 else 429), (i, r.status_code)
    # locked out: even the right password is refused, with a clear message
    r = post_login(s, base, PASSWORD)
    assert r.status_code == 429
    assert "Too many failed sign-ins" in r.text and "15" in r.text
    assert int(r.headers["Retry-After"]) > 800
    assert s.get(base + "/admin/", allow_redirects=False).status_code == 302
    # the lockout is shared through Redis and counted per address: 127.0.0.1 may still sign in
    signed_in(base)
    keys = site.redis.client.keys("*admin:fail:*")
    assert len(keys) == 1 and re.fullmatch(r"\{chat\}:admin:fail:[0-9a-f]{32}", keys[0]), keys
    assert "127.0.0.2" not in keys[0]  # an address is never kept in clear


def test_a_locked_out_address_is_unlocked_from_the_shell(site):
    """The way out of a lockout: `python -m web.admin unlock [ADDRESS]` (make admin-unlock),
    named on the locked page in development."""
    base = site.base
    s = client("127.0.0.4")
    for i in range(5):
        r = post_login(s, base, f"typo-{i}")
    assert r.status_code == 429
    assert "make admin-unlock" in r.text and "python -m web.admin unlock" in r.text
    assert post_login(s, base, PASSWORD).status_code == 429

    def unlock(*addresses: str) -> str:
        done = subprocess.run([PY, "-m", "web.admin", "unlock", *addresses], env=site.env,
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    out = unlock("127.0.0.4")
    assert re.fullmatch(r"127\.0\.0\.4: unlocked \(5 failed sign-ins; the lockout had 1[45] more "
                        r"minutes to go\)\n", out), out
    r = post_login(s, base, PASSWORD)
    assert r.status_code == 302 and r.headers["Location"].endswith("/admin/"), r.text[:300]
    from common.moderation import Hasher

    tag = Hasher(site.env["SECRET_KEY"]).identity(None, "127.0.0.4").addr
    assert site.redis.client.keys(f"*admin:fail:{tag}") == []
    assert unlock("127.0.0.4") == "127.0.0.4: no failed sign-ins, not locked out\n"
    # a wrong password or two are forgotten too; without an address, every address's
    post_login(client("127.0.0.5"), base, "typo")
    out = unlock()
    assert re.search(r"^address [0-9a-f]{12}: forgot 1 failed sign-in \(not locked out yet\)$",
                     out, re.MULTILINE) and "127.0.0.5" not in out, out
    assert site.redis.client.keys("*admin:fail:*") == []
    assert unlock() == f"no address has failed sign-ins (Redis {site.redis.url}): nothing to unlock\n"


def test_no_page_or_export_without_login(site):
    base = site.base
    s = client()
    for path in ("/admin/", "/admin/rooms", f"/admin/rooms/{KNOWN_ROOM}", "/admin/reports",
                 "/admin/rooms?q=x"):
        r = s.get(base + path, allow_redirects=False)
        assert r.status_code == 302, path
        assert "/admin/login" in r.headers["Location"]
    for path in ("/admin/export.csv", "/admin/export.json", "/admin/api/live",
                 "/admin/api/series", "/admin/export.csv?kind=rooms"):
        r = s.get(base + path, allow_redirects=False)
        assert r.status_code == 401, path
        assert KNOWN_TEXTS[0] not in r.text
    # a POST with a valid token but no session does nothing
    token = login_page(s, base)
    r = s.post(base + "/admin/reports/1/resolve", data={"csrf_token": token},
               allow_redirects=False)
    assert r.status_code == 303 and "/admin/login" in r.headers["Location"]
    # a forged session cookie is refused
    forged = client()
    forged.cookies.set("session", "eyJhZG1pbl9zaWQiOiJ4In0.forged.sig")
    assert forged.get(base + "/admin/", allow_redirects=False).status_code == 302


def test_logout_ends_the_session_everywhere(site):
    base = site.base
    s = signed_in(base)
    stolen = client()
    stolen.cookies.update(s.cookies)  # a copy of the session cookie
    assert is_dashboard(stolen.get(base + "/admin/"))

    # logout is a POST with CSRF: without the token it is refused and nothing changes
    r = s.post(base + "/admin/logout", allow_redirects=False)
    assert r.status_code == 400
    assert s.get(base + "/admin/", allow_redirects=False).status_code == 200
    assert s.get(base + "/admin/logout").status_code == 405

    r = s.post(base + "/admin/logout", data={"csrf_token": page_token(s, base + "/admin/")},
               allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"].endswith("/admin/login")
    assert s.get(base + "/admin/", allow_redirects=False).status_code == 302
    # the session is gone on the server: the copied cookie is worthless too
    assert stolen.get(base + "/admin/", allow_redirects=False).status_code == 302
    assert stolen.get(base + "/admin/export.csv", allow_redirects=False).status_code == 401


def test_a_new_admin_password_ends_the_sessions_opened_with_the_old_one(site):
    """The operator changes ADMIN_PASSWORD (it leaked, say) and restarts the workers: a session
    opened with the old one, cookie and all, is signed out, and the new password signs in."""
    s = signed_in(site.base)
    new_password = "a fresh one, not the leaked one"
    web = WebWorker({**site.env, "ADMIN_PASSWORD": new_password}, f"admin-new-pw-{site.backend}")
    try:
        web.wait_ready()
        assert is_dashboard(s.get(site.base + "/admin/"))  # the old worker keeps it meanwhile
        r = s.get(web.url + "/admin/", allow_redirects=False)
        assert r.status_code == 302 and "/admin/login" in r.headers["Location"]
        assert s.get(site.base + "/admin/", allow_redirects=False).status_code == 302  # ended
        fresh = client()
        assert post_login(fresh, web.url, PASSWORD).status_code == 401  # the old one is refused
        r = post_login(fresh, web.url, new_password)
        assert r.status_code == 302 and r.headers["Location"].endswith("/admin/")
        assert is_dashboard(fresh.get(web.url + "/admin/"))
    finally:
        web.stop()
    assert new_password not in web.output()


# ------------------------------------------------------------------------------ pages


def test_dashboard_totals_live_numbers_and_chart_data(site):
    base = site.base
    s = signed_in(base)
    r = s.get(base + "/admin/")
    shown = dict(re.findall(r'id="(total-[a-z-]+)">([\d,]+)<', r.text))
    assert shown == {"total-rooms": f'{site.counts["rooms"]:,}',
                     "total-messages": f'{site.counts["messages"]:,}',
                     "total-reports-open": "1", "total-reports": "2"}
    for asset in re.findall(r'(?:src|href)="(/static/admin/[^"]+)"', r.text):
        assert s.get(base + asset).status_code == 200, asset
    series = json.loads(re.search(r'id="series-data">(.*?)</script>', r.text, re.S).group(1))
    assert len(series["24h"]["buckets"]) == 24 and len(series["7d"]["buckets"]) == 7
    # bulk rooms were opened every 7 minutes over the last ~5 days
    day_rooms = sum(b["rooms"] for b in series["24h"]["buckets"])
    assert 150 <= day_rooms <= 210, day_rooms
    # all but the known room and the private one (March 2026)
    assert sum(b["rooms"] for b in series["7d"]["buckets"]) == site.counts["rooms"] - 2
    assert sum(b["messages"] for b in series["7d"]["buckets"]) == site.counts["messages"] - 3

    # live numbers come from Redis: make one user wait and two chat
    r0 = s.get(base + "/admin/api/live").json()
    assert set(r0) >= {"online", "waiting", "chatting", "at"}
    far = 10 ** 13
    rc = site.redis.client
    rc.zadd("{chat}:alive", {"u1": far, "u2": far, "u3": far})
    rc.zadd("{chat}:queue", {"u3": 1})
    rc.hset("{chat}:partner", mapping={"u1": "u2", "u2": "u1"})
    try:
        live = s.get(base + "/admin/api/live").json()
        assert (live["online"], live["waiting"], live["chatting"]) == (3, 1, 2)
        assert 'id="live-waiting">1<' in s.get(base + "/admin/").text
    finally:
        rc.delete("{chat}:alive", "{chat}:queue", "{chat}:partner")


def test_the_dashboard_clock_is_24_hour_in_the_tables_zone(site):
    """"Updated 20:34:56": the same 24-hour format, and zone, as the tables' times."""
    s = signed_in(site.base, tz="Asia/Shanghai")
    html = s.get(site.base + "/admin/").text
    m = re.search(r'Updated <time id="live-time" datetime="([^"]+)">([^<]+)</time>', html)
    assert m, html[:2000]
    at = datetime.fromisoformat(m.group(1).replace("Z", "+00:00"))
    assert abs((datetime.now(timezone.utc) - at).total_seconds()) < 60
    assert m.group(2) == (at + timedelta(hours=8)).strftime("%H:%M:%S")  # Asia/Shanghai
    assert "AM" not in m.group(2) and "PM" not in m.group(2)


def test_rooms_list_filters_search_and_pages(site):
    base = site.base
    s = signed_in(base)
    page1 = s.get(base + "/admin/rooms").text
    assert page1.count('href="/admin/rooms/') == 50
    assert "bulk" + "0" * 28 in page1  # the newest bulk room comes first
    assert KNOWN_ROOM[:12] not in page1  # the known room (March 2026) is older than the bulk ones
    assert 'rel="next"' in page1
    page2 = s.get(base + "/admin/rooms", params={"page": 2}).text
    assert "bulk" + "0" * 26 + "50" in page2 and 'rel="prev"' in page2

    found = s.get(base + "/admin/rooms", params={"q": NEEDLE.upper()}).text  # case-insensitive
    assert found.count('href="/admin/rooms/') == 1 and KNOWN_ROOM in found
    none = s.get(base + "/admin/rooms", params={"q": "50%_off"}).text  # % and _ are literal
    assert "No rooms match this filter" in none

    day = KNOWN_TS.strftime("%Y-%m-%d")
    by_day = s.get(base + "/admin/rooms", params={"from": day, "to": day}).text
    assert by_day.count('href="/admin/rooms/') == 1 and KNOWN_ROOM in by_day
    before = s.get(base + "/admin/rooms", params={"to": "2026-02-28"}).text
    assert "No rooms match this filter" in before
    bad = s.get(base + "/admin/rooms", params={"from": "yesterday"})
    assert bad.status_code == 200 and "must be a date" in bad.text


def test_rooms_filtered_by_kind_show_their_kind(site):
    base = site.base
    s = signed_in(base)
    private = s.get(base + "/admin/rooms", params={"room_kind": "private"}).text
    assert private.count('href="/admin/rooms/') == 1 and PRIVATE_ROOM in private
    assert '<option value="private" selected>' in private
    assert re.search(r'class="room-kind"><span class="badge">private</span>', private)
    random = s.get(base + "/admin/rooms", params={"room_kind": "random", "to": "2026-03-01"}).text
    assert random.count('href="/admin/rooms/') == 1 and KNOWN_ROOM in random
    assert 'class="room-kind">random<' in random and PRIVATE_ROOM not in random
    bad = s.get(base + "/admin/rooms", params={"room_kind": "<script>"})
    assert bad.status_code == 200 and "must be random or private" in bad.text
    assert "<script>" not in bad.text
    # the export follows the same filter and says the kind
    r = s.get(base + "/admin/export.json", params={"kind": "rooms", "room_kind": "private"})
    assert [(x["room_id"], x["kind"]) for x in r.json()] == [(PRIVATE_ROOM, "private")]
    assert s.get(base + f"/admin/rooms/{PRIVATE_ROOM}").text.count("<dd>private</dd>") == 1


def test_transcript_shows_a_and_b_in_order_as_text(site):
    base = site.base
    s = signed_in(base)
    r = s.get(base + f"/admin/rooms/{KNOWN_ROOM}")
    assert r.status_code == 200
    html = r.text
    pos = [html.index(t) for t in (
        "你好，世界", "&lt;b&gt;not bold&lt;/b&gt; &amp; &#39;quotes&#39;", "=HYPERLINK(")]
    assert pos == sorted(pos)
    assert "<b>not bold</b>" not in html  # shown as text, never as HTML
    whos = re.findall(r'class="msg__who"[^>]*>([AB?])<', html)
    assert whos == ["A", "B", "A"]
    assert "骚扰 spam" in html and "音乐" in html
    assert s.get(base + "/admin/rooms/no-such-room").status_code == 404


def test_reports_queue_and_resolve_needs_csrf(site):
    base = site.base
    s = signed_in(base)
    html = s.get(base + "/admin/reports").text
    assert "骚扰 spam" in html and "already handled" not in html
    m = re.search(r'action="/admin/reports/(\d+)/resolve"', html)
    report_id = m.group(1)
    # without a token, or with a forged one: refused, still open
    assert s.post(base + f"/admin/reports/{report_id}/resolve").status_code == 400
    assert s.post(base + f"/admin/reports/{report_id}/resolve",
                  data={"csrf_token": "x"}).status_code == 400
    assert "骚扰 spam" in s.get(base + "/admin/reports").text

    r = s.post(base + f"/admin/reports/{report_id}/resolve",
               data={"csrf_token": csrf_from(html), "back": "/admin/reports?status=open"},
               allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"].endswith("/admin/reports?status=open")
    after = s.get(base + r.headers["Location"]).text
    assert f"Report #{report_id} marked resolved" in after and "骚扰 spam" not in after
    assert "骚扰 spam" in s.get(base + "/admin/reports", params={"status": "resolved"}).text


# ------------------------------------------------------------------------------ export


def test_export_of_100k_messages_streams_with_flat_memory(site, capsys, tmp_path):
    base = site.base
    s = signed_in(base)
    n = site.counts["messages"]
    assert n == N_MESSAGES
    # warm up (imports, the engine, caches) with a small export, then measure the big ones
    assert s.get(base + "/admin/export.csv", params={"q": NEEDLE}).status_code == 200

    csv_run = download(s, base + "/admin/export.csv", site.web, tmp_path / "all.csv")
    raw = (tmp_path / "all.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    assert csv_run["headers"]["Content-Type"] == "text/csv; charset=utf-8"  # one charset
    assert "attachment" in csv_run["headers"]["Content-Disposition"]
    assert "Content-Length" not in csv_run["headers"]  # streamed, not built in memory
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
    assert rows[0] == ["message_id", "room_id", "seq", "side", "sender", "text", "sent_at_utc",
                       "sent_at_local", "time_zone"]
    assert len(rows) == n + 1
    known = [r for r in rows[1:] if r[1] == KNOWN_ROOM]
    assert [r[5] for r in known] == [KNOWN_TEXTS[0], KNOWN_TEXTS[1], "'" + KNOWN_TEXTS[2]]
    assert [r[3] for r in known] == ["A", "B", "A"]
    assert known[0][6] == "2026-03-01T12:34:56Z" and known[0][8] == "UTC"
    assert sum(1 for r in rows[1:] if r[5].startswith("消息 ") and "ünïcødé" in r[5]) == n - 3
    del rows, raw

    json_run = download(s, base + "/admin/export.json", site.web, tmp_path / "all.json")
    items = json.loads((tmp_path / "all.json").read_text(encoding="utf-8"))
    assert isinstance(items, list) and len(items) == n
    assert items[0]["text"] == KNOWN_TEXTS[0]  # oldest first
    assert items[2]["text"] == KNOWN_TEXTS[2]  # JSON keeps text exactly
    assert len({i["message_id"] for i in items}) == n
    del items

    mib = lambda kib: f"{kib / 1024:.1f} MiB"  # noqa: E731
    with capsys.disabled():
        print(f"\n[admin export, {site.backend}] web worker pid {csv_run['pid']}, "
              f"{n:,} messages")
        for name, run in (("CSV ", csv_run), ("JSON", json_run)):
            print(f"  {name} {run['bytes'] / 1e6:6.1f} MB: worker RSS before {mib(run['before'])}, "
                  f"peak during {mib(run['peak'])} (+{mib(run['peak'] - run['before'])}, "
                  f"{run['samples']} samples), after {mib(run['after'])}")


def test_export_of_a_filter_and_of_rooms_and_reports(site):
    base = site.base
    s = signed_in(base)
    r = s.get(base + "/admin/export.json", params={"q": NEEDLE})
    assert [i["text"] for i in r.json()] == KNOWN_TEXTS  # the whole transcript of the match
    assert r.headers["Content-Type"] == "application/json; charset=utf-8"
    r = s.get(base + "/admin/export.json", params={"room": KNOWN_ROOM, "kind": "rooms"})
    (room,) = r.json()
    assert room["interests"] == ["音乐", "chess"] and room["message_count"] == 3
    assert room["closed_by"] == "B" and room["opened_at_utc"] == "2026-03-01T12:34:51Z"
    r = s.get(base + "/admin/export.csv", params={"kind": "reports", "q": NEEDLE})
    # the charset named once ("text/csv; charset=utf-8; charset=utf-8" before)
    assert r.headers["Content-Type"] == "text/csv; charset=utf-8", r.headers["Content-Type"]
    rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"), newline="")))
    assert len(rows) == 2 and {x["reason"] for x in rows} == {"骚扰 spam", "already handled"}
    assert rows[0]["reporter_side"] == "B" and rows[0]["reported_side"] == "A"
    r = s.get(base + "/admin/export.json", params={"to": "2000-01-01"})
    assert r.json() == []
    assert s.get(base + "/admin/export.csv", params={"kind": "users"}).status_code == 400
    assert s.get(base + "/admin/export.csv", params={"from": "nope"}).status_code == 400


# ------------------------------------------------------------------------------ time zones


def _shown_time(html: str) -> str:
    m = re.search(r'<time datetime="2026-03-01T12:34:56Z">([^<]+)</time>', html)
    assert m, "the known message's time is not on the page"
    return m.group(1)


def test_times_in_utc_by_default_and_in_the_browser_zone(site):
    base = site.base
    transcript = f"/admin/rooms/{KNOWN_ROOM}"
    s = signed_in(base)
    html = s.get(base + transcript).text
    assert _shown_time(html) == "2026-03-01 12:34:56"
    assert 'data-tz-source="default"' in html and ">UTC<" in html

    for zone in ("Asia/Taipei", "Asia/Shanghai"):
        s.cookies.set("tz", zone, path="/admin")
        html = s.get(base + transcript).text
        assert _shown_time(html) == "2026-03-01 20:34:56", zone
        assert f'id="tz-name">{zone}<' in html and "UTC+08:00" in html
        r = s.get(base + "/admin/export.json", params={"room": KNOWN_ROOM})
        first = r.json()[0]
        assert first["sent_at_utc"] == "2026-03-01T12:34:56Z"
        assert first["sent_at_local"] == "2026-03-01T20:34:56+08:00"
        assert first["time_zone"] == zone

    # a zone the server does not know (or anything else in the cookie) means UTC
    for bad in ("Mars/Olympus_Mons", "../../etc/passwd", "<script>"):
        s.cookies.set("tz", bad, path="/admin")
        html = s.get(base + transcript).text
        assert _shown_time(html) == "2026-03-01 12:34:56"


def test_display_tz_wins_over_the_browser(other_workers):
    web = other_workers["shanghai"]
    s = signed_in(web.url, tz="Asia/Taipei")
    s.cookies.set("tz", "UTC", path="/admin")
    html = s.get(web.url + f"/admin/rooms/{KNOWN_ROOM}").text
    assert _shown_time(html) == "2026-03-01 20:34:56"
    assert 'id="tz-name">Asia/Shanghai<' in html and 'data-tz-source="config"' in html
    # a day filter is a day in the display zone
    found = s.get(web.url + "/admin/rooms", params={"from": "2026-03-01", "to": "2026-03-01"})
    assert KNOWN_ROOM in found.text
    first = s.get(web.url + "/admin/export.json", params={"room": KNOWN_ROOM}).json()[0]
    assert first["sent_at_utc"] == "2026-03-01T12:34:56Z"
    assert first["sent_at_local"] == "2026-03-01T20:34:56+08:00"
    assert first["time_zone"] == "Asia/Shanghai"


def test_admin_disabled_in_production_without_a_password(other_workers):
    web = other_workers["disabled"]
    for path in ("/admin/", "/admin/login", "/admin/export.csv"):
        r = requests.get(web.url + path, allow_redirects=False, timeout=10)
        assert r.status_code == 404, path
        assert "admin console is disabled" in r.text
    r = requests.post(web.url + "/admin/login", data={"password": "anything-at-all"}, timeout=10)
    assert r.status_code == 404
    assert requests.get(web.url + "/", timeout=10).status_code == 200  # the chat still works
    lines = [ln for ln in web.output().splitlines() if "admin console disabled" in ln]
    assert len(lines) == 1 and "ADMIN_PASSWORD is not set" in lines[0]
