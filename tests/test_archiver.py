"""History: every message of a chat reaches SQL exactly once, through archiver restarts, from
every history stream of one Redis or of a Redis Cluster."""
from __future__ import annotations

import asyncio
import tempfile
from collections import Counter

import pytest
from peer import Peer, pair, wait_for
from procs import ArchiverProc, Fatal, RedisServer, base_env, free_port, wait_until
from redis.cluster import RedisCluster
from rediscluster import RedisClusterServer
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from archiver.daemon import GROUP
from archiver.writer import KnownRooms, purge, report_id, write_batch
from common.config import load
from common.history.db import as_utc, make_engine
from common.history.migrate import upgrade
from common.history.models import Message, Report, Room
from common.keys import CLUSTER_SHARDS
from common.redisconn import cluster_client, keys_of


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


async def test_every_message_archived_once_through_an_archiver_kill(make_stack, history_url,
                                                                     backend):
    url = history_url
    s = make_stack(workers=2, archivers=1, DATABASE_URL=url, MESSAGE_RATE=1000,
                   MESSAGE_BURST=1000, **backend)
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


async def test_database_down_chat_goes_on_and_history_catches_up(make_stack, postgres,
                                                                   backend):
    url = postgres.create_database(f"hist_outage_{'cluster' if backend else 'redis'}")
    s = make_stack(workers=2, archivers=1, DATABASE_URL=url, MESSAGE_RATE=1000,
                   MESSAGE_BURST=1000, **backend)
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


def test_rooms_the_archiver_knows_are_trusted_until_a_failure_makes_it_look_again():
    url = sqlite_url()
    upgrade(url)
    engine = make_engine(url)
    known = KnownRooms()
    write_batch(engine, entries("r1"), known)
    assert known.ids == {"r1"}
    later = ("7-0", {"type": "message", "room": "r1", "user": "u2", "id": "m2", "seq": "2",
                     "text": "still there?", "ts": "1700000004000"})
    with engine.begin() as c:  # a purge deletes the room behind the archiver's back
        c.execute(delete(Message))
        c.execute(delete(Room))
    with pytest.raises(IntegrityError):  # trusted: no look-up, the foreign key refuses
        write_batch(engine, [later], known)
    known.clear()  # what the daemon does after any failure
    write_batch(engine, [later], known)
    with engine.connect() as c:
        assert c.execute(select(Room.id)).scalars().all() == ["r1"]  # a placeholder
        assert c.execute(select(Message.client_id)).scalars().all() == ["m2"]
    assert known.ids == {"r1"}


def test_purge_deletes_only_what_is_older_than_retention():
    from datetime import datetime, timedelta, timezone

    from sqlalchemy import insert

    from common.history.models import ModerationLog

    url = sqlite_url()
    upgrade(url)
    engine = make_engine(url)
    write_batch(engine, entries("old"))  # 2023-11-14
    recent = [(f"9{i}-0", dict(f, ts=str(int(f.get("ts", "0")) + 86_400_000 * 40)))
              for i, (_, f) in enumerate(entries("new")[:4])]
    write_batch(engine, recent)
    now = datetime(2023, 12, 30, tzinfo=timezone.utc)  # old is 46 days old, new 6 days
    # the moderation log: a ban that ended long ago goes; an old ban still in force, an old ban
    # that ended lately, and a recent one stay
    day = timedelta(days=1)
    log = {"ended long ago": (now - 60 * day, now - 45 * day),
           "in force": (now - 60 * day, now + 300 * day),
           "ended lately": (now - 60 * day, now - 10 * day),
           "recent": (now - 2 * day, now - day)}
    with engine.begin() as c:
        for reason, (at, until) in log.items():
            c.execute(insert(ModerationLog).values(at=at, admin="a", action="ban", until=until,
                                                   reason=reason))
    counts = purge(engine, 30, now=now)
    assert counts["rooms"] == 1 and counts["messages"] == 1 and counts["reports"] == 1
    assert counts["moderation_log"] == 1
    with engine.connect() as c:
        assert c.execute(select(Room.id)).scalars().all() == ["new"]
        assert c.execute(select(func.count()).select_from(Message)).scalar_one() == 1
        assert sorted(c.execute(select(ModerationLog.reason)).scalars()) == \
            ["ended lately", "in force", "recent"]


