"""Probes from outside, a second round (tests/test_probes_extra.py was the first): the admin
console's sign-in, URLs, query values and layout under hostile input on SQLite and PostgreSQL;
the plain HTTP routes (static files directly and through nginx, odd methods, huge queries, bad
cookies); acknowledged messages through Redis (one, or a cluster master) and a web worker killed;
races of Leave, reloads and joins; hostile text in the chat page and the console on a phone."""
from __future__ import annotations

import re
import socket
import threading
from datetime import UTC, datetime

import pytest
import requests
from pg import history_database
from procs import RedisServer, WebWorker, base_env
from sqlalchemy import insert
from test_admin import PASSWORD, client, csrf_from, login_page

from common.history.db import make_engine
from common.history.migrate import upgrade
from common.history.models import Message, Report, Room
from common.limits import MAX_REPORT_LEN

ROOM = "probe0room000000000000000000001"
# what a stranger may type, as stored: one unbroken 500-character word, a right-to-left
# override, zero-width characters, combining marks, markup
HOSTILE_TEXTS = ["W" * 500, "\u202egnp.exe " + "ab" * 100, "\u200b" * 300 + "x",
                 "e" + "\u0301" * 300, "<img src=x onerror=alert(1)>" * 10]
HOSTILE_INTERESTS = ["w" * 24, "\u202eabc", "\u200b" * 24, "<b>x</b>"]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def site(request, tmp_path_factory):
    """One web worker with the admin console (its history in SQLite, then PostgreSQL) on its
    own Redis."""
    url = history_database(request, tmp_path_factory, "probe_admin")
    upgrade(url)
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(insert(Room.__table__), [{"id": ROOM, "user1": "a", "user2": "b",
                                               "interests": HOSTILE_INTERESTS,
                                               "opened_at": datetime.now(UTC)}])
        conn.execute(insert(Message.__table__), [
            {"room_id": ROOM, "sender": "a", "client_id": f"h{i}", "seq": i + 1, "text": text,
             "sent_at": datetime.now(UTC)} for i, text in enumerate(HOSTILE_TEXTS)])
        conn.execute(insert(Report.__table__), [
            {"stream_id": f"9-{i}", "room_id": ROOM, "reporter": "b", "reported": "a",
             "reason": text[:MAX_REPORT_LEN], "created_at": datetime.now(UTC)}
            for i, text in enumerate(HOSTILE_TEXTS)])
    engine.dispose()
    redis = RedisServer()
    web = WebWorker(base_env(redis.url, DATABASE_URL=url, ADMIN_PASSWORD=PASSWORD), "probe-admin")
    try:
        web.wait_ready()
        yield web
    finally:
        web.stop()
        redis.stop()


def _healthy(web: WebWorker) -> None:
    assert web.alive(), web.output()[-3000:]
    assert requests.get(web.url + "/healthz", timeout=5).json()["ok"] is True
    assert "Traceback" not in web.output(), web.output()[-3000:]


# -- the admin sign-in -------------------------------------------------------------------------------
def test_wrong_passwords_sent_at_once_are_each_counted(site):
    """Guesses sent together must not all pass the lockout check before any is counted: at
    most FAIL_LIMIT of them may be judged, the others are refused as locked out."""
    from web.admin.auth import FAIL_LIMIT

    n = 40
    sessions = [client("127.0.0.3") for _ in range(n)]
    tokens = [login_page(s, site.url) for s in sessions]
    start = threading.Barrier(n)
    codes: list[int] = []

    def guess(i: int) -> None:
        start.wait()
        r = sessions[i].post(site.url + "/admin/login",
                             data={"password": f"guess-{i}", "csrf_token": tokens[i]},
                             allow_redirects=False, timeout=20)
        codes.append(r.status_code)

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(set(codes)) <= [401, 429], codes
    assert codes.count(401) < FAIL_LIMIT, f"{codes.count(401)} guesses judged of {n}"
    r = sessions[0].post(site.url + "/admin/login",
                         data={"password": PASSWORD, "csrf_token": tokens[0]},
                         allow_redirects=False, timeout=10)
    assert r.status_code == 429  # locked out: even the right password
    _healthy(site)


