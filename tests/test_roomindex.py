"""web/roomindex.py against python-socketio's own Manager: the same random operations on both
leave the same room table, callbacks and pending lists, and name the same rooms per connection.
Pure logic: no server, only the id generator the manager asks its server for."""
from __future__ import annotations

import itertools
import random
import types

import pytest
import socketio

from web.roomindex import RoomIndex


class IndexedManager(RoomIndex, socketio.Manager):
    pass


def with_ids(manager):
    counter = itertools.count()
    manager.set_server(types.SimpleNamespace(
        packet_class=socketio.packet.Packet,
        eio=types.SimpleNamespace(generate_id=lambda: f"sid{next(counter)}")))
    return manager


def state(m) -> dict:
    return {
        "rooms": {ns: {room: dict(members) for room, members in table.items()}
                  for ns, table in m.rooms.items()},
        "callbacks": sorted(m.callbacks),
        "pending_connect": {ns: sorted(s) for ns, s in m.pending_connect.items()},
        "pending_disconnect": {ns: sorted(s) for ns, s in m.pending_disconnect.items()},
    }


def members(m) -> dict:
    """What the index's `members` must be: every room but None, its sids in the library's order
    (an unknown sid entering a room leaves it in the library's table, empty: not here)."""
    return {(ns, room): tuple(sids) for ns, table in m.rooms.items()
            for room, sids in table.items() if room is not None and sids}


def act(m, op: str, args: tuple):
    """One operation; what it returned or the exception type it raised."""
    try:
        return getattr(m, op)(*args)
    except (ValueError, KeyError) as exc:
        return type(exc)


@pytest.mark.parametrize("seed", range(20))
def test_the_index_keeps_the_library_semantics(seed):
    rnd = random.Random(seed)
    plain, indexed = with_ids(socketio.Manager()), with_ids(IndexedManager())
    namespaces = ["/", "/other"]
    sids: list[tuple[str, str]] = []  # (namespace, sid) ever connected
    rooms = ["u:a", "u:b", "room1", "room2"]
    for _ in range(400):
        ns = rnd.choice(namespaces)
        known = [s for n, s in sids if n == ns]
        choice = rnd.random()
        if choice < 0.25 or not known:
            eio = f"eio{rnd.randrange(30)}"
            a, b = act(plain, "connect", (eio, ns)), act(indexed, "connect", (eio, ns))
            assert a == b
            if isinstance(a, str):
                sids.append((ns, a))
            continue
        sid = rnd.choice(known + ["sid-unknown"])
        if choice < 0.45:
            args, op = (sid, ns, rnd.choice(rooms + known)), "basic_enter_room"
        elif choice < 0.6:
            args, op = (sid, ns, rnd.choice(rooms + [None, sid])), "basic_leave_room"
        elif choice < 0.68:
            args, op = (rnd.choice(rooms + known), ns), "basic_close_room"
        elif choice < 0.75:
            args, op = (sid, ns), "pre_disconnect"
        elif choice < 0.82:
            args, op = (sid, lambda *a: None), "_generate_ack_id"
        else:
            args, op = (sid, ns), "basic_disconnect"
        assert act(plain, op, args) == act(indexed, op, args), (op, args)
        assert state(plain) == state(indexed), (op, args)
        assert indexed.members == members(plain), (op, args)
    assert sids, "the sequence connected somebody"
    for ns, sid in sids:
        assert sorted(map(str, plain.get_rooms(sid, ns))) == \
            sorted(map(str, indexed.get_rooms(sid, ns)))


def test_a_disconnect_does_not_look_at_other_connections_rooms():
    """The point of the index: a disconnect touches only its connection's rooms."""
    m = with_ids(IndexedManager())
    sids = [m.connect(f"eio{i}", "/") for i in range(2000)]
    for i, sid in enumerate(sids):
        m.basic_enter_room(sid, "/", f"u:{i}")
    looked = []
    for table in m.rooms["/"].values():
        table.__class__ = type("Watched", (table.__class__,), {
            "__contains__": lambda self, k: looked.append(k) or super(type(self), self)
            .__contains__(k)})
    m.basic_disconnect(sids[7], "/")
    assert looked == []
    assert m.get_rooms(sids[7], "/") == [] and sids[7] not in m.rooms["/"][None]
    assert sorted(m.get_rooms(sids[8], "/")) == sorted([sids[8], "u:8"])
