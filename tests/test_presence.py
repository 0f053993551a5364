"""Honest presence and one live tab per user (issue: a public chat must survive its users).

A closed tab is neither matched nor counted online; a partner hears at once that the stranger's
connection dropped and that they came back; a token opened twice moves the chat to the newest
connection and the older one is told; a token expires.
"""
from __future__ import annotations

import asyncio
import time

import socketio
from peer import Peer, pair, wait_for
from procs import TEST_SECRET

from web.tokens import Tokens


async def test_a_closed_waiting_tab_is_never_matched_nor_counted_online(fresh):
    w1, w2 = fresh.urls()
    x = await Peer(w1, "X").connect()
    await x.join()
    await x.close()  # presses Start, closes the tab
    # the client's close returns before its worker has run the disconnect: wait for that (X's
    # connection gone from the home slot), as a person opening a tab a moment later would
    await wait_for(lambda: not fresh.client.exists(fresh.home_key("where:" + x.user)), 5,
                   "X's disconnect")
    y = await Peer(w2, "Y").connect()
    await wait_for(lambda: y.events["hello"][-1]["online"] == 1, 5, "Y alone online")
    await y.join()
    z = await Peer(w1, "Z").connect()
    await z.join()
    # Y's first match is Z: a ghost match with X would have come first (X waited longest)
    mz, my = await z.next("matched"), await y.next("matched")
    assert mz["room"] == my["room"], "Y was matched with a closed tab"
    await y.close()
    await z.close()


async def test_a_waiting_user_who_comes_back_within_the_grace_keeps_waiting(fresh):
    w1, w2 = fresh.urls()
    x = await Peer(w1, "X").connect()
    await x.join()
    await x.vanish()
    x2 = await Peer(w2, "X again").connect(token=x.token)
    assert (await x2.next("resumed"))["state"] == "waiting"
    y = await Peer(w1, "Y").connect()
    await y.join()
    assert (await x2.next("matched"))["room"] == (await y.next("matched"))["room"]
    await x2.close()
    await y.close()


async def test_the_partner_hears_at_once_that_the_connection_dropped_and_came_back(fresh):
    w1, w2 = fresh.urls()
    a, b = await Peer(w1, "A").connect(), await Peer(w2, "B").connect()
    room = await pair(a, b)
    await a.vanish()  # a network drop: no goodbye
    assert await b.next("partner_away", timeout=5) == {"room": room}
    ack = await b.send("b1", "are you there?")  # still a chat: stored for A
    assert ack["ok"] is True
    a2 = await Peer(w1, "A again").connect(token=a.token, since=0)
    assert await b.next("partner_back", timeout=5) == {"room": room}
    resumed = await a2.next("resumed")
    assert [m["id"] for m in resumed["history"]] == ["b1"]
    assert b.count("partner_left") == 0
    await a2.close()
    await b.close()


async def test_away_then_gone_past_the_grace_ends_the_chat(fresh):
    w1, w2 = fresh.urls()
    a, b = await Peer(w1, "A").connect(), await Peer(w2, "B").connect()
    room = await pair(a, b)
    await a.close()
    assert await b.next("partner_away", timeout=5) == {"room": room}
    left = await b.next("partner_left", timeout=10)
    assert left == {"reason": "disconnected", "room": room}
    assert b.count("partner_back") == 0
    await b.close()


async def test_a_second_connection_with_one_token_takes_over_and_the_first_is_told(fresh):
    w1, w2 = fresh.urls()
    a, b = await Peer(w1, "A").connect(), await Peer(w2, "B").connect()
    room = await pair(a, b)
    thief = await Peer(w2, "copied token").connect(token=a.token)
    assert thief.user == a.user
    err = await a.next("error", timeout=5)
    assert err["code"] == "replaced" and err["message"]
    await wait_for(lambda: not a.sio.connected, 5, "the replaced connection to be closed")
    assert (await thief.next("resumed"))["room"] == room
    await b.send("b1", "hi")
    assert (await thief.next("message"))["id"] == "b1"
    assert a.count("message") == 0, "the replaced connection still received the chat"
    # the partner saw neither a drop nor a departure: the user never left
    assert b.count("partner_away") == 0 and b.count("partner_left") == 0
    await thief.close()
    await b.close()


async def test_one_token_on_ten_connections_does_not_multiply_the_limits(fresh):
    w1, w2 = fresh.urls()
    a, b = await Peer(w1, "A").connect(), await Peer(w2, "B").connect()
    await pair(a, b)
    clones = [await Peer(w1 if i % 2 else w2, f"clone{i}").connect(token=a.token)
              for i in range(10)]
    live = [c for c in clones if c.sio.connected]
    acks = await asyncio.gather(*(c.call("typing", {"typing": i % 2 == 0}, timeout=5)
                                  for c in live for i in range(40)), return_exceptions=True)
    delivered = len([a for a in acks if isinstance(a, dict) and a.get("ok")])
    assert delivered <= 40, f"{delivered} typing events accepted from one user"
    await asyncio.gather(*(c.close() for c in clones))
    await b.close()


def test_a_token_expires_and_a_fresh_one_does_not(monkeypatch):
    tokens = Tokens(TEST_SECRET, max_age=60)
    fresh = tokens.sign("u1")
    assert tokens.verify(fresh) == "u1"
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 120)  # signed two minutes ago
    old = tokens.sign("u1")
    monkeypatch.undo()
    assert tokens.verify(old) is None
    assert tokens.verify(fresh[:-2] + "xx") is None


async def test_reconnecting_refills_no_budget_and_cycling_is_bounded(fresh):
    """A user who reconnects to get a fresh budget gets none: the control budget is the user's,
    and reconnects themselves are limited per user (each one is a presence change for the
    partner): the partner hears of at most a burst of them."""
    w1, w2 = fresh.urls()
    a, b = await Peer(w1, "A").connect(), await Peer(w2, "B").connect()
    await pair(a, b)
    acks = [await a.call("typing", {"typing": i % 2 == 0}) for i in range(40)]
    assert any(not x["ok"] for x in acks), "the control burst was never reached"
    token, refused, accepted = a.token, [], 0
    await a.close()
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i in range(15):  # drop and come back, as fast as the client can
        p = Peer(w1, f"A{i}")
        p.sio.on("connect_error", lambda data=None: refused.append(data))
        try:
            await p.connect(token=token)
        except Exception:
            continue
        for _ in range(5):
            ack = await p.call("typing", {"typing": True})
            accepted += ack["ok"]
            assert ack["ok"] or ack["error"]["code"] == "rate_limited", ack
        await p.close()
    # only what the budget refilled meanwhile (CONTROL_RATE 10/s); a fresh budget per
    # connection would have let all five through each time
    assert accepted <= 10 * (loop.time() - started) + 2, accepted
    assert refused and all((e.get("data") or {}).get("code") == "rate_limited" for e in refused)
    # a sentinel published after every presence change: once B has it, B has them all
    emitter = socketio.RedisManager(fresh.redis.url, channel="flask-socketio", write_only=True)
    emitter.emit("sentinel", {}, room="u:" + b.user, namespace="/")
    await b.next("sentinel")
    assert b.count("partner_back") <= 11, b.count("partner_back")
    await b.close()
