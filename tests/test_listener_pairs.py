"""Who a connection's partner is, as a worker learns it from the events it delivers
(web/listener.py Listener.partner_of): pure logic, no processes."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from common import events as ev
from common.keys import user_room
from web.listener import Listener
from web.presence import Connections


@pytest.fixture
def listener():
    members = {}
    manager = SimpleNamespace(worker_channels=(), members=members)
    server = SimpleNamespace(manager=manager)
    conns = Connections()
    for user in "ABCD":
        conns.add(f"s{user}", user)
        members[("/", user_room(user))] = (f"s{user}",)
    return Listener(SimpleNamespace(server=server), store=None,
                    conns=conns, settings=None)


def told(listener, user, event, **data):
    listener.note_opening({"method": "emit", "event": event, "room": user_room(user),
                           "data": [data]})


def test_two_users_told_one_room_are_each_others_partner(listener):
    told(listener, "A", ev.MATCHED, room="r1")
    assert listener.partner_of("A", "r1") is None  # B may be on another worker
    told(listener, "B", ev.MATCHED, room="r1")
    assert (listener.partner_of("A", "r1"), listener.partner_of("B", "r1")) == ("B", "A")
    assert listener.partner_of("C", "r1") is None and listener.partner_of("A", "r2") is None
    told(listener, "A", ev.MATCHED, room="r1")  # told again (a second connection): no change
    assert listener.partner_of("B", "r1") == "A"


def test_a_resumed_chat_counts_and_a_finished_one_is_forgotten(listener):
    told(listener, "A", ev.RESUMED, room="r1", state="chatting", history=[])
    told(listener, "B", ev.RESUMED, room="r1", state="waiting")  # not in it
    assert listener.partner_of("A", "r1") is None
    told(listener, "B", ev.MATCHED, room="r1")
    assert listener.partner_of("A", "r1") == "B"
    told(listener, "B", ev.PARTNER_LEFT, room="r1", reason="next")
    assert listener.partner_of("A", "r1") is None


def test_an_event_to_one_connection_names_no_user(listener):
    listener.note_opening({"method": "emit", "event": ev.MATCHED, "room": "sA",
                           "data": [{"room": "r1"}]})
    told(listener, "B", ev.MATCHED, room="r1")
    assert listener.chatters == {"r1": ("B",)}
