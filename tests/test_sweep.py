"""web/sweep.py: Engine.IO's ping-timeout checks, in batches, over every session each cycle."""
import threading
import types

from web import sweep


class Session:
    def __init__(self, sid, closed=False, closing=False, seen=None):
        self.sid, self.closed, self.closing, self.seen = sid, closed, closing, seen

    def check_ping_timeout(self):
        self.seen(self.sid)
        return True


def test_every_open_session_is_checked_closed_ones_dropped_and_stop_ends_it():
    checked: dict[str, int] = {}
    all_seen = threading.Event()

    def seen(sid):
        checked[sid] = checked.get(sid, 0) + 1
        if len(checked) == 8:
            all_seen.set()

    sessions = {f"s{i}": Session(f"s{i}", seen=seen) for i in range(8)}
    sessions["gone"] = Session("gone", closed=True, seen=seen)
    sessions["ending"] = Session("ending", closing=True, seen=seen)
    eio = types.SimpleNamespace(sockets=dict(sessions), ping_timeout=0.4,
                                create_event=threading.Event)
    t = threading.Thread(target=sweep.sweep, args=(eio,), daemon=True)
    t.start()
    assert all_seen.wait(5), checked
    assert "gone" not in eio.sockets and "ending" in eio.sockets
    assert set(checked) == {f"s{i}" for i in range(8)}
    eio.service_task_event.set()
    t.join(5)
    assert not t.is_alive()


def test_a_failing_check_is_logged_and_the_sweep_goes_on(caplog):
    second = threading.Event()
    calls = []

    def seen(sid):
        calls.append(sid)
        if len(calls) == 1:
            raise RuntimeError("boom")
        second.set()

    eio = types.SimpleNamespace(sockets={"a": Session("a", seen=seen)}, ping_timeout=0.2,
                                create_event=threading.Event)
    t = threading.Thread(target=sweep.sweep, args=(eio,), daemon=True)
    t.start()
    assert second.wait(5)
    eio.service_task_event.set()
    t.join(5)
    assert "ping sweep failed" in caplog.text
