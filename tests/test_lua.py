"""The Lua scripts, each driven through common.store.Store against a real Redis server.

No web workers, no matcher: the atomic steps themselves, with the state they leave in Redis (the
key layout of common/keys.py) and what they return. A user's presence is made to expire by
writing their `{chat}:alive` deadline in the past.
"""
from __future__ import annotations

import json
import time
import uuid

import pytest

from common import config
from common import events as ev
from common.keys import WORKER_CHANNEL_INFIX, Keys
from common.redisconn import connect, redis_client
from common.store import SENT_KEPT, SENT_TTL, MessageResult, Store
from procs import RedisServer

GRACE = 5  # RESUME_GRACE of these tests, seconds
TTL_MS = GRACE * 1000
K = Keys("chat")
WORKER = "w-test"  # the web worker the routes of the tests' users point at (see route())
CHANNEL = "{chat}:w:"  # + worker: a worker's channel (one Redis: one tag, the home one)


@pytest.fixture(scope="module")
def redis_server():
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def r(redis_server):
    redis_server.client.flushall()
    return redis_server.client


@pytest.fixture
def make_store(redis_server):
    """make_store(**env) -> a Store on the test Redis with these settings over the defaults."""

    def make(**env) -> Store:
        settings = lua_settings(redis_server, **env)
        return Store(redis_client(settings.redis_url), settings)

    return make


def lua_settings(redis_server, **env) -> config.Settings:
    return config.load({
        "APP_ENV": "development",
        "SECRET_KEY": "lua-test-secret-" + "s" * 40,
        "ADMIN_PASSWORD": "lua-test-admin",
        "REDIS_URL": redis_server.url,
        "RESUME_GRACE": str(GRACE),
        "INTEREST_WAIT": "600",
        **{k: str(v) for k, v in env.items()},
    })


@pytest.fixture
def store(make_store) -> Store:
    return make_store()


# -- helpers ------------------------------------------------------------------------------------
def now_ms(r) -> int:
    """Redis' own clock, the one the scripts read."""
    sec, usec = r.time()
    return int(sec) * 1000 + int(usec) // 1000


def expire(r, *users: str) -> None:
    """Make these users' presence deadline lie in the past."""
    past = now_ms(r) - 1000
    r.zadd(K.alive, {u: past for u in users})


def waited(r, user: str, ms: int) -> None:
    """Pretend `user` joined the wait list `ms` milliseconds ago."""
    r.zadd(K.queue, {user: now_ms(r) - ms}, xx=True)


def route(r, *users: str, worker: str = WORKER) -> None:
    """Give these users a connection on `worker` in their route (`where`), as connect.lua does,
    so that events for them are published, and the worker a heartbeat. A user who already has
    a route (a test's own connect) keeps just that one."""
    r.zadd(K.workers, {worker: now_ms(r) + 3600_000})
    for u in users:
        if not r.exists(K.where(u)):
            r.hset(K.where(u), "s-" + u, worker)


def enqueue(store: Store, r, *users: str, interests=None) -> None:
    """Join these users in this order (distinct enqueue times, oldest first), each routed."""
    route(r, *users)
    for i, u in enumerate(users):
        state, _ = store.join(u, interests)
        assert state == "waiting"
        waited(r, u, 100 * (len(users) - i))


def pair_up(store: Store, r, a: str, b: str) -> str:
    """a and b chatting through the real join + match scripts; returns the room."""
    enqueue(store, r, a, b)
    assert store.match() == 1
    room = r.hget(K.room, a)
    assert room and r.hget(K.room, b) == room and r.hget(K.partner, a) == b
    outbox(r)
    _seen.clear()  # the test looks at what comes after the pairing
    return room


def history(r, kind: str | None = None) -> list[dict]:
    return [f for _id, f in r.xrange(K.history) if kind is None or f["type"] == kind]


_seen: list[dict] = []  # every user-room emit published since the test began
_sub = {}


@pytest.fixture(autouse=True)
def _record_emits(redis_server, r):
    """Subscribe before the test acts, so that outbox() sees every emit its scripts publish."""
    _seen.clear()
    _sub["sub"] = subscribe(redis_server.client, CHANNEL + "*")
    yield
    _sub.pop("sub").close()


def outbox(r) -> list[dict]:
    """The events the scripts published to users so far, as {to, event, data}, in order."""
    for m in published(_sub["sub"]):
        if m.get("method") == "emit" and str(m.get("room", "")).startswith("u:"):
            _seen.append({"to": m["room"][2:], "event": m["event"], "data": m["data"][0]})
    return list(_seen)


def subscribe(client, pattern: str):
    """A pub/sub connection on the channels matching `pattern`, subscribed when this returns."""
    sub = client.pubsub()
    sub.psubscribe(pattern)
    confirm = sub.get_message(timeout=5)
    assert confirm is not None and confirm["type"] == "psubscribe", confirm
    return sub


def published(sub, channels: list | None = None) -> list[dict]:
    """What was published on `sub`'s channels until it has been quiet for 0.2 s, decoded; with
    `channels`, each message's channel is appended to it."""
    got = []
    while (m := sub.get_message(timeout=0.2)) is not None:
        got.append(json.loads(m["data"]))
        if channels is not None:
            channels.append(m["channel"])
    return got


@pytest.fixture
def emitted(redis_server, store):
    """emitted() -> the Socket.IO emits the scripts published since the test began, decoded."""
    sub = subscribe(redis_server.client, CHANNEL + "*")
    yield lambda: published(sub)
    sub.close()


def pairs(r) -> set[frozenset]:
    partner = r.hgetall(K.partner)
    for u, v in partner.items():
        assert u != v and partner.get(v) == u, partner
    return {frozenset((u, v)) for u, v in partner.items()}


# -- touch.lua ----------------------------------------------------------------------------------
def test_touch_keeps_users_alive_for_one_grace_and_counts_them(store, r):
    t0 = now_ms(r)
    assert store.touch(["u1", "u2"]) == 2
    t1 = now_ms(r)
    for u in ("u1", "u2"):
        assert t0 + TTL_MS <= r.zscore(K.alive, u) <= t1 + TTL_MS
    assert store.online() == 2
    assert store.touch([]) == 2
    assert store.touch(["u2", "u3"]) == 3


def test_online_leaves_out_expired_users_and_touch_brings_them_back(store, r):
    store.touch(["u1", "u2", "u3"])
    expire(r, "u2")
    assert store.online() == 2
    assert store.touch(["u1"]) == 2
    t0 = now_ms(r)
    assert store.touch(["u2"]) == 3
    assert r.zscore(K.alive, "u2") >= t0 + TTL_MS


# -- join.lua -----------------------------------------------------------------------------------
def test_join_queues_the_user_and_wakes_the_matcher(store, r):
    store.touch(["other"])
    t0 = now_ms(r)
    assert store.join("a", ["cats", "music"]) == ("waiting", 2)
    t1 = now_ms(r)
    assert t0 <= r.zscore(K.queue, "a") <= t1
    assert t0 + TTL_MS <= r.zscore(K.alive, "a") <= t1 + TTL_MS  # joining is a sign of life
    assert json.loads(r.hget(K.prefs, "a")) == ["cats", "music"]
    assert r.llen(K.wake) == 0  # alone in the queue: nobody to pair with, the matcher sleeps on
    assert store.join("other", None)[0] == "waiting"
    assert r.lrange(K.wake, 0, -1) == ["1"]  # two wait: the matcher wakes


def test_join_is_idempotent_and_keeps_the_first_enqueue_time(store, r):
    store.join("a", ["cats"])
    r.zadd(K.queue, {"a": 12345})  # joined long ago
    assert store.join("a", None)[0] == "waiting"
    assert r.zscore(K.queue, "a") == 12345
    assert json.loads(r.hget(K.prefs, "a")) == ["cats"]  # None keeps the last interests
    assert store.join("a", ["dogs"])[0] == "waiting"
    assert r.zscore(K.queue, "a") == 12345
    assert json.loads(r.hget(K.prefs, "a")) == ["dogs"]
    assert store.join("a", [])[0] == "waiting"
    assert json.loads(r.hget(K.prefs, "a")) == []
    assert r.zcard(K.queue) == 1
    assert r.llen(K.wake) == 0  # one user waits: no wake-up
    for _ in range(3):
        store.join("b", None)
    assert r.llen(K.wake) == 1  # the wake list never grows past one token


