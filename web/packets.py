"""The Socket.IO packet gate: every packet a client sends passes here before python-socketio.

python-socketio 5.18 trusts what arrives: a binary packet's announced attachment count makes it
store every following frame until that many came (9,999,999 of them grew a worker by 300 MiB),
a malformed packet raises out of `Server._handle_eio_message` and Engine.IO logs a traceback,
and packets cost their sender nothing, so 200,000 cheap ones starved the worker's other users.

`guard` replaces that dispatch with one that

- charges every packet to a per-connection token bucket (PACKET_RATE/s, burst PACKET_BURST,
  valid or not, and Engine.IO's own PING, PONG, UPGRADE and NOOP packets too), and closes the
  Engine.IO connection with one `error {code: "rate_limited"}` when the bucket is empty;
- refuses binary Socket.IO packets (types 5, 6) and binary Engine.IO messages outright: this
  protocol has no binary events, so nothing is ever stored for attachments;
- refuses whatever cannot be decoded or is not one of CONNECT (to `/`, once), DISCONNECT (from
  `/`) or EVENT (on `/`, a non-empty list): `error {code: "bad_payload"}` to that connection when
  it is connected to `/`, a CONNECT_ERROR carrying the same code while it is not yet, never an
  exception, and at most one WARNING line per LOG_EVERY seconds for all of them;
- sends these answers straight to the connection (pre-encoded Engine.IO packets), never through
  the Redis queue.

A refused packet costs REFUSED_COST tokens instead of one, and so does an event the handlers
refuse for a protocol fault no honest client makes (PROTOCOL_FAULTS): see REFUSED_COST.

The valid path is a dict lookup, the bucket's arithmetic, a first-character test and the
decode python-socketio did anyway.
"""
from __future__ import annotations

import collections
import json
import json.encoder as json_encoder
import logging
import re
import time

import gevent.local
from engineio import json as eio_json
from engineio import packet as eio_packet
from socketio import packet as sio_packet

from common import events as ev

from .drain import close_session
from .ratelimit import TokenBucket

log = logging.getLogger("web.packets")

# What a refused packet costs, in packets. An honest client (the page, the load test's users,
# any Socket.IO client library) never sends one, so the price can be steep without hurting
# anybody; it has to be, because a refusal is work for the worker (a decode that failed, an
# error packet encoded and sent back) that gives nothing to anyone. At 5, a connection that
# sends only garbage gets PACKET_BURST / 5 = 12 answers in a burst, then PACKET_RATE / 5 = 4 a
# second, and is closed as soon as it sends faster than that; a buggy but honest client still
# sees its first errors before anything is closed.
REFUSED_COST = 5
# Refusals by the event handlers that only a broken or hostile client provokes, charged like a
# refused packet. Not charged: what a person can cause (`empty`, `too_long`, `not_chatting`,
# `already_chatting` after a race, `rate_limited`, which has its own budget) and server faults.
PROTOCOL_FAULTS = frozenset({"bad_payload", "bad_id", "unknown_event"})
LOG_EVERY = 10.0  # seconds between two WARNING lines about refused packets (one line, summed)
_EVENT_HEAD = re.compile(r"2([0-9]{0,100})\[")  # an EVENT on `/`, its ack id if any
UNKNOWN = "\x00not-an-event"  # what a forbidden event name reaches the catch-all handler as

BINARY_TEXT = "Binary packets are not accepted."


def _bounded_int(digits: str) -> int:
    """Engine.IO's rule for integers in JSON: at most 100 digits (a huge one costs seconds)."""
    if len(digits) > 100:
        raise ValueError("Integer is too large")
    return int(digits)


