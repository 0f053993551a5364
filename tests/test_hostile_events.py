"""Hostile Socket.IO events answered with a code to their sender only (issue 11's rows).

Each case failed before its fix: the event named `*` was answered to every connection of the
worker (or raised in the handler), a lone surrogate in any text raised an `internal` with a
traceback, and an `auth.since` of 10**300 left the connection without any reply.
"""
from __future__ import annotations


import pytest

from peer import Peer, pair

SURROGATE = "\ud800"


async def test_the_event_named_star_is_unknown_and_answered_to_its_sender_only(fresh):
    w1, _ = fresh.urls()
    bystanders = [await Peer(w1, f"by{i}").connect() for i in range(3)]
    x = await Peer(w1, "X").connect()
    for payload in ((None,), (), ({},), ("text", 1)):
        if payload:
            await x.sio.emit("*", payload)
            ack = await x.sio.call("*", payload, timeout=5)
        else:
            await x.sio.emit("*")
            ack = await x.sio.call("*", timeout=5)
        assert ack["ok"] is False and ack["error"]["code"] == "unknown_event", ack
    assert (await x.next("error"))["code"] == "unknown_event"
    # each bystander's own ack comes after anything the worker sent it before: a broadcast
    # of X's errors would be in their events by then
    for b in bystanders:
        assert (await b.call("typing", {"typing": True}))["error"]["code"] == "not_chatting"
    assert all(b.count("error") == 0 for b in bystanders), "an error went to other users"
    assert "Traceback" not in fresh.webs[0].output()
    for p in (x, *bystanders):
        await p.close()


SURROGATE_CASES = [
    ("message", {"id": "m1", "text": "hi " + SURROGATE}, "bad_payload"),
    ("message", {"id": "m" + SURROGATE, "text": "hi"}, "bad_id"),
    ("join", {"interests": ["cats", SURROGATE]}, "bad_payload"),
    ("report", {"reason": SURROGATE}, "bad_payload"),
]


@pytest.mark.parametrize("event,payload,code", SURROGATE_CASES,
                         ids=[c[0] + "-" + str(i) for i, c in enumerate(SURROGATE_CASES)])
async def test_a_lone_surrogate_is_a_bad_payload_not_an_internal_error(fresh, event, payload,
                                                                       code):
    w1, w2 = fresh.urls()
    a, b = await Peer(w1, "A").connect(), await Peer(w2, "B").connect()
    await pair(a, b)
    for _ in range(3):  # refusals cost budget: a few, not a flood
        ack = await a.call(event, payload)
        assert ack["ok"] is False and ack["error"]["code"] == code, ack
    out = fresh.webs[0].output()
    assert "Traceback" not in out and "internal" not in out
    assert (await a.send("ok1", "fine"))["ok"] is True
    await a.close()
    await b.close()


@pytest.mark.parametrize("since", [10**30, -1, 2**53, "5", 1.5, True, None, [1]])
async def test_any_since_gets_a_hello_and_a_resumed(fresh, since):
    w1, w2 = fresh.urls()
    a, b = await Peer(w1, "A").connect(), await Peer(w2, "B").connect()
    room = await pair(a, b)
    await a.send("a1", "one")
    await a.close()
    a2 = Peer(w2, "A again")
    await a2.sio.connect(a2.url, auth={"token": a.token, "since": since},
                         transports=["websocket"], wait_timeout=10)
    await a2.next("hello")
    resumed = await a2.next("resumed")
    assert resumed["room"] == room and [m["id"] for m in resumed["history"]] == ["a1"]
    await a2.close()
    await b.close()


async def test_a_connect_the_json_decoder_refuses_is_answered_with_a_code(fresh):
    """`auth.since` = 10**300 is refused by Engine.IO's JSON decoder (integers over 100 digits):
    the client must still get an answer at once, a connect_error naming the code."""
    p = Peer(fresh.urls()[0], "huge since")
    errors = []
    p.sio.on("connect_error", lambda data=None: errors.append(data))
    with pytest.raises(Exception):
        await p.sio.connect(p.url, auth={"since": 10**300}, transports=["websocket"],
                            wait_timeout=5)
    assert errors and (errors[0].get("data") or {}).get("code") == "bad_payload", errors
    assert "Traceback" not in fresh.webs[0].output()
    await p.close()