def test_join_refuses_a_user_who_is_chatting(store, r):
    pair_up(store, r, "a", "b")
    store.join("x", ["cats"])
    r.hset(K.prefs, "a", json.dumps(["before"]))
    assert store.join("a", ["after"]) == ("chatting", 0)
    assert r.zscore(K.queue, "a") is None
    assert json.loads(r.hget(K.prefs, "a")) == ["before"]
    assert r.hget(K.partner, "a") == "b"


# -- end_chat.lua -------------------------------------------------------------------------------
def test_end_chat_with_next_clears_both_sides_remembers_and_requeues(store, r):
    room = pair_up(store, r, "a", "b")
    store.message("a", "m1", "hello")
    store.join("w", None)  # someone waits: a's return to the queue wakes the matcher
    r.delete(K.wake)
    t0 = now_ms(r)
    assert store.end_chat("a", "next", True) == ("b", room)
    t1 = now_ms(r)
    for u in ("a", "b"):
        assert r.hget(K.partner, u) is None and r.hget(K.room, u) is None
    assert r.hgetall(K.last) == {"a": "b", "b": "a"}
    chat = r.hgetall(K.chat(room))  # closed in its shard, kept a while for late resends
    assert chat["closed"] and t0 <= int(chat["closed"]) <= t1 and r.ttl(K.chat(room)) <= SENT_TTL
    assert r.hgetall(K.closing) == {}  # the intent was carried out
    assert t0 <= r.zscore(K.queue, "a") <= t1
    assert r.zscore(K.queue, "b") is None  # the partner is idle, not requeued
    assert r.llen(K.wake) == 1
    closed = history(r, "closed")
    assert len(closed) == 1
    assert {k: closed[0][k] for k in ("room", "user", "reason")} == {
        "room": room, "user": "a", "reason": "next"}
    # a second end is harmless: nothing to end any more
    assert store.end_chat("a", "next", True) == ("", "")
    assert len(history(r, "closed")) == 1


def test_end_chat_with_leave_does_not_requeue(store, r):
    room = pair_up(store, r, "a", "b")
    assert store.end_chat("b", "left", False) == ("a", room)
    assert r.zcard(K.queue) == 0
    assert r.hlen(K.partner) == 0 and r.hlen(K.room) == 0
    assert r.hgetall(K.last) == {"a": "b", "b": "a"}
    assert [(h["user"], h["reason"]) for h in history(r, "closed")] == [("b", "left")]


def test_end_chat_of_a_waiting_or_idle_user(store, r):
    store.join("w", None)
    r.zadd(K.queue, {"w": 12345})
    # Next while waiting keeps the place on the wait list; Leave takes the user off it
    assert store.end_chat("w", "next", True) == ("", "")
    assert r.zscore(K.queue, "w") == 12345
    assert store.end_chat("w", "left", False) == ("", "")
    assert r.zscore(K.queue, "w") is None
    # an idle user who presses Next is put on the wait list
    assert store.end_chat("idle", "next", True) == ("", "")
    assert r.zscore(K.queue, "idle") is not None
    assert history(r) == [] and r.hlen(K.last) == 0


# -- message.lua --------------------------------------------------------------------------------
def test_message_is_numbered_per_room_across_both_directions(store, r):
    room1 = pair_up(store, r, "a", "b")
    room2 = pair_up(store, r, "c", "d")
    t0 = now_ms(r)
    m1 = store.message("a", "a1", "one")
    t1 = now_ms(r)
    assert (m1.status, m1.seq, m1.room) == ("ok", 1, room1)
    assert t0 <= m1.ts <= t1
    assert (store.message("b", "b1", "two").seq, store.message("c", "c1", "x").seq) == (2, 1)
    m3 = store.message("a", "a2", "three")
    assert (m3.status, m3.seq, m3.room) == ("ok", 3, room1)
    assert r.hget(K.chat(room1), "seq") == "3" and r.hget(K.chat(room2), "seq") == "1"
    msgs = [(h["room"], h["user"], h["id"], h["seq"], h["text"]) for h in history(r, "message")]
    assert msgs == [(room1, "a", "a1", "1", "one"), (room1, "b", "b1", "2", "two"),
                    (room2, "c", "c1", "1", "x"), (room1, "a", "a2", "3", "three")]


def test_message_is_emitted_to_the_partner_in_the_same_step(store, r, emitted):
    """What python-socketio's Redis manager would publish for emit(…, to=user_room(partner))."""
    room = pair_up(store, r, "a", "b")
    m = store.message("a", "a1", "h\u00e9llo \"/\\ \U0001f600")
    assert store.message("a", "a1", "resent").status == "dup"  # a dup emits nothing
    assert store.message("z", "z1", "alone").status == "not_chatting"
    assert [e for e in emitted() if e["event"] != "matched"] == [{
        "method": "emit", "event": "message", "namespace": "/", "room": "u:b",
        "data": [{"id": "a1", "room": room, "text": "h\u00e9llo \"/\\ \U0001f600",
                  "ts": m.ts, "seq": 1}],
    }]


def test_message_is_left_to_the_callers_worker_only_when_nothing_can_overtake_it(store, r, emitted):
    """`here`: the caller's worker delivers the message itself only when the partner's one
    route is that worker, the partner is the one it expected, and it has delivered everything
    published to them (`pub:<partner>` <= delivered); else it is published as always."""
    room = pair_up(store, r, "a", "b")
    me = store.s.worker_id
    r.hset(K.chat(room), "route:b", json.dumps([me]))
    emitted()  # drop the pairing's

    def send(i, here):
        m = store.message("a", f"a{i}", f"text {i}", room, here=here)
        assert (m.status, m.seq, m.partner) == ("ok", i, "b")
        return m.here, [e["data"][0]["seq"] for e in emitted() if e["event"] == "message"]

    assert send(1, ("b", 0)) == (True, [])  # left to the caller: nothing published
    assert send(2, None) == (False, [2])  # a caller that cannot: published, as before
    assert send(3, ("b", 1)) == (False, [3])  # 2 was published and not delivered yet
    assert send(4, ("b", 3)) == (True, [])  # everything published was delivered
    assert send(5, ("c", 3)) == (False, [5])  # not the partner it expected
    r.hset(K.chat(room), "route:b", json.dumps([me, "w9"]))  # b on two workers: both get it
    assert send(6, ("b", 5)) == (False, [6, 6])
    r.hset(K.chat(room), "route:b", json.dumps(["w9"]))
    assert send(7, ("b", 6)) == (False, [7])
    # stored and numbered the same either way: resume and history see every one
    assert [json.loads(x)["seq"] for x in r.lrange(K.sent(room), 0, -1)] == list(range(1, 8))
    assert [h["seq"] for h in history(r, "message")] == [str(i) for i in range(1, 8)]


def test_a_resent_id_is_a_dup_with_the_first_seq_and_ts(store, r):
    room = pair_up(store, r, "a", "b")
    first = store.message("a", "m1", "hello")
    assert first.status == "ok"
    again = store.message("a", "m1", "hello (resent)")
    assert (again.status, again.seq, again.ts, again.room) == ("dup", first.seq, first.ts,
                                                               first.room)
    assert len(history(r, "message")) == 1 and r.llen(K.sent(room)) == 1
    assert store.message("a", "m2", "next one").seq == 2  # the dup took no seq
    # ids are per user: the partner may use the same id
    assert store.message("b", "m1", "mine too").status == "ok"
    # a resend to the chat after it ended is still acknowledged with the first seq
    store.end_chat("a", "left", False)
    late = store.message("a", "m1", "hello", room)
    assert (late.status, late.seq, late.ts) == ("dup", first.seq, first.ts)
    assert store.message("a", "m9", "new", room) == MessageResult("not_chatting", 0, 0, "")


def test_message_without_a_partner_is_not_chatting_and_records_nothing(store, r):
    res = store.message("a", "m1", "anyone?")
    assert (res.status, res.seq, res.room) == ("not_chatting", 0, "")
    store.join("a", None)
    assert store.message("a", "m1", "anyone?").status == "not_chatting"
    assert history(r, "message") == []
    room = pair_up(store, r, "a", "b")
    assert store.message("c", "c1", "not mine", room).status == "not_chatting"  # not a member
    assert r.llen(K.sent(room)) == 0
    res = store.message("a", "m1", "now")  # the refused id was not used up
    assert (res.status, res.seq) == ("ok", 1)


