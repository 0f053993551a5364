"""Probes from outside, where the other hostile-client tests did not look: Engine.IO's own packet
types, text that a database cannot hold, and a few races a user can cause."""
from __future__ import annotations

import asyncio

import aiohttp
import pytest
from conftest import Stack
from peer import pair, wait_for
from test_packets import DEFAULTS, Pair, Raw, check_error, tracebacks


@pytest.fixture(scope="module")
def one():
    """One web worker with the default budgets, and a matcher for the normal pair."""
    s = Stack(workers=1, matchers=1)
    yield s
    s.stop(background=True)


@pytest.fixture
def clean_one(one):
    one.redis.client.flushall()
    yield one
    assert one.webs[0].alive(), one.webs[0].output()[-4000:]
    found = tracebacks(one)
    assert not found, "tracebacks in the worker's log:\n" + "\n-----\n".join(found[:3])


# Engine.IO packets that never become a Socket.IO packet: PING (a v4 client never sends one
# outside the upgrade probe), PONG, UPGRADE (each answered with a NOOP) and NOOP.
ENGINEIO_FLOODS = {"ping": "2", "pong": "3", "upgrade": "5", "noop": "6"}


async def test_a_flood_of_engineio_packets_costs_the_packet_budget(clean_one):
    """Before: 100,000 of any of these on one WebSocket were read, and UPGRADE answered, without
    costing anything; the packet gate only saw Engine.IO MESSAGEs. Now each costs from the
    connection's budget and the flood is closed with `rate_limited`, like any other."""
    url = clean_one.webs[0].url
    normal = await Pair(url, "eio").start()
    async with aiohttp.ClientSession() as session:
        for kind, raw in ENGINEIO_FLOODS.items():
            attacker = await Raw(url, session, f"flood-{kind}").open()
            sent = 0
            while sent < 20_000 and await attacker.send(raw):
                sent += 1
                if sent % 200 == 0:
                    await asyncio.sleep(0)  # let the reader see the close
            await attacker.wait_closed()
            assert sent < 20_000, f"a flood of Engine.IO {kind} packets was never closed"
            for err in attacker.errors():  # what came before the close (a reset may drop it)
                check_error(err, "rate_limited")
            await attacker.close()
    await normal.finish()


async def test_polling_posts_of_engineio_pongs_end_their_session(clean_one):
    """Long-polling carries up to 16 packets in one POST (python-engineio refuses more): POSTs
    of 16 PONGs each spend the budget and end the session; a GET on it is then refused (a NOOP
    or PING there already ended it: Engine.IO raises on them)."""
    import json

    url = clean_one.webs[0].url + "/socket.io/?EIO=4&transport=polling"
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as r:
            sid = json.loads((await r.text())[1:])["sid"]
        async with session.post(url + f"&sid={sid}", data="40{}") as r:
            assert r.status == 200
        for _ in range(50):
            async with session.post(url + f"&sid={sid}", data="\x1e".join(["3"] * 16)) as r:
                await r.read()
                if r.status != 200:
                    break
        async with session.get(url + f"&sid={sid}",
                               timeout=aiohttp.ClientTimeout(total=DEFAULTS.ping_interval)) as r:
            body = await r.text()
            assert r.status == 400 or "rate_limited" in body, (r.status, body[:300])


