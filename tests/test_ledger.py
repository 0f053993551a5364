"""The load test's verdict, loadtests/ledger.py's check(), on hand-made ledgers: pure, no
process, no network.

Every case starts from one chat: users "a" and "b" both matched into room "R" at t=0, both
connected from t=-1 to the end of the run; "a" sends m1 at t=1, acked at t=1.01 with seq 1.
Each case changes what "b" received or how it was connected, and names the figures of the
verdict it must give (every other counted figure must be 0).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parents[1] / "loadtests"))

from ledger import SLACK, Member, Recv, Sent, Session, check  # noqa: E402

ROOM = "R"
T_SEND, T_ACK = 1.0, 1.01
M1 = Sent("a-1", ROOM, "a", T_SEND, T_ACK, 1)
MATCHED = [Member(ROOM, "a", "m", 0.0), Member(ROOM, "b", "m", 0.0)]
CONNECTED = [Session("a", -1.0, None, None), Session("b", -1.0, None, None)]
LIVE = Recv("a-1", ROOM, "b", "L", 1.05, 1)
# the figures a case is checked on; those it does not name must be 0
FIGURES = ("expected", "received", "lost", "duplicates", "misdelivered", "seq mismatch",
           "matched missing", "unverifiable: partner disconnected", "received via resume",
           "replay overlap")


def ledger(sent=(M1,), recv=(), members=MATCHED, sessions=CONNECTED) -> dict:
    return {"sent": list(sent), "recv": list(recv), "members": list(members),
            "sessions": list(sessions), "errors": {}, "counts": {}, "error_examples": []}


@pytest.mark.parametrize(("case", "ledgers", "figures"), (
    ("all received", [ledger(recv=[LIVE])], {"expected": 1, "received": 1}),
    ("one lost", [ledger()], {"expected": 1, "lost": 1}),
    ("a duplicate", [ledger(recv=[LIVE, LIVE._replace(t=1.2)])],
     {"expected": 1, "received": 1, "duplicates": 1}),
    ("misdelivered", [ledger(recv=[LIVE, LIVE._replace(uid="c")])],
     {"expected": 1, "received": 1, "misdelivered": 1}),
    ("seq mismatch", [ledger(recv=[LIVE._replace(seq=2)])],
     {"expected": 1, "received": 1, "seq mismatch": 1}),
    # b learnt the room only from `resumed` at t=5, although it was connected when a got
    # `matched` and stayed connected
    ("matched missing", [ledger(recv=[LIVE],
                                members=[MATCHED[0], Member(ROOM, "b", "r", 5.0)])],
     {"expected": 1, "received": 1, "matched missing": 1}),
    # b closed the tab before SLACK s after the ack, and nothing of a's reached it after m1
    ("unverifiable: partner disconnected",
     [ledger(sessions=[CONNECTED[0], Session("b", -1.0, T_ACK + SLACK - 1, None)])],
     {"unverifiable: partner disconnected": 1}),
    # b's link dropped right after the send; it resumed into R and got m1 in the history
    ("received via resume",
     [ledger(recv=[LIVE._replace(via="R", t=3.2)],
             sessions=[CONNECTED[0], Session("b", -1.0, 1.005, None),
                       Session("b", 3.0, None, ROOM)])],
     {"expected": 1, "received": 1, "received via resume": 1}),
    # the same chat seen by two locust processes, a's and b's: one verdict over both ledgers
    ("two processes", [ledger(recv=[], sessions=[CONNECTED[0]], members=[MATCHED[0]]),
                       ledger(sent=(), recv=[LIVE], sessions=[CONNECTED[1]],
                              members=[MATCHED[1]])],
     {"expected": 1, "received": 1}),
))
def test_check(case, ledgers, figures):
    verdict = check(ledgers)
    m = verdict["messages"]
    assert m["acked"] == 1, case
    assert {k: m.get(k, 0) for k in FIGURES} == {k: figures.get(k, 0) for k in FIGURES}, case
    assert verdict["processes"] == len(ledgers)
    assert len(verdict["lost_examples"]) == figures.get("lost", 0)


def test_check_takes_records_as_they_travel():
    """Between locust processes the named tuples arrive as plain lists: the same verdict."""
    ledgers = [ledger(recv=[LIVE, LIVE._replace(uid="c")])]
    travelled = json.loads(json.dumps(ledgers))
    assert isinstance(travelled[0]["sent"][0], list)
    assert check(travelled) == check(ledgers)


def test_lost_example_says_where_the_partner_was():
    lost = check([ledger()])["lost_examples"]
    assert lost == [{"id": "a-1", "room": ROOM, "seq": 1, "from": "a", "to": "b",
                     "t_send": T_SEND, "t_ack": T_ACK, "partner_sessions": [(-1.0, None, None)]}]