def test_message_token_bucket_allows_the_burst_then_rate_limits(make_store, r):
    store = make_store(MESSAGE_BURST=3, MESSAGE_RATE=0.01)  # 1 token per 100 s: no refill here
    room = pair_up(store, r, "a", "b")
    assert [store.message("a", f"m{i}", "hi").status for i in range(3)] == ["ok"] * 3
    limited = store.message("a", "m3", "hi")
    assert (limited.status, limited.seq, limited.room) == ("rate_limited", 0, "")
    assert store.message("a", "m4", "hi").status == "rate_limited"
    assert r.hget(K.chat(room), "seq") == "3" and len(history(r, "message")) == 3
    # the partner has a bucket of their own
    assert store.message("b", "b0", "hi").status == "ok"
    # 200 s later the bucket holds 2 more tokens (rate 0.01/s)
    r.hset(K.chat(room), "ts:a", str(now_ms(r) - 200_000))
    again = store.message("a", "m3", "hi")  # the refused id is not a dup
    assert (again.status, again.seq) == ("ok", 5)
    assert store.message("a", "m5", "hi").status == "ok"
    assert store.message("a", "m6", "hi").status == "rate_limited"


def test_the_dedupe_table_of_a_long_chat_stays_bounded_and_still_knows_recent_ids(make_store, r):
    store = make_store(MESSAGE_BURST=10_000, MESSAGE_RATE=10_000)
    room = pair_up(store, r, "a", "b")
    n = 2 * SENT_KEPT + 50
    first = [store.message("a", f"a{i}", "x") for i in range(n)]
    assert r.hlen(K.dedupe(room, "a")) <= 2 * SENT_KEPT  # not one entry per message sent
    recent = store.message("a", f"a{n - 1}", "resent")  # a recent id is still a dup
    assert (recent.status, recent.seq) == ("dup", first[-1].seq)
    assert r.llen(K.sent(room)) == SENT_KEPT


def test_sent_messages_are_kept_for_resume_bounded_and_expiring(make_store, r, emitted):
    store = make_store(MESSAGE_BURST=1000, MESSAGE_RATE=1000)
    room = pair_up(store, r, "a", "b")
    n = SENT_KEPT + 5
    for i in range(n):
        assert store.message("a", f"a{i}", f"text {i}").status == "ok"
    kept = [json.loads(x) for x in r.lrange(K.sent(room), 0, -1)]
    assert len(kept) == SENT_KEPT
    assert [m["seq"] for m in kept] == list(range(n - SENT_KEPT + 1, n + 1))
    last = kept[-1]
    assert (last["id"], last["text"], last["from"], last["seq"]) == (
        f"a{n - 1}", f"text {n - 1}", "a", n)
    b1 = store.message("b", "b1", "reply")
    for key in (K.sent(room), K.dedupe(room, "a"), K.dedupe(room, "b")):
        assert 0 < r.ttl(key) <= SENT_TTL
    # what a resuming user gets: the room's messages after `since`, both directions, in order
    assert store.resume("b", n - 1, "sid-b") == "chatting"
    state = resumed_to(emitted(), "sid-b")
    assert state["state"] == "chatting" and state["room"] == room
    assert [(m["id"], m["seq"], m["mine"]) for m in state["history"]] == [
        (f"a{n - 1}", n, False), ("b1", b1.seq, True)]


# -- resume.lua ---------------------------------------------------------------------------------
def resumed_to(events: list[dict], sid: str) -> dict:
    """The one `resumed` emitted to connection `sid` among `events`."""
    found = [e["data"] for e in events if e["event"] == "resumed" and e["room"] == sid]
    assert len(found) == 1 and len(found[0]) == 1, found
    return found[0][0]


def test_resume_emits_each_state_to_the_connection_only(store, r, emitted):
    store.join("w", None)
    assert store.resume("w", 0, "sid-w") == "waiting"
    assert store.resume("nobody", 0, "sid-n") == "idle"
    room = pair_up(store, r, "a", "b")
    assert store.resume("a", 0, "sid-a") == "chatting"
    events = emitted()
    waiting, idle = resumed_to(events, "sid-w"), resumed_to(events, "sid-n")
    assert (waiting["state"], idle["state"]) == ("waiting", "idle")
    matched_at = [e["data"][0]["at"] for e in events if e["event"] == "matched"]
    # stamped by the home slot's clock, like `matched`: a client can tell which came first
    assert waiting["at"] <= idle["at"] <= matched_at[0] == matched_at[1]
    # no messages and no shared interests: empty lists, not the empty objects cjson would make
    assert resumed_to(events, "sid-a") == {"state": "chatting", "room": room, "interests": [],
                                           "kind": "random", "partner_away": False,
                                           "history": []}
    assert {e["namespace"] for e in events} == {"/"}


def test_resume_carries_the_shared_interests_and_skips_other_rooms(store, r, emitted):
    enqueue(store, r, "a", "b", interests=["chess", "go"])
    assert store.match() == 1
    old_room = r.hget(K.room, "a")
    store.message("a", "a1", "in the first room")
    store.end_chat("a", "next", True)
    enqueue(store, r, "c", interests=["chess"])  # a is waiting again; b was a's last partner
    assert store.match() == 1
    room = r.hget(K.room, "a")
    assert room != old_room and r.hget(K.partner, "a") == "c"
    store.message("c", "c1", "in the second room")
    assert store.resume("a", 0, "sid") == "chatting"
    state = resumed_to(emitted(), "sid")
    assert state["room"] == room and state["interests"] == ["chess"]
    assert [m["id"] for m in state["history"]] == ["c1"]


def test_a_snapshot_of_a_chat_not_open_or_already_closed_tells_nothing(store, r, emitted):
    room = pair_up(store, r, "a", "b")
    k = store.k
    args = ["a", 0, "sid", WORKER]
    assert store._run("snapshot", [k.chat("nope"), k.sent("nope")], [*args, "nope"]) == "missing"
    store.end_chat("b", "left", False)
    assert store._run("snapshot", [k.chat(room), k.sent(room)], [*args, room]) == "closed"
    assert [e for e in emitted() if e["event"] == "resumed"] == []  # nothing was told


# -- the two halves: intents left by a process killed between them -------------------------------
def half_match(store: Store, r, a: str, b: str) -> str:
    """match.lua alone, as a matcher killed -9 before open.lua leaves it; the room."""
    k = store.k
    enqueue(store, r, a, b)
    made = store._run("match", [k.queue, k.prefs, k.partner, k.room, k.last, k.alive, k.workers,
                                k.opening], [600_000, 10, "room-x"])
    assert made[0] == "room-x" and r.hget(k.opening, "room-x") == made[1]
    assert not r.exists(k.chat("room-x"))
    return "room-x"


def test_a_resume_opens_a_room_its_matcher_left_unopened(store, r, emitted):
    room = half_match(store, r, "a", "b")
    assert store.resume("a", 0, "sid-a") == "chatting"
    got = emitted()
    assert resumed_to(got, "sid-a")["room"] == room
    # the room was opened from the intent: both were told `matched`, once
    assert [(e["room"], e["data"][0]["room"]) for e in got if e["event"] == "matched"] == [
        ("u:a", room), ("u:b", room)]
    assert r.hgetall(K.opening) == {} and len(history(r, "opened")) == 1
    assert store.message("b", "b1", "hi").status == "ok"
    # the matcher's own open, had it lived, would change nothing
    assert store.open_room(room, json.dumps({"a": "a", "b": "b", "interests": [], "at": 1,
                                             "ra": [], "rb": []})) is False
    assert [e for e in emitted() if e["event"] == "matched"] == []


def test_stale_intents_are_carried_out_by_whoever_finds_them(store, r, emitted):
    opened = half_match(store, r, "a", "b")
    assert store.finish_pending() == 0  # fresh: its own process may still be at it
    intent = json.loads(r.hget(K.opening, opened))
    r.hset(K.opening, opened, json.dumps({**intent, "at": intent["at"] - 60_000}))  # long ago
    assert store.finish_pending() == 1
    assert store.message("a", "a1", "hi").status == "ok"
    # a Next whose worker was killed -9 after end_chat.lua, before close.lua
    k = store.k
    partner, room, intent = store._run("end_chat", [k.partner, k.room, k.last, k.queue, k.wake,
                                                    k.closing, k.hosts], ["a", "next", "1"])
    assert (partner, room) == ("b", opened) and r.hget(k.closing, room) == intent
    assert store.message("b", "b1", "still open in its shard?", room).status == "ok"
    assert store.finish_pending(older_than_ms=0) == 1
    assert store.message("b", "b2", "now?", room).status == "not_chatting"
    left = [e for e in emitted() if e["event"] == "partner_left"]
    assert [(e["room"], e["data"][0]) for e in left] == [("u:b", {"reason": "next", "room": room})]
    assert r.hgetall(K.closing) == {} and len(history(r, "closed")) == 1


