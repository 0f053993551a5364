"""History: every message of a chat reaches SQL exactly once, through archiver restarts."""
from __future__ import annotations

import asyncio
import tempfile

from sqlalchemy import func, select

from archiver.writer import purge, write_batch
from common.db import make_engine
from common.migrate import upgrade
from common.models import Message, Report, Room
from peer import Peer, pair, wait_for
from procs import ArchiverProc

import pytest


def sqlite_url() -> str:
    return f"sqlite:///{tempfile.mkdtemp(prefix='hist-')}/chat.db"


async def wait_rows(engine, model, n: int, timeout: float = 30) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        with engine.connect() as c:
            got = c.execute(select(func.count()).select_from(model)).scalar_one()
        if got >= n or loop.time() > deadline:
            return got
        await asyncio.sleep(0.2)


async def chat_script(a: Peer, b: Peer, prefix: str, count: int) -> list[str]:
    ids = []
    for i in range(count):
        sender, receiver = (a, b) if i % 2 == 0 else (b, a)
        mid = f"{prefix}-{i}"
        ack = await sender.send(mid, f"{prefix} message {i} 你好")
        assert ack["ok"], ack
        await receiver.next("message", where=lambda m, mid=mid: m["id"] == mid)
        ids.append(mid)
    return ids


@pytest.fixture(params=["sqlite", "postgresql"])
def history_url(request):
    if request.param == "sqlite":
        return sqlite_url()
    server = request.getfixturevalue("postgres")
    return server.create_database(f"hist_{request.node.name[-40:].strip('[]').replace('-', '_')}")


async def test_every_message_archived_once_through_an_archiver_kill(make_stack, history_url):
    url = history_url
    s = make_stack(workers=2, archivers=1, DATABASE_URL=url, MESSAGE_RATE=1000,
                   MESSAGE_BURST=1000)
    engine = make_engine(url)
    w1, w2 = s.urls()
    a, b = Peer(w1), Peer(w2)
    await a.connect()
    await b.connect()
    room = await pair(a, b)
    ids = await chat_script(a, b, "first", 40)
    assert await wait_rows(engine, Message, 10) >= 10  # the archiver is writing
    s.archivers[0].kill()  # killed mid-way, perhaps with a batch read and not acknowledged
    ids += await chat_script(a, b, "gap", 40)  # the chat goes on meanwhile
    s.archivers.append(ArchiverProc(s.env, "archiver-restarted"))
    ids += await chat_script(a, b, "after", 20)
    await a.call("report", {"reason": "spam"})
    await a.call("leave")
    await b.next("partner_left")

    assert await wait_rows(engine, Message, len(ids)) == len(ids)
    assert await wait_rows(engine, Report, 1) == 1
    with engine.connect() as c:
        rows = c.execute(select(Message.client_id, Message.seq, Message.text, Message.sender)
                         .order_by(Message.seq)).all()
        r = c.execute(select(Room)).one()
    assert [row.client_id for row in rows] == ids  # all of them, once each, in order
    assert [row.seq for row in rows] == list(range(1, len(ids) + 1))
    assert rows[0].text == "first message 0 你好" and rows[0].sender == a.user
    assert r.id == room and {r.user1, r.user2} == {a.user, b.user}
    def closed_room():  # the close arrives after the last messages
        with engine.connect() as c:
            r = c.execute(select(Room)).one()
        return r if r.closed_at is not None else None

    r = await wait_for(closed_room, 30, "the room's close in SQL", step=0.2)
    assert r.close_reason == "left" and r.closed_by == a.user
    await a.close()
    await b.close()


async def test_database_down_chat_goes_on_and_history_catches_up(make_stack, postgres):
    url = postgres.create_database("hist_outage")
    s = make_stack(workers=2, archivers=1, DATABASE_URL=url, MESSAGE_RATE=1000,
                   MESSAGE_BURST=1000)
    engine = make_engine(url)
    w1, w2 = s.urls()
    a, b = Peer(w1), Peer(w2)
    await a.connect()
    await b.connect()
    await pair(a, b)
    ids = await chat_script(a, b, "before", 10)
    assert await wait_rows(engine, Message, 10) == 10
    engine.dispose()

    postgres.pause()
    try:
        ids += await chat_script(a, b, "outage", 30)  # every one acked and delivered meanwhile
        archiver_log = s.archivers[0]
        await wait_for(lambda: "database unavailable" in archiver_log.output(), 30,
                       "the archiver to notice the outage", step=0.2)
    finally:
        postgres.resume()
    ids += await chat_script(a, b, "after", 10)

    assert await wait_rows(engine, Message, len(ids), timeout=60) == len(ids)
    with engine.connect() as c:
        got = c.execute(select(Message.client_id).order_by(Message.seq)).scalars().all()
    assert got == ids
    assert s.archivers[0].alive()
    await a.close()
    await b.close()


def entries(room: str = "r1"):
    return [
        ("1-0", {"type": "opened", "room": room, "user1": "u1", "user2": "u2",
                 "interests": '["cats"]', "ts": "1700000000000"}),
        ("2-0", {"type": "message", "room": room, "user": "u1", "id": "m1", "seq": "1",
                 "text": "hi", "ts": "1700000001000"}),
        ("3-0", {"type": "report", "room": room, "user": "u2", "reported": "u1",
                 "reason": "spam", "ts": "1700000002000"}),
        ("4-0", {"type": "closed", "room": room, "user": "u2", "reason": "next",
                 "ts": "1700000003000"}),
        ("5-0", {"type": "nonsense"}),
        ("6-0", {"type": "message", "room": room}),  # malformed: skipped, not fatal
    ]


def test_replaying_a_batch_inserts_nothing_twice():
    url = sqlite_url()
    upgrade(url)
    engine = make_engine(url)
    write_batch(engine, entries())
    write_batch(engine, entries())  # an archiver died after commit, before ack
    with engine.connect() as c:
        assert c.execute(select(func.count()).select_from(Message)).scalar_one() == 1
        assert c.execute(select(func.count()).select_from(Report)).scalar_one() == 1
        room = c.execute(select(Room)).one()
    assert room.interests == ["cats"] and room.close_reason == "next"


def test_a_message_whose_room_entry_is_missing_gets_a_placeholder_room():
    url = sqlite_url()
    upgrade(url)
    engine = make_engine(url)
    write_batch(engine, entries("r9")[1:2])
    with engine.connect() as c:
        assert c.execute(select(Room.id)).scalars().all() == ["r9"]
        assert c.execute(select(func.count()).select_from(Message)).scalar_one() == 1


def test_purge_deletes_only_what_is_older_than_retention():
    from datetime import datetime, timezone

    url = sqlite_url()
    upgrade(url)
    engine = make_engine(url)
    write_batch(engine, entries("old"))  # 2023-11-14
    recent = [(f"9{i}-0", dict(f, ts=str(int(f.get("ts", "0")) + 86_400_000 * 40)))
              for i, (_, f) in enumerate(entries("new")[:4])]
    write_batch(engine, recent)
    now = datetime(2023, 12, 30, tzinfo=timezone.utc)  # old is 46 days old, new 6 days
    counts = purge(engine, 30, now=now)
    assert counts["rooms"] == 1 and counts["messages"] == 1 and counts["reports"] == 1
    with engine.connect() as c:
        assert c.execute(select(Room.id)).scalars().all() == ["new"]
        assert c.execute(select(func.count()).select_from(Message)).scalar_one() == 1
