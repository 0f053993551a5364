"""Blocks and bans on real processes (web workers, matcher, Redis or a Redis Cluster).

A report keeps the reporter's browser (the `bid` cookie, which a new tab keeps) from being
matched with the reported one again; a banned browser is refused at connect and at join, with
the `banned` code and the ban's end, and nothing else.
"""
from __future__ import annotations

import time

import pytest
import socketio
from peer import Peer, close_all, wait_for
from procs import TEST_SECRET

from common import events as ev
from common.keys import Keys
from common.moderation import (
    Bans,
    Hasher,
    Identity,
    browser_id_of,
    client_address,
    new_browser_id,
)

HASHER = Hasher(TEST_SECRET)


# -- the identity of a visitor (common/moderation.py) -------------------------------------------
def test_only_keyed_hashes_of_a_browser_id_and_an_address_are_made():
    bid = new_browser_id()
    ident = HASHER.identity(bid, "203.0.113.9")
    assert len(ident.browser) == len(ident.addr) == 32 and ident.browser != ident.addr
    assert bid not in ident.packed() and "203.0.113.9" not in ident.packed()
    assert Hasher("another-secret-" + "k" * 32).identity(bid, None).browser != ident.browser
    assert HASHER.identity(bid, None) == Identity(ident.browser, "")
    assert Identity.unpack(ident.packed()) == ident and Identity.unpack(None) == Identity()
    # a browser and an address with the same text never share a hash
    assert HASHER.identity("x" * 32, "x" * 32).browser != HASHER.identity("x" * 32, "x" * 32).addr


def test_the_archiver_keeps_the_hashes_of_both_sides_and_of_the_reported():
    from archiver.writer import rows_from_entries

    rooms, _, _, reports = rows_from_entries([
        ("1-1", {"type": "opened", "room": "r1", "user1": "a", "user2": "b", "interests": "[]",
                 "ts": "1700000000000", "who1": "ba|aa", "who2": "|ab"}),
        ("1-2", {"type": "opened", "room": "r2", "user1": "c", "user2": "d", "interests": "[]",
                 "ts": "1700000000000"}),  # written before bans existed
        ("1-3", {"type": "report", "user": "a", "reported": "b", "room": "r1", "reason": "",
                 "ts": "1700000001000", "reported_browser": "", "reported_addr": "ab"}),
    ])
    assert [(r["user1_browser"], r["user1_addr"], r["user2_browser"], r["user2_addr"])
            for r in rooms] == [("ba", "aa", None, "ab"), (None, None, None, None)]
    assert (reports[0]["reported_browser"], reports[0]["reported_addr"]) == (None, "ab")


@pytest.mark.parametrize("cookie, found", [
    ("bid=" + "a" * 32, "a" * 32),
    ("tz=Asia/Shanghai; bid=" + "0f" * 16 + "; other=1", "0f" * 16),
    ("bid=" + "A" * 32, None),  # not one we set
    ("bid=" + "a" * 31, None),
    ("bid=<script>", None),
    ("", None),
    ("bid=" + "a" * 32 + "; " + "x" * 9000, None),  # an absurd header is not parsed
])
def test_the_browser_id_is_read_from_the_cookie_only_when_well_formed(cookie, found):
    assert browser_id_of({"HTTP_COOKIE": cookie}) == found


def test_the_address_is_the_proxys_view_only_for_trusted_hops():
    env = {"REMOTE_ADDR": "10.0.0.2", "HTTP_X_FORWARDED_FOR": "6.6.6.6, 198.51.100.4"}
    assert client_address(env, 0) == "10.0.0.2"  # a forged header is not believed
    assert client_address(env, 1) == "198.51.100.4"  # what nginx saw
    assert client_address(env, 2) == "6.6.6.6"
    assert client_address(env, 3) == "10.0.0.2"  # fewer hops than trusted: the peer's


def browser() -> tuple[dict, str]:
    """A browser's Cookie header (a new random id) and the keyed hash the server makes of it."""
    bid = new_browser_id()
    return {"Cookie": f"bid={bid}"}, HASHER.identity(bid, None).browser


def keys_of(stack) -> Keys:
    return Keys(stack.env.get("REDIS_PREFIX", "chat"))


@pytest.fixture
async def browsers(fresh_any):
    """make(name, cookie, worker=0) -> a connected Peer of that browser; all closed at the end."""
    made: list[Peer] = []

    async def make(name: str, cookie: dict, worker: int = 0) -> Peer:
        p = Peer(fresh_any.urls()[worker], name, headers=cookie)
        made.append(p)
        await p.connect()
        return p

    yield make
    await close_all(made)