def test_a_chat_ended_before_its_room_was_opened_is_opened_then_closed_in_order(store, r, emitted):
    """A leave between the home slot's pairing and open.lua (a private join's or the matcher's
    second half still to come): close.lua finds no room and leaves the end there; open.lua then
    opens and closes it in one step, so the partner hears `matched` and then `partner_left`
    instead of a `matched` nobody ever ends."""
    room = half_match(store, r, "a", "b")
    intent = r.hget(K.opening, room)
    assert store.end_chat("a", "left", False) == ("b", room)
    assert [e for e in emitted() if e["event"] in ("matched", "partner_left")] == []
    assert store.open_room(room, intent) is True
    told = [(e["event"], e["room"], e["data"][0]) for e in emitted()
            if e["event"] in ("matched", "partner_left")]
    assert [(event, to) for event, to, _ in told] == [
        ("matched", "u:a"), ("matched", "u:b"), ("partner_left", "u:b")]
    assert told[2][2] == {"reason": "left", "room": room}
    assert store.message("b", "b1", "anyone?", room).status == "not_chatting"
    assert store.open_room(room, intent) is False  # once only
    assert store.close_room(room, json.dumps({"user": "a", "reason": "left", "at": 1})) is False
    assert [e for e in emitted() if e["event"] in ("matched", "partner_left")] == []
    assert len(history(r, "opened")) == 1 and len(history(r, "closed")) == 1
    assert 0 < r.ttl(K.chat(room)) <= SENT_TTL


# -- typing.lua ---------------------------------------------------------------------------------
def test_typing_goes_to_the_partner_with_the_room_and_not_without_a_chat(store, r, emitted):
    room = pair_up(store, r, "a", "b")
    assert store.typing("a", True) is True
    assert store.typing("b", False) is True
    assert store.typing("idle", True) is False
    store.end_chat("a", "left", False)
    assert store.typing("a", True) is False and store.typing("b", True) is False
    assert [(e["event"], e["room"], e["data"]) for e in emitted() if e["event"] == "typing"] == [
        ("typing", "u:b", [{"typing": True, "room": room}]),
        ("typing", "u:a", [{"typing": False, "room": room}]),
    ]


# -- directed delivery (lib/emit.lua) ------------------------------------------------------------
def test_each_event_goes_only_to_the_workers_holding_its_users_connections(store, r):
    store.touch([], "w1")
    store.touch([], "w2")
    store.connect("a", "sa", "w1")
    store.connect("b", "sb", "w2")
    sub = subscribe(r, CHANNEL + "*")
    enqueue(store, r, "a", "b")
    assert store.match() == 1
    store.message("a", "a1", "hi")
    store.typing("b", True)
    channels: list[str] = []
    got = [(e["event"], e["room"]) for e in published(sub, channels)]
    assert list(zip(got, channels)) == [
        (("matched", "u:a"), CHANNEL + "w1"), (("matched", "u:b"), CHANNEL + "w2"),
        (("message", "u:b"), CHANNEL + "w2"), (("typing", "u:a"), CHANNEL + "w1")]
    sub.close()


def test_a_user_without_a_connection_is_sent_nothing_and_one_on_two_workers_both(store, r):
    store.touch([], "w1")
    store.touch([], "w2")
    r.hset(K.where("a"), mapping={"old": "w1", "new": "w2"})  # a moment of a resume
    store.join("a", None)
    store.join("b", None)  # b has no connection at all
    sub = subscribe(r, CHANNEL + "*")
    assert store.match() == 1
    channels: list[str] = []
    got = [(e["event"], e["room"]) for e in published(sub, channels)]
    assert got == [("matched", "u:a"), ("matched", "u:a")]  # on both of a's workers
    assert sorted(channels) == [CHANNEL + "w1", CHANNEL + "w2"]
    store.message("a", "a1", "to nobody")
    assert published(sub) == []
    assert store.resume("b", 0, "sb") == "chatting"  # b comes back: the message is in it
    assert [m["id"] for m in resumed_to(published(sub), "sb")["history"]] == ["a1"]
    store.message("a", "a2", "to b's new route")
    channels.clear()
    assert [e["room"] for e in published(sub, channels)] == ["u:b"]
    assert channels == [CHANNEL + store.s.worker_id]  # the worker that resumed b
    sub.close()


def test_a_takeover_closes_the_old_connection_on_its_own_worker(store, r):
    store.touch([], "w1")
    store.touch([], "w2")
    store.connect("a", "old", "w1")
    sub = subscribe(r, CHANNEL + "*")
    store.connect("a", "new", "w2")
    channels: list[str] = []
    got = published(sub, channels)
    assert [(m.get("event"), m.get("room") or m.get("sid")) for m in got] == [
        ("error", "old"), (None, "old")]
    assert channels == [CHANNEL + "w1"] * 2
    sub.close()


def test_the_heartbeat_keeps_a_long_open_connections_route(store, r):
    store.connect("a", "sa", "w1")
    r.expire(K.where("a"), 5)
    store.touch(["a"], "w1")
    assert r.ttl(K.where("a")) > 3600


# -- match.lua ----------------------------------------------------------------------------------
def test_match_pairs_two_waiting_users_and_queues_their_matched_events(store, r):
    enqueue(store, r, "a", "b")
    assert store.match() == 1
    assert pairs(r) == {frozenset("ab")}
    room = r.hget(K.room, "a")
    assert r.hget(K.room, "b") == room and len(room) == 32
    assert r.zcard(K.queue) == 0
    chat = r.hgetall(K.chat(room))  # opened in its shard, with each user's route
    assert (chat["a"], chat["b"], chat["seq"], chat["interests"]) == ("a", "b", "0", "[]")
    assert int(chat["opened"]) > 0 and chat["route:a"] == chat["route:b"] == json.dumps([WORKER])
    assert r.hgetall(K.opening) == {}
    at = json.loads(chat["opened"])
    assert outbox(r) == [
        {"to": "a", "event": "matched",
         "data": {"room": room, "interests": [], "kind": "random", "at": at}},
        {"to": "b", "event": "matched",
         "data": {"room": room, "interests": [], "kind": "random", "at": at}},
    ]
    opened = history(r, "opened")
    assert [(h["room"], {h["user1"], h["user2"]}) for h in opened] == [(room, {"a", "b"})]
    assert store.match() == 0  # nobody left to pair
    assert len(outbox(r)) == 2


def test_match_never_pairs_a_user_with_themself(store, r):
    store.join("a", None)
    store.join("a", None)
    assert store.match() == 0
    assert r.zscore(K.queue, "a") is not None  # still waiting
    assert r.hlen(K.partner) == 0 and outbox(r) == []


def test_match_drops_expired_and_already_partnered_users_from_the_queue(store, r):
    enqueue(store, r, "a", "gone", "busy")
    r.zadd(K.queue, {"ghost": 1})  # on the wait list without any presence
    expire(r, "gone")
    r.hset(K.partner, mapping={"busy": "x", "x": "busy"})
    assert store.match() == 0
    assert r.zrange(K.queue, 0, -1) == ["a"]
    assert r.hgetall(K.partner) == {"busy": "x", "x": "busy"} and outbox(r) == []
    store.join("d", None)
    assert store.match() == 1
    assert pairs(r) == {frozenset(("busy", "x")), frozenset("ad")}


def test_shared_interests_are_matched_first_with_the_common_ones(store, r):
    route(r, "a", "b", "c")
    store.join("a", ["music", "cats"])
    store.join("b", ["hiking"])
    store.join("c", ["cats", "chess"])
    for u, ms in (("a", 300), ("b", 200), ("c", 100)):
        waited(r, u, ms)
    assert store.match() == 1
    assert pairs(r) == {frozenset("ac")}
    assert r.zrange(K.queue, 0, -1) == ["b"]
    room = r.hget(K.room, "a")
    assert [(e["to"], e["data"]["room"], e["data"]["interests"]) for e in outbox(r)] == [
        ("a", room, ["cats"]), ("c", room, ["cats"])]
    assert json.loads(r.hget(K.chat(room), "interests")) == ["cats"]


