"""Bans from the admin console, end to end: a real web worker with a history database (SQLite
and PostgreSQL), a real Redis, the console over HTTP, and a chat client of the banned browser.

Ban the reported side of a report (the keys in Redis, the log row, the user told `banned`),
from a room's side, refused without CSRF, and lifted from the moderation log.
"""
from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from peer import Peer, close_all
from pg import history_database
from procs import TEST_SECRET, RedisServer, WebWorker, base_env
from sqlalchemy import insert, select
from test_admin import PASSWORD, csrf_from, signed_in

from common import events as ev
from common.history.db import make_engine
from common.history.migrate import upgrade
from common.history.models import ModerationLog, Report, Room
from common.keys import Keys
from common.moderation import Hasher, new_browser_id
from web.tokens import Tokens

K = Keys("chat")
ROOM = "banroom000000000000000000000001"
HASHER = Hasher(TEST_SECRET)
BID = new_browser_id()  # the reported browser, whose client is online during the test
B_HASH = HASHER.identity(BID, None).browser
A_HASH = HASHER.identity(None, "198.51.100.7").addr
SIDE_B = ("b" * 32, "c" * 32)  # side B's hashes in the room


REPORTED = "user-a"  # side A, reported, and online during the first test


def seed(url: str, reported: str = REPORTED) -> int:
    """A room whose side A is `reported`, with hashes on both sides, and a report on A; its id."""
    upgrade(url)
    engine = make_engine(url)
    at = datetime.now(UTC) - timedelta(minutes=5)
    with engine.begin() as conn:
        conn.execute(insert(Room.__table__), [{
            "id": ROOM, "user1": reported, "user2": "user-b", "interests": [], "opened_at": at,
            "user1_browser": B_HASH, "user1_addr": A_HASH,
            "user2_browser": SIDE_B[0], "user2_addr": SIDE_B[1]}])
        res = conn.execute(insert(Report.__table__).values(
            stream_id="9-1", room_id=ROOM, reporter="user-b", reported=reported, reason="spam",
            created_at=at + timedelta(minutes=1), reported_browser=B_HASH, reported_addr=A_HASH))
        report_id = int(res.inserted_primary_key[0])
    engine.dispose()
    return report_id


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def console(request, tmp_path_factory):
    url = history_database(request, tmp_path_factory, "ban_test")
    redis = RedisServer()
    web = WebWorker(base_env(redis.url, DATABASE_URL=url, ADMIN_PASSWORD=PASSWORD),
                    f"ban-{request.param}")
    try:
        report_id = seed(url)
        web.wait_ready()
        yield {"url": url, "web": web, "redis": redis, "report_id": report_id}
    finally:
        web.stop()
        redis.stop()


def log_rows(url: str) -> list[dict]:
    engine = make_engine(url)
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(
            select(ModerationLog.__table__).order_by(ModerationLog.id))]
    engine.dispose()
    return rows


async def test_ban_from_a_report_logs_it_tells_the_user_and_unban_lifts_it(console):
    base, r = console["web"].url, console["redis"].client
    r.flushall()
    peer = Peer(base, "reported", headers={"Cookie": f"bid={BID}"})
    report_id = console["report_id"]
    try:
        await peer.connect(token=Tokens(TEST_SECRET, 3600).sign(REPORTED))
        assert peer.user == REPORTED
        s = signed_in(base)
        page = s.get(base + "/admin/reports", timeout=10)
        assert f'id="ban-report-{report_id}"' in page.text
        token = csrf_from(page.text)

        # without the CSRF token nothing happens
        refused = s.post(base + "/admin/ban", data={"report_id": report_id, "duration": "1h"},
                         allow_redirects=False, timeout=10)
        assert refused.status_code == 400 and r.keys(K.ban("*")) == []

        done = s.post(base + "/admin/ban", data={
            "csrf_token": token, "report_id": report_id, "duration": "1h",
            "reason": "spam, again", "back": "/admin/reports"}, allow_redirects=False, timeout=10)
        assert done.status_code == 302 and done.headers["Location"].endswith("/admin/reports")
        until = int(r.get(K.ban(B_HASH)))
        assert r.get(K.ban(A_HASH)) == str(until)  # the browser and the address, both
        assert 0 < r.pttl(K.ban(B_HASH)) <= 3600_000
        # the banned user, online, is told at once, and only the end of the ban
        assert await peer.next("error", where=lambda e: e["code"] == "banned") == ev.banned(until)

        (row,) = log_rows(console["url"])
        assert (row["action"], row["browser"], row["addr"], row["reason"], row["report_id"],
                row["room_id"], row["user"]) == ("ban", B_HASH, A_HASH, "spam, again", report_id,
                                                 ROOM, REPORTED)
        assert re.fullmatch(r"session [0-9a-f]{8}", row["admin"])
        log_page = s.get(base + "/admin/moderation", timeout=10)
        assert "spam, again" in log_page.text and "Lift ban" in log_page.text

        lifted = s.post(base + f"/admin/moderation/{row['id']}/unban",
                        data={"csrf_token": csrf_from(log_page.text)}, allow_redirects=False,
                        timeout=10)
        assert lifted.status_code == 302
        assert r.get(K.ban(B_HASH)) is None and r.get(K.ban(A_HASH)) is None
        rows = log_rows(console["url"])
        assert [x["action"] for x in rows] == ["ban", "unban"]
        assert (rows[1]["browser"], rows[1]["admin"]) == (B_HASH, row["admin"])
        assert "Lift ban" not in s.get(base + "/admin/moderation", timeout=10).text
    finally:
        await close_all([peer])


def test_ban_a_side_of_a_room(console):
    base, r = console["web"].url, console["redis"].client
    s = signed_in(base)
    page = s.get(base + f"/admin/rooms/{ROOM}", timeout=10)
    assert 'id="ban-room"' in page.text
    done = s.post(base + "/admin/ban", data={
        "csrf_token": csrf_from(page.text), "room_id": ROOM, "side": "B", "duration": "7d"},
        allow_redirects=False, timeout=10)
    assert done.status_code == 302
    assert all(r.get(K.ban(h)) for h in SIDE_B)
    assert 6 * 86400_000 < r.pttl(K.ban(SIDE_B[0])) <= 7 * 86400_000
    assert log_rows(console["url"])[-1]["user"] == "user-b"
    # a duration not on the list bans nobody
    bad = s.post(base + "/admin/ban", data={
        "csrf_token": csrf_from(page.text), "room_id": ROOM, "side": "A", "duration": "99y"},
        allow_redirects=False, timeout=10)
    assert bad.status_code == 302 and r.get(K.ban(B_HASH)) is None
    # hostile fields: a report id past any integer, a side that is neither A nor B, a huge
    # reason: a page that says so, never a 500, and nobody banned
    for data in ({"report_id": "9" * 40, "duration": "1h"},
                 {"room_id": ROOM, "side": "C", "duration": "1h", "reason": "x" * 10_000},
                 {"room_id": "nope" * 100, "side": "A", "duration": "1h"}):
        got = s.post(base + "/admin/ban", data={"csrf_token": csrf_from(page.text), **data},
                     timeout=10)
        assert got.status_code == 200 and "Cannot ban" in got.text, got.text[:300]
    assert r.get(K.ban(B_HASH)) is None and len(log_rows(console["url"])) == 3
