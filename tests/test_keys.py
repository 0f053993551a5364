"""The key layout (common/keys.py): pure logic, no processes."""
from __future__ import annotations

import pytest
from redis.crc import key_slot

from common.keys import CLUSTER_SHARDS, Keys


def slot(key: str) -> int:
    return key_slot(key.encode())


@pytest.mark.parametrize("shards", [1, CLUSTER_SHARDS])
def test_a_messages_keys_are_the_rooms_keys_in_one_slot(shards):
    k = Keys("chat", shards)
    rooms = [f"room-{i}" for i in range(200)]
    for room in rooms:
        keys = k.message_keys(room, "u1")
        assert keys == [k.chat(room), k.dedupe(room, "u1"), k.sent(room),
                        k.history_of(k.room_tag(room))]
        assert len({slot(key) for key in keys}) == 1
    tags = {k.room_tag(room) for room in rooms}
    if shards == 1:
        assert tags == {k.home}  # one Redis: everything in the home slot
    else:
        assert tags == set(k.shard_tags)  # 200 rooms reach every shard
