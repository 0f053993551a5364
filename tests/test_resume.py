"""Users, not sockets: reconnects within the grace resume the chat; vanished users are let go."""
from __future__ import annotations

import asyncio

from peer import Peer, pair, wait_for

GRACE = 3.0  # RESUME_GRACE of the test stacks (tests/procs.py)


async def test_reload_within_grace_resumes_with_history_and_partner_sees_nothing(fresh_any):
    w1, w2 = fresh_any.urls()
    a, b = Peer(w1, "A"), Peer(w2, "B")
    await a.connect()
    await b.connect()
    room = await pair(a, b)
    await a.send("a1", "before reload")
    await b.next("message")
    await b.send("b1", "reply")
    await a.next("message")

    await a.close()  # the page reloads ...
    await b.send("b2", "sent while A was away")
    a2 = Peer(w2, "A again")  # ... and comes back, on the other worker this time
    await a2.connect(token=a.token)
    assert a2.user == a.user
    resumed = await a2.next("resumed")
    assert resumed["state"] == "chatting" and resumed["room"] == room
    assert [(m["id"], m["mine"]) for m in resumed["history"]] == [
        ("a1", True), ("b1", False), ("b2", False)]
    await a2.send("a2", "back")
    assert (await b.next("message", where=lambda m: m["id"] == "a2"))["text"] == "back"

    await asyncio.sleep(GRACE + 1.5)  # observe a whole grace period: no false "left"
    assert b.count("partner_left") == 0
    await b.send("b3", "still here")
    await a2.next("message", where=lambda m: m["id"] == "b3")
    await a2.close()
    await b.close()


async def test_resume_replays_only_what_came_after_since(fresh_any):
    w1, w2 = fresh_any.urls()
    a, b = Peer(w1), Peer(w2)
    await a.connect()
    await b.connect()
    await pair(a, b)
    for i in range(3):
        await a.send(f"m{i}", f"text {i}")
    await b.next("message", where=lambda m: m["id"] == "m2")
    await b.vanish()
    b2 = Peer(w1)
    await b2.connect(token=b.token, since=2)
    resumed = await b2.next("resumed")
    assert [m["seq"] for m in resumed["history"]] == [3]
    await a.close()
    await b2.close()


async def test_vanished_client_makes_partner_get_left_after_grace(fresh_any):
    w1, w2 = fresh_any.urls()
    a, b = Peer(w1, "A"), Peer(w2, "B")
    await a.connect()
    await b.connect()
    await pair(a, b)
    await b.vanish()
    assert (await a.next("partner_left", timeout=GRACE + 10))["reason"] == "disconnected"
    refused = await a.send("late", "hello?")
    assert refused["error"]["code"] == "not_chatting"
    # coming back after the grace: the same user, idle
    b2 = Peer(w1)
    await b2.connect(token=b.token)
    assert (await b2.next("resumed"))["state"] == "idle"
    await a.close()
    await b2.close()


async def test_waiting_user_who_vanishes_is_never_matched(fresh_any):
    w1, w2 = fresh_any.urls()
    gone = Peer(w1, "gone")
    await gone.connect()
    await gone.join()
    await gone.vanish()
    # wait until the reaper took them off the wait list
    deadline = asyncio.get_running_loop().time() + GRACE + 10
    key = "{chat}:queue"
    while fresh_any.client.zscore(key, gone.user) is not None:
        assert asyncio.get_running_loop().time() < deadline, "vanished user still waiting"
        await asyncio.sleep(0.1)
    a, b = Peer(w2, "A"), Peer(w1, "B")
    await a.connect()
    await b.connect()
    await pair(a, b)  # A is matched with B, not with the vanished user
    await a.close()
    await b.close()


async def test_killed_worker_users_resume_elsewhere_or_partner_is_told(make_stack, backend):
    s = make_stack(workers=3, **backend)
    w1, w2, w3 = s.urls()
    a, b = Peer(w1, "A"), Peer(w2, "B")
    c, d = Peer(w1, "C"), Peer(w2, "D")
    for p in (a, b, c, d):
        await p.connect()
    await pair(a, b)
    await pair(c, d)
    await a.send("a1", "one")
    await b.next("message")

    s.webs[1].kill()  # w2 dies with B and D, running no disconnect handler
    await a.send("a2", "sent while B's worker was dead")
    b2 = Peer(w3, "B on w3")
    await b2.connect(token=b.token, since=1)
    resumed = await b2.next("resumed")
    assert resumed["state"] == "chatting"
    assert [m["id"] for m in resumed["history"]] == ["a2"]

    # D never comes back: C is told after the grace; A, whose partner resumed, is not
    assert (await c.next("partner_left", timeout=GRACE + 10))["reason"] == "disconnected"
    await b2.send("b1", "I'm back")
    await a.next("message", where=lambda m: m["id"] == "b1")
    assert a.count("partner_left") == 0
    for p in (a, b2, c):
        await p.close()


async def test_a_reconnect_while_redis_is_down_gets_one_hello_then_unavailable(make_stack):
    """The worker still answers without Redis: the page gets its hello (online 0) and learns
    why nothing else comes, instead of a connection that hangs."""
    s = make_stack(workers=1, matchers=0)
    a = await Peer(s.urls()[0], "A").connect()
    token = a.token
    await a.close()
    s.redis.stop()
    again = await Peer(s.urls()[0], "A again").connect(token=token)
    assert (await again.next("error"))["code"] == "unavailable"
    # the error is sent after the hello on the same connection: a second hello would be here
    assert [h["online"] for h in again.events["hello"]] == [0]
    assert again.count("resumed") == 0
    # half a user (no presence, no resume) is not left connected: the server closes the
    # transport so that the client comes back and does both again once Redis is up
    await wait_for(lambda: not again.sio.connected, 10, "the half-made connection to be closed")
    await again.close()


async def test_a_user_whose_connect_failed_in_redis_is_whole_again_after_reconnecting(
        make_stack):
    """X waits and drops; X's reconnect meets a Redis error (it refuses writes); the server
    closes it; X's next reconnect puts X back in the queue, and X is matched."""
    s = make_stack(workers=1, matchers=1)
    url = s.urls()[0]
    x = await Peer(url, "X").connect()
    await x.join()
    await x.vanish()  # parked: out of the queue, away
    r = s.redis.client
    await wait_for(lambda: r.hexists("{chat}:parked", x.user), 5, "X to be parked")
    r.config_set("maxmemory", 1)  # every script that writes is refused (OOM)
    try:
        x2 = await Peer(url, "X again").connect(token=x.token)
        assert (await x2.next("error"))["code"] == "unavailable"
        await wait_for(lambda: not x2.sio.connected, 10, "the half-made connection to close")
    finally:
        r.config_set("maxmemory", 0)
    x3 = await Peer(url, "X once more").connect(token=x.token)
    assert (await x3.next("resumed"))["state"] == "waiting"
    y = await Peer(url, "Y").connect()
    await y.join()
    assert (await x3.next("matched"))["room"] == (await y.next("matched"))["room"]
    for p in (x2, x3, y):
        await p.close()
