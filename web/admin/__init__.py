"""The admin console: sign-in, live numbers, history charts, transcripts, search, reports, bans
and their log, and streamed CSV/JSON export. `init_app(app, settings)` registers it (web/app.py
does).

Layout: views.py (the blueprint and its endpoints), bans.py (ban, unban, the moderation log),
auth.py (password, lockout and sessions in Redis), queries.py (the SQL), export.py (streamed CSV/JSON), zones.py (the viewer's time zone),
templates/admin/ (pages), and web/static/admin/ (admin.css, admin.js).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from flask import Flask

from common import config

from . import bans  # noqa: F401  (its routes are on the blueprint)
from .auth import SESSION_MAX, Guard
from .views import bp, csrf

log = logging.getLogger("web.admin")

__all__ = ["init_app", "bp", "csrf"]


def _static_version(app: Flask) -> str:
    """Changes whenever admin.css or admin.js does, so browsers never mix old and new."""
    folder = Path(app.static_folder or "") / "admin"
    stamps = [int(p.stat().st_mtime) for p in folder.glob("*") if p.is_file()]
    return str(max(stamps, default=0))


def _product_name() -> str:
    """The product's one name, as the chat page shows it (web/i18n.json's app_name, the same in
    every language), so the console cannot drift from it."""
    table = json.loads((Path(__file__).resolve().parent.parent / "i18n.json").read_text("utf-8"))
    return table["en"]["app_name"]


def init_app(app: Flask, settings: config.Settings) -> None:
    """Register the console on `app`: the blueprint, CSRF protection of its forms, and the
    session cookie flags. Needs app.extensions["chat"]["store"] (the Redis store)."""
    store = app.extensions["chat"]["store"]
    app.config.update(
        # CSRF is enforced on every POST of the console (views._guard_request); other parts of
        # the app (Socket.IO has its own transport) are not made to carry a token.
        WTF_CSRF_CHECK_DEFAULT=False,
        WTF_CSRF_TIME_LIMIT=SESSION_MAX,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.production,
    )
    csrf.init_app(app)
    guard = Guard(store.r, store.k, settings.secret_key, settings.admin_password)
    app.extensions["admin"] = {"settings": settings, "store": store, "guard": guard,
                               "engine": None,
                               "series_cache": {}, "static_version": _static_version(app),
                               "product": _product_name()}
    app.register_blueprint(bp)
    if settings.admin_password is None:
        log.warning("admin console disabled: ADMIN_PASSWORD is not set, and production "
                    "(APP_ENV=production) has no default password; /admin answers 404")
    elif not settings.production and not os.environ.get("ADMIN_PASSWORD"):
        log.info("admin console at /admin/ (development: the generated password is in %s)",
                 config.INSTANCE_DIR / "admin_password")
    else:
        log.info("admin console at /admin/")
