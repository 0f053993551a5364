"""The admin console's SQL: short, explicit reads of rooms, messages and reports.

The engine is made once per process, lazily, on the first admin request (so a web worker that
never serves the admin never opens a database connection). Every function here takes an open
connection; the views hold one only for the few statements a page needs and close it at once,
so that a slow database never holds a greenlet's connection longer than a page takes. Under
gevent, PostgreSQL waits cooperatively (common.history.db patches psycopg2 through psycogreen).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import Integer, and_, cast, exists, func, insert, select, update
from sqlalchemy.engine import Connection, Engine

from common.history.db import as_utc, make_engine
from common.history.models import Message, ModerationLog, Report, Room

from .zones import Zone

rooms = Room.__table__
messages = Message.__table__
reports = Report.__table__

_engine_lock = threading.Lock()


def engine_for(ext: dict) -> Engine:
    """The process's engine, made on first use from the settings (DATABASE_URL, DB_POOL_SIZE)."""
    eng = ext.get("engine")
    if eng is None:
        with _engine_lock:
            eng = ext.get("engine")
            if eng is None:
                s = ext["settings"]
                eng = ext["engine"] = make_engine(s.database_url, s.db_pool_size)
    return eng


# ------------------------------------------------------------------------------ the filter


@dataclass(frozen=True)
class Filter:
    """What the rooms page and the export select: rooms opened in [start, end) of one kind
    (random or private) whose messages contain `q` (case-insensitive), or one room by id.
    Empty fields select everything."""

    start: datetime | None = None  # UTC
    end: datetime | None = None  # UTC, exclusive
    q: str = ""
    room: str = ""  # one room by id
    kind: str = ""  # common/limits.py ROOM_KINDS, or "" for every kind

    @property
    def empty(self) -> bool:
        return (self.start is None and self.end is None and not self.q and not self.room
                and not self.kind)

    def room_conditions(self) -> list:
        cond = []
        if self.room:
            cond.append(rooms.c.id == self.room)
        if self.kind:
            cond.append(rooms.c.kind == self.kind)
        if self.start is not None:
            cond.append(rooms.c.opened_at >= _utc(self.start))
        if self.end is not None:
            cond.append(rooms.c.opened_at < _utc(self.end))
        if self.q:
            cond.append(exists().where(and_(messages.c.room_id == rooms.c.id,
                                            messages.c.text.ilike(like_pattern(self.q),
                                                                  escape="\\"))))
        return cond


def like_pattern(q: str) -> str:
    """`q` as a LIKE pattern matching it anywhere, its own % _ and \\ taken literally."""
    return "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _utc(value: datetime) -> datetime:
    # SQLite keeps the wall-clock digits only: always bind UTC, as everything was stored in UTC.
    return value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)


# ------------------------------------------------------------------------------ dashboard


def totals(conn: Connection) -> dict:
    return {
        "rooms": conn.execute(select(func.count()).select_from(rooms)).scalar_one(),
        "messages": conn.execute(select(func.count()).select_from(messages)).scalar_one(),
        "reports": conn.execute(select(func.count()).select_from(reports)).scalar_one(),
        "reports_open": conn.execute(select(func.count()).select_from(reports)
                                     .where(reports.c.resolved_at.is_(None))).scalar_one(),
    }