# Every history stream, on one Redis and on a Redis Cluster ------------------------------------
# These tests XADD the entries themselves (the formats of archiver/writer.py) rather than drive
# the chat, and run real archivers against real Redis / cluster and PostgreSQL processes.

BASE_MS = 1_700_000_000_000  # explicit entry ids: the same ids in every stream on purpose


@pytest.fixture
def history_redis(backend):
    """(env, client, keys): a Redis of the test's own, or the session's Redis Cluster under a
    prefix of the test's own (conftest's `backend`)."""
    if not backend:
        server = RedisServer()
        env = base_env(server.url)
        yield env, server.client, keys_of(load(env))
        server.stop()
        return
    cluster = backend["cluster"]
    env = base_env(cluster.url, REDIS_CLUSTER_URL=cluster.url,
                   REDIS_PREFIX=backend["REDIS_PREFIX"])
    client = cluster_client(cluster.url)
    yield env, client, keys_of(load(env))
    client.close()


def rooms_per_stream(keys, per_stream: int, wave: str) -> dict[str, list[str]]:
    """`per_stream` room ids whose shard is each chat shard, by history stream."""
    found: dict[str, list[str]] = {keys.history_of(t): [] for t in keys.shard_tags}
    i = 0
    while any(len(rooms) < per_stream for rooms in found.values()):
        room = f"{wave}{i}"
        rooms = found[keys.history_of(keys.room_tag(room))]
        if len(rooms) < per_stream:
            rooms.append(room)
        i += 1
    return found


def room_entries(room: str) -> list[dict]:
    """A whole chat, in stream order: opened, two messages, a report, closed."""
    return [
        {"type": "opened", "room": room, "user1": f"a-{room}", "user2": f"b-{room}",
         "interests": '["cats"]', "ts": str(BASE_MS)},
        {"type": "message", "room": room, "user": f"a-{room}", "id": f"{room}-m1", "seq": "1",
         "text": f"hi from {room} 你好", "ts": str(BASE_MS + 1)},
        {"type": "message", "room": room, "user": f"b-{room}", "id": f"{room}-m2", "seq": "2",
         "text": "hello", "ts": str(BASE_MS + 2)},
        {"type": "report", "room": room, "user": f"b-{room}", "reported": f"a-{room}",
         "reason": "spam", "ts": str(BASE_MS + 3)},
        {"type": "closed", "room": room, "user": f"b-{room}", "reason": "left",
         "ts": str(BASE_MS + 4)},
    ]


def add_history(r, keys, wave: str, per_stream: int, explicit_ids: bool) -> dict:
    """XADD `per_stream` whole chats to every chat shard's stream and a report without a room
    to the home stream; with `explicit_ids` the ids are the same in every stream. Returns what
    SQL must hold afterwards: {rooms, messages, reports} by key."""
    want = {"rooms": set(), "messages": set(), "reports": set()}
    for stream, rooms in rooms_per_stream(keys, per_stream, wave).items():
        n = 0
        for room in rooms:
            for fields in room_entries(room):
                n += 1
                r.xadd(stream, fields, id=f"{BASE_MS}-{n}" if explicit_ids else "*")
            want["rooms"].add(room)
            want["messages"] |= {(room, f"{room}-m1"), (room, f"{room}-m2")}
            want["reports"].add((room, f"b-{room}"))
    # a report without a room goes to the home stream (on one Redis, the only stream)
    r.xadd(keys.history, {"type": "report", "room": "", "user": f"{wave}-x", "reported": "y",
                          "reason": "rude", "ts": str(BASE_MS)},
           id=f"{BASE_MS}-{10_000}" if explicit_ids else "*")
    want["reports"].add((None, f"{wave}-x"))
    return want


def sql_history(engine) -> dict:
    with engine.connect() as c:
        return {"rooms": c.execute(select(Room)).all(),
                "messages": c.execute(select(Message.room_id, Message.client_id)).all(),
                "reports": c.execute(select(Report.room_id, Report.reporter,
                                            Report.stream_id)).all()}


