"""Turn history stream entries into SQL rows, idempotently: replaying an entry inserts nothing.

Rooms are keyed by their id, messages by (room, client message id), reports by their entry id
qualified by its stream (report_id), and every insert is ON CONFLICT DO NOTHING.

Batches may also land out of order: two archivers share the streams, and either may commit
first, so a room's `closed` or a message can reach SQL before its `opened`. A message or a close
then makes a placeholder room, which the `opened` entry fills in when it comes (its fields win,
so a replay writes the same values again); a close only ever closes a room still open.
"""
from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from common.history.db import utc_from_ms
from common.limits import CLOSE_REASON_LEN, MAX_REPORT_LEN, ROOM_KINDS
from common.moderation import HASH_LEN, Identity
from common.history.models import Message, ModerationLog, Report, Room

log = logging.getLogger("archiver.writer")


def _insert(engine: Engine, table):
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def report_id(shard: int | None, entry_id: str) -> str:
    """A report's key: entry ids are unique within one stream only (two shards can both hold
    1700000000000-0), so a chat shard's entries are prefixed with the shard's number (`7/…`);
    the home stream's keep their bare id, as before there were shards."""
    return entry_id if shard is None else f"{shard}/{entry_id}"


def _hash(value: str | None) -> str | None:
    """A keyed hash from an entry (common/moderation.py), None when there is none."""
    return (value or "")[:HASH_LEN] or None


def rows_from_entries(entries: list[tuple[str, dict]]) -> tuple[list, list, list, list]:
    rooms, messages, closes, reports = [], [], [], []
    for entry_id, f in entries:
        kind = f.get("type")
        try:
            if kind == "opened":
                w1, w2 = Identity.unpack(f.get("who1")), Identity.unpack(f.get("who2"))
                rooms.append({"id": f["room"], "user1": f["user1"], "user2": f["user2"],
                              "interests": json.loads(f.get("interests") or "[]"),
                              "kind": _kind(f.get("kind")),
                              "opened_at": utc_from_ms(f["ts"]),
                              "user1_browser": w1.browser or None, "user1_addr": w1.addr or None,
                              "user2_browser": w2.browser or None, "user2_addr": w2.addr or None})
            elif kind == "message":
                messages.append({"room_id": f["room"], "sender": f["user"], "client_id": f["id"],
                                 "seq": int(f["seq"]), "text": f["text"],
                                 "sent_at": utc_from_ms(f["ts"])})
            elif kind == "closed":
                closes.append({"id": f["room"], "closed_at": utc_from_ms(f["ts"]),
                               "close_reason": f.get("reason", "")[:CLOSE_REASON_LEN],
                               "closed_by": f.get("user", "")})
            elif kind == "report":
                reports.append({"stream_id": entry_id, "room_id": f.get("room") or None,
                                "reporter": f["user"], "reported": f["reported"],
                                "reason": f.get("reason", "")[:MAX_REPORT_LEN],
                                "created_at": utc_from_ms(f["ts"]),
                                "reported_browser": _hash(f.get("reported_browser")),
                                "reported_addr": _hash(f.get("reported_addr"))})
            else:
                log.warning("skipping history entry %s of unknown type %r", entry_id, kind)
        except (KeyError, ValueError) as exc:
            log.warning("skipping malformed history entry %s: %s", entry_id, exc)
    return rooms, messages, closes, reports


def _kind(value: str | None) -> str:
    """The room's kind from its `opened` entry; entries from before private rooms have none."""
    return value if value in ROOM_KINDS else "random"


class KnownRooms:
    """Room ids this process has seen in SQL (written, or found by _ensure_rooms): a message of
    such a room needs no look-up. A room deleted behind our back (a purge) makes an insert fail
    on its foreign key; the caller then forgets them all (clear) and the retry looks again.
    Bounded: past `most` ids it starts over."""

    def __init__(self, most: int = 50_000):
        self.most = most
        self.ids: set[str] = set()

    def add(self, ids) -> None:
        if len(self.ids) > self.most:
            self.ids.clear()
        self.ids.update(ids)

    def clear(self) -> None:
        self.ids.clear()