def test_users_without_a_shared_interest_are_paired_only_after_the_interest_wait(store, r):
    store.join("a", ["chess"])
    store.join("b", ["surfing"])
    store.join("c", None)  # no interests: ready at once, but so must be the other one
    assert store.match() == 0
    assert r.zcard(K.queue) == 3
    waited(r, "a", 601_000)  # INTEREST_WAIT is 600 s here
    assert store.match() == 1
    assert pairs(r) == {frozenset("ac")}
    waited(r, "b", 601_000)
    store.join("d", None)
    assert store.match() == 1
    assert frozenset("bd") in pairs(r)
    assert all(e["data"]["interests"] == [] for e in outbox(r))


def test_with_no_interest_wait_different_interests_pair_at_once(make_store, r):
    store = make_store(INTEREST_WAIT=0)
    store.join("a", ["chess"])
    store.join("b", ["surfing"])
    assert store.match() == 1
    assert pairs(r) == {frozenset("ab")}


def test_the_last_partner_is_avoided_when_someone_else_waits(store, r):
    enqueue(store, r, "A", "B", "C")
    r.hset(K.last, "A", "B")
    assert store.match() == 1
    assert pairs(r) == {frozenset("AC")}
    assert r.zrange(K.queue, 0, -1) == ["B"]


def test_the_last_partner_is_avoided_even_with_a_shared_interest(store, r):
    store.join("A", ["cats"])
    store.join("B", ["cats"])
    store.join("C", ["cats"])
    for u, ms in (("A", 300), ("B", 200), ("C", 100)):
        waited(r, u, ms)
    r.hset(K.last, mapping={"A": "B", "B": "A"})
    assert store.match() == 1
    assert pairs(r) == {frozenset("AC")}


def test_the_last_partner_is_not_taken_again_while_someone_else_waits_to_be_ready(store, r):
    store.join("A", ["cats"])
    store.join("B", ["cats"])
    store.join("C", ["dogs"])  # shares nothing: ready only after the interest wait
    for u, ms in (("A", 300), ("B", 200), ("C", 100)):
        waited(r, u, ms)
    r.hset(K.last, mapping={"A": "B", "B": "A"})
    assert store.match() == 0
    assert r.zcard(K.queue) == 3
    for u, ms in (("A", 601_300), ("B", 601_200), ("C", 601_100)):
        waited(r, u, ms)
    assert store.match() == 1
    assert pairs(r) == {frozenset("AC")}


def test_last_partners_may_be_paired_again_when_only_they_wait(store, r):
    enqueue(store, r, "A", "B")
    r.hset(K.last, mapping={"A": "B", "B": "A"})
    assert store.match() == 1
    assert pairs(r) == {frozenset("AB")}
    # the same with a shared interest, which is then reported
    r.flushall()
    outbox(r)
    _seen.clear()
    route(r, "A", "B")
    store.join("A", ["cats"])
    store.join("B", ["cats", "dogs"])
    r.hset(K.last, mapping={"A": "B", "B": "A"})
    assert store.match() == 1
    assert [e["data"]["interests"] for e in outbox(r)] == [["cats"], ["cats"]]


def test_a_crowd_is_paired_once_each_within_the_batch_size(make_store, r):
    store = make_store(MATCH_BATCH=4)
    users = [f"u{i:02d}" for i in range(11)]
    enqueue(store, r, *users)
    made = []
    while (n := store.match()) > 0:
        assert n <= 2  # MATCH_BATCH=4 users per call
        made.append(n)
    assert sum(made) == 5
    got = pairs(r)
    assert len(got) == 5 and len(set().union(*got)) == 10
    assert r.zcard(K.queue) == 1
    events = outbox(r)
    assert len(events) == 10 and {e["to"] for e in events} == set().union(*got)
    rooms = [e["data"]["room"] for e in events]
    assert len(set(rooms)) == 5 and all(rooms.count(x) == 2 for x in rooms)
    for e in events:
        assert r.hget(K.room, e["to"]) == e["data"]["room"]


# -- reap.lua -----------------------------------------------------------------------------------
def test_reap_ends_the_chat_of_a_user_gone_past_the_grace(store, r):
    room = pair_up(store, r, "a", "b")
    store.message("a", "m1", "hello")
    r.hset(K.last, "a", "someone-before")
    expire(r, "a")
    assert store.reap() == 1
    assert r.zscore(K.alive, "a") is None and r.zscore(K.alive, "b") is not None
    assert r.hlen(K.partner) == 0 and r.hlen(K.room) == 0
    assert r.hgetall(K.last) == {"b": "a"}
    assert r.hget(K.chat(room), "closed") and r.hgetall(K.closing) == {}
    left = {"event": "partner_left", "data": {"reason": "disconnected", "room": room}}
    assert [e for e in outbox(r) if e["event"] != "message"] == [{"to": "b", **left},
                                                                  {"to": "a", **left}]
    closed = history(r, "closed")
    assert [(h["room"], h["user"], h["reason"]) for h in closed] == [(room, "a", "disconnected")]
    assert r.zcard(K.queue) == 0
    assert store.message("b", "m2", "still there?").status == "not_chatting"
    assert store.reap() == 0


def test_reap_takes_expired_users_off_the_wait_list_and_spares_the_living(store, r):
    store.join("gone", ["cats"])
    store.join("here", ["cats"])
    expire(r, "gone")
    assert store.reap() == 1
    assert r.zrange(K.queue, 0, -1) == ["here"]
    assert r.hget(K.prefs, "gone") is None and r.hget(K.prefs, "here") is not None
    assert outbox(r) == []
    assert store.reap() == 0


def test_reap_does_at_most_limit_users_per_call(store, r):
    store.touch(["a", "b", "c", "alive"])
    expire(r, "a", "b", "c")
    assert store.reap(limit=2) == 2
    assert store.reap(limit=2) == 1
    assert store.reap(limit=2) == 0
    assert r.zrange(K.alive, 0, -1) == ["alive"]


# -- connect.lua / disconnect.lua ---------------------------------------------------------------
def test_a_waiting_user_whose_last_connection_closes_leaves_the_queue_and_comes_back(store, r):
    store.connect("a", "sa", "w1")
    store.connect("b", "sb", "w1")
    enqueue(store, r, "a")
    first = r.zscore(K.queue, "a")
    assert store.online() == 2
    assert store.disconnect("a", "sa") == "away"
    assert r.zscore(K.queue, "a") is None and store.online() == 1  # a closed tab is not online
    store.join("b", None)
    assert store.match() == 0  # nobody to pair b with: a is gone
    assert store.connect("a", "sa2", "w2") == (2, 0)
    assert r.zscore(K.queue, "a") == first  # back in line with their first waiting time
    assert store.match() == 1 and pairs(r) == {frozenset("ab")}


def test_partner_away_at_once_and_back_on_return_only_for_the_last_connection(store, r):
    store.connect("a", "sa", "w1")
    store.connect("b", "sb", "w1")
    room = pair_up(store, r, "a", "b")
    assert store.disconnect("a", "sa") == "away"
    assert outbox(r) == [{"to": "b", "event": "partner_away", "data": {"room": room}}]
    assert store.connect("a", "sa2", "w2")[1] == 0
    assert outbox(r)[1:] == [{"to": "b", "event": "partner_back", "data": {"room": room}}]
    assert store.disconnect("a", "unknown-sid") == "here"  # a stale sid: a is still connected
    assert store.disconnect("a", "sa2", draining=True) == "draining"  # resuming elsewhere
    assert len(outbox(r)) == 2 and r.zscore(K.away, "a") is None
    assert r.hget(K.partner, "a") == "b"


def test_a_second_connection_with_the_same_user_replaces_the_first(store, r, emitted):
    store.touch([], "w1")
    assert store.connect("a", "old", "w1") == (1, 0)
    assert store.connect("a", "new", "w2") == (1, 1)
    assert r.hgetall(K.where("a")) == {"new": "w2"}
    got = [e for e in emitted() if e.get("room") == "old" or e.get("sid") == "old"]
    assert got[0]["event"] == "error" and got[0]["data"][0]["code"] == "replaced"
    assert got[1] == {"method": "disconnect", "sid": "old", "namespace": "/"}
    # the replaced connection's own disconnect afterwards changes nothing
    assert store.disconnect("a", "old") == "here"


