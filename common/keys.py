"""Every Redis key the project uses, under one prefix (REDIS_PREFIX, default `chat`).

All keys carry the hash tag `{prefix}` so that they live in one Redis Cluster slot and the Lua
scripts, which touch several of them atomically, stay legal there too.

| key                       | type   | holds |
|---------------------------|--------|-------|
| `{p}:alive`               | zset   | user -> presence deadline (ms); refreshed by the worker holding a connection |
| `{p}:queue`               | zset   | waiting user -> time they started waiting (ms) |
| `{p}:prefs`               | hash   | user -> JSON list of interests (lower-cased) from their last `join` |
| `{p}:partner`             | hash   | user -> partner user, while chatting (always both directions) |
| `{p}:room`                | hash   | user -> room id, while chatting |
| `{p}:room_seq`            | hash   | room id -> last message seq in that room |
| `{p}:room_info`           | hash   | room id -> JSON {interests, opened} |
| `{p}:last`                | hash   | user -> last partner (so Next does not rematch them at once) |
| `{p}:wake`                | list   | pushed on every join; the matcher blocks on it to wake up |
| `{p}:away`                | zset   | user whose last connection closed -> their presence deadline (ms); out of the online count until they return or are reaped |
| `{p}:parked`              | hash   | away user -> their place in the queue (ms), given back if they return within the grace |
| `{p}:workers`             | zset   | web worker id -> heartbeat deadline (ms); connections on a worker past it are dead |
| `{p}:where:<user>`        | hash   | the user's connections: sid -> web worker id (one live one; a new one replaces it); the route of every event to the user; expires a day after the last heartbeat |
| `{p}:history`             | stream | room opened / message / room closed / report, for the archiver |
| `{p}:sent:<user>`         | list   | the user's recent messages in their room, for replay on resume |
| `{p}:dedupe:<user>`       | hash   | client message id -> "seq:ts:room", so a resend is delivered once |
| `{p}:bucket:<user>`       | hash   | the user's message token bucket {tokens, ts} |
| `{p}:admin:fail:<addr>`   | string | failed admin sign-ins from one client address (expires; a lockout) |
| `{p}:admin:session:<id>`  | string | a signed-in admin session -> its start (ms); deleted on logout |

Socket.IO rooms (not Redis keys): `u:<user>` holds every connection of one user.

Pub/sub channels (not keys either), named from SOCKETIO_CHANNEL (`c`, default `flask-socketio`):
`c` carries broadcasts (`stats`) and whatever python-socketio's own emitters publish, and every
web worker reads it; `c:w:<worker id>` carries the events for the connections of one worker
(directed delivery, common/lua/lib/emit.lua), and only that worker reads it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "chat"

    def _k(self, name: str) -> str:
        return "{" + self.prefix + "}:" + name

    @property
    def alive(self) -> str:
        return self._k("alive")

    @property
    def queue(self) -> str:
        return self._k("queue")

    @property
    def prefs(self) -> str:
        return self._k("prefs")

    @property
    def partner(self) -> str:
        return self._k("partner")

    @property
    def room(self) -> str:
        return self._k("room")

    @property
    def room_seq(self) -> str:
        return self._k("room_seq")

    @property
    def room_info(self) -> str:
        return self._k("room_info")

    @property
    def last(self) -> str:
        return self._k("last")

    @property
    def wake(self) -> str:
        return self._k("wake")

    @property
    def away(self) -> str:
        return self._k("away")

    @property
    def parked(self) -> str:
        return self._k("parked")

    @property
    def workers(self) -> str:
        return self._k("workers")

    def where(self, user: str) -> str:
        return self.where_prefix + user

    @property
    def where_prefix(self) -> str:
        return self._k("where:")

    @property
    def history(self) -> str:
        return self._k("history")

    def sent(self, user: str) -> str:
        return self._k("sent:" + user)

    def dedupe(self, user: str) -> str:
        return self._k("dedupe:" + user)

    def bucket(self, user: str) -> str:
        return self._k("bucket:" + user)

    def admin(self, name: str) -> str:
        """Admin console state: `admin:fail:<address>` and `admin:session:<id>` (see above)."""
        return self._k("admin:" + name)


USER_ROOM_PREFIX = "u:"


WORKER_CHANNEL_INFIX = ":w:"


def worker_channel(channel: str, worker: str) -> str:
    """The pub/sub channel of one web worker's events (built in lua/lib/emit.lua too)."""
    return channel + WORKER_CHANNEL_INFIX + worker


def user_room(user: str) -> str:
    """The Socket.IO room that holds every connection of one user (also built in lua/lib/emit.lua)."""
    return USER_ROOM_PREFIX + user
