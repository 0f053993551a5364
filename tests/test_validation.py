"""Hostile clients: every client event with bad payloads, floods, oversized frames, odd packets.

Every refusal must be `{ok: false, error: {code, message}}` in the ack, or an `error` event
`{code, message}` when the client sent no ack callback (docs/protocol.md), with the documented
code, a readable message and never a traceback; the worker must keep serving everybody else.
"""
from __future__ import annotations

import asyncio
import urllib.request

import pytest
import socketio

from common.keys import user_room
from peer import Peer, pair, reported
from web.packets import REFUSED_COST

# The documented limits (docs/protocol.md, defaults of common/config.py).
MAX_TEXT = 500
MAX_ID = 64
MAX_INTERESTS = 5
MAX_INTEREST = 24
MAX_REASON = 200
MESSAGE_BURST = 10
CONTROL_BURST = 30
MAX_FRAME_BYTES = 16 * 1024

NOTHING = object()  # send the event with no payload at all
# A refused event costs REFUSED_COST of the connection's packet budget (web/packets.py; 20 a
# second, burst 60 by default): a test that sends many on one connection sends them no faster
# than an honest but buggy client may, or the worker closes the connection, as it should.
PACKET_RATE = 20
FREE_REFUSALS = 8


async def pace(peer, _sent={}) -> None:
    """After FREE_REFUSALS refusals on `peer`, wait what one more costs to be refilled."""
    n = _sent[peer] = _sent.get(peer, 0) + 1
    if n > FREE_REFUSALS:
        await asyncio.sleep(REFUSED_COST / PACKET_RATE)
QUEUE = "{chat}:queue"
HISTORY = "{chat}:history"


# -- helpers ---------------------------------------------------------------------------------
def check_error(err, code: str) -> None:
    """`{code, message}` with the expected code and a short human message, no traceback."""
    assert isinstance(err, dict), err
    assert err.get("code") == code, f"expected {code!r}, got {err!r}"
    msg = err.get("message")
    assert isinstance(msg, str) and msg.strip(), err
    assert "Traceback" not in msg and 'File "' not in msg, err


def check_refused(ack, code: str) -> None:
    assert isinstance(ack, dict) and ack.get("ok") is False, ack
    check_error(ack.get("error"), code)


async def call(peer: Peer, event: str, payload=NOTHING, timeout: float = 10):
    """Emit with an ack callback. NOTHING sends no argument, `(None,)` an explicit null."""
    if payload is NOTHING:
        return await peer.sio.call(event, timeout=timeout)
    return await peer.sio.call(event, payload, timeout=timeout)


async def emit(peer: Peer, event: str, payload=NOTHING):
    """Emit without an ack callback."""
    if payload is NOTHING:
        await peer.sio.emit(event)
    else:
        await peer.sio.emit(event, payload)