def test_a_session_cookie_from_before_sign_in_is_not_signed_in_after_it(site):
    """Session fixation: the cookie a browser held before signing in (one an attacker could
    have planted) does not become a signed-in session; only the one the sign-in sets does."""
    s = client()
    token = login_page(s, site.url)
    before = dict(s.cookies)
    r = s.post(site.url + "/admin/login", data={"password": PASSWORD, "csrf_token": token},
               allow_redirects=False, timeout=10)
    assert r.status_code == 302, r.text[:300]
    assert s.get(site.url + "/admin/", allow_redirects=False).status_code == 200
    planted = client()
    planted.cookies.update(before)
    assert planted.get(site.url + "/admin/", allow_redirects=False).status_code == 302


EDGE_DAYS = [("to", "9999-12-31", "UTC"), ("from", "9999-12-31", "America/New_York"),
             ("from", "0001-01-01", "Asia/Shanghai"), ("to", "0001-01-01", "Asia/Shanghai")]


def test_a_filter_on_the_first_or_last_day_a_calendar_holds_is_never_a_500(site):
    """A day that is a valid date but whose start or end in UTC falls outside the years Python
    can hold (the viewer's zone comes from a cookie) is a refused filter, not a crash."""
    s = client()
    token = login_page(s, site.url)
    r = s.post(site.url + "/admin/login", data={"password": PASSWORD, "csrf_token": token},
               allow_redirects=False, timeout=10)
    assert r.status_code == 302
    for field, day, zone in EDGE_DAYS:
        s.cookies.set("tz", zone)
        for path in ("/admin/rooms", "/admin/export.csv", "/admin/export.json"):
            r = s.get(site.url + path, params={field: day}, timeout=10, allow_redirects=False)
            assert r.status_code in (200, 400), (path, field, day, zone, r.status_code)
    _healthy(site)


def _signed_in(web: WebWorker) -> requests.Session:
    s = client()
    token = login_page(s, web.url)
    r = s.post(web.url + "/admin/login", data={"password": PASSWORD, "csrf_token": token},
               allow_redirects=False, timeout=10)
    assert r.status_code == 302
    return s


def test_ids_past_what_the_database_holds_are_not_found_never_a_500(site):
    """Numbers in the URL are the client's: one past a 64-bit integer is no such row."""
    s = _signed_in(site)
    huge = "9" * 30
    page = s.get(site.url + "/admin/reports", timeout=10)
    token = csrf_from(page.text)
    for path in (f"/admin/reports/{huge}/resolve", f"/admin/moderation/{huge}/unban"):
        r = s.post(site.url + path, data={"csrf_token": token}, allow_redirects=False, timeout=10)
        assert r.status_code in (302, 303, 404), (path, r.status_code)
    for report_id in (huge, "²", "١٢", "-1", "0x10"):  # "²".isdigit() but int("²") fails
        r = s.post(site.url + "/admin/ban", data={"csrf_token": token, "report_id": report_id,
                                                  "duration": "1h"},
                   allow_redirects=False, timeout=10)
        assert r.status_code in (302, 303), (report_id, r.status_code)
    r = s.get(site.url + f"/admin/rooms/{ROOM}", params={"after": huge}, timeout=10)
    assert r.status_code in (200, 404), r.status_code
    _healthy(site)


ODD_VALUES = ["\x00", "\\", "%", "_", "%00", "\ud800".encode("utf-8", "surrogatepass").decode(
    "latin-1"), "\u202e" * 50, "9" * 5000, "-1", "1e9", "x" * 3000]


