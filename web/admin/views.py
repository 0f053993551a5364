"""The admin console's pages and endpoints (blueprint `admin`, under /admin).

Every endpoint but the sign-in page needs a signed-in admin: pages redirect to /admin/login,
the JSON and export endpoints answer 401. Every POST carries a CSRF token (Flask-WTF), checked
before anything else happens. With no ADMIN_PASSWORD (production without one) every /admin URL
answers 404 with a page saying the console is disabled.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

import redis
from flask import (Blueprint, Response, abort, current_app, flash, g, jsonify, redirect,
                   render_template, request, session, url_for)
from flask_wtf import FlaskForm
from flask_wtf.csrf import CSRFError, CSRFProtect
from sqlalchemy.exc import SQLAlchemyError
from wtforms import HiddenField, PasswordField
from wtforms.validators import DataRequired, Length

from common.limits import ROOM_KINDS
from common.moderation import Hasher
from common.textfilter import REASONS

from . import export, queries
from .auth import FAIL_LIMIT, LOCK_SECONDS, Guard, password_ok
from .queries import Filter, engine_for
from .zones import TZ_COOKIE, iso_utc, parse_day, resolve

log = logging.getLogger("web.admin")

bp = Blueprint("admin", __name__, url_prefix="/admin", template_folder="templates")
csrf = CSRFProtect()

PER_PAGE = 50
MAX_ID = 2**63 - 1  # the largest id or seq a BIGINT holds: a larger one in a URL is no row
TRANSCRIPT_PAGE = 500
SERIES_TTL = 30.0  # seconds the dashboard's chart data is reused within one process
API_ENDPOINTS = {"admin.api_live", "admin.api_series", "admin.export_csv", "admin.export_json"}
OPEN_ENDPOINTS = {"admin.login"}


class LoginForm(FlaskForm):
    password = PasswordField("Password", validators=[DataRequired(), Length(max=1024)])
    next = HiddenField()


def _ext() -> dict:
    return current_app.extensions["admin"]


def _settings():
    return _ext()["settings"]


def _guard() -> Guard:
    return _ext()["guard"]


def _engine():
    return engine_for(_ext())


def _client_address() -> str:
    return request.remote_addr or "unknown"


def _client_tag() -> str:
    """The client's address as a log line names it: its keyed hash, cut short (an address is
    never logged in clear; the same address gives the same tag, so lines can be followed)."""
    return "address " + Hasher(_settings().secret_key).identity(None, _client_address()).addr[:12]


MAX_NEXT = 2000  # longer is not a console URL anyone typed


def _safe_next(target: str | None) -> str:
    """Only a path inside the console: never another site, never a scheme-relative URL, never
    a control character or space (a CR/LF in a Location header made the redirect a 500)."""
    if target and len(target) <= MAX_NEXT and not any(
            c.isspace() or not c.isprintable() for c in target):
        parts = urlsplit(target)
        if (not parts.scheme and not parts.netloc and parts.path.startswith("/admin")
                and "\\" not in target and not target.startswith("//")):
            return target
    return url_for("admin.dashboard")


# ------------------------------------------------------------------------------ guards


def _has_nul() -> bool:
    """A NUL in a query, form or path value: psycopg2 refuses to send one (a ValueError, not a
    database error: a 500 on PostgreSQL), and no text in the history can hold one anyway."""
    values = [*request.args.listvalues(), *request.form.listvalues(),
              [v for v in (request.view_args or {}).values() if isinstance(v, str)]]
    return any("\x00" in v for vs in values for v in vs)


@bp.before_request
def _guard_request():
    if _settings().admin_password is None:
        return render_template("admin/disabled.html"), 404
    if request.endpoint not in OPEN_ENDPOINTS and _has_nul():  # sign-in reads no database
        return render_template("admin/error.html", title="Bad request",
                               message="A value in the address or the form holds a NUL "
                                       "character, which nothing stored can hold."), 400
    g.zone = resolve(_settings().display_tz, request.cookies.get(TZ_COOKIE))
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        csrf.protect()  # raises CSRFError -> 400
    if request.endpoint in OPEN_ENDPOINTS:
        return None
    if _guard().session_valid(session.get("admin_sid")):
        g.admin = True
        return None
    if request.endpoint in API_ENDPOINTS:
        return jsonify(error="unauthorized", login=url_for("admin.login")), 401
    if request.method not in ("GET", "HEAD"):
        return redirect(url_for("admin.login"), 303)
    return redirect(url_for("admin.login", next=request.full_path.rstrip("?")))


@bp.after_request
def _private(resp: Response) -> Response:
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["X-Robots-Tag"] = "noindex, nofollow"
    # Same-origin referrers let Flask-WTF's HTTPS referrer check pass on the console's own forms.
    resp.headers["Referrer-Policy"] = "same-origin"
    return resp


@bp.context_processor
def _template_globals():
    zone = getattr(g, "zone", None)
    return {"zone": zone, "fmt": (zone.fmt if zone else str), "iso": iso_utc,
            "side": queries.side, "duration": queries.duration,
            "signed_in": getattr(g, "admin", False),
            "static_version": _ext().get("static_version", "0"),
            "product": _ext().get("product", "")}


@bp.errorhandler(CSRFError)
def _csrf_error(exc: CSRFError):
    log.info("refused a POST to %s from %s: %s", request.path, _client_tag(),
             exc.description)
    return render_template("admin/error.html", title="Form expired or invalid",
                           message="The form could not be verified (missing or invalid security "
                                   "token). Reload the page and try again."), 400


@bp.errorhandler(SQLAlchemyError)
def _db_error(exc: SQLAlchemyError):
    log.warning("database error on %s: %s", request.path, str(exc).splitlines()[0][:300])
    if request.endpoint in API_ENDPOINTS:
        return jsonify(error="database_unavailable"), 503
    return render_template("admin/error.html", title="History database unavailable",
                           message="The history database can't be read right now (is it running "
                                   "and migrated?). Live numbers and chat are not affected."), 503


@bp.errorhandler(redis.RedisError)
def _redis_error(exc: redis.RedisError):
    log.warning("redis error on %s: %s", request.path, exc)
    if request.endpoint in API_ENDPOINTS:
        return jsonify(error="redis_unavailable"), 503
    return render_template("admin/error.html", title="Temporarily unavailable",
                           message="The shared store (Redis) can't be reached, so sign-in can't "
                                   "be checked. Try again in a moment."), 503


# ------------------------------------------------------------------------------ sign-in


@bp.route("/login", methods=["GET", "POST"])
def login():
    guard = _guard()
    form = LoginForm()
    if request.method == "GET":
        if guard.session_valid(session.get("admin_sid")):
            return redirect(_safe_next(request.args.get("next")))
        form.next.data = request.args.get("next", "")
        return render_template("admin/login.html", form=form)

    who = _client_address()
    locked = guard.locked_for(who)
    if locked:
        log.warning("sign-in refused from %s: locked out for %ss", _client_tag(), locked)
        return _locked(form, locked)
    if not form.validate():
        return render_template("admin/login.html", form=form, error="Enter the password."), 400
    if password_ok(form.password.data, _settings().admin_password):
        guard.succeeded(who)
        target = _safe_next(form.next.data)
        session.clear()
        session["admin_sid"] = guard.start_session()
        log.info("signed in from %s", _client_tag())
        return redirect(target)
    count = guard.failed(who)
    log.warning("wrong password from %s (%d of %d)", _client_tag(), count, FAIL_LIMIT)
    if count >= FAIL_LIMIT:
        return _locked(form, LOCK_SECONDS)
    return render_template("admin/login.html", form=form, error="Wrong password."), 401


def _locked(form: LoginForm, seconds: int):
    minutes = max(1, -(-seconds // 60))
    msg = (f"Too many failed sign-ins from your address. Sign-in is blocked for {minutes} "
           f"more minute{'s' if minutes != 1 else ''}.")
    resp = Response(render_template("admin/login.html", form=form, error=msg, locked=True,
                                    unlock_hint=not _settings().production), 429)
    resp.headers["Retry-After"] = str(seconds)
    return resp


@bp.post("/logout")
def logout():
    _guard().end_session(session.get("admin_sid"))
    session.clear()
    log.info("signed out from %s", _client_tag())
    flash("You are signed out.")
    return redirect(url_for("admin.login"))


# ------------------------------------------------------------------------------ dashboard


def _series(span: str) -> dict:
    cache = _ext()["series_cache"]
    key = (g.zone.name, span)
    hit = cache.get(key)
    now = time.monotonic()
    if hit and now - hit[0] < SERIES_TTL:
        return hit[1]
    with _engine().connect() as conn:
        data = queries.series(conn, g.zone, span)
    cache[key] = (now, data)
    return data


FILTER_DAYS_SHOWN = 7


def _filtered() -> dict:
    """The word and link filter's refusals (common/store.py filtered_counts) over the last
    FILTER_DAYS_SHOWN UTC days, newest first, with today's and the period's totals by reason."""
    today = datetime.now(timezone.utc).date()
    days = [(today - timedelta(days=i)).isoformat() for i in range(FILTER_DAYS_SHOWN)]
    counts = _ext()["store"].filtered_counts(days)
    rows = [{"day": day, **{r: counts[day].get(r, 0) for r in REASONS}} for day in days]
    s = _settings()
    return {"rows": rows, "today": rows[0],
            "total": {r: sum(row[r] for row in rows) for r in REASONS},
            "words_on": bool(s.filter_words), "links_on": s.filter_links == "on"}


@bp.get("/")
def dashboard():
    live = _ext()["store"].counts()
    filtered = _filtered()
    try:
        with _engine().connect() as conn:
            totals = queries.totals(conn)
        series = {"24h": _series("24h"), "7d": _series("7d")}
        db_error = False
    except SQLAlchemyError as exc:  # live numbers still make sense without the history
        log.warning("database error on %s: %s", request.path, str(exc).splitlines()[0][:300])
        totals, series, db_error = None, None, True
    return render_template("admin/dashboard.html", totals=totals, live=live, series=series,
                           filtered=filtered,
                           db_error=db_error, retention_days=_settings().retention_days,
                           live_at=datetime.now(timezone.utc))


@bp.get("/api/live")
def api_live():
    counts = _ext()["store"].counts()
    return jsonify(**counts, at=int(time.time() * 1000))


@bp.get("/api/series")
def api_series():
    span = request.args.get("span", "24h")
    if span not in ("24h", "7d"):
        abort(400)
    return jsonify(_series(span))


# ------------------------------------------------------------------------------ rooms


def _filter_from_args() -> tuple[Filter, list[str], dict]:
    """The filter in the query string: from/to (days in the viewer's zone), q and room_kind."""
    errors = []
    raw = {k: (request.args.get(k) or "").strip() for k in ("from", "to", "q", "room", "room_kind")}
    start = end = None
    try:
        start = parse_day(raw["from"], g.zone)
    except ValueError:
        errors.append("“From” must be a date (YYYY-MM-DD).")
        raw["from"] = ""
    try:
        end = parse_day(raw["to"], g.zone, end=True)
    except ValueError:
        errors.append("“To” must be a date (YYYY-MM-DD).")
        raw["to"] = ""
    # `room_kind`: `kind` names what an export holds (messages, rooms, reports)
    if raw["room_kind"] not in ("", *ROOM_KINDS):
        errors.append("“Kind” must be random or private.")
        raw["room_kind"] = ""
    return (Filter(start, end, raw["q"][:200], raw["room"][:64], raw["room_kind"]), errors,
            {k: v for k, v in raw.items() if v})


def _page() -> int:
    try:
        return max(1, min(int(request.args.get("page", "1")), 100_000))
    except ValueError:
        return 1


@bp.get("/rooms")
def rooms():
    flt, errors, args = _filter_from_args()
    page = _page()
    with _engine().connect() as conn:
        rows, more = queries.list_rooms(conn, flt, page, PER_PAGE)
    return render_template("admin/rooms.html", rooms=rows, page=page, more=more, args=args,
                           errors=errors, filtered=not flt.empty, kinds=ROOM_KINDS)


@bp.get("/rooms/<room_id>")
def room(room_id: str):
    if len(room_id) > 64:
        abort(404)
    try:
        after = min(max(0, int(request.args.get("after", "0"))), MAX_ID)
    except ValueError:
        after = 0
    with _engine().connect() as conn:
        info = queries.get_room(conn, room_id)
        if info is None:
            abort(404)
        msgs, more = queries.room_messages(conn, room_id, after, TRANSCRIPT_PAGE)
        reps = queries.room_reports(conn, room_id)
    return render_template("admin/room.html", room=info, messages=msgs, more=more, after=after,
                           reports=reps)


# ------------------------------------------------------------------------------ reports


@bp.get("/reports")
def reports():
    status = request.args.get("status", "open")
    if status not in ("open", "resolved", "all"):
        status = "open"
    page = _page()
    with _engine().connect() as conn:
        rows, more = queries.list_reports(conn, status, page, PER_PAGE)
    return render_template("admin/reports.html", reports=rows, status=status, page=page,
                           more=more)


@bp.post(f"/reports/<int(max={MAX_ID}):report_id>/resolve")
def resolve_report(report_id: int):
    with _engine().begin() as conn:
        done = queries.resolve_report(conn, report_id)
    if done:
        log.info("report %s resolved", report_id)
        flash(f"Report #{report_id} marked resolved.")
    else:
        flash(f"Report #{report_id} was already resolved or does not exist.")
    back = request.form.get("back")
    return redirect(back if back and _safe_next(back) == back else url_for("admin.reports"))


# ------------------------------------------------------------------------------ export


def _export(fmt: str):
    kind = request.args.get("kind", "messages")
    if kind not in export.KINDS:
        abort(400)
    flt, errors, _ = _filter_from_args()
    if errors:
        return jsonify(error="bad_filter", details=errors), 400
    if fmt == "csv":
        stream = export.csv_stream(_engine(), kind, flt, g.zone)
        content_type = "text/csv; charset=utf-8"
    else:
        stream = export.json_stream(_engine(), kind, flt, g.zone)
        content_type = "application/json; charset=utf-8"
    log.info("export of %s as %s (%s) to %s", kind, fmt,
             "everything" if flt.empty else "a filter", _client_tag())
    # content_type, not mimetype: werkzeug appends "; charset=utf-8" to a text/* mimetype, and
    # "text/csv; charset=utf-8" became "text/csv; charset=utf-8; charset=utf-8"
    resp = Response(stream, content_type=content_type, direct_passthrough=True)
    resp.headers["Content-Disposition"] = f'attachment; filename="{export.filename(kind, fmt)}"'
    resp.headers["X-Accel-Buffering"] = "no"  # nginx: pass the stream on, don't spool it
    return resp


@bp.get("/export.csv")
def export_csv():
    return _export("csv")


@bp.get("/export.json")
def export_json():
    return _export("json")