async def test_a_report_keeps_the_two_browsers_apart_even_from_a_new_tab(fresh_any, browsers):
    ca, ha = browser()
    cb, hb = browser()
    a = await browsers("a", ca)
    b = await browsers("b", cb, worker=1)
    await a.join()
    await b.join()
    room = (await a.next("matched"))["room"]
    assert (await b.next("matched"))["room"] == room
    before = int(time.time() * 1000)
    ack = await a.call("report", {"reason": "spam"})
    assert ack["ok"] is True
    # the reporter is told until when (BLOCK_TTL, a day by default, from now)
    assert before + 86400_000 <= ack["blocked_until"] <= time.time() * 1000 + 86400_000
    assert await a.call("leave") == {"ok": True}
    await b.next("partner_left")
    await b.close()

    b2 = await browsers("b2", cb)  # the reported browser again, in a new tab: a new user
    assert b2.user != b.user
    r = fresh_any.client
    k = keys_of(fresh_any)
    await a.join()
    # users who joined in the same millisecond are looked at in the order of their ids: let the
    # clock (Redis's, on this machine) pass a's, so that a is the oldest
    since = r.zscore(k.queue, a.user)
    await wait_for(lambda: time.time() * 1000 >= since + 2, 1, "the next millisecond")
    await b2.join()  # nobody else waits: they must not be paired
    c = await browsers("c", browser()[0], worker=1)
    await c.join()
    # the matcher looks at the oldest first: a (kept from b2) is paired with c
    assert (await c.next("matched"))["room"] == (await a.next("matched"))["room"]
    assert r.zscore(k.queue, b2.user) is not None and b2.count("matched") == 0
    # the block is on the reporter's browser, for both the browser and the user id
    assert set(r.zrange(k.block_prefix + ha, 0, -1)) == {hb, "u:" + b.user}

    # once the block has expired (its entries in the past), the two browsers meet again
    assert await c.call("leave") == {"ok": True}
    await a.next("partner_left")
    await a.call("leave")
    past = int(time.time() * 1000) - 1000
    r.zadd(k.block_prefix + ha, {hb: past, "u:" + b.user: past})
    await a.join()
    assert (await a.next("matched"))["room"] == (await b2.next("matched"))["room"]


async def test_a_banned_browser_is_refused_at_connect_with_the_end_of_its_ban(fresh_any):
    cookie, h = browser()
    until = int(time.time() * 1000) + 3_600_000
    Bans(fresh_any.client, keys_of(fresh_any)).ban(Identity(browser=h), until)
    p = Peer(fresh_any.urls()[0], "banned", headers=cookie)
    refused = []
    p.sio.on("connect_error", lambda data: refused.append(data))
    try:
        with pytest.raises(socketio.exceptions.ConnectionError):
            await p.connect()
    finally:
        await close_all([p])
    # a connect_error shaped like the others: {message, data: {code, message, until}}
    assert refused == [{"message": ev.ERRORS["banned"], "data": ev.banned(until)}]
    assert set(refused[0]["data"]) == {"code", "message", "until"}  # nothing about whom


async def test_a_browser_banned_while_connected_is_refused_at_join(fresh_any, browsers):
    cookie, h = browser()
    p = await browsers("p", cookie)
    until = int(time.time() * 1000) + 60_000
    Bans(fresh_any.client, keys_of(fresh_any)).ban(Identity(browser=h), until)
    assert await p.call("join") == {"ok": False, "error": ev.banned(until)}
    assert fresh_any.client.zscore(keys_of(fresh_any).queue, p.user) is None
    # the connection stays healthy: its other events are answered
    assert (await p.call("leave")) == {"ok": True}


async def test_a_banned_browser_can_neither_make_join_nor_host_a_private_room(fresh_any, browsers):
    """A ban reaches the private rooms too: a banned connection (banned after it connected)
    cannot make a room or join one, and the room it made before is closed to its friend."""
    cookie, h = browser()
    p = await browsers("p", cookie)
    friend = await browsers("friend", browser()[0], worker=1)
    made = await p.call("private_create")
    assert made["ok"], made
    until = int(time.time() * 1000) + 60_000
    Bans(fresh_any.client, keys_of(fresh_any)).ban(Identity(browser=h), until)
    joined = await friend.call("private_join", {"key": made["key"]})
    assert joined["ok"] is False and joined["error"]["code"] == "room_not_found", joined
    assert await p.call("private_create") == {"ok": False, "error": ev.banned(until)}
    theirs = await friend.call("private_create")
    assert await p.call("private_join", {"key": theirs["key"]}) == {
        "ok": False, "error": ev.banned(until)}
    assert p.count("matched") == friend.count("matched") == 0
    assert (await p.call("leave")) == {"ok": True}  # the connection stays healthy


async def test_a_browser_banned_while_waiting_is_told_and_never_matched(fresh_any, browsers):
    cookie, h = browser()
    p = await browsers("p", cookie)
    await p.join()
    until = int(time.time() * 1000) + 60_000
    Bans(fresh_any.client, keys_of(fresh_any)).ban(Identity(browser=h), until)
    q = await browsers("q", browser()[0], worker=1)
    await q.join()  # wakes the matcher, which meets the ban
    assert await p.next("error", where=lambda e: e["code"] == "banned") == ev.banned(until)
    k = keys_of(fresh_any)
    await wait_for(lambda: fresh_any.client.zscore(k.queue, p.user) is None, 10, "p dequeued")
    assert p.count("matched") == 0 and q.count("matched") == 0


def test_an_ipv6_client_is_its_64_and_a_mapped_ipv4_is_the_ipv4():
    from common.moderation import address_scope

    assert address_scope("2001:db8:1:2::a") == address_scope("2001:db8:1:2:ffff::1") \
        == "2001:db8:1:2::/64"
    assert address_scope("2001:db8:1:3::a") != address_scope("2001:db8:1:2::a")
    assert address_scope("::ffff:198.51.100.4") == address_scope("198.51.100.4") == "198.51.100.4"
    assert address_scope("fe80::1%eth0") == "fe80::/64" and address_scope("unix") == "unix"
    assert HASHER.identity(None, "2001:db8::1").addr == HASHER.identity(None, "2001:db8::2").addr