def wait_history(engine, want: dict, timeout: float = 60) -> dict:
    """SQL's history once it holds as many rows as `want` and every room has its close (or what
    it holds at the deadline): a room's row and its close are written by different entries,
    which may land in different batches."""
    got = {}

    def enough():
        nonlocal got
        got = sql_history(engine)
        return (all(len(got[k]) >= len(want[k]) for k in want)
                and all(r.closed_at is not None for r in got["rooms"]))

    try:
        wait_until(enough, timeout, "the archived history", interval=0.2)
    except TimeoutError:
        pass
    return got


def assert_history(got: dict, want: dict) -> None:
    """Each room, message and report once, rooms whole and closed."""
    assert len(got["rooms"]) == len(want["rooms"])
    assert {r.id for r in got["rooms"]} == want["rooms"]
    for r in got["rooms"]:
        assert (r.user1, r.user2, r.interests) == (f"a-{r.id}", f"b-{r.id}", ["cats"]), r
        assert r.closed_at is not None and (r.close_reason, r.closed_by) == ("left", f"b-{r.id}")
    assert Counter(tuple(m) for m in got["messages"]) == Counter(want["messages"])  # once each
    assert Counter((rid, who) for rid, who, _ in got["reports"]) == Counter(want["reports"])


def assert_drained(r, keys) -> None:
    """Every entry acknowledged and deleted, in every stream."""
    for stream in keys.history_streams:
        assert r.xlen(stream) == 0, stream
        assert r.xpending(stream, GROUP)["pending"] == 0, stream


def wait_drained(r, keys, timeout: float = 30) -> None:
    def drained():
        return all(r.xlen(s) == 0 and r.xpending(s, GROUP)["pending"] == 0
                   for s in keys.history_streams)

    wait_until(drained, timeout, "every history stream drained", interval=0.1)


def test_archivers_drain_every_history_stream(history_redis, postgres, request):
    env, r, keys = history_redis
    url = postgres.create_database(f"drain_{request.node.callspec.id}")
    upgrade(url)  # before two archivers start, or both would migrate at once
    engine = make_engine(url)
    streams = keys.history_streams
    if isinstance(r, RedisCluster):
        assert len(streams) == 1 + CLUSTER_SHARDS
        # the shard streams are on every master, the home one on one of them
        assert ({r.get_node_from_key(s).name for s in streams[1:]}
                == {n.name for n in r.get_primaries()})
    else:
        assert streams == (keys.history,)

    # a backlog with the same entry ids in every stream, before any archiver runs
    want = add_history(r, keys, "early", per_stream=2, explicit_ids=True)
    env = {**env, "DATABASE_URL": url}
    archivers = [ArchiverProc(env, "archiver-a"), ArchiverProc(env, "archiver-b")]
    try:
        got = wait_history(engine, want)
        assert_history(got, want)
        wait_drained(r, keys)
        # then a wave while they wait for entries, to every stream again
        later = add_history(r, keys, "later", per_stream=1, explicit_ids=False)
        want = {k: want[k] | later[k] for k in want}
        got = wait_history(engine, want)
        assert_history(got, want)
        wait_drained(r, keys)
        assert_drained(r, keys)
        ids = [stream_id for _, _, stream_id in got["reports"]]
        assert len(set(ids)) == len(ids)
        if isinstance(r, RedisCluster):  # the same entry id in every shard: one report each
            same = [i for i in ids if i.endswith(f"{BASE_MS}-4")]
            assert sorted(same) == sorted(f"{n}/{BASE_MS}-4" for n in range(CLUSTER_SHARDS))
        for a in archivers:
            assert a.alive(), a.output()
            assert a.stop() == 0, a.output()  # SIGTERM: finish the step, exit 0
            assert "archiver stopped after archiving" in a.output()
    finally:
        for a in archivers:
            a.stop()
        engine.dispose()