async def test_pongs_at_the_ping_pace_cost_nothing_that_matters(clean_one):
    """An honest client's PONGs and its one UPGRADE are packets too, but well within budget:
    a connection that answers a burst's worth of them can still chat."""
    url = clean_one.webs[0].url
    async with aiohttp.ClientSession() as session:
        raw = await Raw(url, session, "honest").open()
        for _ in range(DEFAULTS.packet_burst // 4):
            assert await raw.send("3")
        assert await raw.send('421["typing",{"typing":true}]')
        ack = await raw.ack(1)
        check_error(ack[0]["error"], "not_chatting")
        assert not raw.closed.is_set()
        await raw.close()



async def test_a_flood_of_websocket_pings_is_closed_with_1008(clean_one):
    """WebSocket ping frames are answered by gevent-websocket below Engine.IO: before, 100,000
    of them on one connection were each answered with a pong and nothing was closed. Now pings
    and pongs have the packet budget of their own: a few pass (the connection still chats),
    a flood is closed with 1008 (policy violation)."""
    url = clean_one.webs[0].url
    normal = await Pair(url, "wsping").start()
    async with aiohttp.ClientSession() as session:
        attacker = await Raw(url, session, "pinger").open()
        for _ in range(DEFAULTS.packet_burst // 4):  # what a keep-alive may send: fine
            await attacker.ws.ping(b"x")
        assert await attacker.send('421["typing",{"typing":true}]')
        check_error((await attacker.ack(1))[0]["error"], "not_chatting")
        sent = 0
        while sent < 20_000 and not attacker.closed.is_set():
            try:
                await attacker.ws.ping(b"x")
            except (ConnectionError, RuntimeError, aiohttp.ClientError):
                break
            sent += 1
            if sent % 200 == 0:
                await asyncio.sleep(0)
        await attacker.wait_closed()
        assert sent < 20_000, "a flood of WebSocket pings was never closed"
        assert attacker.ws.close_code in (1008, 1006), attacker.close_reason  # 1006: a reset
        await attacker.close()
    await normal.finish()


def _empty_fragments(web, count: int) -> tuple[int, int | None]:
    """A text message of `count` empty continuation frames, never finished: (fragments sent
    before the server closed, its close code)."""
    import select

    from test_guard import close_code, frame_header, ws_open

    s = ws_open(web)
    with s:
        s.sendall(frame_header(1, opcode=1, fin=False) + b"4")
        batch = frame_header(0, opcode=0, fin=False) * 1000
        sent = 0
        try:
            while sent < count and not select.select([s], [], [], 0)[0]:
                s.sendall(batch)
                sent += 1000
        except (ConnectionResetError, BrokenPipeError):
            return sent, None
        return sent, close_code(s)


async def test_a_message_of_endless_empty_fragments_is_closed_with_1008(clean_one):
    """Zero-length continuation frames never grow a message past MAX_FRAME_BYTES: before, a
    message of 1,000,000 of them was read to the end and nothing was closed."""
    url = clean_one.webs[0].url
    normal = await Pair(url, "frag").start()
    sent, code = await asyncio.to_thread(_empty_fragments, clean_one.webs[0], 1_000_000)
    assert sent < 1_000_000 and code in (1008, None), (sent, code)
    await normal.finish()

# -- text that the history's database cannot hold -----------------------------------------------
NUL_CASES = [  # (event, payload, code): a NUL in every text field a client sends
    ("message", {"id": "nul-1", "text": "a\x00b"}, "bad_payload"),
    ("message", {"id": "n\x00l", "text": "hi"}, "bad_id"),
    ("join", {"interests": ["mu\x00sic"]}, "bad_payload"),
    ("report", {"reason": "sp\x00am"}, "bad_payload"),
]


async def test_a_nul_in_any_text_field_is_refused_and_history_goes_on(make_stack, postgres, peers):
    """PostgreSQL cannot store a NUL character in text. Before, a message "a\\x00b" was acked
    and delivered, and its history entry failed the archiver's batch on every retry: no message
    of anyone reached SQL after it. Now every text field with a NUL is refused with a code, and
    the chat and its history go on."""
    from sqlalchemy import select

    from common.history.db import make_engine
    from common.history.models import Message

    url = postgres.create_database("probe_nul")
    s = make_stack(workers=1, archivers=1, DATABASE_URL=url)
    a, b = await peers(s.urls()[0], "nul-a"), await peers(s.urls()[0], "nul-b")
    await pair(a, b)
    for event, payload, code in NUL_CASES:
        ack = await a.call(event, payload)
        assert ack["ok"] is False, (event, payload, ack)
        check_error(ack["error"], code)
    ack = await a.send("after-nul", "still here")
    assert ack["ok"], ack
    got = await b.next("message")
    assert got["id"] == "after-nul", got  # the first message b sees: nothing with a NUL came
    engine = make_engine(url)

    def archived():
        with engine.connect() as c:
            return c.execute(select(Message.client_id, Message.text)).all()

    rows = await wait_for(archived, 30, "the message after the NUL in SQL", step=0.2)
    assert [tuple(r) for r in rows] == [("after-nul", "still here")], rows
    engine.dispose()


# -- durability on the Redis Cluster ---------------------------------------------------------------
async def test_killed_listeners_on_the_cluster_lose_nothing_acknowledged(make_stack,
                                                                         redis_cluster):
    """tests/test_faults.py kills the queue listeners' connections on one Redis; on a cluster
    each worker holds sharded subscriptions on every master, and each kill cuts them all. Only
    this stack's (by client name): the session's cluster serves other stacks, whose listeners
    a `CLIENT KILL TYPE pubsub` would cut in the middle of their own tests."""
    import uuid
    from types import SimpleNamespace

    from test_faults import FAULT_ENV, listener_kill

    s = make_stack(workers=2, cluster=redis_cluster, REDIS_PREFIX="kill" + uuid.uuid4().hex[:8],
                   **FAULT_ENV)
    own = SimpleNamespace(kill_clients=lambda kind="pubsub": s.kill_listeners())
    f = await listener_kill(SimpleNamespace(urls=s.urls, redis=own), pairs=4, kills=8)
    assert f["listeners_killed"] > 0, f
    assert f["lost"] == 0, f["lost_ids"]
    assert f["partner_left"] == 0, f


# -- races a user can cause --------------------------------------------------------------------------
async def test_next_pressed_at_once_by_three_users_leaves_no_one_stuck(fresh_any, peers):
    """Three users on two workers each press Next eight times without waiting for the acks.
    Afterwards nobody is paired with two people or with themselves; a user the race left idle
    (their partner pressed Next last) has been told `partner_left` for the chat their page
    shows; and when the idle ones join again, two of them chat and the third waits."""
    s = fresh_any
    urls = s.urls()
    users = [await peers(urls[i % 2], f"next{i}") for i in range(3)]
    by_id = {u.user: u for u in users}
    for u in users:
        await u.join()
    await wait_for(lambda: sum(u.count("matched") for u in users) >= 2, 20, "a first pair")
    acks = await asyncio.gather(*(u.call("next") for u in users for _ in range(8)))
    assert all(a == {"ok": True} for a in acks), acks
    k = s.home_key

    def state():
        return s.client.hgetall(k("partner")), set(s.client.zrange(k("queue"), 0, -1))

    async def check_consistent():
        partners, waiting = state()
        assert all(partners.get(b) == a != b for a, b in partners.items()), partners
        assert not waiting & set(partners), (partners, waiting)
        def shown(u):
            """The chat the page shows: the newest `matched` by its `at`, not the last to
            arrive (on a cluster two chats' `matched` come from two shards, and a page ignores
            one older than a chat it has shown: web/static/js/state.js)."""
            room, at = None, None
            for m in u.events["matched"]:  # like the page: one paired at the same ms is taken
                if at is None or m["at"] >= at:
                    room, at = m["room"], m["at"]
            return room

        def told_last_chat_ended(u):
            last = shown(u)
            return any(e["room"] == last for e in u.events["partner_left"])

        for u in users:
            room = s.client.hget(k("room"), u.user)
            if u.user in partners:  # chatting: the page shows that chat, not ended
                await wait_for(lambda u=u, room=room: shown(u) == room,
                               10, f"{u.name}'s page in {room}")
                assert not [e for e in u.events["partner_left"] if e["room"] == room]
            elif u.user not in waiting and u.events["matched"]:
                # idle: its page is told that its last chat ended (its events may still be on
                # their way when Redis has settled: `matched` of that chat, then `partner_left`)
                await wait_for(lambda u=u: told_last_chat_ended(u), 10,
                               f"{u.name} told that its last chat ended")
        return partners, waiting

    def settled():
        partners, waiting = state()
        return len(partners) + len(waiting) >= 1 and len(partners) + len(waiting) <= 3 and (
            len(waiting) < 2)  # the matcher has run: two waiting users would be paired

    await wait_for(settled, 20, "the matcher to pair whoever waits")
    partners, waiting = await check_consistent()
    idle = [by_id[x] for x in by_id if x not in partners and x not in waiting]
    for u in idle:
        await u.join()

    def final():
        partners, waiting = state()
        return len(partners) == 2 and len(waiting) == 1

    await wait_for(final, 20, "one pair and one waiting user")
    partners, waiting = await check_consistent()
    a, b = sorted(partners)
    ack = await by_id[a].send("after-race", "hi")
    assert ack["ok"], ack
    got = await by_id[b].next("message", where=lambda m: m["id"] == "after-race")
    assert got["room"] == s.client.hget(k("room"), a)
