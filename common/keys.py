"""Every Redis key and channel the project uses, under one prefix (REDIS_PREFIX, default `chat`).

Two kinds of hash tag, so that each Lua script touches keys of one Redis Cluster slot:

- the **home** tag `{p}`: the control plane, the state the matcher pairs from and presence;
- the **chat shards** `{p:<n>.<salt>}`: the state of each chat (its room), by room id. On one
  Redis there is one shard and it is the home tag, so every key lives where it always did. On a
  Redis Cluster (REDIS_CLUSTER_URL) there are CLUSTER_SHARDS of them, each tag chosen so that
  the shards sit at evenly spaced slots: every master of an evenly split cluster gets the same
  number of chats (3 masters: 16 shards each).

What stays in the home slot, and why it may: everything there changes at the rate of people
arriving, connecting, pairing and parting (a join, a match, a Next, a connect and a disconnect
per user and chat; a heartbeat per worker batching all its users), not at the rate of messages.
At one message per 2 s and a 3-minute chat that is about 1/50 of the message rate; the message
path (message, typing) never touches it. Measured cost and ceiling: docs/SCALING.md.

| key (home slot)           | type   | holds |
|---------------------------|--------|-------|
| `{p}:alive`               | zset   | user -> presence deadline (ms); refreshed by the worker holding a connection |
| `{p}:queue`               | zset   | waiting user -> time they started waiting (ms) |
| `{p}:prefs`               | hash   | user -> JSON list of interests (lower-cased) from their last `join` |
| `{p}:partner`             | hash   | user -> partner user, while chatting (always both directions) |
| `{p}:room`                | hash   | user -> room id, while chatting: the pointer to the chat's shard |
| `{p}:last`                | hash   | user -> last partner (so Next does not rematch them at once) |
| `{p}:wake`                | list   | pushed when a join leaves 2+ users waiting; the matcher blocks on it to wake up |
| `{p}:away`                | zset   | user whose last connection closed -> their presence deadline (ms); out of the online count until they return or are reaped |
| `{p}:parked`              | hash   | away user -> their place in the queue (ms), given back if they return within the grace |
| `{p}:workers`             | zset   | web worker id -> heartbeat deadline (ms); connections on a worker past it are dead |
| `{p}:where:<user>`        | hash   | the user's connections: sid -> web worker id (one live one; a new one replaces it); expires a day after the last heartbeat |
| `{p}:opening`             | hash   | room -> JSON {a, b, interests, at}: a pair made in the home slot whose room is not open yet in its shard (an intent, replayed by whoever finds it) |
| `{p}:closing`             | hash   | room -> JSON {user, reason, both, at}: a chat ended in the home slot whose room is not closed yet in its shard (an intent, likewise) |
| `{p}:history`             | stream | reports made without a room, for the archiver |
| `{p}:history:refused`     | stream | history entries the database refused to store, set aside by the archiver so the rest goes on (the entry's fields, its `stream_id` and the `error`'s class; the newest 10,000) |
| `{p}:private:<KEY>`       | hash   | a private room's key: `host` (who made it), `created` (ms); once a friend joined, `room` and `guest`. Expires PRIVATE_ROOM_TTL after it was made while unused; deleted when its host leaves, goes elsewhere or is reaped, and when its chat ends |
| `{p}:hosts`               | hash   | user -> the KEY of the private room they made (so Leave, Next, a join or the reaper ends it) |
| `{p}:guess:u:<user>`      | hash   | a user's budget of wrong private room keys: token bucket {tokens, ts}; expires once full again |
| `{p}:guess:a:<hash>`      | hash   | the same per client address, named by its keyed hash (HMAC with SECRET_KEY), never the address |
| `{p}:who:<user>`          | string | the keyed hashes (common/moderation.py) of the browser id and address of the user's last connection, joined by a bar (either may be empty); expires like `where` |
| `{p}:block:<ident>`       | zset   | identities this one reported -> when the block ends (ms); `<ident>` is a browser hash, or `u:<user>` without a browser cookie; members are the reported one's browser hash and `u:<user>`; expires with its last entry |
| `{p}:ban:<hash>`          | string | a banned browser or address hash -> when the ban ends (ms); expires then |
| `{p}:admin:fail:<addr>`   | string | failed admin sign-ins from one client address, named by its keyed hash (expires; a lockout) |
| `{p}:admin:session:<id>`  | string | a signed-in admin session -> its start (ms); deleted on logout |
| `{p}:filtered:<day>`      | hash   | messages the word and link filter refused on one UTC day (YYYY-MM-DD): `words`, `links` -> count; expires FILTERED_DAYS after the day's first refusal (common/store.py) |

| key (a chat shard `{s}`)  | type   | holds |
|---------------------------|--------|-------|
| `{s}:chat:<room>`         | hash   | the chat: `a`, `b` (its users), `seq` (last message seq), `interests`, `opened`, `closed`, `end` (once closed: JSON {user, reason, both}, so that a `partner_left` lost in a listener gap can be told again: ended.lua); per user `route:<user>` (JSON list of the web workers holding their connections), `away:<user>`, `tokens:<user>` and `ts:<user>` (their message token bucket), `pub:<user>` (seq of the last message published to them, not delivered by the sender's worker itself: message.lua) |
| `{s}:sent:<room>`         | list   | the chat's recent messages (both directions), for the `resumed` snapshot |
| `{s}:dedupe:<room>:<user>`| hash   | client message id -> "seq:ts:room", so a resend is delivered once |
| `{s}:history`             | stream | room opened / message / room closed / report, for the archiver (one per shard) |

Pub/sub channels: `{t}:w:<worker id>` for every tag `t` (home and shards) carries the events
for the connections of one web worker (directed delivery, common/lua/lib/emit.lua): a script
publishes on its own slot's channel (SPUBLISH on a cluster, PUBLISH on one Redis), and each
worker reads all of its own. SOCKETIO_CHANNEL (default `flask-socketio`, classic PUBLISH)
carries broadcasts (`stats`) to every worker.

Socket.IO rooms (not Redis keys): `u:<user>` holds every connection of one user.

Client names (CLIENT SETNAME): a web worker's queue listener connections are named
`<p>:pubsub:<worker id>` (Keys.client_name), so that `CLIENT LIST` tells whose they are, and
one stack's listeners can be told apart from another's on a shared Redis Cluster.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import cached_property

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

CLUSTER_SHARDS = 48  # chat shards on a Redis Cluster: a multiple of 1, 2, 3, 4, 6, 8, 12, 16 masters
WORKER_CHANNEL_INFIX = ":w:"


def shard_tags(prefix: str, shards: int) -> tuple[str, ...]:
    """`shards` hash tags whose slots are evenly spaced over the cluster's 16384 (the first tag
    `{prefix:<n>.<salt>}` of each n whose slot falls in the n-th equal range)."""
    span = REDIS_CLUSTER_HASH_SLOTS / shards
    tags = []
    for n in range(shards):
        lo, hi = int(n * span), int((n + 1) * span)
        salt = 0
        while not lo <= key_slot(f"{prefix}:{n}.{salt}".encode()) < hi:
            salt += 1
        tags.append(f"{{{prefix}:{n}.{salt}}}")
    return tuple(tags)


@dataclass(frozen=True)
class Keys:
    prefix: str = "chat"
    shards: int = 1  # 1: one Redis, every key in the home slot; CLUSTER_SHARDS on a cluster

    # tags ---------------------------------------------------------------------------------------
    @property
    def home(self) -> str:
        return "{" + self.prefix + "}"

    @cached_property
    def shard_tags(self) -> tuple[str, ...]:
        return (self.home,) if self.shards == 1 else shard_tags(self.prefix, self.shards)

    @property
    def tags(self) -> tuple[str, ...]:
        """Every tag in use: home first, then the chat shards (just home on one Redis)."""
        return tuple(dict.fromkeys((self.home, *self.shard_tags)))

    def room_tag(self, room: str) -> str:
        tags = self.shard_tags
        if len(tags) == 1:  # one Redis: the home slot, no hash to make (one per key, per message)
            return tags[0]
        return tags[zlib.crc32(room.encode()) % len(tags)]

    # home slot ----------------------------------------------------------------------------------
    def _k(self, name: str) -> str:
        return self.home + ":" + name

    alive = property(lambda self: self._k("alive"))
    queue = property(lambda self: self._k("queue"))
    prefs = property(lambda self: self._k("prefs"))
    partner = property(lambda self: self._k("partner"))
    room = property(lambda self: self._k("room"))
    last = property(lambda self: self._k("last"))
    wake = property(lambda self: self._k("wake"))
    away = property(lambda self: self._k("away"))
    parked = property(lambda self: self._k("parked"))
    workers = property(lambda self: self._k("workers"))
    opening = property(lambda self: self._k("opening"))
    closing = property(lambda self: self._k("closing"))
    history = property(lambda self: self._k("history"))
    history_refused = property(lambda self: self._k("history:refused"))
    hosts = property(lambda self: self._k("hosts"))

    @property
    def private_prefix(self) -> str:
        return self._k("private:")

    def private(self, key: str) -> str:
        """A private room's key record (`private:<KEY>`)."""
        return self.private_prefix + key

    def guess(self, who: str) -> str:
        """A wrong-key budget: `guess:u:<user>` or `guess:a:<address hash>`."""
        return self._k("guess:" + who)

    @property
    def where_prefix(self) -> str:
        return self._k("where:")

    def where(self, user: str) -> str:
        return self.where_prefix + user

    def filtered(self, day: str) -> str:
        """The filter's refusals of one UTC day (`YYYY-MM-DD`), by reason (see above)."""
        return self._k("filtered:" + day)

    @property
    def who_prefix(self) -> str:
        return self._k("who:")

    def who(self, user: str) -> str:
        return self.who_prefix + user

    @property
    def block_prefix(self) -> str:
        return self._k("block:")

    @property
    def ban_prefix(self) -> str:
        return self._k("ban:")

    def ban(self, digest: str) -> str:
        return self.ban_prefix + digest

    def admin(self, name: str) -> str:
        """Admin console state: `admin:fail:<address hash>` and `admin:session:<id>` (see above)."""
        return self._k("admin:" + name)

    # a chat's shard -----------------------------------------------------------------------------
    # `tag`: the room's, when the caller has it already (message_keys)
    def chat(self, room: str, tag: str | None = None) -> str:
        return (tag or self.room_tag(room)) + ":chat:" + room

    def sent(self, room: str, tag: str | None = None) -> str:
        return (tag or self.room_tag(room)) + ":sent:" + room

    def dedupe(self, room: str, user: str, tag: str | None = None) -> str:
        return (tag or self.room_tag(room)) + ":dedupe:" + room + ":" + user

    def history_of(self, tag: str) -> str:
        return tag + ":history"

    def message_keys(self, room: str, user: str) -> list[str]:
        """message.lua's keys: chat, dedupe, sent and the shard's history, the tag made once."""
        tag = self.room_tag(room)
        return [self.chat(room, tag), self.dedupe(room, user, tag), self.sent(room, tag),
                self.history_of(tag)]

    @property
    def history_streams(self) -> tuple[str, ...]:
        """Every history stream the archiver reads (one per tag)."""
        return tuple(self.history_of(t) for t in self.tags)

    # channels and client names -------------------------------------------------------------------
    def client_name(self, role: str, worker: str) -> str:
        """`<prefix>:<role>:<worker>`, what CLIENT SETNAME accepts (printable ASCII, no space:
        anything else becomes `_`)."""
        raw = f"{self.prefix}:{role}:{worker}"
        return "".join(c if "!" <= c <= "~" else "_" for c in raw)

    def worker_channels(self, worker: str) -> tuple[str, ...]:
        """The channels that carry one web worker's events, one per tag."""
        return tuple(t + WORKER_CHANNEL_INFIX + worker for t in self.tags)


USER_ROOM_PREFIX = "u:"


def user_room(user: str) -> str:
    """The Socket.IO room that holds every connection of one user (also built in lua/lib/emit.lua)."""
    return USER_ROOM_PREFIX + user
