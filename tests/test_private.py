"""Private rooms on real processes (two web workers, the matcher), on one Redis and a cluster:
a host makes a key, a friend joins with it, and what follows is the same chat as a random one."""
from __future__ import annotations

from common.limits import PRIVATE_KEY_ALPHABET, PRIVATE_KEY_LEN
from peer import Peer, exchange, reported, wait_for


def refused(ack: dict) -> str:
    assert ack["ok"] is False, ack
    return ack["error"]["code"]


async def host_and_friend(stack, peers):
    """A host on w1 makes a room, a friend on w2 joins it by key typed in lower case; both are
    told `matched` with kind private. (host, friend, key, room)"""
    w1, w2 = stack.urls()
    host, friend = await peers(w1, "host"), await peers(w2, "friend")
    made = await host.call("private_create")
    assert made["ok"] and len(made["key"]) == PRIVATE_KEY_LEN
    assert set(made["key"]) <= set(PRIVATE_KEY_ALPHABET) and made["expires"] > 0
    joined = await friend.call("private_join", {"key": " " + made["key"].lower() + " "})
    assert joined["ok"], joined
    mh, mf = await host.next("matched"), await friend.next("matched")
    assert mh["room"] == mf["room"] == joined["room"]
    assert mh["kind"] == mf["kind"] == "private" and mh["interests"] == []
    return host, friend, made["key"], joined["room"]


async def test_a_friend_joins_by_key_and_they_chat_and_resume(fresh_any, peers):
    host, friend, key, room = await host_and_friend(fresh_any, peers)
    await exchange(host, friend, "private")
    assert await host.call("typing", {"typing": True}) == {"ok": True}
    assert await friend.next("typing") == {"typing": True, "room": room}
    # a reload of the friend's page resumes the same private chat with what was said
    token = friend.token
    await friend.close()
    again = Peer(fresh_any.urls()[0], "friend-again")
    await again.connect(token=token)
    snap = await again.next("resumed")
    assert snap["state"] == "chatting" and snap["room"] == room and snap["kind"] == "private"
    assert [m["mine"] for m in snap["history"]] == [False, True]
    ack = await again.send("after-resume", "still here")
    assert (await host.next("message", where=lambda m: m["id"] == "after-resume"))["seq"] == ack["seq"]
    assert reported(await host.call("report", {"reason": "spam"}))
    await again.close()


async def test_a_third_person_is_refused_and_the_key_ends_with_the_chat(fresh_any, peers):
    host, friend, key, room = await host_and_friend(fresh_any, peers)
    third = await peers(fresh_any.urls()[1], "third")
    assert refused(await third.call("private_join", {"key": key})) == "room_full"
    # the same key typed in full width (an input method's) is the same key
    wide = "".join(chr(ord(c) + 0xFEE0) for c in key.lower())
    assert refused(await third.call("private_join", {"key": wide})) == "room_full"
    assert third.count("matched") == 0
    assert await host.call("next") == {"ok": True}  # Next goes to the random queue
    assert (await friend.next("partner_left"))["reason"] == "next"
    await host.next("waiting")
    assert not fresh_any.client.exists(fresh_any.home_key("private:" + key))
    assert refused(await third.call("private_join", {"key": key})) == "room_not_found"


async def test_unknown_expired_and_malformed_keys_are_refused(fresh_any, peers):
    w1, w2 = fresh_any.urls()
    host, guest = await peers(w1, "host"), await peers(w2, "guest")
    assert refused(await guest.call("private_join", {"key": "ABCDEFGH"})) == "room_not_found"
    for bad in ({"key": "ABCDEFG0"}, {"key": "ABCDEFG"}, {"key": 12345678}, {"key": "A" * 999},
                "ABCDEFGH", None, {"nokey": 1}):
        assert refused(await guest.call("private_join", bad)) == "bad_payload", bad
    assert refused(await guest.call("private_create", "x")) == "bad_payload"
    made = await host.call("private_create")
    record = fresh_any.home_key("private:" + made["key"])
    fresh_any.client.pexpire(record, 1)  # PRIVATE_ROOM_TTL passing, without waiting for it
    await wait_for(lambda: not fresh_any.client.exists(record), 5, "the key to expire")
    assert refused(await guest.call("private_join", {"key": made["key"]})) == "room_not_found"
    # the host's Leave ends a key nobody used
    made = await host.call("private_create")
    assert await host.call("leave") == {"ok": True}
    assert refused(await guest.call("private_join", {"key": made["key"]})) == "room_not_found"
    assert guest.count("matched") == host.count("matched") == 0


