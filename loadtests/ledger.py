"""What the load test's users sent, received and were told, and the verdict on it: `check()`.

Every locust process keeps a Ledger of what its users sent (id, room, seq, send and ack time),
received (live or replayed), which rooms they were told about (`matched` or `resumed`) and their
connection sessions (from `hello` to the moment they closed it). When the run time is up the
users stop acting (no message, no Next, no reload; a lost connection is still resumed) and wait
`--chat-drain` seconds (5) with their connections open; then every process waits until nothing
has arrived for 2 s and no ack is pending (60 s at most), and the master collects every ledger
(its records travel as plain lists) and checks them:

- A message is *expected* at the partner when the server acknowledged it with ok (so it had a
  seq in room R: both were in R at that instant) and the other member B of R (who got `matched`
  or `resumed` for R) held a connection that was either open already when the message was sent
  or resumed into R, and that stayed open until at least `SLACK` (10 s) after the ack, or to the
  end of the run, or at least until a later message of the same sender in R reached it. A
  partner who closed the tab, or reloaded into another state, before that is legitimately never
  reached; those messages are counted as "unverifiable", never as lost.
  Pressing Next or Leave does not excuse anything: the server emits to the partner's user room,
  so a message acked before the partner pressed Next still reaches them.
- *Lost* = expected at B and never received by B, neither live nor in a `resumed` history.
- *Duplicate* = the same message id delivered live more than once to the same user. (A resume
  may legitimately repeat a message in its history that was in flight when the link dropped;
  the page drops it by seq; counted apart as "replay overlap".)
- *Misdelivered* = received by a user who is not the other member of the room.
- *Seq mismatch* = the receiver's seq differs from the one in the sender's ack.
- *Matched missing* = a user learnt its room only from `resumed` (after an impatient reload)
  although it was connected when its partner got `matched` and stayed connected SLACK longer.

check() is pure (tests/test_ledger.py); only Ledger.settle() waits, on gevent.
"""
from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import NamedTuple

import gevent

SLACK = 10.0  # s after an ack during which the partner must stay connected for a check
SETTLE_QUIET = 2.0  # s without a receipt or an open request before a ledger is taken
SETTLE_MAX = 60.0  # s at most, after the drain, waiting for messages in flight


def now() -> float:
    return time.time()


# --------------------------------------------------------------------------- the records

class Sent(NamedTuple):
    """A message of `uid` in `room` that the server acknowledged with ok and `seq`."""
    mid: str
    room: str
    uid: str
    t_send: float
    t_ack: float
    seq: int | None


class Recv(NamedTuple):
    """A message `uid` received, live ("L") or in a `resumed` history ("R")."""
    mid: str
    room: str | None
    uid: str
    via: str
    t: float
    seq: int | None


class Member(NamedTuple):
    """`uid` was told about `room`: by `matched` ("m") or by `resumed` ("r")."""
    room: str
    uid: str
    how: str
    t: float


class Session(NamedTuple):
    """One connection of `uid`, from its `hello` to its end (None: open to the end of the run);
    `resumed_room`: the room a resume put it back into."""
    uid: str
    t_start: float
    t_end: float | None
    resumed_room: str | None


@dataclass
class OpenSession:
    """A user's current connection while it lasts: its end and its resumed room are filled in
    as they happen; the ledger records it as a Session."""
    uid: str
    t_start: float
    t_end: float | None = None
    resumed_room: str | None = None

    def record(self) -> Session:
        return Session(self.uid, self.t_start, self.t_end, self.resumed_room)


# --------------------------------------------------------------------------- the ledger