def test_entries_pending_from_a_killed_archiver_are_claimed(history_redis, postgres, request):
    env, r, keys = history_redis
    url = postgres.create_database(f"claim_{request.node.callspec.id}")
    upgrade(url)
    engine = make_engine(url)
    want = add_history(r, keys, "stale", per_stream=1, explicit_ids=False)
    total = sum(r.xlen(s) for s in keys.history_streams)
    # The first archiver reads every entry but can never commit (no database there), so all
    # of them stay pending to it (it reads nothing new while its batch fails); then it is killed.
    nowhere = f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/nowhere"
    doomed = ArchiverProc({**env, "APP_ENV": "production", "DATABASE_URL": nowhere},
                          "archiver-doomed")

    def all_pending_to_doomed():
        if not doomed.alive():
            raise Fatal(f"the doomed archiver exited:\n{doomed.output()}")
        return ("database unavailable" in doomed.output() and total == sum(
            r.xpending(s, GROUP)["pending"] for s in keys.history_streams))

    try:
        wait_until(all_pending_to_doomed, 30, "the doomed archiver to read every entry and fail")
    finally:
        doomed.kill()
    assert sum(r.xlen(s) for s in keys.history_streams) == total  # nothing acked or deleted

    heir = ArchiverProc({**env, "DATABASE_URL": url}, "archiver-heir")
    try:
        got = wait_history(engine, want)
        assert_history(got, want)
        wait_drained(r, keys)
        assert "claimed" in heir.output()
        assert heir.stop() == 0, heir.output()
    finally:
        heir.stop()
        engine.dispose()


def test_an_entry_the_database_refuses_is_set_aside_and_the_rest_is_archived(history_redis,
                                                                              postgres, request):
    # PostgreSQL's text cannot hold NUL: such an entry (the web workers refuse NUL now; one
    # from before, or any other value the database refuses) failed its batch on every retry,
    # and nobody's history reached SQL after it
    env, r, keys = history_redis
    url = postgres.create_database(f"refused_{request.node.callspec.id}")
    upgrade(url)
    engine = make_engine(url)
    want = add_history(r, keys, "before", per_stream=1, explicit_ids=False)
    room = next(iter(sorted(want["rooms"])))
    stream = keys.history_of(keys.room_tag(room))
    bad = {"type": "message", "room": room, "user": f"a-{room}", "id": f"{room}-bad",
           "seq": "3", "text": "nul \x00 here", "ts": str(BASE_MS + 3)}
    bad_id = r.xadd(stream, bad)
    later = add_history(r, keys, "after", per_stream=1, explicit_ids=False)
    want = {k: want[k] | later[k] for k in want}
    archiver = ArchiverProc({**env, "DATABASE_URL": url}, "archiver")
    try:
        got = wait_history(engine, want)
        assert_history(got, want)  # everything but the refused entry, once
        wait_drained(r, keys)
        refused = r.xrange(keys.history_refused)
        assert len(refused) == 1
        fields = refused[0][1]
        assert fields["text"] == bad["text"] and fields["id"] == bad["id"]
        assert fields["stream_id"].endswith(bad_id) and fields["error"]
        out = archiver.output()
        assert "refused history entry" in out and "nul" not in out  # the id, not the text
        assert archiver.stop() == 0, out
    finally:
        archiver.stop()
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_batches_committed_out_of_order_make_the_same_rows(backend, request):
    """Two archivers may commit a room's close or messages before its opening."""
    url = (sqlite_url() if backend == "sqlite"
           else request.getfixturevalue("postgres").create_database("out_of_order"))
    upgrade(url)
    engine = make_engine(url)
    opened, m1, report, closed = [(f"{i}-0", f) for i, f in enumerate(room_entries("r1"))
                                  if i != 2]
    write_batch(engine, [closed, closed])  # a close first, twice in one batch
    write_batch(engine, [m1, report])
    write_batch(engine, [opened, m1])  # the opening last, with a replay
    write_batch(engine, [(report_id(3, "3-0"), report[1]), opened])  # same id, another shard
    with engine.connect() as c:
        room = c.execute(select(Room)).one()
        assert c.execute(select(func.count()).select_from(Message)).scalar_one() == 1
        assert sorted(c.execute(select(Report.stream_id)).scalars()) == ["3-0", "3/3-0"]
    assert (room.user1, room.user2, room.interests) == ("a-r1", "b-r1", ["cats"])
    assert as_utc(room.opened_at).timestamp() * 1000 == BASE_MS
    assert room.closed_at is not None and (room.close_reason, room.closed_by) == ("left", "b-r1")
    engine.dispose()