# Built once: `json.loads(s, parse_int=…)` and `json.dumps(obj, separators=…)`, as Engine.IO's
# json module and both libraries' packet classes call them, make a new decoder (or encoder)
# for every packet.
_DECODER = json.JSONDecoder(parse_int=_bounded_int)
_ENCODER = json.JSONEncoder(separators=(",", ":"))
_COMPACT = {"separators": (",", ":")}
# And the C encoder below JSONEncoder.encode built once too: `encode` builds a new one (with a
# dict for its circular-reference check) on every call, half of its cost for a chat packet
# (1.8 -> 0.9 us an ack in a loop). The packets are built here, never circular.
_C_ENCODE = (json_encoder.c_make_encoder(
    None, _ENCODER.default, json_encoder.encode_basestring_ascii, None, ":", ",", False, False,
    True) if json_encoder.c_make_encoder is not None else None)


class PacketJson:
    """Engine.IO's json module (integers of at most 100 digits), whose `loads` also turns JSON
    nested too deeply for the decoder into the ValueError its callers catch.

    Without it, `4[[[…` (a few thousand levels in one WebSocket frame) raised RecursionError
    from Engine.IO's own packet decode, outside any handler: a traceback, and the connection
    dropped. Caught, the text reaches the gate as a string and is refused like any other.
    python-socketio's `json=` option installs a module the same way, on the packet classes.
    The packets' own calls (a string, compact separators) use a decoder and an encoder built
    once; any other call goes to Engine.IO's module as it is.
    """

    @staticmethod
    def dumps(obj, **kwargs):
        if not kwargs or kwargs == _COMPACT:
            if _C_ENCODE is not None:
                return "".join(_C_ENCODE(obj, 0))
            return _ENCODER.encode(obj)
        return eio_json.dumps(obj, **kwargs)

    @staticmethod
    def loads(s, **kwargs):
        try:
            if s.__class__ is str and not kwargs:
                return _DECODER.decode(s)
            return eio_json.loads(s, **kwargs)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


class TextPacket(sio_packet.Packet):
    """python-socketio's packet without binary events: this protocol has none (the gate
    refuses them), so the library's recursive search for bytes through every outgoing payload
    (`data_is_binary`, ~2 % of a loaded worker) is skipped. Text payloads encode as before."""

    uses_binary_events = False
    json = PacketJson


class Frame(eio_packet.Packet):
    """An Engine.IO MESSAGE that carries the Socket.IO text packet `text`, encoded at once.

    What the libraries' two packet objects (a Socket.IO packet, encoded into an Engine.IO one)
    make of an event or an ack on `/`: `2[…]`, `3<id>[…]`, in one string and one object. The two
    objects, their type checks and their encodes were ~4 % of a loaded worker's Python time
    (py-spy --gil); tests/test_packets.py checks the text against theirs."""

    def __init__(self, text: str):
        self.packet_type = eio_packet.MESSAGE
        self.data = text
        self.binary = False
        self.encode_cache = "4" + text  # what Packet.encode makes of it, and returns from here


def event_packet(event: str, data) -> eio_packet.Packet:
    """Event `event` on `/` with `data` (one argument, a tuple of several, or None), encoded once
    into the Engine.IO packet that carries it: one such object may be sent to any number of
    connections (python-socketio's own broadcast does the same)."""
    args = ([event] if data is None else [event, *data] if data.__class__ is tuple
            else [event, data])
    return Frame("2" + PacketJson.dumps(args))


def ack_packet(ack_id: int, data: list) -> eio_packet.Packet:
    """The ack `ack_id` on `/` with the arguments `data`."""
    return Frame("3" + str(ack_id) + PacketJson.dumps(data))


def send_event(server, sid: str, pkt: eio_packet.Packet) -> None:
    """An event_packet to one connection of this worker, if it is still here: python-socketio's
    `emit(to=sid, ignore_queue=True)` without its three layers of routing for one receiver."""
    eio_sid = server.manager.eio_sid_from_sid(sid, "/")
    if eio_sid is not None:
        server.eio.send_packet(eio_sid, pkt)