class Ledger:
    """What this locust process's users sent, received and were told; checked at the end."""

    def __init__(self):
        self.sent: list[Sent] = []
        self.recv: list[Recv] = []
        self.members: list[Member] = []
        self.sessions: list[OpenSession] = []
        self.errors = Counter()
        self.counts = Counter()
        self.error_examples = []  # the first few errors with their context, for diagnosis

        self.inflight = 0  # requests waiting for an ack, refusals waiting for their verdict
        self.last_activity = 0.0

    def settle(self, max_wait: float = SETTLE_MAX) -> float:
        """Wait until no ack is pending and nothing arrived for SETTLE_QUIET s; seconds waited."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < max_wait:
            if self.inflight <= 0 and time.monotonic() - self.last_activity >= SETTLE_QUIET:
                break
            gevent.sleep(0.2)
        return time.monotonic() - t0

    def note(self, code: str, **context):
        self.errors[code] += 1
        if len(self.error_examples) < 30:
            self.error_examples.append({"code": code, "t": now(), **context})

    def dump(self) -> dict:
        return {"sent": self.sent, "recv": self.recv, "members": self.members,
                "sessions": [s.record() for s in self.sessions], "errors": dict(self.errors),
                "counts": dict(self.counts), "error_examples": self.error_examples}


# --------------------------------------------------------------------------- the verdict

def check(ledgers: list[dict]) -> dict:
    """The verdict on all ledgers (see the module docstring for the definitions). A ledger is
    Ledger.dump(), its records as the named tuples above or as plain lists (as they arrive from
    another locust process)."""
    sent = [Sent._make(r) for lg in ledgers for r in lg["sent"]]
    recv = [Recv._make(r) for lg in ledgers for r in lg["recv"]]
    members = defaultdict(set)
    told = defaultdict(dict)  # room -> uid -> time of its first `matched` (None: only resumed)
    for m in (Member._make(r) for lg in ledgers for r in lg["members"]):
        members[m.room].add(m.uid)
        known = told[m.room].get(m.uid)
        if m.how == "m" and (known is None or m.t < known):
            told[m.room][m.uid] = m.t
        else:
            told[m.room].setdefault(m.uid, None)
    sessions = defaultdict(list)  # uid -> [(t_start, t_end, resumed_room)]
    for s in (Session._make(r) for lg in ledgers for r in lg["sessions"]):
        sessions[s.uid].append((s.t_start, s.t_end, s.resumed_room))
    got = defaultdict(list)  # (uid, mid) -> [(via, seq)]
    sender_of = {s.mid: s.uid for s in sent}
    later = defaultdict(list)  # (receiver, room, sender) -> [(seq, t)] received live
    for r in recv:
        got[(r.uid, r.mid)].append((r.via, r.seq))
        if r.via == "L" and isinstance(r.seq, int):
            later[(r.uid, r.room, sender_of.get(r.mid))].append((r.seq, r.t))
    out = Counter()
    lost_examples = []
    sent_rooms = {}
    for s in sent:
        out["acked"] += 1
        sent_rooms[s.mid] = (s.room, s.uid, s.seq)
        others = members[s.room] - {s.uid}
        if not others:
            out["unverifiable: partner unknown"] += 1
            continue
        partner = next(iter(others))

        def covered(t0, t1, rroom, s=s, partner=partner):
            if not (t0 <= s.t_send or rroom == s.room):
                return False
            if t1 is None or t1 >= s.t_ack + SLACK:
                return True
            # closed soon after: still covered if a later message of the same sender in
            # this room reached that session (this one had its chance: same path, in order)
            return any(q > s.seq and t0 <= t <= t1 for q, t in later[(partner, s.room, s.uid)])

        if not any(covered(*x) for x in sessions[partner]):
            out["unverifiable: partner disconnected"] += 1
            continue
        out["expected"] += 1
        rec = got.get((partner, s.mid))
        if not rec:
            out["lost"] += 1
            if len(lost_examples) < 20:
                lost_examples.append({"id": s.mid, "room": s.room, "seq": s.seq, "from": s.uid,
                                      "to": partner, "t_send": s.t_send, "t_ack": s.t_ack,
                                      "partner_sessions": sessions[partner]})
            continue
        out["received"] += 1
        if any(v == "R" for v, _ in rec) and not any(v == "L" for v, _ in rec):
            out["received via resume"] += 1
    for (uid, mid), rec in got.items():
        live = sum(1 for v, _ in rec if v == "L")
        if live > 1:
            out["duplicates"] += live - 1
        if live and any(v == "R" for v, _ in rec):
            out["replay overlap"] += 1
        info = sent_rooms.get(mid)
        if info:
            room, sender, seq = info
            if uid == sender or (members[room] and uid not in members[room]):
                out["misdelivered"] += 1
            if any(q != seq for _, q in rec):
                out["seq mismatch"] += 1
        else:
            out["received, never acked"] += 1  # acked after the ledger was taken, or a bug
    # `matched` missing: a member learnt its room only from `resumed`, although it was connected
    # when its partner was told (and stayed connected SLACK seconds longer)
    for room, who in told.items():
        for uid, t in who.items():
            if t is not None:
                continue
            tm = [x for u, x in who.items() if u != uid and x is not None]
            if tm and any(t0 <= tm[0] and (t1 is None or t1 >= tm[0] + SLACK)
                          for t0, t1, _r in sessions[uid]):
                out["matched missing"] += 1
    out["rooms"] = len(members)
    out["rooms with more than 2 members"] = sum(1 for m in members.values() if len(m) > 2)
    for k in ("lost", "duplicates", "misdelivered", "seq mismatch", "matched missing",
              "expected", "received"):
        out.setdefault(k, 0)
    errors = Counter()
    counts = Counter()
    error_examples = []
    for lg in ledgers:
        errors.update(lg["errors"])
        counts.update(lg["counts"])
        error_examples.extend(lg.get("error_examples", []))
    return {"messages": dict(out), "errors": dict(errors), "counts": dict(counts),
            "lost_examples": lost_examples, "error_examples": error_examples[:50],
            "processes": len(ledgers), "definitions": "see loadtests/ledger.py docstring",
            "slack_s": SLACK}