def test_connections_on_a_dead_worker_do_not_count(store, r):
    store.connect("a", "s1", "dead")
    r.zadd(K.workers, {"dead": now_ms(r) - 1})  # its heartbeat stopped
    assert store.connect("a", "s2", "w2") == (1, 0)  # nothing live to replace
    assert r.hgetall(K.where("a")) == {"s2": "w2"}


def test_end_chat_tells_the_partner_with_the_reason_and_room(store, r):
    room = pair_up(store, r, "a", "b")
    assert store.end_chat("a", "next", True) == ("b", room)
    assert outbox(r) == [{"to": "b", "event": "partner_left",
                          "data": {"reason": "next", "room": room}}]
    assert store.end_chat("a", "left", False) == ("", "")
    assert len(outbox(r)) == 1


def test_a_chatting_snapshot_says_whether_the_partner_is_away(store, r, emitted):
    store.connect("a", "sa", "w1")
    store.connect("b", "sb", "w1")
    room = pair_up(store, r, "a", "b")
    store.resume("b", 0, "sb")
    store.disconnect("a", "sa")
    store.resume("b", 0, "sb2")
    snaps = [e["data"][0] for e in emitted() if e["event"] == "resumed"]
    assert [(s["room"], s["partner_away"]) for s in snaps] == [(room, False), (room, True)]


def test_the_heartbeat_keeps_its_worker_alive_and_forgets_long_dead_ones(store, r):
    r.zadd(K.workers, {"gone-long-ago": now_ms(r) - 2 * 3600 * 1000, "gone-just-now": 1e15})
    r.zadd(K.workers, {"gone-just-now": now_ms(r) - 1000})
    store.touch([], "w1")
    left = r.zrange(K.workers, 0, -1, withscores=True)
    assert [w for w, _ in left] == ["gone-just-now", "w1"]
    assert left[1][1] > now_ms(r)  # w1 alive for one grace


def test_a_drained_waiting_user_is_parked_silently_and_back_in_line_on_return(store, r):
    store.connect("a", "sa", "w1")
    enqueue(store, r, "a")
    first = r.zscore(K.queue, "a")
    assert store.disconnect("a", "sa", draining=True) == "draining"
    assert r.zscore(K.queue, "a") is None and r.zscore(K.away, "a") is None
    store.connect("a", "sa2", "w2")
    assert r.zscore(K.queue, "a") == first


def test_online_leaves_out_away_users_only_while_their_grace_lasts(store, r):
    store.connect("a", "sa", "w1")
    store.connect("b", "sb", "w1")
    assert store.disconnect("a", "sa") == "away"
    assert store.online() == 1
    past = now_ms(r) - 1000
    r.zadd(K.alive, {"a": past})
    r.zadd(K.away, {"a": past})  # their grace is over; the reaper has not come yet
    assert store.online() == 1  # b: a is neither counted nor subtracted twice


# -- each script once on one Redis and once on the Redis Cluster --------------------------------
# The tests above drive one Redis, where every key has the home tag. These run each script on
# both, so a script is also checked where its keys are of a chat shard on another node and its
# events leave by SPUBLISH on that shard's channel.
class Backend:
    """A Store on one Redis or the cluster (a key prefix of its own), and its worker channels."""

    def __init__(self, kind: str, redis_server, request):
        self.cluster = kind == "cluster"
        env = {"WORKER_ID": WORKER}  # resumes emit to the caller's worker
        if self.cluster:
            env.update(REDIS_CLUSTER_URL=request.getfixturevalue("redis_cluster").url,
                       REDIS_PREFIX="lua" + uuid.uuid4().hex[:8])
        settings = lua_settings(redis_server, **env)
        self.store = Store(connect(settings), settings)
        self.k, self.r = self.store.k, self.store.r
        self._subs = []

    def listen(self, room: str | None = None):
        """A subscriber to WORKER's channel of the home tag, or of `room`'s shard; take(n)."""
        tag = self.k.home if room is None else self.k.room_tag(room)
        channel = tag + WORKER_CHANNEL_INFIX + WORKER
        sub = self.r.pubsub()
        if self.cluster:
            sub.ssubscribe(channel)
            read = sub.get_sharded_message
        else:
            sub.subscribe(channel)
            read = sub.get_message
        self._subs.append(sub)
        confirm = read(timeout=5)
        assert confirm is not None and confirm["type"] in ("subscribe", "ssubscribe"), confirm

        def take(n: int, timeout: float = 5) -> list[dict]:
            """The next n messages, decoded: {to, event, data} for an emit, else as published."""
            got, deadline = [], time.monotonic() + timeout
            while len(got) < n and time.monotonic() < deadline:
                m = read(timeout=0.1)
                if m and m["type"] in ("message", "smessage"):
                    body = json.loads(m["data"])
                    if body.get("method") == "emit":
                        to = body["room"]
                        body = {"to": to.removeprefix("u:"),
                                "event": body["event"], "data": body["data"][0]}
                    got.append(body)
            assert len(got) == n, f"{got} of {n} on {channel}"
            return got

        return take

    def close(self):
        for sub in self._subs:
            sub.close()
        if self.cluster:
            for key in self.r.scan_iter(match="{" + self.k.prefix + "*"):
                self.r.delete(key)
        self.r.close()

    def now(self) -> int:
        sec, usec = self.r.time()
        return int(sec) * 1000 + int(usec) // 1000

    def connected(self, *users: str) -> None:
        """Each user with one connection `s-<user>` on WORKER (connect.lua)."""
        for u in users:
            self.store.connect(u, "s-" + u, WORKER)

    def paired(self, a: str = "a", b: str = "b") -> str:
        """a and b connected, chatting (join, match, open); their room."""
        self.connected(a, b)
        self.store.join(a, None)
        self.store.join(b, None)
        assert self.store.match() == 1
        room = self.r.hget(self.k.room, a)
        assert room and self.r.hget(self.k.room, b) == room
        return room


@pytest.fixture(params=["redis", "cluster"])
def on(request, redis_server):
    backend = Backend(request.param, redis_server, request)
    yield backend
    backend.close()


def test_touch_script(on):
    assert on.store.touch(["a", "b"], WORKER) == 2
    now = on.now()
    assert now < on.r.zscore(on.k.alive, "a") <= now + TTL_MS
    assert on.r.zscore(on.k.workers, WORKER) > now
    assert on.store.online() == 2


def test_connect_script(on):
    assert on.store.connect("a", "s1", WORKER) == (1, 0)
    told = on.listen()
    assert on.store.connect("a", "s2", WORKER) == (1, 1)  # takes over s1
    assert told(2) == [{"to": "s1", "event": "error", "data": ev.error("replaced")},
                       {"method": "disconnect", "sid": "s1", "namespace": "/"}]
    assert on.r.hgetall(on.k.where("a")) == {"s2": WORKER}


def test_disconnect_script(on):
    on.connected("a")
    on.store.join("a", None)
    assert on.store.disconnect("a", "s-a") == "away"
    assert on.r.zscore(on.k.queue, "a") is None and on.r.hexists(on.k.parked, "a")
    assert on.r.zscore(on.k.away, "a") is not None and on.store.online() == 0


def test_join_script(on):
    on.connected("a")
    assert on.store.join("a", ["music"]) == ("waiting", 1)
    assert on.r.zscore(on.k.queue, "a") is not None
    assert json.loads(on.r.hget(on.k.prefs, "a")) == ["music"]
    assert on.r.llen(on.k.wake) == 0  # alone: nobody to pair with yet
    on.connected("b")
    on.store.join("b", None)
    assert on.r.lrange(on.k.wake, 0, -1) == ["1"]


def test_match_script(on):
    room = on.paired("a", "b")
    assert on.r.hgetall(on.k.partner) == {"a": "b", "b": "a"}
    assert on.r.zcard(on.k.queue) == 0 and on.r.hlen(on.k.opening) == 0  # opened at once
    assert {on.r.hget(on.k.chat(room), x) for x in ("a", "b")} == {"a", "b"}


