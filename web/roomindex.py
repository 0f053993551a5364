"""Which rooms each connection is in, kept beside python-socketio's room table.

python-socketio 5.18 (base_manager.py) finds a connection's rooms by scanning every room of
the namespace: a disconnect copies the whole room table and tests each room, and so does
`get_rooms`. Each connection here is in two rooms (its own sid and its user's), so with N
connections on a worker one disconnect costs O(2N) bidict lookups: ~1.5 % of a loaded worker at
1000 connections and ~8 disconnects/s, and a worker of 10,000 connections with 100 disconnects/s
would spend a whole core on it. The index makes both O(rooms of that connection).

It also keeps each room's members (but the namespace-wide room None, which every connection
is in) as a tuple in the library's order: web/listener.py `Listener.sids_of` reads a user's
connections several times per chat message, and `list()` of the library's room entry (a bidict:
`__len__` and `__iter__` are Python methods) made it ~2 % of a loaded worker's Python time
(py-spy --gil, 1000 users, 450 msgs/s). Rooms here are a connection's own and its user's (one
or a few members): a tuple rebuilt at each enter and leave costs less than a read.

It watches the library's own primitives (basic_enter_room, basic_leave_room: every other change
of the table goes through them) and replaces only the scans. `basic_disconnect` repeats the
library's bookkeeping after the scan; tests/test_roomindex.py runs random sequences of
operations on both and fails if a library update makes them differ (rooms and members alike).
"""
from __future__ import annotations


class RoomIndex:
    """Mixin for a socketio Manager: put it before the Manager class in the bases."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rooms_of: dict[tuple[str, str], set] = {}  # (namespace, sid) -> its rooms
        # (namespace, room) -> its sids, in the library's order; not for the room None
        self.members: dict[tuple[str, object], tuple[str, ...]] = {}

    def basic_enter_room(self, sid, namespace, room, eio_sid=None):
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        self.rooms_of.setdefault((namespace, sid), set()).add(room)
        if room is not None:
            sids = self.members.get((namespace, room), ())
            if sid not in sids:  # entered again: the library keeps its place
                self.members[(namespace, room)] = sids + (sid,)

    def basic_leave_room(self, sid, namespace, room):
        super().basic_leave_room(sid, namespace, room)
        rooms = self.rooms_of.get((namespace, sid))
        if rooms is not None:
            rooms.discard(room)
            if not rooms:
                del self.rooms_of[(namespace, sid)]
        sids = self.members.get((namespace, room))
        if sids is not None and sid in sids:
            left = tuple(s for s in sids if s != sid)
            if left:
                self.members[(namespace, room)] = left
            else:
                del self.members[(namespace, room)]

    def get_rooms(self, sid, namespace):
        return [r for r in self.rooms_of.get((namespace, sid), ()) if r is not None]

    def basic_disconnect(self, sid, namespace, **kwargs):
        if namespace not in self.rooms:
            return
        for room in list(self.rooms_of.get((namespace, sid), ())):
            self.basic_leave_room(sid, namespace, room)
        # the rest as in the library
        self.callbacks.pop(sid, None)
        for pending in (self.pending_connect, self.pending_disconnect):
            sids = pending.get(namespace)
            if sids is not None and sid in sids:
                sids.remove(sid)
                if not sids:
                    del pending[namespace]