def write_batch(engine: Engine, entries: list[tuple[str, dict]],
                known: KnownRooms | None = None) -> dict:
    """Write one batch in one transaction; returns counts by kind. `entries` are (id, fields),
    the id as report_id() makes it. `known`: rooms that need no look-up before their messages
    (kept up to date after the commit)."""
    rooms, messages, closes, reports = rows_from_entries(entries)
    # one row per room and statement: PostgreSQL refuses an upsert that meets a row twice
    rooms, closes = _first_per_id(rooms), _first_per_id(closes)
    seen: set[str] = set()
    with engine.begin() as conn:
        if rooms:
            opened = _insert(engine, Room)
            conn.execute(opened.on_conflict_do_update(index_elements=[Room.id], set_={
                c: opened.excluded[c] for c in ("user1", "user2", "interests", "kind", "opened_at",
                                                "user1_browser", "user1_addr", "user2_browser",
                                                "user2_addr")}),
                rooms)
        if messages:
            opened_ids = {r["id"] for r in rooms}
            seen = _ensure_rooms(conn, engine, messages, lambda room: room in opened_ids or (
                known is not None and room in known.ids))
            conn.execute(_insert(engine, Message).on_conflict_do_nothing(), messages)
        if closes:
            closing = _insert(engine, Room)
            conn.execute(closing.on_conflict_do_update(
                index_elements=[Room.id], where=Room.closed_at.is_(None), set_={
                    c: closing.excluded[c] for c in ("closed_at", "close_reason", "closed_by")}),
                [{**c, "user1": c["closed_by"], "user2": "", "interests": [],
                  "opened_at": c["closed_at"]} for c in closes])
        if reports:
            conn.execute(_insert(engine, Report).on_conflict_do_nothing(), reports)
    if known is not None:  # committed: these rows exist now
        known.add(seen)
        known.add(r["id"] for r in rooms)
        known.add(c["id"] for c in closes)
    return {"rooms": len(rooms), "messages": len(messages), "closes": len(closes),
            "reports": len(reports)}


def _first_per_id(rows: list[dict]) -> list[dict]:
    first: dict[str, dict] = {}
    for row in rows:
        first.setdefault(row["id"], row)
    return list(first.values())


def _ensure_rooms(conn, engine: Engine, messages: list[dict], known) -> set[str]:
    """A message whose room row is missing (its `opened` entry was trimmed from the stream, or
    is in another archiver's batch not committed yet) gets a placeholder room rather than
    failing its batch forever on the foreign key. Rooms for which `known(room)` is true are not
    looked up. The rooms looked up or made."""
    wanted = {room for room in {m["room_id"] for m in messages} if not known(room)}
    if not wanted:
        return wanted
    have = set(conn.execute(select(Room.id).where(Room.id.in_(wanted))).scalars())
    missing = wanted - have
    if not missing:
        return wanted
    first = {}
    for m in messages:
        if m["room_id"] in missing:
            first.setdefault(m["room_id"], m)
    log.warning("creating %d placeholder room(s) for messages without an opened entry",
                len(missing))
    conn.execute(_insert(engine, Room).on_conflict_do_nothing(), [
        {"id": rid, "user1": m["sender"], "user2": "", "interests": [],
         "opened_at": m["sent_at"]} for rid, m in first.items()])
    return wanted


def purge(engine: Engine, days: int, now: datetime | None = None) -> dict:
    """Delete rooms (with their messages) and reports older than `days`, and the moderation
    log's entries (with their hashes) older than `days` whose ban ended more than `days` ago:
    a ban in force, or one that ended lately, keeps its entry."""
    cutoff = (now or datetime.now(timezone.utc)) - timedelta(days=days)
    with engine.begin() as conn:
        old = select(Room.id).where(Room.opened_at < cutoff)
        m = conn.execute(delete(Message).where(Message.room_id.in_(old))).rowcount
        r = conn.execute(delete(Room).where(Room.opened_at < cutoff)).rowcount
        p = conn.execute(delete(Report).where(Report.created_at < cutoff)).rowcount
        b = conn.execute(delete(ModerationLog).where(
            ModerationLog.at < cutoff,
            or_(ModerationLog.until.is_(None), ModerationLog.until < cutoff))).rowcount
    return {"rooms": r, "messages": m, "reports": p, "moderation_log": b,
            "cutoff": cutoff.isoformat()}