def test_open_script(on):
    room = uuid.uuid4().hex
    intent = json.dumps({"a": "a", "b": "b", "interests": ["music"], "at": 1234,
                         "ra": [WORKER], "rb": []})
    told = on.listen(room)
    assert on.store.open_room(room, intent) is True
    assert on.store.open_room(room, intent) is False  # idempotent
    assert told(1) == [{"to": "a", "event": "matched",
                        "data": {"room": room, "interests": ["music"], "kind": "random",
                                 "at": 1234}}]
    chat = on.r.hgetall(on.k.chat(room))
    assert (chat["a"], chat["b"], chat["seq"], chat["opened"]) == ("a", "b", "0", "1234")
    assert chat["route:a"] == json.dumps([WORKER]) and chat["route:b"] == "[]"
    (opened,) = [f for _, f in on.r.xrange(on.k.history_of(on.k.room_tag(room)))]
    assert opened == {"type": "opened", "room": room, "user1": "a", "user2": "b",
                      "interests": '["music"]', "kind": "random", "ts": "1234", "who1": "|",
                      "who2": "|"}


def test_message_script(on):
    room = on.paired()
    told = on.listen(room)
    sent = on.store.message("a", "m1", "hello", room)
    assert (sent.status, sent.seq, sent.room) == ("ok", 1, room)
    assert on.store.message("a", "m1", "hello", room) == MessageResult("dup", 1, sent.ts, room)
    assert on.store.message("b", "m2", "hi", room).seq == 2
    assert told(1) == [{"to": "b", "event": "message",
                        "data": {"id": "m1", "room": room, "text": "hello", "ts": sent.ts,
                                 "seq": 1}}]
    kinds = [f["type"] for _, f in on.r.xrange(on.k.history_of(on.k.room_tag(room)))]
    assert kinds == ["opened", "message", "message"]


def test_typing_script(on):
    room = on.paired()
    told = on.listen(room)
    assert on.store.typing("a", True, room) is True
    assert told(1) == [{"to": "b", "event": "typing", "data": {"typing": True, "room": room}}]
    assert on.store.typing("c", True, room) is False


def test_tell_script(on):
    room = on.paired()
    told = on.listen(room)
    assert on.store.disconnect("b", "s-b") == "away"  # tells a in the shard (tell.lua)
    on.connected("b")
    assert told(2) == [{"to": "a", "event": "partner_away", "data": {"room": room}},
                       {"to": "a", "event": "partner_back", "data": {"room": room}}]
    assert not on.r.hexists(on.k.chat(room), "away:b")


def test_end_chat_script(on):
    room = on.paired()
    assert on.r.hset(on.k.closing, "other-room", "{}") == 1  # not this user's: left alone
    # the home slot's half alone (Store.end_chat closes the shard next: test_close_script)
    partner, ended, intent = on.store._run(
        "end_chat",
        [on.k.partner, on.k.room, on.k.last, on.k.queue, on.k.wake, on.k.closing, on.k.hosts],
        ["a", "next", "1"])
    assert (partner, ended) == ("b", room) and on.r.hget(on.k.closing, room) == intent
    assert json.loads(intent)["reason"] == "next" and on.r.hget(on.k.closing, "other-room") == "{}"
    assert on.r.hlen(on.k.partner) == 0 and on.r.hget(on.k.last, "b") == "a"
    assert on.r.zscore(on.k.queue, "a") is not None and on.r.zscore(on.k.queue, "b") is None


def test_close_script(on):
    room = on.paired()
    told = on.listen(room)
    assert on.store.end_chat("a", "left", requeue=False) == ("b", room)  # closes the shard
    assert told(1) == [{"to": "b", "event": "partner_left",
                        "data": {"reason": "left", "room": room}}]
    assert on.r.hexists(on.k.chat(room), "closed") and on.r.hlen(on.k.closing) == 0
    assert on.store.close_room(room, json.dumps({"user": "a", "reason": "left", "both": False,
                                                 "at": 1})) is False  # closed already
    kinds = [f["type"] for _, f in on.r.xrange(on.k.history_of(on.k.room_tag(room)))]
    assert kinds == ["opened", "closed"]


def test_reap_script(on):
    room = on.paired()
    told = on.listen(room)
    on.r.zadd(on.k.alive, {"a": on.now() - 1000})
    assert on.store.reap() == 1
    assert sorted((m["to"], m["event"], m["data"]["reason"]) for m in told(2)) == [
        ("a", "partner_left", "disconnected"), ("b", "partner_left", "disconnected")]
    assert on.r.hlen(on.k.partner) == 0 and on.r.zscore(on.k.alive, "a") is None


def test_whereabouts_script(on):
    on.connected("a")
    told = on.listen()
    assert on.store.resume("a", 0, "s-a") == "idle"
    (m,) = told(1)
    assert (m["to"], m["event"], m["data"]["state"]) == ("s-a", "resumed", "idle")
    assert m["data"]["at"] <= on.now()


def test_snapshot_script(on):
    room = on.paired()
    on.store.message("a", "m1", "hello", room)
    told = on.listen(room)
    assert on.store.resume("b", 0, "s-b") == "chatting"
    (m,) = told(1)
    assert (m["to"], m["event"]) == ("s-b", "resumed")
    assert m["data"]["room"] == room and m["data"]["partner_away"] is False
    assert [(h["id"], h["mine"]) for h in m["data"]["history"]] == [("m1", False)]


def test_ended_script(on):
    """A chat's end told again to one connection of a user close.lua told (after a listener
    gap): not while the chat is open, not to the one who pressed Next, not to a stranger."""
    room = on.paired()
    told = on.listen(room)
    assert on.store.ended("b", room, "s-b") is False  # open: nothing to tell
    assert on.store.end_chat("a", "next", requeue=True) == ("b", room)
    assert told(1) == [{"to": "b", "event": "partner_left", "data": {"reason": "next", "room": room}}]
    assert on.store.ended("b", room, "s-b") is True
    assert on.store.ended("a", room, "s-a") is False  # a ended it: a knows
    assert on.store.ended("c", room, "s-c") is False  # not a user of this chat
    assert told(1) == [{"to": "s-b", "event": "partner_left",
                        "data": {"reason": "next", "room": room}}]
    assert on.store.ended("b", "no-such-room", "s-b") is False  # expired, or never opened


def test_ended_script_tells_a_reaped_user_too(on):
    """The reaper's end says `both`: the user gone past the grace hears it if they are back."""
    room = on.paired()
    told = on.listen(room)
    on.r.zadd(on.k.alive, {"a": on.now() - 1000})
    assert on.store.reap() == 1
    told(2)
    assert on.store.ended("a", room, "s-a") is True
    (m,) = told(1)
    assert (m["to"], m["data"]) == ("s-a", {"reason": "disconnected", "room": room})


# -- private rooms: private_create.lua, private_join.lua ----------------------------------------
def made_key(on, host: str = "a", key: str = "ABCDEFGH") -> str:
    """`host` connected and hosting a private room under `key`."""
    on.connected(host)
    assert on.store.private_create(host, lambda: key)[:2] == ("ok", key)
    return key


def test_private_create_script(on):
    on.connected("a")
    on.store.join("a", None)  # waiting at random first: a private room takes them off the queue
    drawn = iter(["TAKENKEY", "TAKENKEY", "FRESHKEY"])
    made_key(on, "z", "TAKENKEY")
    state, key, expires = on.store.private_create("a", lambda: next(drawn))
    assert (state, key) == ("ok", "FRESHKEY")  # a taken key is drawn again
    assert on.now() < expires <= on.now() + on.store.s.private_room_ttl * 1000
    assert on.r.hget(on.k.private(key), "host") == "a" and on.r.hget(on.k.hosts, "a") == key
    assert 0 < on.r.ttl(on.k.private(key)) <= on.store.s.private_room_ttl
    assert on.r.zscore(on.k.queue, "a") is None
    # a second room replaces the first: its key stops working at once
    assert on.store.private_create("a", lambda: "SECONDKY")[0] == "ok"
    assert not on.r.exists(on.k.private(key)) and on.r.hget(on.k.hosts, "a") == "SECONDKY"
    on.paired("c", "d")
    assert on.store.private_create("c", lambda: "THIRDKEY") == ("chatting", "", 0)


def test_private_join_script(on):
    key = made_key(on)
    on.connected("b", "c")
    state, room = on.store.private_join("b", key, "addr-b")
    assert state == "ok" and len(room) == 32
    assert on.r.hgetall(on.k.partner) == {"a": "b", "b": "a"}
    assert on.r.hget(on.k.room, "a") == on.r.hget(on.k.room, "b") == room
    assert on.r.hlen(on.k.opening) == 0  # opened in its shard at once (open.lua)
    chat = on.r.hgetall(on.k.chat(room))
    assert (chat["a"], chat["b"], chat["kind"]) == ("a", "b", "private")
    (opened,) = [f for _, f in on.r.xrange(on.k.history_of(on.k.room_tag(room)))]
    assert opened["kind"] == "private"
    # a third person is told the room is full; the key is used, not gone, until the chat ends
    assert on.store.private_join("c", key, "addr-c") == ("room_full", "")
    assert on.store.private_join("b", key, "addr-b") == ("already_chatting", "")
    on.store.end_chat("a", "left", requeue=False)
    assert not on.r.exists(on.k.private(key)) and on.r.hlen(on.k.hosts) == 0
    assert on.store.private_join("c", key, "addr-c") == ("room_not_found", "")