def _bucket_expr(conn: Connection, column, offset: int, size: int):
    """The number of the `size`-second bucket (aligned on the viewer's zone) holding `column`."""
    if conn.dialect.name == "sqlite":
        epoch = cast(func.strftime("%s", column), Integer)
        return ((epoch + offset) // size).label("b")  # integer division (epochs are positive)
    epoch = func.extract("epoch", column)
    return cast(func.floor((epoch + offset) / size), Integer).label("b")


def series(conn: Connection, zone: Zone, span: str, now: datetime | None = None) -> dict:
    """Rooms opened and messages sent per hour over the last 24 hours (`span="24h"`) or per day
    over the last 7 days (`span="7d"`), in buckets aligned on the viewer's zone.

    The zone's offset now is used for the whole window (a DST change inside the last week moves
    the day boundaries of the days before it by an hour; nothing is lost or counted twice).
    """
    now = now or datetime.now(timezone.utc)
    offset = zone.offset_seconds(now)
    size, count = (3600, 24) if span == "24h" else (86400, 7)
    now_bucket = (int(now.timestamp()) + offset) // size
    first = now_bucket - count + 1
    since = datetime.fromtimestamp(first * size - offset, tz=timezone.utc)
    counts = {}
    for name, table, column in (("rooms", rooms, rooms.c.opened_at),
                                ("messages", messages, messages.c.sent_at)):
        b = _bucket_expr(conn, column, offset, size)
        stmt = select(b, func.count()).select_from(table).where(column >= since).group_by(b)
        counts[name] = {int(k): int(v) for k, v in conn.execute(stmt) if k is not None}
    buckets = []
    for i in range(count):
        n = first + i
        start = datetime.fromtimestamp(n * size - offset, tz=timezone.utc)
        local = start.astimezone(zone.tz)
        buckets.append({
            "start": start.isoformat().replace("+00:00", "Z"),
            "label": local.strftime("%H:00" if size == 3600 else "%m-%d"),
            "title": local.strftime("%Y-%m-%d %H:00" if size == 3600 else "%Y-%m-%d (%a)"),
            "rooms": counts["rooms"].get(n, 0),
            "messages": counts["messages"].get(n, 0),
        })
    return {"span": span, "unit": "hour" if size == 3600 else "day", "zone": zone.name,
            "buckets": buckets}


# ------------------------------------------------------------------------------ rooms


def _message_count():
    return (select(func.count()).select_from(messages)
            .where(messages.c.room_id == rooms.c.id).scalar_subquery())


def _report_count():
    return (select(func.count()).select_from(reports)
            .where(reports.c.room_id == rooms.c.id).scalar_subquery())


def list_rooms(conn: Connection, flt: Filter, page: int, per_page: int) -> tuple[list[dict], bool]:
    """One page of rooms, newest first, and whether there is a next page."""
    stmt = (select(rooms, _message_count().label("message_count"),
                   _report_count().label("report_count"))
            .where(*flt.room_conditions())
            .order_by(rooms.c.opened_at.desc(), rooms.c.id.desc())
            .limit(per_page + 1).offset((page - 1) * per_page))
    rows = [dict(r._mapping) for r in conn.execute(stmt)]
    return rows[:per_page], len(rows) > per_page


def get_room(conn: Connection, room_id: str) -> dict | None:
    row = conn.execute(select(rooms, _message_count().label("message_count"))
                       .where(rooms.c.id == room_id)).first()
    return dict(row._mapping) if row else None


def room_messages(conn: Connection, room_id: str, after_seq: int, limit: int) -> tuple[list[dict], bool]:
    stmt = (select(messages.c.id, messages.c.seq, messages.c.sender, messages.c.text,
                   messages.c.sent_at)
            .where(messages.c.room_id == room_id, messages.c.seq > after_seq)
            .order_by(messages.c.seq, messages.c.id).limit(limit + 1))
    rows = [dict(r._mapping) for r in conn.execute(stmt)]
    return rows[:limit], len(rows) > limit


def room_reports(conn: Connection, room_id: str) -> list[dict]:
    stmt = select(reports).where(reports.c.room_id == room_id).order_by(reports.c.created_at)
    return [dict(r._mapping) for r in conn.execute(stmt)]


def side(room: dict | None, user: str | None) -> str:
    """A user as the transcript shows them: A (user1), B (user2), or ? when not of this room."""
    if room and user:
        if user == room.get("user1"):
            return "A"
        if user == room.get("user2"):
            return "B"
    return "?"


# ------------------------------------------------------------------------------ reports


def list_reports(conn: Connection, status: str, page: int, per_page: int) -> tuple[list[dict], bool]:
    stmt = (select(reports, rooms.c.user1, rooms.c.user2, rooms.c.opened_at.label("room_opened_at"))
            .select_from(reports.outerjoin(rooms, rooms.c.id == reports.c.room_id)))
    if status == "open":
        stmt = stmt.where(reports.c.resolved_at.is_(None))
    elif status == "resolved":
        stmt = stmt.where(reports.c.resolved_at.is_not(None))
    stmt = (stmt.order_by(reports.c.created_at.desc(), reports.c.id.desc())
            .limit(per_page + 1).offset((page - 1) * per_page))
    rows = [dict(r._mapping) for r in conn.execute(stmt)]
    return rows[:per_page], len(rows) > per_page


def resolve_report(conn: Connection, report_id: int, now: datetime | None = None) -> bool:
    """Mark a report resolved; False when there is no such open report."""
    now = now or datetime.now(timezone.utc)
    res = conn.execute(update(reports)
                       .where(reports.c.id == report_id, reports.c.resolved_at.is_(None))
                       .values(resolved_at=now))
    return res.rowcount == 1


def duration(room: dict) -> str:
    opened, closed = as_utc(room.get("opened_at")), as_utc(room.get("closed_at"))
    if opened is None or closed is None:
        return ""
    secs = max(0, int((closed - opened) / timedelta(seconds=1)))
    if secs < 60:
        return f"{secs}s"
    if secs < 3600:
        return f"{secs // 60}m {secs % 60:02d}s"
    return f"{secs // 3600}h {secs % 3600 // 60:02d}m"


# ------------------------------------------------------------------------------ moderation

moderation_log = ModerationLog.__table__


def report_target(conn: Connection, report_id: int) -> dict | None:
    """The reported side of a report: its user id and keyed hashes (None: no such report)."""
    row = conn.execute(select(reports.c.id, reports.c.room_id, reports.c.reported.label("user"),
                              reports.c.reported_browser.label("browser"),
                              reports.c.reported_addr.label("addr"))
                       .where(reports.c.id == report_id)).first()
    return dict(row._mapping) if row else None


def room_side(conn: Connection, room_id: str, which: str) -> dict | None:
    """Side A (user1) or B (user2) of a room: its user id and keyed hashes."""
    n = {"A": "1", "B": "2"}.get(which)
    if n is None:
        return None
    row = conn.execute(select(rooms.c["user" + n].label("user"),
                              rooms.c["user" + n + "_browser"].label("browser"),
                              rooms.c["user" + n + "_addr"].label("addr"))
                       .where(rooms.c.id == room_id)).first()
    return dict(row._mapping, room_id=room_id) if row else None


def log_moderation(conn: Connection, **row) -> int:
    """Write one row of the moderation log (every ban and unban); its id."""
    res = conn.execute(insert(moderation_log).values(**row))
    return int(res.inserted_primary_key[0])


def list_moderation(conn: Connection, page: int, per_page: int) -> tuple[list[dict], bool]:
    stmt = (select(moderation_log)
            .order_by(moderation_log.c.at.desc(), moderation_log.c.id.desc())
            .limit(per_page + 1).offset((page - 1) * per_page))
    rows = [dict(r._mapping) for r in conn.execute(stmt)]
    return rows[:per_page], len(rows) > per_page


def get_moderation(conn: Connection, entry_id: int) -> dict | None:
    row = conn.execute(select(moderation_log).where(moderation_log.c.id == entry_id)).first()
    return dict(row._mapping) if row else None
