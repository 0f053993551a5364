"""Bans from the admin console: ban the reported side of a report or one side of a room for a
chosen time, the moderation log (every ban and unban, who made it, when, until when, why), and
unban from that log. Routes on the console's blueprint (views.bp), behind its login and CSRF.

A ban is kept in Redis (common/moderation.py Bans: `ban:<hash>` with a TTL, on the browser's
and the address's keyed hash, both, so a new cookie alone does not escape it); the log row is
the record of who did it. The banned user, if online, loses their chat and is told `banned`.
"""
from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime, timedelta

from flask import flash, redirect, render_template, request, session, url_for

from common import events as ev
from common.limits import MAX_REPORT_LEN
from common.moderation import Bans, Identity

from . import queries
from .views import MAX_ID, PER_PAGE, _engine, _ext, _page, _safe_next, bp

log = logging.getLogger("web.admin")

# the durations the form offers: value -> (label, seconds)
DURATIONS = {"1h": ("1 hour", 3600), "24h": ("24 hours", 86400), "7d": ("7 days", 7 * 86400),
             "30d": ("30 days", 30 * 86400)}


@bp.context_processor
def _ban_choices():
    return {"ban_durations": DURATIONS}


def _bans() -> Bans:
    store = _ext()["store"]
    return Bans(store.r, store.k)


def _admin_name() -> str:
    """Who acted: the console has one password, so the admin is their session, hashed (the
    session id itself is a credential)."""
    sid = session.get("admin_sid") or ""
    return "session " + hashlib.sha256(sid.encode()).hexdigest()[:8]


def _back(default: str):
    back = request.form.get("back")
    return redirect(back if back and _safe_next(back) == back else default)


def _kick(user: str | None, until_ms: int) -> None:
    """End the banned user's chat (the partner is told they left) and tell them `banned`."""
    if not user:
        return
    store = _ext()["store"]
    store.end_chat(user, ev.REASON_LEFT, requeue=False)
    store.emit_to(user, ev.ERROR, ev.banned(until_ms))


@bp.post("/ban")
def ban():
    form = request.form
    duration = DURATIONS.get(form.get("duration", ""))
    reason = " ".join((form.get("reason") or "").split())[:MAX_REPORT_LEN]
    report_id = form.get("report_id", "")
    # ASCII digits only ("²".isdigit(), but int("²") fails), at most 18 of them: a BIGINT
    report_id = report_id if report_id.isascii() and report_id.isdigit() and len(
        report_id) <= 18 else ""
    room_id = form.get("room_id", "")[:64]
    default = url_for("admin.reports")
    if duration is None:
        flash("Choose how long the ban lasts.")
        return _back(default)
    now = datetime.now(UTC)
    until = now + timedelta(seconds=duration[1])
    with _engine().begin() as conn:
        if report_id:
            target = queries.report_target(conn, int(report_id))
            what = f"the reported side of report #{report_id}"
        else:
            target = queries.room_side(conn, room_id, form.get("side", ""))
            what = f"side {form.get('side', '')} of room {room_id}"
            default = url_for("admin.room", room_id=room_id) if target else default
        ident = Identity(target.get("browser") or "", target.get("addr") or "") if target else None
        if ident is None or not ident.hashes:
            flash(f"Cannot ban {what}: nothing is known to ban it by (no such entry, or it was "
                  "recorded before bans existed).")
            return _back(default)
        until_ms = int(until.timestamp() * 1000)
        _bans().ban(ident, until_ms)
        entry = queries.log_moderation(
            conn, at=now, admin=_admin_name(), action="ban", browser=ident.browser or None,
            addr=ident.addr or None, until=until, reason=reason,
            report_id=int(report_id) if report_id else None,
            room_id=target.get("room_id"), user=target.get("user"))
    _kick(target.get("user"), until_ms)
    log.info("ban #%s: %s for %s by %s", entry, what, duration[0], _admin_name())
    flash(f"Banned {what} for {duration[0]}.")
    return _back(default)


@bp.get("/moderation")
def moderation():
    page = _page()
    with _engine().connect() as conn:
        rows, more = queries.list_moderation(conn, page, PER_PAGE)
    bans = _bans()
    for row in rows:  # in force now (Redis), so that the page offers to lift it
        row["active"] = row["action"] == "ban" and bans.until(
            Identity(row["browser"] or "", row["addr"] or "")) > 0
    return render_template("admin/moderation.html", entries=rows, page=page, more=more,
                           durations=DURATIONS)


@bp.post(f"/moderation/<int(max={MAX_ID}):entry_id>/unban")
def unban(entry_id: int):
    with _engine().begin() as conn:
        row = queries.get_moderation(conn, entry_id)
        if row is None or row["action"] != "ban":
            flash(f"Entry #{entry_id} is not a ban.")
            return redirect(url_for("admin.moderation"))
        ident = Identity(row["browser"] or "", row["addr"] or "")
        lifted = _bans().unban(ident)
        queries.log_moderation(
            conn, at=datetime.now(UTC), admin=_admin_name(), action="unban",
            browser=row["browser"], addr=row["addr"], until=None,
            reason=f"lifts #{entry_id}", report_id=row["report_id"], room_id=row["room_id"],
            user=row["user"])
    log.info("unban of #%s by %s (%d key(s))", entry_id, _admin_name(), lifted)
    flash(f"Ban #{entry_id} lifted." if lifted else f"Ban #{entry_id} had ended already.")
    return redirect(url_for("admin.moderation"))