def test_private_join_emits_matched_to_both_with_the_kind(on):
    key = made_key(on)
    on.connected("b")
    state, room = on.store.private_join("b", key, "addr")
    got = on.listen(room)
    assert state == "ok" and on.store.resume("a", 0, "s-a") == "chatting"
    (m,) = got(1)
    assert (m["to"], m["data"]["kind"], m["data"]["room"]) == ("s-a", "private", room)


def test_private_join_refuses_unknown_expired_and_own_keys_alike(on):
    on.connected("b")
    assert on.store.private_join("b", "NOSUCHKY", "addr") == ("room_not_found", "")
    key = made_key(on)
    assert on.store.private_join("a", key, "addr") == ("room_not_found", "")  # their own
    on.r.zadd(on.k.alive, {"a": on.now() - 1000})  # the host's presence expired
    assert on.store.private_join("b", key, "addr") == ("room_not_found", "")
    on.r.delete(on.k.private(key))  # the key's own ttl passed
    assert on.store.private_join("b", key, "addr") == ("room_not_found", "")
    assert on.r.hlen(on.k.partner) == 0


def test_private_join_ends_the_key_of_a_host_banned_since(on):
    from common.moderation import Bans, Identity

    key = made_key(on)
    on.connected("b")
    on.r.set(on.k.who("a"), Identity("browser-a", "addr-a").packed())
    Bans(on.r, on.k).ban(Identity(addr="addr-a"), on.now() + 60_000)  # the host's address
    assert on.store.private_join("b", key, "addr-b") == ("room_not_found", "")
    assert not on.r.exists(on.k.private(key)) and on.r.hlen(on.k.hosts) == 0
    assert on.r.hlen(on.k.partner) == 0
    assert not on.r.exists(on.k.guess("u:b"))  # the right key of a banned host costs nothing


def test_private_join_throttles_wrong_keys_per_user_and_per_address(on):
    burst = on.store.s.private_guess_burst
    on.connected("b", "c")
    for i in range(burst):
        assert on.store.private_join("b", f"WRONG{i:03d}", "addr-1")[0] == "room_not_found"
    assert on.store.private_join("b", "WRONGXXX", "addr-2") == ("rate_limited", "")  # the user
    assert on.store.private_join("c", "WRONGXXX", "addr-1") == ("rate_limited", "")  # the address
    key = made_key(on)  # even the right key waits: a guesser cannot tell it from a wrong one
    assert on.store.private_join("b", key, "addr-2") == ("rate_limited", "")
    assert on.store.private_join("c", key, "addr-3")[0] == "ok"  # others are not held back
    assert 0 < on.r.ttl(on.k.guess("u:b")) and 0 < on.r.ttl(on.k.guess("a:addr-1"))


def test_a_hosts_key_ends_when_they_go_elsewhere_or_are_reaped(on):
    key = made_key(on)
    on.store.join("a", None)  # went to the random queue instead
    assert not on.r.exists(on.k.private(key))
    key = made_key(on, "a", "SECONDKY")
    on.store.end_chat("a", "left", requeue=False)  # Leave while waiting for the friend
    assert not on.r.exists(on.k.private(key))
    key = made_key(on, "a", "THIRDKEY")
    on.r.zadd(on.k.alive, {"a": on.now() - 1000})
    assert on.store.reap() == 1
    assert not on.r.exists(on.k.private(key)) and on.r.hlen(on.k.hosts) == 0


def test_a_hosts_resume_says_waiting_with_the_key(on):
    key = made_key(on)
    told = on.listen()
    assert on.store.resume("a", 0, "s-a") == "waiting"
    (m,) = told(1)
    assert m["data"]["state"] == "waiting" and m["data"]["private"]["key"] == key
    assert m["data"]["private"]["expires"] > on.now()
# -- blocks and bans (block.lua, match.lua with lib/moderation.lua) ------------------------------
def who(on, user: str, browser: str = "", addr: str = "") -> None:
    """`user`'s keyed hashes, as a web worker records them at connect (common/moderation.py)."""
    on.r.set(on.k.who(user), f"{browser}|{addr}")


def test_block_script(on):
    who(on, "a", "ba")
    who(on, "b", "bb", "ab")
    assert on.store._run("block", [on.k.who("a"), on.k.who("b")], ["a", "b", 60_000]) == "bb|ab"
    key = on.k.block_prefix + "ba"  # the reporter's browser holds the block
    now = on.now()
    entries = dict(on.r.zrange(key, 0, -1, withscores=True))
    assert set(entries) == {"bb", "u:b"}  # the reported browser and user id
    assert all(now < t <= now + 60_000 for t in entries.values())
    assert 0 < on.r.pttl(key) <= 60_000
    # without a browser cookie the reporter's blocks are kept under their user id
    assert on.store._run("block", [on.k.who("c"), on.k.who("b")], ["c", "b", 60_000]) == "bb|ab"
    assert set(on.r.zrange(on.k.block_prefix + "u:c", 0, -1)) == {"bb", "u:b"}


def test_match_keeps_a_reporter_and_the_reported_apart_both_ways(on):
    on.connected("a", "b", "c")
    who(on, "a", "ba")
    who(on, "b", "bb")
    on.store._run("block", [on.k.who("a"), on.k.who("b")], ["a", "b", 60_000])
    on.store.join("a", None)
    on.store.join("b", None)
    assert on.store.match() == 0  # only the two of them wait
    who(on, "b2", "bb")  # the reported browser in a new tab: a new user, same cookie
    on.connected("b2")
    on.store.join("b2", None)
    on.store.join("a", None)
    assert on.store.match() == 1
    assert on.r.hget(on.k.partner, "b") == "b2"  # a is kept from both of them
    on.store.join("c", None)
    assert on.store.match() == 1 and on.r.hget(on.k.partner, "a") == "c"


def test_a_report_blocks_and_the_history_carries_each_sides_hashes(on):
    who(on, "a", "ba", "aa")
    who(on, "b", "bb", "ab")
    room = on.paired()
    assert on.store.report("a", "spam", 1234) is True
    opened, report = [f for _, f in on.r.xrange(on.k.history_of(on.k.room_tag(room)))]
    assert (opened["type"], opened["who1"], opened["who2"]) == ("opened", "ba|aa", "bb|ab")
    assert (report["type"], report["reported"], report["reported_browser"],
            report["reported_addr"]) == ("report", "b", "bb", "ab")
    assert set(on.r.zrange(on.k.block_prefix + "ba", 0, -1)) == {"bb", "u:b"}


def test_the_heartbeat_keeps_who_a_user_is_as_long_as_their_route(on):
    on.r.set(on.k.who("a"), "bb|ab", ex=10)
    on.store.touch(["a"], WORKER)
    assert on.r.ttl(on.k.who("a")) > 10  # WHERE_TTL, like where:<user>


def test_an_expired_block_no_longer_keeps_them_apart(on):
    on.connected("a", "b")
    who(on, "a", "ba")
    who(on, "b", "bb")
    on.r.zadd(on.k.block_prefix + "ba", {"bb": on.now() - 1, "u:b": on.now() - 1})
    on.store.join("a", None)
    on.store.join("b", None)
    assert on.store.match() == 1 and on.r.hget(on.k.partner, "a") == "b"


def test_match_takes_a_banned_user_out_of_the_queue_and_tells_them(on):
    on.connected("a", "b", "c")
    who(on, "a", "", "addr-a")
    until = on.now() + 3_600_000
    on.r.set(on.k.ban("addr-a"), until)
    for u in ("a", "b", "c"):
        on.store.join(u, None)
    told = on.listen()
    assert on.store.match() == 1
    assert on.r.hget(on.k.partner, "b") == "c" and on.r.zscore(on.k.queue, "a") is None
    assert told(1) == [{"to": "a", "event": "error", "data": ev.banned(until)}]