class Gate:
    """The per-connection budget and the dispatch of one worker's Socket.IO server."""

    def __init__(self, server, settings):
        self.server = server
        self.rate, self.burst = settings.packet_rate, settings.packet_burst
        self.buckets: dict[str, TokenBucket] = {}
        self.manager = server.manager
        self.decode = server.packet_class
        self.eio = server.eio
        # Whether the event being handled asked for an ack, per handler greenlet: a refusal is
        # then a failed ack, else an `error` event (web/sockets.py).
        self.acks = gevent.local.local()
        # Names no client may fire: python-socketio's own (`connect`, `disconnect`), and the
        # catch-all's `*` (5.18 calls it without the event name, shifting every argument).
        self.reserved = frozenset(server.reserved_events) | {"*"}
        self.client_disconnect = server.reason.CLIENT_DISCONNECT
        self.answers = {
            "bad_payload": self._event(ev.error("bad_payload")),
            "binary": self._event(ev.error("bad_payload", BINARY_TEXT)),
            "rate_limited": self._event(ev.error("rate_limited")),
        }
        self.connect_error = self._eio(sio_packet.Packet(
            sio_packet.CONNECT_ERROR, namespace="/",
            data={"message": ev.ERRORS["bad_payload"], "data": ev.error("bad_payload")}))
        self.counts: collections.Counter[str] = collections.Counter()
        self.last_log = -LOG_EVERY

    # -- pre-encoded answers -------------------------------------------------------------------
    def _eio(self, pkt) -> eio_packet.Packet:
        # One Engine.IO packet object can be sent to many connections: python-socketio's own
        # broadcast does the same (its encoded form is cached in the object).
        return eio_packet.Packet(eio_packet.MESSAGE, pkt.encode())

    def _event(self, payload: dict) -> eio_packet.Packet:
        return event_packet(ev.ERROR, payload)

    # -- Engine.IO events ----------------------------------------------------------------------
    def on_connect(self, original):
        def connect(eio_sid, *args):
            r = original(eio_sid, *args)
            if r is not False:
                self.buckets[eio_sid] = TokenBucket(self.rate, self.burst)
                session = self.server.eio.sockets.get(eio_sid)
                if session is not None:
                    session.receive = self.charged(eio_sid, session.receive)
            return r
        return connect

    def charged(self, eio_sid, receive):
        """One Engine.IO session's `receive`, charging what never reaches `message`.

        Engine.IO handles its own packets (PING, PONG, UPGRADE, NOOP, unknown types) before
        Socket.IO sees anything, so they cost nothing: 100,000 of them on one WebSocket were
        all read, and every UPGRADE answered. An honest client sends a PONG per ping interval
        and one UPGRADE (one token each); anything else of these is refused work
        (REFUSED_COST). A MESSAGE is charged by `message`, and a CLOSE ends the session.

        A MESSAGE goes to `message` from here: Engine.IO's way (Socket.receive, a log call,
        `_trigger_event` and its closure, all to call the same handler in this greenlet) was
        ~3 % of a loaded worker's Python time (py-spy --gil). An exception is logged, and the
        connection read on, as Engine.IO does. With Engine.IO's async handlers on, its way.
        """
        free = (eio_packet.MESSAGE, eio_packet.CLOSE)
        honest = (eio_packet.PONG, eio_packet.UPGRADE)
        message = eio_packet.MESSAGE if not self.server.eio.async_handlers else None
        handle = self.message

        def receive_charged(pkt):
            kind = pkt.packet_type
            if kind == message:
                try:
                    return handle(eio_sid, pkt.data)
                except Exception:  # noqa: BLE001 - as Engine.IO: logged, the reader goes on
                    log.exception("message handler error")
                    return None
            if kind not in free:
                bucket = self.buckets.get(eio_sid)
                if bucket is None:  # closed by the gate: what is still in flight is dropped
                    return None
                if not bucket.take():
                    return self.flood(eio_sid)
                if kind not in honest:
                    bucket.tokens -= REFUSED_COST - 1
            return receive(pkt)
        return receive_charged

    def on_disconnect(self, original):
        def disconnect(eio_sid, *args):
            self.buckets.pop(eio_sid, None)
            self.server._binary_packet.pop(eio_sid, None)  # never filled; cleaned all the same
            return original(eio_sid, *args)
        return disconnect

    def message(self, eio_sid, data):
        """python-socketio's `_handle_eio_message`, with a budget and without trust."""
        bucket = self.buckets.get(eio_sid)
        if bucket is None:  # closed by the gate, or gone: what is still in flight is dropped
            return
        if not bucket.take():
            return self.flood(eio_sid)
        if data.__class__ is str and data[:1] == "2":  # EVENT: the hot path
            # What a client sends, `2[…]` or `2<ack id>[…]` on `/`, is read here: its ack id (at
            # most 100 digits, as python-socketio reads them) and its JSON by the same decoder.
            # The library's Packet (an object, a scan for attachments, a digit loop in Python)
            # was ~3 % of a loaded worker's Python time; anything else still goes to it.
            head = _EVENT_HEAD.match(data)
            try:
                if head is not None:
                    digits = head.group(1)
                    ack_id, namespace = int(digits) if digits else None, None
                    args = PacketJson.loads(data[head.end() - 1:])
                else:
                    pkt = self.decode(encoded_packet=data)
                    ack_id, namespace, args = pkt.id, pkt.namespace, pkt.data
            except Exception as exc:  # noqa: BLE001 - whatever the decode raises is refused
                return self.refuse(eio_sid, bucket, "undecodable event", exc)
            if args.__class__ is list and args and (namespace is None or namespace == "/"):
                return self.event(eio_sid, ack_id, args)
            return self.refuse(eio_sid, bucket, "event that is not a non-empty list on /")
        return self.other(eio_sid, bucket, data)

    def event(self, eio_sid, ack_id, args: list) -> None:
        """python-socketio's `_handle_event` and `_handle_event_internal` for `/`, in one step:
        the handler registered for the name, in this greenlet (async_handlers is off), then
        its return value as the ack when one was asked for. The library's way went through
        five more calls, a logger call and its handler resolution per event (~10 % of a
        loaded worker's Python time, py-spy --gil). A name that is not a string, is reserved
        or has no handler goes to the catch-all (`*`), a forbidden one as UNKNOWN."""
        manager = self.manager
        sid = manager.sid_from_eio_sid(eio_sid, "/")
        if sid is None or not manager.is_connected(sid, "/"):
            return  # closed meanwhile: what was still in flight is dropped, as the library does
        handlers = self.server.handlers["/"]
        name = args[0]
        self.acks.ack = ack_id is not None
        if name.__class__ is str and name not in self.reserved and name in handlers:
            r = handlers[name](sid, *args[1:])
        else:
            if name.__class__ is not str or name in self.reserved:
                name = UNKNOWN
            r = handlers["*"](name, sid, *args[1:])
        if ack_id is not None:
            data = [] if r is None else list(r) if r.__class__ is tuple else [r]
            self.eio.send_packet(eio_sid, ack_packet(ack_id, data))

    def other(self, eio_sid, bucket, data):
        """Everything but an EVENT: CONNECT and DISCONNECT pass, the rest is refused."""
        if data.__class__ is not str:
            if isinstance(data, (bytes, bytearray)):
                return self.refuse(eio_sid, bucket, "binary message", answer="binary")
            # Engine.IO decodes `4{…}`, `4[…]`, `4null` to JSON before Socket.IO sees them
            return self.refuse(eio_sid, bucket, f"Engine.IO message of type "
                                                f"{type(data).__name__}")
        kind = data[:1]
        if kind == "5" or kind == "6":
            return self.refuse(eio_sid, bucket, "binary packet", answer="binary")
        if kind != "0" and kind != "1":
            return self.refuse(eio_sid, bucket, f"packet type {kind!r}")
        try:
            pkt = self.decode(encoded_packet=data)
        except Exception as exc:  # noqa: BLE001 - as above
            return self.refuse(eio_sid, bucket, "undecodable packet", exc)
        if pkt.namespace is not None and pkt.namespace != "/":
            return self.refuse(eio_sid, bucket, "another namespace")
        if kind == "1":
            return self.server._handle_disconnect(eio_sid, "/", self.client_disconnect)
        if self.manager.sid_from_eio_sid(eio_sid, "/") is not None:
            return self.refuse(eio_sid, bucket, "second CONNECT")
        if pkt.data is not None and pkt.data.__class__ is not dict:
            return self.refuse(eio_sid, bucket, "CONNECT with auth that is not an object")
        return self.server._handle_connect(eio_sid, "/", pkt.data)

    # -- refusals ------------------------------------------------------------------------------
    def refuse(self, eio_sid, bucket, what: str, exc: BaseException | None = None,
               answer: str = "bad_payload") -> None:
        bucket.tokens -= REFUSED_COST - 1  # may go below zero: the next packet closes it
        if self.manager.sid_from_eio_sid(eio_sid, "/") is not None:
            self.eio.send_packet(eio_sid, self.answers[answer])
        else:  # not connected to `/` yet: the client waits for a CONNECT answer
            self.eio.send_packet(eio_sid, self.connect_error)
        addr = (self.server.environ.get(eio_sid) or {}).get("REMOTE_ADDR", "?")
        self.note(addr, what if exc is None else f"{what} ({type(exc).__name__})")

    def flood(self, eio_sid) -> None:
        """The budget is spent: one `rate_limited`, then the Engine.IO connection is closed."""
        self.buckets.pop(eio_sid, None)  # two POSTs of one polling session may both get here
        if self.manager.sid_from_eio_sid(eio_sid, "/") is not None:
            self.eio.send_packet(eio_sid, self.answers["rate_limited"])
        # Without waiting (from inside this connection's request or reader, a wait could be
        # for a poll that never comes); a GET already waiting carries the error and CLOSE out.
        addr = (self.server.environ.get(eio_sid) or {}).get("REMOTE_ADDR", "?")
        close_session(self.server.eio, eio_sid)
        self.note(addr, "over its packet budget: closed", "closed")
        # Let the connection's writer run now: it sends the error and the CLOSE, then closes the
        # WebSocket, which stops this reader. Without the switch, the reader went on decoding
        # (and the gate dropping) every frame already buffered: 2 s of CPU for 32 MB.
        self.server.sleep(0)

    def charge(self, sid: str, code: str) -> None:
        """A handler refused connection `sid`'s event for a protocol fault: it costs like a
        refused packet."""
        if code in PROTOCOL_FAULTS:
            bucket = self.buckets.get(self.manager.eio_sid_from_sid(sid, "/"))
            if bucket is not None:
                bucket.tokens -= REFUSED_COST - 1

    def note(self, addr: str, what: str, counter: str = "refused") -> None:
        """Count; at most one WARNING line per LOG_EVERY seconds, never a traceback."""
        self.counts[counter] += 1
        now = time.monotonic()
        if now - self.last_log < LOG_EVERY:
            return
        log.warning("packet gate: %d packet(s) refused and %d connection(s) closed over budget "
                    "since the last report; latest: %s from %s", self.counts["refused"],
                    self.counts["closed"], what, addr)
        self.counts.clear()
        self.last_log = now


def guard(server, settings) -> Gate:
    """Wrap `server` so that hostile packets cost their sender and never reach a handler.

    Engine.IO holds python-socketio's bound methods in `server.eio.handlers`, so the gate is
    installed there as well as on the server object. The event handlers' refusals are charged
    by web/sockets.py's one refusal path (`Gate.charge`).
    """
    eio_packet.Packet.json = PacketJson
    server.packet_class = TextPacket
    gate = Gate(server, settings)
    handlers = server.eio.handlers
    handlers["connect"] = gate.on_connect(handlers["connect"])
    handlers["disconnect"] = gate.on_disconnect(handlers["disconnect"])
    handlers["message"] = server._handle_eio_message = gate.message
    server._handle_eio_disconnect = handlers["disconnect"]

    return gate
