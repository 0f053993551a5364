"""The SQL history: rooms, messages, reports, and the admin's moderation log. Times in UTC.

Written by the archiver (from the Redis history streams); the admin console reads it, resolves
reports and writes the moderation log. What is kept about users: their random anonymous ids and,
for a ban later, the keyed hashes (HMAC-SHA256 with SECRET_KEY, common/moderation.py) of their
browser cookie and address: never an address, a name or a cookie in clear.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import (JSON, BigInteger, DateTime, ForeignKey, Index, Integer, String, Text,
                        UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from common.limits import CLOSE_REASON_LEN, MAX_ID_LEN, MAX_REPORT_LEN, ROOM_KIND_LEN
from common.moderation import HASH_LEN

BigId = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements INTEGER only


class Base(DeclarativeBase):
    pass


class Room(Base):
    __tablename__ = "rooms"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user1: Mapped[str] = mapped_column(String(64))
    user2: Mapped[str] = mapped_column(String(64))
    interests: Mapped[list] = mapped_column(JSON, default=list)
    # common/limits.py ROOM_KINDS: how the two met (the random matcher, or a private room's key)
    kind: Mapped[str] = mapped_column(String(ROOM_KIND_LEN), index=True, default="random",
                                      server_default="random")
    opened_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    close_reason: Mapped[str | None] = mapped_column(String(CLOSE_REASON_LEN))
    closed_by: Mapped[str | None] = mapped_column(String(64))
    # each user's keyed hashes (browser cookie, address), for a ban from the admin
    user1_browser: Mapped[str | None] = mapped_column(String(HASH_LEN))
    user1_addr: Mapped[str | None] = mapped_column(String(HASH_LEN))
    user2_browser: Mapped[str | None] = mapped_column(String(HASH_LEN))
    user2_addr: Mapped[str | None] = mapped_column(String(HASH_LEN))


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("room_id", "client_id", name="uq_messages_room_client"),
        Index("ix_messages_room_seq", "room_id", "seq"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    room_id: Mapped[str] = mapped_column(ForeignKey("rooms.id", ondelete="CASCADE"))
    sender: Mapped[str] = mapped_column(String(64))
    client_id: Mapped[str] = mapped_column(String(MAX_ID_LEN))
    seq: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    sent_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class Report(Base):
    __tablename__ = "reports"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    stream_id: Mapped[str] = mapped_column(String(40), unique=True)  # makes a replay a no-op
    room_id: Mapped[str | None] = mapped_column(String(32), index=True)
    reporter: Mapped[str] = mapped_column(String(64))
    reported: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(MAX_REPORT_LEN), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reported_browser: Mapped[str | None] = mapped_column(String(HASH_LEN))
    reported_addr: Mapped[str | None] = mapped_column(String(HASH_LEN))


class ModerationLog(Base):
    """Every ban and unban from the admin console: who (the admin session, hashed), when, what,
    on which hashes, until when, why, and where from (a report or a room's side)."""

    __tablename__ = "moderation_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    admin: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(16))  # ban | unban
    browser: Mapped[str | None] = mapped_column(String(HASH_LEN))
    addr: Mapped[str | None] = mapped_column(String(HASH_LEN))
    until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reason: Mapped[str] = mapped_column(String(MAX_REPORT_LEN), default="")
    report_id: Mapped[int | None] = mapped_column(BigId)
    room_id: Mapped[str | None] = mapped_column(String(32))
    user: Mapped[str | None] = mapped_column(String(64))  # the banned anonymous user id
