"""CSV and JSON export of messages, rooms or reports, streamed with flat memory.

The rows come from a server-side cursor (`yield_per`: psycopg2 named cursor on PostgreSQL, the
sqlite3 cursor's own stepping on SQLite), a few thousand at a time, and each batch is encoded and
handed to the WSGI server before the next is read, so a million messages cost the same memory as
a thousand. The connection is held for the duration of the download and closed when the server
closes the response (also when the client goes away half-way).

CSV: UTF-8 with a byte-order mark (so Excel reads Chinese correctly), CRLF lines, a header row.
Cells of free text a user typed (message text, report reason, interests) that start with
= + - @ or a tab are prefixed with an apostrophe so that a spreadsheet never runs them as a
formula (OWASP "CSV injection"); the JSON export keeps them exactly.
JSON: one array streamed item by item. Both carry times as ISO-8601 UTC plus the same instant in
the viewer's zone, and that zone's name.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Iterator

from sqlalchemy import select
from sqlalchemy.engine import Engine

from .queries import Filter, _message_count, messages, reports, rooms, side
from .zones import Zone, iso_local, iso_utc

BATCH = 1000  # rows read, encoded and sent at a time (~20 ms of CPU)
KINDS = ("messages", "rooms", "reports")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cooperate() -> None:
    """Let other greenlets (the chat) run between batches: a socket that takes every chunk at
    once never makes the export wait, so it would otherwise hold the loop to the end."""
    if _monkey is not None and _monkey.is_module_patched("socket"):
        _gevent_sleep(0)


try:
    from gevent import monkey as _monkey, sleep as _gevent_sleep
except ImportError:  # pragma: no cover - the web worker always has gevent
    _monkey = _gevent_sleep = None


def safe_cell(value: str) -> str:
    return "'" + value if value.startswith(_FORMULA_START) else value


@dataclass(frozen=True)
class Spec:
    columns: tuple[str, ...]
    free_text: tuple[str, ...]  # the columns a user typed
    statement: Callable[[Filter], object]
    row: Callable[[dict, Zone], dict]


def _messages_stmt(flt: Filter):
    stmt = (select(messages.c.id, messages.c.room_id, messages.c.seq, messages.c.sender,
                   messages.c.text, messages.c.sent_at, rooms.c.user1, rooms.c.user2)
            .select_from(messages.join(rooms, rooms.c.id == messages.c.room_id)))
    if not flt.empty:
        stmt = stmt.where(messages.c.room_id.in_(select(rooms.c.id).where(*flt.room_conditions())))
    return stmt.order_by(messages.c.sent_at, messages.c.id)


def _messages_row(r: dict, zone: Zone) -> dict:
    return {"message_id": r["id"], "room_id": r["room_id"], "seq": r["seq"],
            "side": side(r, r["sender"]), "sender": r["sender"], "text": r["text"],
            "sent_at_utc": iso_utc(r["sent_at"]), "sent_at_local": iso_local(zone, r["sent_at"]),
            "time_zone": zone.name}


def _rooms_stmt(flt: Filter):
    return (select(rooms, _message_count().label("message_count"))
            .where(*flt.room_conditions()).order_by(rooms.c.opened_at, rooms.c.id))


def _rooms_row(r: dict, zone: Zone) -> dict:
    return {"room_id": r["id"], "user_a": r["user1"], "user_b": r["user2"],
            "interests": list(r["interests"] or []), "kind": r["kind"],
            "opened_at_utc": iso_utc(r["opened_at"]), "opened_at_local": iso_local(zone, r["opened_at"]),
            "closed_at_utc": iso_utc(r["closed_at"]), "closed_at_local": iso_local(zone, r["closed_at"]),
            "close_reason": r["close_reason"] or "",
            "closed_by": side(r, r["closed_by"]) if r["closed_by"] else "",
            "message_count": r["message_count"], "time_zone": zone.name}


def _reports_stmt(flt: Filter):
    stmt = (select(reports, rooms.c.user1, rooms.c.user2)
            .select_from(reports.outerjoin(rooms, rooms.c.id == reports.c.room_id)))
    if not flt.empty:
        stmt = stmt.where(reports.c.room_id.in_(select(rooms.c.id).where(*flt.room_conditions())))
    return stmt.order_by(reports.c.created_at, reports.c.id)


def _reports_row(r: dict, zone: Zone) -> dict:
    return {"report_id": r["id"], "room_id": r["room_id"] or "",
            "reporter_side": side(r, r["reporter"]), "reporter": r["reporter"],
            "reported_side": side(r, r["reported"]), "reported": r["reported"],
            "reason": r["reason"] or "",
            "created_at_utc": iso_utc(r["created_at"]), "created_at_local": iso_local(zone, r["created_at"]),
            "resolved_at_utc": iso_utc(r["resolved_at"]),
            "resolved_at_local": iso_local(zone, r["resolved_at"]),
            "time_zone": zone.name}


SPECS = {
    "messages": Spec(("message_id", "room_id", "seq", "side", "sender", "text", "sent_at_utc",
                      "sent_at_local", "time_zone"), ("text",), _messages_stmt, _messages_row),
    "rooms": Spec(("room_id", "user_a", "user_b", "interests", "kind", "opened_at_utc",
                   "opened_at_local",
                   "closed_at_utc", "closed_at_local", "close_reason", "closed_by",
                   "message_count", "time_zone"), ("interests",), _rooms_stmt, _rooms_row),
    "reports": Spec(("report_id", "room_id", "reporter_side", "reporter", "reported_side",
                     "reported", "reason", "created_at_utc", "created_at_local",
                     "resolved_at_utc", "resolved_at_local", "time_zone"), ("reason",),
                    _reports_stmt, _reports_row),
}


class RowStream:
    """An iterable of encoded chunks over one query, owning its connection until close().

    The query runs when the object is made (so a database error is a clean 503 before any byte
    is sent); rows are then read batch by batch as the server asks for chunks. The WSGI server
    calls close() when the response is done or the client has gone, started or not.
    """

    def __init__(self, engine: Engine, stmt, encode_batch: Callable[[list], bytes],
                 head: bytes, tail: bytes, batch: int = BATCH):
        self._encode, self._head, self._tail = encode_batch, head, tail
        self._conn = engine.connect()
        try:
            self._result = self._conn.execution_options(yield_per=batch).execute(stmt)
        except Exception:
            self._conn.close()
            raise
        self._batch = batch

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield self._head
            for part in self._result.partitions(self._batch):
                yield self._encode([r._mapping for r in part])
                _cooperate()
            yield self._tail
        finally:
            self.close()

    def close(self) -> None:
        result, conn = getattr(self, "_result", None), getattr(self, "_conn", None)
        self._result = self._conn = None
        try:
            if result is not None:
                result.close()
        finally:
            if conn is not None:
                conn.close()


def csv_stream(engine: Engine, kind: str, flt: Filter, zone: Zone) -> RowStream:
    spec = SPECS[kind]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")

    def take() -> bytes:
        data = buf.getvalue().encode("utf-8")
        buf.seek(0)
        buf.truncate()
        return data

    columns = spec.columns
    fixes = [i for i, c in enumerate(columns) if c in spec.free_text]

    def encode(batch: list) -> bytes:
        for r in batch:
            d = spec.row(r, zone)
            values = [d[c] for c in columns]
            for i in fixes:
                v = values[i]
                if isinstance(v, list):
                    v = ", ".join(str(x) for x in v)
                values[i] = safe_cell(v) if v else ""
            writer.writerow(values)
        return take()

    writer.writerow(spec.columns)
    head = "\ufeff".encode("utf-8") + take()
    return RowStream(engine, spec.statement(flt), encode, head, b"")


def json_stream(engine: Engine, kind: str, flt: Filter, zone: Zone) -> RowStream:
    spec = SPECS[kind]
    state = {"first": True}

    def encode(batch: list) -> bytes:
        parts = []
        for r in batch:
            item = json.dumps(spec.row(r, zone), ensure_ascii=False, separators=(",", ":"))
            parts.append(item if state["first"] else ",\n" + item)
            state["first"] = False
        return "".join(parts).encode("utf-8")

    return RowStream(engine, spec.statement(flt), encode, b"[\n", b"\n]\n")


def filename(kind: str, ext: str, now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    return f"chat-{kind}-{now.strftime('%Y%m%dT%H%M%SZ')}.{ext}"