async def test_guessing_keys_is_throttled_per_user_and_per_address(fresh_any, peers):
    w1, w2 = fresh_any.urls()
    guesser, host = await peers(w1, "guesser"), await peers(w2, "host")
    key = (await host.call("private_create"))["key"]
    wrong = [c * PRIVATE_KEY_LEN for c in PRIVATE_KEY_ALPHABET if c * PRIVATE_KEY_LEN != key]
    codes = [refused(await guesser.call("private_join", {"key": k})) for k in wrong[:11]]
    assert codes == ["room_not_found"] * 10 + ["rate_limited"]  # PRIVATE_GUESS_BURST 10
    assert refused(await guesser.call("private_join", {"key": key})) == "rate_limited"
    # a new user from the same address is held back too (every test client is 127.0.0.1)
    other = await peers(w2, "other")
    assert refused(await other.call("private_join", {"key": key})) == "rate_limited"
    assert host.count("matched") == 0
    assert await guesser.call("typing", {"typing": False}) != {}  # the connection is healthy


async def test_guesses_behind_nginx_are_counted_per_client_and_per_ipv6_64(make_stack, peers):
    """Behind one proxy hop (TRUSTED_PROXIES=1), the address budget is the client's address as
    nginx put it into X-Forwarded-For, never the forged part before it; an IPv6 client is its
    /64 (any address of it is theirs to use), so a guesser moving inside it gains nothing."""
    s = make_stack(workers=1, matchers=0, TRUSTED_PROXIES="1")
    url = s.urls()[0]

    def via(addr: str, forged: str = "") -> dict:
        return {"headers": {"X-Forwarded-For": f"{forged}, {addr}" if forged else addr}}

    host = await peers(url, "host", **via("2001:db8:aa:1::1"))
    key = (await host.call("private_create"))["key"]
    wrong = [c * PRIVATE_KEY_LEN for c in PRIVATE_KEY_ALPHABET if c * PRIVATE_KEY_LEN != key]
    guesser = await peers(url, "guesser", **via("2001:db8:bad:1::1"))
    for k in wrong[:10]:
        assert refused(await guesser.call("private_join", {"key": k})) == "room_not_found"
    # a new user, a new address of the same /64, a forged first hop: the same budget
    moved = await peers(url, "moved", **via("2001:db8:bad:1:ffff::2", forged="192.0.2.1"))
    assert refused(await moved.call("private_join", {"key": wrong[10]})) == "rate_limited"
    # another subscriber (another /64, or an IPv4 client) is not held back by it
    for name, addr in (("neighbour", "2001:db8:bad:2::1"), ("v4", "198.51.100.7")):
        other = await peers(url, name, **via(addr))
        assert refused(await other.call("private_join", {"key": wrong[10]})) == "room_not_found"
    assert host.count("matched") == 0


async def test_two_friends_joining_at_once_one_gets_in_and_the_host_leaving_meanwhile(
        fresh_any, peers):
    """Races: two friends send the key at the same moment: exactly one gets the room, the
    other is told it is full; a host leaving while a friend joins: either the chat happened
    (and the host's leave ends it for the friend) or the friend is told the key is gone."""
    import asyncio

    w1, w2 = fresh_any.urls()
    host = await peers(w1, "host")
    a, b = await peers(w1, "a"), await peers(w2, "b")
    key = (await host.call("private_create"))["key"]
    acks = await asyncio.gather(a.call("private_join", {"key": key}),
                                b.call("private_join", {"key": key}))
    assert sorted("ok" if ack["ok"] else refused(ack) for ack in acks) == ["ok", "room_full"], acks
    winner = a if acks[0]["ok"] else b
    assert (await winner.next("matched"))["room"] == (await host.next("matched"))["room"]
    assert (a if winner is b else b).count("matched") == 0
    await winner.call("leave")

    key = (await host.call("private_create"))["key"]
    friend = await peers(w2, "friend")
    left, joined = await asyncio.gather(host.call("leave"),
                                        friend.call("private_join", {"key": key}))
    assert left == {"ok": True}
    if joined["ok"]:
        assert (await friend.next("partner_left"))["reason"] == "left"
    else:
        assert refused(joined) == "room_not_found"
    assert not fresh_any.client.exists(fresh_any.home_key("private:" + key))
