"""The core chat across two web workers and the matcher: real processes, real Socket.IO clients."""
from __future__ import annotations

from peer import Peer, pair


async def test_users_on_two_workers_chat_both_ways_exactly_once(fresh_any):
    w1, w2 = fresh_any.urls()
    a, b, c = Peer(w1, "A"), Peer(w2, "B"), Peer(w1, "C")
    for p in (a, b, c):
        await p.connect()
    assert a.worker == "w1" and b.worker == "w2"
    room = await pair(a, b)

    first = await a.send("a1", "hello from A")
    ack = first
    assert ack["ok"] and ack["id"] == "a1" and ack["seq"] == 1
    got = await b.next("message")
    assert got == {"id": "a1", "room": room, "text": "hello from A", "ts": ack["ts"], "seq": 1}

    ack = await b.send("b1", "  你好，A  ")
    assert ack["ok"] and ack["seq"] == 2
    got = await a.next("message")
    assert got["text"] == "你好，A" and got["id"] == "b1"

    # a resend of the same id is acked with the first seq and is not delivered again
    again = await a.send("a1", "hello from A")
    assert again == first
    await a.send("a2", "second")
    await b.next("message", where=lambda m: m["id"] == "a2")
    assert [m["id"] for m in b.events["message"]] == ["a1", "a2"]
    assert [m["id"] for m in a.events["message"]] == ["b1"]
    assert c.count("message") == 0  # nobody else ever sees a message
    for p in (a, b, c):
        await p.close()


async def test_typing_reaches_the_partner_only(fresh_any):
    w1, w2 = fresh_any.urls()
    a, b, c = Peer(w1), Peer(w2), Peer(w2)
    for p in (a, b, c):
        await p.connect()
    room = await pair(a, b)
    assert await a.call("typing", {"typing": True}) == {"ok": True}
    assert await b.next("typing") == {"typing": True, "room": room}
    assert c.count("typing") == 0
    for p in (a, b, c):
        await p.close()


async def test_next_rematches_across_workers_and_tells_the_partner(fresh_any):
    w1, w2 = fresh_any.urls()
    a, b, c = Peer(w1, "A"), Peer(w2, "B"), Peer(w2, "C")
    for p in (a, b, c):
        await p.connect()
    first = await pair(a, b)
    await c.join()
    assert await a.call("next") == {"ok": True}
    assert (await b.next("partner_left"))["reason"] == "next"
    await a.next("waiting")
    ma = await a.next("matched")
    mc = await c.next("matched")
    assert ma["room"] == mc["room"] != first
    # B is idle now: a message from B is refused, and B gets no second match by itself
    refused = await b.send("b-late", "anyone?")
    assert refused["ok"] is False and refused["error"]["code"] == "not_chatting"
    await a.send("a-to-c", "hi C")
    assert (await c.next("message"))["text"] == "hi C"
    assert b.count("message") == 0 and b.count("matched") == 1
    for p in (a, b, c):
        await p.close()


async def test_leave_tells_the_partner_and_stops_matching(fresh_any):
    w1, w2 = fresh_any.urls()
    a, b = Peer(w1), Peer(w2)
    for p in (a, b):
        await p.connect()
    await pair(a, b)
    assert await b.call("leave") == {"ok": True}
    assert (await a.next("partner_left"))["reason"] == "left"
    refused = await a.send("x", "still there?")
    assert refused["error"]["code"] == "not_chatting"
    for p in (a, b):
        await p.close()


async def test_shared_interests_are_preferred(fresh_any):
    w1, w2 = fresh_any.urls()
    a, b, c = Peer(w1, "A"), Peer(w2, "B"), Peer(w1, "C")
    for p in (a, b, c):
        await p.connect()
    await a.join(["Music", "cats"])
    await b.join(["hiking"])
    await c.join(["  CATS "])
    ma = await a.next("matched")
    mc = await c.next("matched")
    assert ma == mc and ma["interests"] == ["cats"]
    for p in (a, b, c):
        await p.close()


async def test_the_only_other_waiting_user_is_matched_after_the_interest_wait(fresh_any):
    w1, w2 = fresh_any.urls()
    a, b = Peer(w1), Peer(w2)
    for p in (a, b):
        await p.connect()
    await a.join(["chess"])
    await b.join(["surfing"])
    ma = await a.next("matched", timeout=10)
    assert ma["interests"] == []
    assert (await b.next("matched"))["room"] == ma["room"]
    for p in (a, b):
        await p.close()


async def test_a_message_whose_worker_dies_after_storing_it_is_delivered_once(fresh_any):
    """Storing and emitting are one script: what a worker leaves behind when it dies right after
    message.lua (here: the script run by hand, with no worker) has reached the partner; the
    client's resend of the unacked id is acked with the same seq and not delivered again."""
    from common.config import load
    from common.store import Store

    w1, w2 = fresh_any.urls()
    a, b = Peer(w1, "A"), Peer(w2, "B")
    await a.connect()
    await b.connect()
    room = await pair(a, b)
    store = Store(fresh_any.client, load(fresh_any.env))
    stored = store.message(a.user, "x1", "sent just before the crash")
    assert stored.status == "ok"
    got = await b.next("message")
    assert got == {"id": "x1", "room": room, "text": "sent just before the crash",
                   "ts": stored.ts, "seq": stored.seq}
    ack = await a.send("x1", "sent just before the crash")  # the client's resend
    assert ack == {"ok": True, "id": "x1", "ts": stored.ts, "seq": stored.seq}
    await a.send("x2", "after")
    await b.next("message", where=lambda m: m["id"] == "x2")
    assert [m["id"] for m in b.events["message"]] == ["x1", "x2"]
    await a.close()
    await b.close()