async def until(check, timeout: float, what: str):
    """Wait for a condition on client-side or Redis state, with a deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.02)


def describe(payload) -> str:
    text = "<nothing>" if payload is NOTHING else repr(payload)
    return text if len(text) < 60 else text[:57] + "..."


def over_the_wire(table: list) -> list:
    """A few cases of a table, one per refusal code, sent to a real worker; every case of every
    table is checked against the parse_* functions themselves in tests/test_protocol.py."""
    chosen: list[tuple] = []
    for case in table:  # the first case of each code
        if case[1] not in {code for _, code in chosen}:
            chosen.append(case)
    if table[-1] not in chosen:  # and the last: the tables end at a limit
        chosen.append(table[-1])
    return chosen


async def assert_refusals(peer: Peer, event: str, cases) -> None:
    for payload, code in cases:
        await pace(peer)
        ack = await call(peer, event, payload)
        try:
            check_refused(ack, code)
        except AssertionError as exc:
            raise AssertionError(f"{event} {describe(payload)}: {exc}") from None


async def chat_both_ways(a: Peer, b: Peer, tag: str) -> None:
    ack = await a.send(f"{tag}-a", f"{tag} from a")
    assert ack["ok"] is True, ack
    got = await b.next("message", where=lambda m: m["id"] == f"{tag}-a")
    assert got["text"] == f"{tag} from a"
    ack = await b.send(f"{tag}-b", f"{tag} from b")
    assert ack["ok"] is True, ack
    got = await a.next("message", where=lambda m: m["id"] == f"{tag}-b")
    assert got["text"] == f"{tag} from b"


async def assert_workers_still_serve(stack, tag: str) -> None:
    """All processes alive, every web worker ready, and a brand-new pair on them can chat."""
    for p in stack.procs():
        assert p.alive(), f"{p.name} died:\n{p.output()[-4000:]}"
    for url in stack.urls():
        with urllib.request.urlopen(url + "/readyz", timeout=5) as r:
            assert r.status == 200
    w1, w2 = stack.urls()[0], stack.urls()[-1]
    x, y = Peer(w1, f"{tag}-x"), Peer(w2, f"{tag}-y")
    try:
        await x.connect()
        await y.connect()
        await pair(x, y)
        await chat_both_ways(x, y, tag)
    finally:
        await x.close()
        await y.close()


async def warm_up(stack) -> None:
    """Make sure every web worker of `stack` listens on the Socket.IO queue before a test starts.

    A worker subscribes to the Redis queue only when its first client connects (python-socketio
    initializes its client manager lazily), so events published for that first client in the
    next few milliseconds are lost (reported as a product bug). These tests are about validation,
    not start-up, so they begin once each worker has delivered one queued event.
    """
    emitter = socketio.RedisManager(stack.redis.url, write_only=True,
                                    channel=stack.env.get("SOCKETIO_CHANNEL", "flask-socketio"))
    loop = asyncio.get_running_loop()
    for url in stack.urls():
        p = Peer(url, "warm-up")
        await p.connect()
        try:
            deadline = loop.time() + 15
            while True:
                emitter.emit("warm_up", {}, namespace="/", room=user_room(p.user))
                try:
                    await p.next("warm_up", timeout=0.2)
                    break
                except TimeoutError:
                    assert loop.time() < deadline, f"{url} never delivered a queued event"
        finally:
            await p.close()


@pytest.fixture(scope="module", autouse=True)
async def _shared_stack_listening(stack):
    await warm_up(stack)


# -- bad payloads, event by event (with an ack) ------------------------------------------------
JOIN_BAD = [
    (42, "bad_payload"),
    ("cats", "bad_payload"),
    (["cats"], "bad_payload"),
    (True, "bad_payload"),
    ({"interests": "cats"}, "bad_payload"),
    ({"interests": 5}, "bad_payload"),
    ({"interests": {"cats": True}}, "bad_payload"),
    ({"interests": [1]}, "bad_payload"),
    ({"interests": [None]}, "bad_payload"),
    ({"interests": [True]}, "bad_payload"),
    ({"interests": [["cats"]]}, "bad_payload"),
    ({"interests": [f"i{k}" for k in range(MAX_INTERESTS + 1)]}, "bad_payload"),  # 6 > 5
    ({"interests": ["x" * (MAX_INTEREST + 1)]}, "too_long"),
    ({"interests": ["ok", "y" * (MAX_INTEREST + 1)]}, "too_long"),
]


async def test_join_refuses_bad_payloads_and_does_not_enqueue(fresh, peers):
    a = await peers(fresh.urls()[0], "A")
    await assert_refusals(a, "join", over_the_wire(JOIN_BAD))
    assert fresh.redis.client.zcard(QUEUE) == 0, "a refused join put the user on the wait list"
    # the limits themselves are accepted: 5 interests, one of 24 characters once trimmed
    ok = await call(a, "join", {"interests": ["a", "b", "c", "d", "  " + "z" * MAX_INTEREST + " "]})
    assert ok == {"ok": True}
    assert "online" in await a.next("waiting")
    assert fresh.redis.client.zscore(QUEUE, a.user) is not None
    assert a.count("error") == 0  # refusals with an ack are never also sent as `error` events


MESSAGE_BAD = [
    (NOTHING, "bad_payload"),
    ((None,), "bad_payload"),
    (42, "bad_payload"),
    ("hello", "bad_payload"),
    (["m1", "hello"], "bad_payload"),
    (True, "bad_payload"),
    ({"text": "hello"}, "bad_id"),
    ({"id": 7, "text": "hello"}, "bad_id"),
    ({"id": None, "text": "hello"}, "bad_id"),
    ({"id": True, "text": "hello"}, "bad_id"),
    ({"id": ["m1"], "text": "hello"}, "bad_id"),
    ({"id": "", "text": "hello"}, "bad_id"),
    ({"id": "i" * (MAX_ID + 1), "text": "hello"}, "bad_id"),
    ({"id": "m1"}, "bad_payload"),
    ({"id": "m1", "text": None}, "bad_payload"),
    ({"id": "m1", "text": 5}, "bad_payload"),
    ({"id": "m1", "text": True}, "bad_payload"),
    ({"id": "m1", "text": ["hello"]}, "bad_payload"),
    ({"id": "m1", "text": {"t": "hello"}}, "bad_payload"),
    ({"id": "m1", "text": ""}, "empty"),
    ({"id": "m1", "text": "   \n\t  "}, "empty"),
    ({"id": "m1", "text": "x" * (MAX_TEXT + 1)}, "too_long"),
    ({"id": "m1", "text": "界" * (MAX_TEXT + 1)}, "too_long"),  # characters, not bytes
]


async def test_message_refuses_bad_payloads_and_delivers_nothing(fresh, peers):
    w1, w2 = fresh.urls()
    a, b = await peers(w1, "A"), await peers(w2, "B")
    room = await pair(a, b)
    await assert_refusals(a, "message", over_the_wire(MESSAGE_BAD))

    # exactly at the limits: a 64-character id and 500 characters once trimmed
    long_id = "i" * MAX_ID
    ack = await a.send(long_id, "  " + "y" * MAX_TEXT + "\n ")
    assert ack["ok"] is True and ack["seq"] == 1, ack
    # the id "m1" of the refused messages was not used up: it is delivered, not a duplicate
    ack2 = await a.send("m1", "hello")
    assert ack2["ok"] is True and ack2["seq"] == 2, ack2
    got = await b.next("message", where=lambda m: m["id"] == "m1")
    assert got == {"id": "m1", "room": room, "text": "hello", "ts": ack2["ts"], "seq": 2}
    assert [(m["id"], m["text"]) for m in b.events["message"]] == [
        (long_id, "y" * MAX_TEXT), ("m1", "hello")]
    assert a.count("error") == 0


TYPING_BAD = [
    (NOTHING, "bad_payload"),
    ((None,), "bad_payload"),
    (True, "bad_payload"),
    (1, "bad_payload"),
    ("yes", "bad_payload"),
    ([True], "bad_payload"),
    ({}, "bad_payload"),
    ({"typing": "yes"}, "bad_payload"),
    ({"typing": "true"}, "bad_payload"),
    ({"typing": 1}, "bad_payload"),
    ({"typing": None}, "bad_payload"),
]


async def test_typing_refuses_bad_payloads_and_tells_the_partner_nothing(fresh, peers):
    w1, w2 = fresh.urls()
    a, b = await peers(w1, "A"), await peers(w2, "B")
    room = await pair(a, b)
    await assert_refusals(a, "typing", over_the_wire(TYPING_BAD))
    assert await call(a, "typing", {"typing": False}) == {"ok": True}
    assert await b.next("typing") == {"typing": False, "room": room}
    # the message after it is the sentinel: anything refused earlier would have arrived first
    await a.send("after", "after typing")
    await b.next("message", where=lambda m: m["id"] == "after")
    assert b.events["typing"] == [{"typing": False, "room": room}]
    assert a.count("error") == 0


EMPTY_BAD = [
    (42, "bad_payload"),
    ("now", "bad_payload"),
    ([1], "bad_payload"),
    (True, "bad_payload"),
    (["next"], "bad_payload"),
]


@pytest.mark.parametrize("event", ["next", "leave"])
async def test_next_and_leave_refuse_bad_payloads_without_ending_the_chat(fresh, peers, event):
    w1, w2 = fresh.urls()
    a, b = await peers(w1, "A"), await peers(w2, "B")
    room = await pair(a, b)
    await assert_refusals(a, event, over_the_wire(EMPTY_BAD))
    # still the same chat: a message goes through, the partner heard of no ending
    await chat_both_ways(a, b, "still")
    assert b.events["message"][-1]["room"] == room
    assert b.count("partner_left") == 0
    # and the event itself works with nothing or an empty object
    assert await call(a, event, (None,) if event == "next" else {}) == {"ok": True}
    reason = {"next": "next", "leave": "left"}[event]
    assert (await b.next("partner_left"))["reason"] == reason
    assert a.count("error") == 0


REPORT_BAD = [
    (42, "bad_payload"),
    ("spam", "bad_payload"),
    (["spam"], "bad_payload"),
    (True, "bad_payload"),
    ({"reason": 5}, "bad_payload"),
    ({"reason": True}, "bad_payload"),
    ({"reason": ["spam"]}, "bad_payload"),
    ({"reason": {"why": "spam"}}, "bad_payload"),
    ({"reason": "r" * (MAX_REASON + 1)}, "too_long"),
]


async def test_report_refuses_bad_payloads_and_records_only_the_accepted(fresh, peers):
    w1, w2 = fresh.urls()
    a, b = await peers(w1, "A"), await peers(w2, "B")
    await pair(a, b)
    await assert_refusals(a, "report", over_the_wire(REPORT_BAD))
    assert reported(await call(a, "report", {"reason": "r" * MAX_REASON}))
    assert reported(await call(a, "report", {"reason": "  spam  "}))
    assert reported(await call(a, "report"))
    reports = [f for _id, f in fresh.redis.client.xrange(HISTORY) if f.get("type") == "report"]
    assert [(r["user"], r["reported"], r["reason"]) for r in reports] == [
        (a.user, b.user, "r" * MAX_REASON), (a.user, b.user, "spam"), (a.user, b.user, "")]
    assert a.count("error") == 0


# -- refusals without an ack callback ----------------------------------------------------------
NO_ACK_CASES = [
    ("join", 42, "bad_payload"),
    ("join", {"interests": ["x" * (MAX_INTEREST + 1)]}, "too_long"),
    ("join", {}, "already_chatting"),
    ("message", "hello", "bad_payload"),
    ("message", NOTHING, "bad_payload"),
    ("message", {"text": "hello"}, "bad_id"),
    ("message", {"id": "i" * (MAX_ID + 1), "text": "hello"}, "bad_id"),
    ("message", {"id": "n1", "text": "  "}, "empty"),
    ("message", {"id": "n1", "text": "x" * (MAX_TEXT + 1)}, "too_long"),
    ("typing", {"typing": "yes"}, "bad_payload"),
    ("typing", NOTHING, "bad_payload"),
    ("next", 42, "bad_payload"),
    ("leave", "now", "bad_payload"),
    ("report", {"reason": 5}, "bad_payload"),
    ("report", {"reason": "r" * (MAX_REASON + 1)}, "too_long"),
    ("frobnicate", {}, "unknown_event"),
]


async def test_refusals_without_an_ack_come_as_error_events(fresh, peers):
    """web/packets.py `Gate.event` tells the handlers whether an ack was asked for: without
    an ack callback a refusal comes as an `error` event."""
    w1, w2 = fresh.urls()
    a, b = await peers(w1, "A"), await peers(w2, "B")
    idle = await peers(w2, "idle")
    room = await pair(a, b)

    for event, payload, code in NO_ACK_CASES:
        await pace(a)
        await emit(a, event, payload)
        err = await a.next("error", timeout=5)
        try:
            check_error(err, code)
        except AssertionError as exc:
            raise AssertionError(f"{event} {describe(payload)} without ack: {exc}") from None

    for event, payload in [("message", {"id": "c1", "text": "hello"}),
                           ("typing", {"typing": True}), ("report", {})]:
        await emit(idle, event, payload)
        check_error(await idle.next("error", timeout=5), "not_chatting")

    # an accepted event without an ack produces no error, and the chat is untouched
    await emit(a, "typing", {"typing": True})
    assert await b.next("typing") == {"typing": True, "room": room}
    await chat_both_ways(a, b, "after")
    assert a.count("error") == len(NO_ACK_CASES)
    assert [m["id"] for m in b.events["message"]] == ["after-a"]
    assert b.count("partner_left") == 0 and b.count("typing") == 1


# -- unknown events, wrong state ---------------------------------------------------------------
UNKNOWN_NAMES = ["frobnicate", "hello", "matched", "partner_left", "MESSAGE", "Join", ""]


async def test_unknown_events_are_refused_with_and_without_ack(fresh, peers):
    w1, w2 = fresh.urls()
    a, b = await peers(w1, "A"), await peers(w2, "B")
    await pair(a, b)
    for name in UNKNOWN_NAMES:
        await pace(a)
        check_refused(await call(a, name, {"id": "u1", "text": "hi"}), "unknown_event")
    for name in UNKNOWN_NAMES:
        await pace(a)
        await emit(a, name, {"typing": True})
        check_error(await a.next("error", timeout=5), "unknown_event")
    # none of them reached the partner as a message, typing or anything else
    await chat_both_ways(a, b, "known")
    assert [m["id"] for m in b.events["message"]] == ["known-a"]
    assert b.count("typing") == 0 and b.count("partner_left") == 0


@pytest.fixture(scope="module")
def quarantine():
    """A stack of its own for what may leave a worker in a bad state (a ghost connection)."""
    from conftest import Stack

    s = Stack(workers=2)
    yield s
    s.stop(background=True)


@pytest.fixture
async def quarantined(quarantine):
    quarantine.redis.client.flushall()
    await warm_up(quarantine)
    return quarantine


@pytest.mark.parametrize("name", ["disconnect", "connect"])
async def test_reserved_event_names_sent_by_a_client_are_unknown_events(quarantined, peers,
                                                                        name):
    """A client may emit any name, including the reserved `connect`/`disconnect`: the server must
    treat it as any other unknown event, not run its own connection handlers for it."""
    w1, w2 = quarantined.urls()
    a, b = await peers(w1, "A"), await peers(w2, "B")
    await pair(a, b)
    user = a.user
    check_refused(await call(a, name, {"token": "forged"}), "unknown_event")
    # the connection is still the same user, in the same chat
    assert a.count("hello") == 1 and a.user == user
    await chat_both_ways(a, b, name)
    assert b.count("partner_left") == 0
    for p in quarantined.procs():
        assert p.alive(), f"{p.name} died:\n{p.output()[-4000:]}"


async def test_join_while_chatting_is_already_chatting_and_keeps_the_chat(fresh, peers):
    w1, w2 = fresh.urls()
    a, b = await peers(w1, "A"), await peers(w2, "B")
    room = await pair(a, b)
    check_refused(await call(a, "join", {}), "already_chatting")
    check_refused(await call(a, "join", {"interests": ["cats"]}), "already_chatting")
    check_refused(await call(b, "join"), "already_chatting")
    assert fresh.redis.client.zcard(QUEUE) == 0
    await chat_both_ways(a, b, "same")
    assert {m["room"] for m in b.events["message"]} == {room}
    assert a.count("matched") == 1 and b.count("matched") == 1
    assert a.count("partner_left") == 0 and b.count("partner_left") == 0


async def test_message_typing_report_without_a_partner_are_not_chatting(fresh, peers):
    w1, w2 = fresh.urls()
    idle = await peers(w1, "idle")  # connected, never joined
    for event, payload in [("message", {"id": "x1", "text": "anyone?"}),
                           ("typing", {"typing": True}), ("report", {"reason": "spam"})]:
        check_refused(await call(idle, event, payload), "not_chatting")

    waiting = await peers(w2, "waiting")  # joined, alone on the wait list
    await waiting.join()
    check_refused(await call(waiting, "message", {"id": "w1", "text": "anyone?"}), "not_chatting")
    check_refused(await call(waiting, "typing", {"typing": True}), "not_chatting")

    # after the chat ended, message and typing are refused; a report about the last partner is not
    a, b = await peers(w1, "A"), await peers(w2, "B")
    assert await call(waiting, "leave") == {"ok": True}
    await pair(a, b)
    assert await call(b, "leave") == {"ok": True}
    assert (await a.next("partner_left"))["reason"] == "left"
    check_refused(await call(a, "message", {"id": "late", "text": "still there?"}), "not_chatting")
    check_refused(await call(a, "typing", {"typing": True}), "not_chatting")
    assert reported(await call(a, "report", {"reason": "rude"}))
    assert b.count("message") == 0 and b.count("typing") == 0


# -- floods --------------------------------------------------------------------------------------
async def test_message_flood_is_rate_limited_and_only_accepted_messages_are_delivered(fresh, peers):
    w1, w2 = fresh.urls()
    a, b = await peers(w1, "A"), await peers(w2, "B")
    await pair(a, b)
    n = 4 * MESSAGE_BURST  # more than the burst plus what refills while they are sent
    acks = await asyncio.gather(*(a.send(f"f{i}", f"flood {i}") for i in range(n)))
    accepted = {}
    limited = 0
    for i, ack in enumerate(acks):
        if ack.get("ok") is True:
            assert ack["id"] == f"f{i}"
            accepted[ack["id"]] = ack
        else:
            check_refused(ack, "rate_limited")
            limited += 1
    assert limited > 0, "a flood over the burst was never rate limited"
    assert len(accepted) >= MESSAGE_BURST, "the burst itself must be accepted"
    assert sorted(a["seq"] for a in accepted.values()) == list(range(1, len(accepted) + 1))

    # the typing after the flood is a sentinel: every delivered message arrives before it
    assert await call(a, "typing", {"typing": False}) == {"ok": True}
    await b.next("typing")
    got = b.events["message"]
    assert sorted(m["id"] for m in got) == sorted(accepted), "delivered != accepted"
    for m in got:
        assert m["seq"] == accepted[m["id"]]["seq"] and m["text"] == "flood " + m["id"][1:]

    # the same without acks, the other way: refusals come as `error` events, the rest arrive
    m = 3 * MESSAGE_BURST
    for i in range(m):
        await emit(b, "message", {"id": f"g{i}", "text": f"back {i}"})
    await until(lambda: a.count("message") + b.count("error") == m, 10,
                "every no-ack message to be delivered or refused")
    assert b.count("error") > 0 and a.count("message") >= MESSAGE_BURST
    for err in b.events["error"]:
        check_error(err, "rate_limited")
    assert len({x["id"] for x in a.events["message"]}) == a.count("message")  # no duplicates
    await assert_workers_still_serve(fresh, "after-flood")


async def test_typing_flood_is_rate_limited_after_the_control_burst(fresh, peers):
    w1, w2 = fresh.urls()
    a, b = await peers(w1, "A"), await peers(w2, "B")
    room = await pair(a, b)  # the join used one control token of A's connection
    n = CONTROL_BURST + 20  # over the control burst, within the packet burst (60)
    acks = await asyncio.gather(*(call(a, "typing", {"typing": i % 2 == 0}) for i in range(n)))
    ok = [x for x in acks if x == {"ok": True}]
    for x in acks:
        if x != {"ok": True}:
            check_refused(x, "rate_limited")
    assert len(ok) >= CONTROL_BURST - 1, "the control burst must be accepted"
    assert len(ok) < n, "a typing flood over the control burst was never rate limited"

    # a message (not counted against the control burst) is the sentinel for delivery
    assert (await a.send("after", "after the flood"))["ok"] is True
    await b.next("message", where=lambda m: m["id"] == "after")
    assert b.count("typing") == len(ok)
    # the partner's own connection is not limited by A's flood
    assert await call(b, "typing", {"typing": True}) == {"ok": True}
    assert await a.next("typing") == {"typing": True, "room": room}
    await assert_workers_still_serve(fresh, "after-typing-flood")


# -- oversized frames and malformed packets --------------------------------------------------------
async def oversized_frame_scenario(stack, peers, transport: str) -> None:
    w1, w2 = stack.urls()
    a = await peers(w1, "A", transports=(transport,))
    b = await peers(w2, "B")
    c, d = await peers(w1, "C"), await peers(w1, "D")
    room = await pair(a, b)
    await pair(c, d)
    await a.send("a0", "before")
    await b.next("message", where=lambda m: m["id"] == "a0")

    # under the frame limit the application answers; the connection stays
    big_but_fits = "x" * (MAX_FRAME_BYTES // 2)
    check_refused(await a.send("fits", big_but_fits), "too_long")
    assert a.sio.connected

    closed = asyncio.Event()
    a.sio.on("disconnect", lambda *_: closed.set())
    try:
        await a.sio.emit("message", {"id": "huge", "text": "x" * 100_000})
    except Exception:  # the transport may fail the send itself: that is a close too
        pass
    await asyncio.wait_for(closed.wait(), 20)
    assert not a.sio.connected

    # the worker keeps serving the other pair on it
    await chat_both_ways(c, d, "neighbours")
    # the flooding user reconnects with the token and is still in the same chat
    a2 = Peer(w1, "A again")
    await a2.connect(token=a.token, since=1)
    try:
        assert a2.user == a.user
        resumed = await a2.next("resumed")
        assert resumed["state"] == "chatting" and resumed["room"] == room
        assert resumed["history"] == []  # neither the refused nor the oversized message
        await chat_both_ways(a2, b, "resumed")
        assert [m["id"] for m in b.events["message"]] == ["a0", "resumed-a"]
        assert b.count("partner_left") == 0
        assert a.count("error") == 0 and a2.count("error") == 0
    finally:
        await a2.close()
    await assert_workers_still_serve(stack, f"after-frame-{transport}")


async def test_oversized_frame_closes_only_that_connection_and_the_user_resumes(fresh, peers):
    await oversized_frame_scenario(fresh, peers, "websocket")


async def test_oversized_post_closes_only_that_polling_connection_and_the_user_resumes(
        make_stack, peers):
    # The Python polling client may take several seconds to notice that the server dropped it
    # (its POST of the oversized body has to time out); a longer grace keeps the chat meanwhile.
    stack = make_stack(workers=2, RESUME_GRACE=30)
    await warm_up(stack)
    await oversized_frame_scenario(stack, peers, "polling")
    # Discard this stack at once: when the client was slow to notice, the worker's graceful stop
    # waits out gunicorn's graceful timeout (10 s) for the dropped long-poll request.
    for p in stack.procs():
        p.kill()


MALFORMED_PACKETS = [
    "2[]",                      # an event without a name
    '2["message"',              # broken JSON
    "2",                        # no data at all
    '2{"a":1}',                 # data not a list
    '2[{"a":1}]',               # an object as the event name
    "2[null]",                  # null as the event name
    "2[1,2]",                   # a number as the event name
    '27[{"a":1}]',              # the same, asking for an ack
    '2["typing",{"typing":true},{"extra":1}]',  # extra arguments
    "9hello",                   # an unknown Socket.IO packet type
    '2["message",' + "[" * 7000 + "]" * 7000 + "]",  # nesting deeper than the JSON decoder goes
    '2["message",{"id":"n","text":"x","n":' + "9" * 500 + "}]",  # an integer too large to parse
]


async def test_malformed_packets_do_not_break_the_connection_or_the_worker(fresh, peers):
    w1, w2 = fresh.urls()
    a, b = await peers(w1, "A"), await peers(w2, "B")
    await pair(a, b)
    for raw in MALFORMED_PACKETS:
        await pace(a)
        await a.sio.eio.send(raw)
    # the connection still works, in the same chat (ordering: this ack comes after them all)
    assert a.sio.connected
    await chat_both_ways(a, b, "after-garbage")
    assert b.count("partner_left") == 0
    # a null or a number as the event name is an unknown event; what cannot be decoded is a
    # bad payload: every garbage packet gets a code (web/packets.py)
    # all but the one asking for an ack (answered in it) and the extra argument (accepted)
    await until(lambda: a.count("error") >= len(MALFORMED_PACKETS) - 2, 10,
                f"every refusal (got {a.events['error']})")
    for err in a.events["error"]:
        assert err.get("code") in ("unknown_event", "bad_payload"), err
        check_error(err, err["code"])
    assert "Traceback" not in fresh.webs[0].output()
    await assert_workers_still_serve(fresh, "after-garbage")