def test_odd_query_values_on_every_console_page_are_never_an_error(site):
    """Every query parameter of every console page with NULs, LIKE's own characters, bytes
    that are not UTF-8, numbers of 5,000 digits: a page or a refused filter, never a 5xx."""
    s = _signed_in(site)
    pages = {"/admin/": (), "/admin/rooms": ("q", "room", "from", "to", "room_kind", "page"),
             f"/admin/rooms/{ROOM}": ("after",), "/admin/reports": ("status", "page"),
             "/admin/moderation": ("page",), "/admin/api/series": ("span",),
             "/admin/export.csv": ("kind", "q", "room"), "/admin/export.json": ("kind", "q")}
    for path, params in pages.items():
        for name in params:
            for value in ODD_VALUES:
                r = s.get(site.url + path, params={name: value}, timeout=10)
                assert r.status_code < 500, (path, name, value[:20], r.status_code)
    token = csrf_from(s.get(site.url + "/admin/reports", timeout=10).text)
    for field in ("reason", "room_id", "side", "duration", "back"):
        data = {"csrf_token": token, "room_id": ROOM, "side": "A", "duration": "1h",
                field: "a\x00b"}
        r = s.post(site.url + "/admin/ban", data=data, allow_redirects=False, timeout=10)
        assert r.status_code < 500, (field, r.status_code)
    _healthy(site)


