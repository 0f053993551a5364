"""A chat that ends while the partner's worker is not subscribed: the `partner_left` published
into that gap reaches nobody (pub/sub keeps nothing), and the replay after it must still tell
the page that its chat is over, and why (docs/RELIABILITY.md, "A queue listener gap")."""
from __future__ import annotations

import pytest
from peer import pair

from common.keys import CLUSTER_SHARDS, WORKER_CHANNEL_INFIX, Keys

ATTEMPTS = 5  # a listener is back within RETRY_FIRST (0.1 s): a Next lands in the gap at once


def subscribers(stack, channel: str, node) -> int:
    """How many connections are subscribed to the worker channel now, on the node serving it."""
    if stack.cluster is None:
        return int(dict(node.client.pubsub_numsub(channel))[channel])
    reply = node.client.execute_command("PUBSUB", "SHARDNUMSUB", channel)
    return int(reply[1])


async def end_in_a_gap(stack, a, b) -> str:
    """Pair a and b; cut the listener of a's worker on the node of their chat's shard, and have
    b press Next before it subscribes again (checked: the channel still had no subscriber once
    the Next was acknowledged, so close.lua's `partner_left` reached nobody). Retried with a
    new pair when the listener was faster than the Next. The room that ended."""
    keys = Keys(stack.env.get("REDIS_PREFIX", "chat"),
                CLUSTER_SHARDS if stack.cluster is not None else 1)
    room = await pair(a, b)
    for _ in range(ATTEMPTS):
        channel = keys.room_tag(room) + WORKER_CHANNEL_INFIX + a.worker
        node = stack.redis if stack.cluster is None else stack.cluster.node_of(keys.chat(room))
        assert stack.kill_listeners([node]) > 0, "no listener of this stack on the chat's node"
        ack = await b.call("next")
        assert ack == {"ok": True}, ack
        if subscribers(stack, channel, node) == 0:
            return room
        # the listener was back in time: that chat ended as usual; b waits (Next), a joins
        await a.next("partner_left", where=lambda e, room=room: e["room"] == room)
        await a.join()
        ma, mb = await a.next("matched"), await b.next("matched")
        assert ma["room"] == mb["room"], (ma, mb)
        room = ma["room"]
    pytest.fail(f"the listener was subscribed again before the Next, {ATTEMPTS} times")


async def test_partner_left_published_in_a_listener_gap_still_reaches_the_page(
        make_stack, backend, peers):
    """The idle partner of a Next whose `partner_left` fell into its worker's listener gap is
    told `partner_left {reason: "next", room}` after the gap: its page leaves that chat with the
    stranger's reason, and is not left showing a chat that has ended."""
    s = make_stack(workers=1, **backend)
    url = s.urls()[0]
    a, b = await peers(url, "gap-a"), await peers(url, "gap-b")
    room = await end_in_a_gap(s, a, b)
    left = await a.next("partner_left", where=lambda e: e["room"] == room, timeout=10)
    assert left == {"reason": "next", "room": room}, left
    assert s.client.hget(s.home_key("room"), a.user) is None  # idle indeed
