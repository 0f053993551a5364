"""Which time zone the admin sees, and times formatted in it.

Times are stored in UTC. They are shown in DISPLAY_TZ when it is set (the operator decides, e.g.
Asia/Shanghai for a team in Beijing); otherwise in the viewer's own zone, which admin.js puts in
the `tz` cookie from `Intl.DateTimeFormat().resolvedOptions().timeZone`; otherwise in UTC. A
cookie value is only ever used after zoneinfo accepted it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from common.history.db import as_utc

TZ_COOKIE = "tz"
_TZ_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+){0,2}$")


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo | None:
    if len(name) > 64 or not _TZ_NAME.match(name):
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


@dataclass(frozen=True)
class Zone:
    name: str
    tz: ZoneInfo | timezone
    source: str  # "config" (DISPLAY_TZ), "browser" (the tz cookie) or "default" (UTC)

    def local(self, value: datetime | None) -> datetime | None:
        value = as_utc(value)
        return None if value is None else value.astimezone(self.tz)

    def fmt(self, value: datetime | None, with_seconds: bool = True) -> str:
        local = self.local(value)
        if local is None:
            return ""
        return local.strftime("%Y-%m-%d %H:%M:%S" if with_seconds else "%Y-%m-%d %H:%M")

    def clock(self, value: datetime | None) -> str:
        """The time of day alone, 24-hour like fmt(): the dashboard's "Updated 20:34:56"."""
        local = self.local(value)
        return "" if local is None else local.strftime("%H:%M:%S")

    def offset_label(self, at: datetime | None = None) -> str:
        off = (at or datetime.now(timezone.utc)).astimezone(self.tz).utcoffset() or timedelta(0)
        minutes = int(off.total_seconds() // 60)
        sign = "+" if minutes >= 0 else "-"
        minutes = abs(minutes)
        return f"UTC{sign}{minutes // 60:02d}:{minutes % 60:02d}"

    def offset_seconds(self, at: datetime | None = None) -> int:
        off = (at or datetime.now(timezone.utc)).astimezone(self.tz).utcoffset()
        return int(off.total_seconds()) if off else 0

    @property
    def label(self) -> str:
        return f"{self.name} ({self.offset_label()})"


UTC = Zone("UTC", timezone.utc, "default")


def resolve(display_tz: str | None, cookie: str | None) -> Zone:
    """DISPLAY_TZ wins; else a valid `tz` cookie; else UTC."""
    if display_tz:
        tz = _zone(display_tz)
        if tz is not None:
            return Zone(display_tz, tz, "config")
    if cookie:
        tz = _zone(cookie)
        if tz is not None:
            return Zone(cookie, tz, "browser")
    return UTC


def iso_utc(value: datetime | None) -> str:
    """ISO-8601 in UTC with a Z (microseconds only when there are some)."""
    if value is None:
        return ""
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    # naive: SQLite's, stored in UTC
    return value.isoformat(timespec="microseconds" if value.microsecond else "seconds") + "Z"


def iso_local(zone: Zone, value: datetime | None) -> str:
    local = zone.local(value)
    if local is None:
        return ""
    return local.isoformat(timespec="microseconds" if local.microsecond else "seconds")


def parse_day(text: str | None, zone: Zone, end: bool = False) -> datetime | None:
    """`YYYY-MM-DD` in the viewer's zone -> the UTC instant its day starts (or the next day's)."""
    if not text:
        return None
    day = datetime.strptime(text.strip(), "%Y-%m-%d")  # ValueError for the caller
    try:  # 9999-12-31's end, or 0001-01-01 east of UTC, is past the years a datetime holds
        if end:
            day = day + timedelta(days=1)
        return day.replace(tzinfo=zone.tz).astimezone(timezone.utc)
    except OverflowError as exc:
        raise ValueError(f"{text!r} is outside the calendar") from exc