# -- plain HTTP routes -----------------------------------------------------------------------------------
def _raw(web: WebWorker, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", web.port), timeout=10) as s:
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


TRAVERSALS = ["/static/../app.py", "/static/%2e%2e/app.py", "/static/js/..%2f..%2fapp.py",
              "/static/%2e%2e%2f%2e%2e%2fcommon/config.py", "/static//etc/passwd",
              "/static/..%5capp.py", "/static/js/%00.js", "/static/js/main.js%00.py"]


def test_static_urls_never_leave_the_static_folder(site):
    for path in TRAVERSALS:
        reply = _raw(site, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        status = int(reply.split(b" ", 2)[1])
        where = re.search(rb"(?im)^location: (?:http://x)?(\S*)", reply)
        assert status in (400, 404) or (  # werkzeug merges slashes: a redirect that stays
            status == 308 and where and where.group(1).startswith(b"/static/")), (path, reply[:300])
        assert b"create_app" not in reply and b"root:" not in reply and b"SETTINGS" not in reply
    _healthy(site)


def test_odd_methods_and_huge_queries_get_a_4xx_never_a_500(site):
    for path in ("/", "/healthz", "/readyz", "/metrics", "/admin/login", "/static/js/main.js"):
        for method in ("PUT", "DELETE", "PATCH", "TRACE", "PROPFIND", "CONNECT"):
            r = requests.request(method, site.url + path, timeout=10, allow_redirects=False)
            assert 400 <= r.status_code < 500, (method, path, r.status_code, r.text[:200])
        r = requests.get(site.url + path, params={"q": "x" * 100_000}, timeout=10,
                         allow_redirects=False)
        assert r.status_code < 500, (path, r.status_code)
    _healthy(site)


BAD_BIDS = ["", "x", "0" * 31, "0" * 33, "g" * 32, "A" * 32, "0" * 4000, "é" * 32,
            '"quoted"', "a;b=c", "../" * 11]


def test_a_bad_bid_cookie_is_replaced_never_kept_or_echoed(site):
    from common.moderation import valid_browser_id

    for bad in BAD_BIDS:
        cookie = bad.encode("utf-8")
        reply = _raw(site, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nCookie: bid="
                     + cookie + b"\r\n\r\n")
        head = reply.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        assert head.startswith("HTTP/1.1 200"), (bad[:40], head[:200])
        m = re.search(r"(?im)^set-cookie: bid=([^;]*)", head)
        assert m and valid_browser_id(m.group(1)) and m.group(1) != bad, (bad[:40], head)
    _healthy(site)


def test_a_garbage_admin_session_cookie_is_a_sign_in_page(site):
    for junk in ("x" * 5000, ".", "..", "eyJ9.a.b", "\u202e" * 10, "a" * 100 + "."):
        s = client()
        s.cookies.set("session", junk.encode("utf-8").decode("latin-1"))
        r = s.get(site.url + "/admin/", allow_redirects=False, timeout=10)
        assert r.status_code == 302 and "/admin/login" in r.headers["Location"], r.status_code
        r = s.get(site.url + "/admin/api/live", timeout=10)
        assert r.status_code == 401, r.status_code
    _healthy(site)


# -- durability: Redis and a web worker killed -9 -------------------------------------------------------
@pytest.fixture
def aof_redis():
    redis = RedisServer(aof=True)  # appendfsync everysec, as stack/services.py runs it
    yield redis
    redis.stop()


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
async def test_redis_killed_under_traffic_loses_nothing_acknowledged(make_stack, aof_redis, how):
    """tests/test_faults.py stops Redis with SHUTDOWN; a crash (-9) or the init system's SIGTERM
    must not lose a message acknowledged `ok` either, nor end a chat."""
    import asyncio
    import signal
    import time

    from test_faults import FAULT_ENV, Traffic, assert_nothing_lost, make_pairs

    s = make_stack(workers=2, redis=aof_redis, **FAULT_ENV)
    traffic = Traffic(await make_pairs(s.urls(), 3, "k9"))
    try:
        await traffic.until_acked(3)
        aof_redis.signal(getattr(signal, how))
        await asyncio.to_thread(aof_redis.p.wait, 10)
        await asyncio.to_thread(aof_redis.start_again)
        up = time.monotonic()
        await traffic.goes_on(up, 3, timeout=15)
        f = await traffic.finish()
    finally:
        await traffic.close()
    assert_nothing_lost(f)


async def test_a_web_worker_killed_under_traffic_loses_nothing_acknowledged(make_stack):
    """kill -9 of one worker of three while its clients send: they reconnect to another worker
    and resume; every message acknowledged `ok` reaches the partner, no chat ends."""
    import time

    from test_faults import FAULT_ENV, Traffic, assert_nothing_lost, make_pairs

    s = make_stack(workers=3, **FAULT_ENV)
    traffic = Traffic(await make_pairs(s.urls(), 4, "w9"))
    try:
        await traffic.until_acked(2)
        victim = s.webs[0]
        assert any(c.worker == victim.worker_id for c in traffic.chatters)
        victim.kill()
        mark = time.monotonic()
        await traffic.until_delivered(mark, timeout=15)
        await traffic.until_acked(2, after=mark, timeout=15)
        f = await traffic.finish()
    finally:
        await traffic.close()
    assert not any(c.worker == victim.worker_id for c in traffic.chatters)
    assert_nothing_lost(f)


async def test_a_waiting_user_and_a_private_key_outlive_a_redis_kill(make_stack, aof_redis, peers):
    """Someone waiting for a stranger and a private room's key made before Redis was killed -9
    are still there after it: the waiting user is matched with the next newcomer, the friend
    joins with the key."""
    import asyncio
    import signal

    from peer import wait_for
    from test_faults import FAULT_ENV

    s = make_stack(workers=1, redis=aof_redis, **FAULT_ENV)
    url = s.urls()[0]
    waiting, host = await peers(url, "waiting"), await peers(url, "host")
    await waiting.join()
    made = await host.call("private_create")
    assert made["ok"], made
    aof_redis.signal(signal.SIGKILL)
    await asyncio.to_thread(aof_redis.p.wait, 10)
    await asyncio.to_thread(aof_redis.start_again)

    def ready():
        try:
            return requests.get(url + "/readyz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    await wait_for(lambda: asyncio.to_thread(ready), 20, "the worker to be ready again")
    friend, newcomer = await peers(url, "friend"), await peers(url, "newcomer")
    joined = await friend.call("private_join", {"key": made["key"]})
    assert joined["ok"], joined
    assert (await host.next("matched"))["room"] == joined["room"]
    assert (await newcomer.call("join", {})) == {"ok": True}
    room = (await waiting.next("matched", timeout=15))["room"]
    assert (await newcomer.next("matched"))["room"] == room
    ack = await waiting.send("after-kill", "still here")
    assert ack["ok"], ack
    assert (await newcomer.next("message"))["id"] == "after-kill"


async def test_a_cluster_master_killed_under_traffic_loses_nothing_acknowledged(make_stack):
    """The same on a Redis Cluster: one master (with AOF) killed -9 and started again holds a
    share of the rooms, the home slot or both; its chats go on after it, nothing `ok` lost."""
    import asyncio
    import time

    from rediscluster import RedisClusterServer
    from test_faults import FAULT_ENV, Traffic, assert_nothing_lost, make_pairs

    cluster = RedisClusterServer(aof=True)
    s = None
    try:
        s = make_stack(workers=1, cluster=cluster, **FAULT_ENV)
        traffic = Traffic(await make_pairs(s.urls(), 4, "c9"))
        try:
            await traffic.until_acked(3)
            for victim in range(3):
                await asyncio.to_thread(cluster.kill, victim)  # the clients go on sending
                await asyncio.to_thread(cluster.restart, victim)
                up = time.monotonic()
                await traffic.goes_on(up, 2, timeout=20)
            f = await traffic.finish()
        finally:
            await traffic.close()
        assert_nothing_lost(f)
    finally:
        if s is not None:
            s.stop()
        cluster.stop()


# -- races a user can cause ----------------------------------------------------------------------------
@pytest.mark.parametrize("workers, backend", [(1, "redis"), (2, "cluster")],
                         indirect=["backend"])
async def test_messages_sent_while_the_partner_leaves_arrive_once_or_are_refused(make_stack, peers,
                                                                               workers, backend):
    """Both send a burst without waiting for acks while B presses Leave in the middle: each
    message acked `ok` reaches the other exactly once, nothing acked otherwise arrives, and A
    sees no message of B after its `partner_left`. One worker (delivery by the sender's own
    worker, one Redis) and two (through the queue, on the cluster)."""
    import asyncio

    from peer import pair as pair_peers
    from peer import wait_for

    s = make_stack(workers=workers, MESSAGE_BURST=200, MESSAGE_RATE=200, **backend)
    urls = s.urls()
    a, b = await peers(urls[0], "stays"), await peers(urls[-1], "leaves")
    room = await pair_peers(a, b)
    sends = [a.send(f"a{i}", "from a") for i in range(40)] + [
        b.send(f"b{i}", "from b") for i in range(40)]
    acks = await asyncio.gather(*sends[:20], *sends[40:60], b.call("leave"),
                                *sends[20:40], *sends[60:])
    ids = [f"a{i}" for i in range(20)] + [f"b{i}" for i in range(20)] + ["leave"] + [
        f"a{i}" for i in range(20, 40)] + [f"b{i}" for i in range(20, 40)]
    result = dict(zip(ids, acks))
    assert result.pop("leave") == {"ok": True}
    ok = {m for m, ack in result.items() if ack.get("ok")}
    assert all(ack.get("ok") or ack["error"]["code"] == "not_chatting" for ack in result.values())
    await a.next("partner_left", where=lambda e: e["room"] == room)
    for receiver, sender in ((a, "b"), (b, "a")):
        want = {m for m in ok if m.startswith(sender)}
        await wait_for(lambda r=receiver, w=want: {m["id"] for m in r.events["message"]} >= w,
                       10, f"{receiver.name} to get every message acked ok")
        got = [m["id"] for m in receiver.events["message"]]
        assert sorted(got) == sorted(want), (receiver.name, sorted(got), sorted(want))
    order = [e for e, _ in a.order if e in ("message", "partner_left")]
    assert order[-1] == "partner_left", order  # nothing of B's after A was told B left


@pytest.mark.parametrize("workers, backend", [(1, "redis"), (2, "cluster")],
                         indirect=["backend"])
async def test_a_page_reloaded_while_it_is_matched_shows_that_chat(make_stack, workers, backend):
    """A waits; B joins while A's page reloads over and over (each reload: close, then connect
    with the token): A's last page is told the chat B was put in (`matched` or `resumed`), and
    a message of B reaches it."""
    import asyncio

    from peer import Peer, close_all

    s = make_stack(workers=workers, MAX_CONNS_PER_ADDR=10000, **backend)
    urls = s.urls()
    a, b = Peer(urls[0], "reloads"), Peer(urls[-1], "joins")
    pages = [a]
    try:
        await a.connect()
        await b.connect()
        await a.join()

        async def reloads():
            for i in range(8):
                token, old = pages[-1].token, pages[-1]
                await old.close()
                page = Peer(urls[i % len(urls)], f"reload{i}")
                pages.append(page)
                await page.connect(token=token)

        await asyncio.gather(reloads(), b.call("join", {}))
        room = (await b.next("matched"))["room"]
        last = pages[-1]

        def told():
            for event, data in last.order:
                if (event == "matched" and data["room"] == room) or (
                        event == "resumed" and data.get("room") == room
                        and data.get("state") == "chatting"):
                    return True
            return False

        from peer import wait_for

        await wait_for(told, 10, "the last page to be told the chat it is in")
        ack = await b.send("to-the-last-page", "hi")
        assert ack["ok"], ack
        assert (await last.next("message"))["id"] == "to-the-last-page"
    finally:
        await close_all([*pages, b])


async def test_pairing_through_a_cluster_master_killed_leaves_no_half_pair(make_stack):
    """Users join in waves while one master of the cluster is killed -9 and started again (the
    matcher records an intent in the home slot, then opens the room in a chat shard: either may
    be the node that dies). Afterwards every user is in a room of exactly two, matching the
    partner map, or still waiting to be paired; nobody is stuck."""
    import asyncio
    import collections

    from peer import Peer, close_all, connect_all, wait_for
    from rediscluster import RedisClusterServer
    from test_faults import FAULT_ENV

    from common.keys import Keys

    cluster = RedisClusterServer(aof=True)
    s = None
    users: list[Peer] = []
    try:
        s = make_stack(workers=1, cluster=cluster, **FAULT_ENV)
        users = [Peer(s.urls()[0], f"wave{i}") for i in range(60)]
        await connect_all(users)

        async def join(p: Peer) -> None:
            while True:  # as the page does: a refused join is tried again
                try:
                    ack = await p.call("join", {}, timeout=5)
                except Exception:  # noqa: BLE001 - timed out while the node was down
                    ack = {"ok": False}
                if ack.get("ok"):
                    return
                await asyncio.sleep(0.3)

        joins = [asyncio.ensure_future(join(p)) for p in users[:20]]
        await wait_for(lambda: any(p.count("matched") for p in users), 20, "a first match")
        killing = asyncio.ensure_future(asyncio.to_thread(cluster.kill, 1))
        joins += [asyncio.ensure_future(join(p)) for p in users[20:]]
        await killing
        await asyncio.to_thread(cluster.restart, 1)
        await asyncio.wait_for(asyncio.gather(*joins), 30)
        await wait_for(lambda: sum(bool(p.count("matched")) for p in users) >= len(users) - 1,
                       30, "everyone but at most one to be matched")
        rooms = collections.defaultdict(set)
        for p in users:
            for m in p.events["matched"]:
                rooms[m["room"]].add(p.user)
        assert all(len(us) == 2 for us in rooms.values()), rooms
        k = Keys(s.env.get("REDIS_PREFIX", "chat"))
        partner = s.client.hgetall(k.partner)
        assert all(partner.get(v) == u for u, v in partner.items()), partner
        assert sum(bool(p.count("partner_left")) for p in users) == 0
    finally:
        await close_all(users)
        if s is not None:
            s.stop()
        cluster.stop()


def test_static_urls_through_nginx_never_leave_the_static_folder():
    """nginx serves /static/ from disk itself (alias): the same traversals, and the off-by-one
    of an alias (/static../), through it."""
    from test_nginx import NginxStack

    s = NginxStack(workers=1)
    try:
        port = s.port
        for path in [*TRAVERSALS, "/static../web/app.py", "/static/..", "/static/.%2e/app.py",
                     "/static/js/../../app.py", "/static/%2e%2e%2f%2e%2e%2fapp.py"]:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
                c.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                reply = b""
                while chunk := c.recv(65536):
                    reply += chunk
            status = int(reply.split(b" ", 2)[1])
            assert status in (301, 308, 400, 403, 404), (path, reply[:300])
            assert b"create_app" not in reply and b"root:" not in reply, path
        assert s.webs[0].alive()
    finally:
        s.stop()


# -- hostile content where it is displayed ---------------------------------------------------------------
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}
WIDER_THAN_THE_SCREEN = "() => document.documentElement.scrollWidth - window.innerWidth"


async def test_hostile_text_neither_runs_nor_widens_the_console_on_a_phone(site):
    """The transcript, the report reasons and the interests of a room hold the longest unbroken
    word a stranger can send, a right-to-left override, zero-width characters and markup: on a
    390 px wide screen nothing runs and no page is wider than the screen."""
    from browser.conftest import CHROMIUM, CHROMIUM_ARGS
    from playwright.async_api import async_playwright, expect

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await (await browser.new_context(**PHONE)).new_page()
            dialogs: list[str] = []
            page.on("dialog", lambda d: dialogs.append(d.message))
            await page.goto(site.url + "/admin/login")
            await page.locator("#password").fill(PASSWORD)
            await page.get_by_role("button", name="Sign in").click()
            await expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
            for path, shows in ((f"/admin/rooms/{ROOM}", "W" * 200), ("/admin/reports", "W" * 200),
                                ("/admin/rooms", "w" * 24), ("/admin/", "Dashboard"),
                                ("/admin/moderation", "")):
                await page.goto(site.url + path)
                await expect(page.locator("main")).to_contain_text(shows)
                assert await page.evaluate(WIDER_THAN_THE_SCREEN) <= 0, path
                assert await page.locator("main img, main b").count() == 0, path
            texts = await page.goto(site.url + f"/admin/rooms/{ROOM}")
            assert texts.ok
            shown = await page.locator("#transcript .msg__text").all_text_contents()
            assert shown == HOSTILE_TEXTS
            assert dialogs == []
        finally:
            await browser.close()


async def test_hostile_text_neither_runs_nor_widens_the_chat_page_on_a_phone(make_stack):
    """The same texts sent by a stranger, on two phones: shown as sent, nothing runs, neither
    page is wider than its screen, live and after a reload (the resume replays them)."""
    from browser.conftest import CHROMIUM, CHROMIUM_ARGS, Opener
    from browser.conftest import pair as pair_pages
    from playwright.async_api import async_playwright, expect

    url = make_stack(workers=1).urls()[0]
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        opener = Opener(browser)
        try:
            a, b = await opener.open(url, **PHONE), await opener.open(url, **PHONE)
            await pair_pages(a, b)
            for text in HOSTILE_TEXTS:
                await a.send(text)
            await expect(b.bubbles("theirs")).to_have_count(len(HOSTILE_TEXTS))
            for reload in (False, True):
                if reload:
                    await b.page.reload()
                    await expect(b.notice("notice_resumed")).to_be_visible()
                    await expect(b.bubbles("theirs")).to_have_count(len(HOSTILE_TEXTS))
                assert await b.bubbles("theirs").all_text_contents() == HOSTILE_TEXTS
                for p in (a, b):
                    assert await p.page.evaluate(WIDER_THAN_THE_SCREEN) <= 0
                    assert await p.page.locator("#log img").count() == 0
                    assert p.dialogs == []
        finally:
            await opener.close()
            await browser.close()


def test_a_head_request_leaves_its_keep_alive_connection_clean(site):
    """HEAD of any URL, then GET on the same connection: before, pywsgi sent the last chunk
    `0\r\n\r\n` after a streamed export's headers, and Engine.IO's 405 body after its own,
    and the client (or nginx's upstream connection) read those bytes as the next response's
    status line. Downloads abandoned
    after their first bytes, more than the pool holds (5 + 10), give their connection back."""
    s = _signed_in(site)
    cookie = "; ".join(f"{k}={v}" for k, v in s.cookies.items())
    for path in ("/admin/export.csv", "/admin/export.json", "/socket.io/?EIO=4&transport=polling",
                 "/", "/healthz", "/metrics", "/static/js/main.js", "/nowhere"):
        reply = _raw(site, (f"HEAD {path} HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n"
                            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                            ).encode())
        head, _, rest = reply.partition(b"\r\n\r\n")
        assert rest.startswith(b"HTTP/1.1 200"), (path, head[:100], rest[:100])
    for _ in range(20):
        with s.get(site.url + "/admin/export.json", stream=True, timeout=10) as r:
            assert r.status_code == 200
            next(r.iter_content(64))
    assert s.get(site.url + "/admin/rooms", timeout=5).status_code == 200
    _healthy(site)
