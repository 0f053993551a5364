"""Flask app factory: the page, health endpoints, and the Socket.IO server on the Redis queue."""
from __future__ import annotations

import base64
import hashlib
import json
import logging
from pathlib import Path

from flask import Flask, Response, abort, jsonify, make_response, render_template, request
from flask_socketio import SocketIO
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.middleware.proxy_fix import ProxyFix

from common import config
from common.limits import (MAX_INTEREST_LEN, MAX_INTERESTS, PRIVATE_KEY_ALPHABET,
                           PRIVATE_KEY_LEN)
from common.moderation import (BROWSER_COOKIE, BROWSER_COOKIE_AGE, new_browser_id,
                               valid_browser_id)
from common.redisconn import connect as redis_connect
from common.store import Store

from . import admin, direct, drain, guard, listener, metrics, sockets, sweep
from .presence import Connections, heartbeat_loop
from .tokens import Tokens

log = logging.getLogger("web")
HERE = Path(__file__).resolve().parent

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def _static_version(folder: Path) -> str:
    """A digest of the static files: the same in every worker, new when a file changes."""
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(folder)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


def create_app(settings: config.Settings | None = None) -> Flask:
    settings = settings or config.load()
    app = Flask(__name__, template_folder=str(HERE / "templates"),
                static_folder=str(HERE / "static"))
    app.config.update(SECRET_KEY=settings.secret_key, SEND_FILE_MAX_AGE_DEFAULT=3600,
                      SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax")
    if settings.trusted_proxies:
        # Behind nginx: the client's address and scheme come from X-Forwarded-*, trusted for
        # exactly this many proxy hops (a forged header from a client is not believed).
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n)
    i18n = json.loads((HERE / "i18n.json").read_text(encoding="utf-8"))
    static_version = _static_version(HERE / "static")
    # The page's ES modules import each other by relative URL, which drops ?v=: an import map
    # maps each module to its versioned URL (/static/ caches those for long; the bare ones for
    # an hour, when a deploy could mix an old module with new ones). The map is inline, so the
    # page's CSP allows it by its hash, and only it.
    modules = sorted(p.name for p in (HERE / "static" / "js").glob("*.js"))
    import_map = json.dumps({"imports": {f"/static/js/{m}": f"/static/js/{m}?v={static_version}"
                                         for m in modules}}, indent=1)
    map_hash = base64.b64encode(hashlib.sha256(import_map.encode()).digest()).decode()
    page_csp = SECURITY_HEADERS["Content-Security-Policy"].replace(
        "script-src 'self'", f"script-src 'self' 'sha256-{map_hash}'")

    store = Store(redis_connect(settings), settings)
    socketio = SocketIO(
        app,
        async_mode="gevent",
        # directed delivery on the chat's Redis (one or a cluster): web/listener.py
        client_manager=listener.ChatQueue(store, settings),
        max_http_buffer_size=settings.max_frame_bytes,
        ping_interval=settings.ping_interval,
        ping_timeout=settings.ping_timeout,
        manage_session=False,
        logger=False,
        engineio_logger=False,
        # Run each event's handler in the connection's own reader greenlet instead of a new
        # greenlet per event: one connection's events are handled in order, and a greenlet
        # per packet was 2 - 4 % of a worker (loadtests/RESULTS.md). Handlers never raise.
        async_handlers=False,
    )
    # Subscribe to the message queue now, not on the first connection (python-socketio's
    # default): events published for a fresh worker's first clients would otherwise be lost.
    socketio.server.manager_initialized = True
    guard.name_sessions(socketio.server.eio, settings.worker_id)
    # a packet to an idle WebSocket is written at once; what waits is capped
    direct.install(socketio.server.eio, settings.max_queued_bytes)
    sweep.install(socketio.server.eio)  # the ping-timeout checks, in batches
    socketio.server.manager.initialize()
    conns = Connections()
    app.extensions["chat"] = {"settings": settings, "store": store, "conns": conns,
                              "socketio": socketio}
    sockets.register(socketio, store, settings, Tokens(settings.secret_key, settings.token_ttl),
                     conns)
    listener.install(socketio, store, conns, settings)
    metrics.install(store, conns)
    app.extensions["chat"]["drain"] = lambda: drain.drain(socketio, conns, settings)

    @app.get("/")
    def index():
        # A long-lived random browser id (blocks and bans survive a new tab): kept as it is,
        # or a new one; only its keyed hash is ever stored (common/moderation.py).
        browser = request.cookies.get(BROWSER_COOKIE)
        resp = make_response(render_template(
            "index.html", i18n=i18n, max_len=settings.max_message_len,
            max_interests=MAX_INTERESTS, max_interest_len=MAX_INTEREST_LEN,
            private_key_alphabet=PRIVATE_KEY_ALPHABET, private_key_len=PRIVATE_KEY_LEN,
            static_version=static_version, modules=modules, import_map=import_map))
        resp.headers["Content-Security-Policy"] = page_csp
        resp.set_cookie(BROWSER_COOKIE, browser if valid_browser_id(browser) else new_browser_id(),
                        max_age=BROWSER_COOKIE_AGE, httponly=True, samesite="Lax",
                        secure=settings.production)
        return resp

    @app.get("/healthz")
    def healthz():
        return jsonify(ok=True, worker=settings.worker_id)

    @app.get("/readyz")
    def readyz():
        try:
            store.r.ping()
        except Exception as exc:
            log.warning("not ready: redis: %s", exc)
            return jsonify(ok=False, redis=False), 503
        if conns.draining:
            return jsonify(ok=False, draining=True), 503
        if not socketio.server.manager.subscribed:
            return jsonify(ok=False, redis=True, queue=False), 503
        return jsonify(ok=True, redis=True, worker=settings.worker_id, connections=len(conns))

    @app.get("/metrics")
    def prometheus_metrics():
        # For Prometheus scraping this worker directly: not through nginx (which answers 404
        # itself) or any other proxy that says so, never behind the admin login.
        if "X-Forwarded-For" in request.headers:
            abort(404)
        return Response(generate_latest(), content_type=CONTENT_TYPE_LATEST)

    @app.after_request
    def security_headers(resp):
        for k, v in SECURITY_HEADERS.items():
            resp.headers.setdefault(k, v)
        return resp

    # The admin console (web/admin): its blueprint under /admin and CSRF protection of its forms.
    admin.init_app(app, settings)

    stopping = {"flag": False}
    app.extensions["chat"]["stop"] = lambda: stopping.__setitem__("flag", True)
    socketio.start_background_task(heartbeat_loop, socketio.sleep, store, conns,
                                   settings.heartbeat_interval, lambda: stopping["flag"],
                                   settings.worker_id)
    log.info("web worker %s ready: %s", settings.worker_id, settings.describe())
    return app