def test_a_moved_slot_and_a_restarted_node_of_the_cluster(tmp_path):
    """A shard stream's slot moves to another master, then a master is killed and comes back
    without its data (no AOF): the archiver follows the slot, waits out the outage, makes the
    lost streams' group again and archives what comes next. A cluster of its own, so the
    session's keeps its slots."""
    cluster = RedisClusterServer()
    archiver = None
    try:
        url = f"sqlite:///{tmp_path}/chat.db"
        upgrade(url)
        env = base_env(cluster.url, REDIS_CLUSTER_URL=cluster.url, DATABASE_URL=url)
        keys = keys_of(load(env))
        r = cluster_client(cluster.url)
        archiver = ArchiverProc(env, "archiver-moved")

        def report(stream: str, who: str) -> None:
            r.xadd(stream, {"type": "report", "room": "", "user": who, "reported": "v",
                            "reason": "x", "ts": str(BASE_MS)})

        def drained(stream: str):
            if not archiver.alive():
                raise Fatal(f"the archiver exited:\n{archiver.output()}")
            return r.xlen(stream) == 0 and r.xpending(stream, GROUP)["pending"] == 0

        stream = keys.history_streams[5]
        report(stream, "before")
        wait_until(lambda: drained(stream), 30, "the first report archived")

        # move the stream's slot, with the stream, as redis-cli --cluster reshard would
        src = cluster.node_of(stream)
        dst = next(n for n in cluster.nodes if n is not src)
        slot = int(src.client.execute_command("CLUSTER KEYSLOT", stream))
        src_id, dst_id = (n.client.execute_command("CLUSTER MYID") for n in (src, dst))
        dst.client.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
        src.client.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
        src.client.execute_command("MIGRATE", dst.client.connection_pool.connection_kwargs["host"],
                                   dst.port, "", 0, 5000, "KEYS", stream)
        for n in cluster.nodes:
            n.client.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
        assert cluster.node_of(stream) is dst
        r.close()
        r = cluster_client(cluster.url)  # one that knows the new map, for the test's writes
        report(stream, "moved")
        wait_until(lambda: drained(stream), 30, "a report archived from the moved slot")

        victim = next(i for i, n in enumerate(cluster.nodes) if n is not cluster.node_of(stream))
        lost = [s for s in keys.history_streams if cluster.node_of(s) is cluster.nodes[victim]]
        seen = archiver.output().count("redis unavailable")
        cluster.kill(victim)
        wait_until(lambda: archiver.output().count("redis unavailable") > seen, 30,
                   "the archiver to notice the node's loss")
        cluster.restart(victim)
        assert r.exists(*lost) == 0  # gone with the node's memory, consumer group and all
        for i, s in enumerate(lost):
            report(s, f"after-{i}")
        wait_until(lambda: all(drained(s) for s in lost), 60,
                   "the reports archived from the restarted node's streams")
        engine = make_engine(url)
        with engine.connect() as c:
            who = sorted(c.execute(select(Report.reporter)).scalars())
        engine.dispose()
        assert who == sorted(["before", "moved", *(f"after-{i}" for i in range(len(lost)))])
        assert archiver.stop() == 0, archiver.output()
        r.close()
    finally:
        if archiver is not None:
            archiver.stop()
        cluster.stop()


def test_a_rooms_kind_is_archived_and_older_entries_are_random():
    url = sqlite_url()
    upgrade(url)
    engine = make_engine(url)
    private = [(i, {**f, "kind": "private"} if f.get("type") == "opened" else f)
               for i, f in entries("p1")]
    write_batch(engine, [*private, *entries("r1"),  # an entry of before private rooms: no kind
                         ("9-0", {**entries("x1")[0][1], "kind": "<b>bogus</b>"})])
    with engine.connect() as c:
        kinds = dict(c.execute(select(Room.id, Room.kind)).all())
    assert kinds == {"p1": "private", "r1": "random", "x1": "random"}


def test_the_kind_migration_fills_existing_rooms_with_random():
    url = sqlite_url()
    upgrade(url, "0001")
    engine = make_engine(url)
    with engine.begin() as c:
        c.exec_driver_sql("INSERT INTO rooms (id, user1, user2, interests, opened_at) "
                          "VALUES ('old', 'u1', 'u2', '[]', '2026-01-01 00:00:00')")
    assert upgrade(url, "0002_room_kind") == "0002_room_kind"
    with engine.connect() as c:
        assert c.execute(select(Room.kind).where(Room.id == "old")).scalar_one() == "random"
    engine.dispose()
