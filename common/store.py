"""The chat state in Redis: the atomic operations (Lua scripts in ./lua) and the reads around them.

Web workers and the matcher both go through this class, so the key layout (common/keys.py) and
the scripts are used one way only. Each script runs in one hash slot: the home slot (presence,
the wait list, who is chatting with whom) or a chat's shard (its messages). A step that spans
both is two scripts, made safe by an intent: the home slot's script records what the shard must
do (`opening`, `closing`), the shard's script is idempotent, and the intent is deleted once
done; whoever finds an intent left by a process killed in between carries it out
(finish_pending, and a resume that meets a room not open yet). A chat ended between the two
halves of its opening leaves its end in the shard (close.lua), and open.lua then opens and
closes it in one step: `matched`, then `partner_left`. On one Redis the home slot and the only
shard are the same tag; the steps are the same.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from . import events as ev
from .config import Settings
from .keys import USER_ROOM_PREFIX, WORKER_CHANNEL_INFIX, Keys
from .moderation import Identity
from .redisconn import keys_of, script_runner

LUA_DIR = Path(__file__).with_name("lua")
HISTORY_MAXLEN = 1_000_000  # safety cap on each history stream while no archiver drains it
SENT_KEPT = 400  # messages per chat kept for replay on resume
SENT_TTL = 3600  # seconds the replay and de-duplication keys outlive the last message
CHAT_TTL = 7 * 86400  # seconds an open chat lives at most (its end closes it long before)
WHERE_TTL = 86400  # seconds a user's connection list outlives their last heartbeat
RESUME_TRIES = 5  # resumes retried when the chat changed between the home slot and its shard
FILTERED_DAYS = 8  # days a day's filter counts are kept: the admin shows the last seven
PRIVATE_KEY_TRIES = 5  # keys drawn when the one drawn exists already (1 in 10^11 each)
STALE_INTENT_MS = 1000  # an intent this old was left by a process that died: carry it out
# (racing the process still at it is harmless: both halves are idempotent)


def lua_string(value: str) -> str:
    """A Lua string literal of any text: every byte but letters and digits as a decimal escape."""
    return '"' + "".join(chr(b) if chr(b).isalnum() and b < 128 else "\\%d" % b
                         for b in value.encode()) + '"'


def lua_prelude(keys: Keys, cluster: bool) -> str:
    """What every script can use: the helpers of lua/lib/*.lua and the constants they need."""
    names = ", ".join(f"{name} = {lua_string(name)}" for name in ev.LUA_EVENTS)
    return (f"local PUBLISH_CMD = {lua_string('SPUBLISH' if cluster else 'PUBLISH')}\n"
            f"local WORKER_CHANNEL_INFIX = {lua_string(WORKER_CHANNEL_INFIX)}\n"
            f"local WHERE_PREFIX = {lua_string(keys.where_prefix)}\n"
            f"local PRIVATE_PREFIX = {lua_string(keys.private_prefix)}\n"
            f"local WHO_PREFIX = {lua_string(keys.who_prefix)}\n"
            f"local BLOCK_PREFIX = {lua_string(keys.block_prefix)}\n"
            f"local BAN_PREFIX = {lua_string(keys.ban_prefix)}\n"
            f"local BANNED_MESSAGE = {lua_string(ev.ERRORS['banned'])}\n"
            f"local USER_ROOM_PREFIX = {lua_string(USER_ROOM_PREFIX)}\n"
            f"local EV = {{{names}}}\n"
            f"local REASON_DISCONNECTED = {lua_string(ev.REASON_DISCONNECTED)}\n"
            + "".join(p.read_text() for p in sorted((LUA_DIR / "lib").glob("*.lua"))))


def room_ids(n: int) -> list[str]:
    """`n` fresh random room ids (128 bits, 32 hex digits each) from one read of the system's
    random source: the matcher offers a batch of them with every pass (one uuid4 each was most
    of its own CPU); a private room takes one."""
    raw = os.urandom(16 * n).hex()
    return [raw[i:i + 32] for i in range(0, 32 * n, 32)]


@dataclass
class MessageResult:
    status: str  # ok | dup | not_chatting | rate_limited
    seq: int
    ts: int
    room: str
    partner: str = ""  # with ok: who it is for
    here: bool = False  # with ok: the caller delivers it (message.lua); nothing was published


class Store:
    def __init__(self, client, settings: Settings, keys: Keys | None = None):
        self.r = client
        self.s = settings
        self.k = keys or keys_of(settings)
        self.ttl_ms = int(settings.resume_grace * 1000)
        prelude = lua_prelude(self.k, bool(settings.redis_cluster_url))
        self._scripts = {
            p.stem: client.register_script(prelude + p.read_text())
            for p in sorted(LUA_DIR.glob("*.lua"))
        }
        self._call = script_runner(client)

    def _run(self, name: str, keys: list[str], args: list) -> object:
        return self._call(self._scripts[name], keys, args)

    # presence -------------------------------------------------------------------------------
    def touch(self, users: list[str], worker: str = "") -> int:
        """Keep these users (and their worker) alive for one grace period; the online count."""
        k = self.k
        return int(self._run("touch", [k.alive, k.away, k.workers],
                             [self.ttl_ms, worker, WHERE_TTL, *users]))

    def online(self) -> int:
        return self.touch([])

    def connect(self, user: str, sid: str, worker: str) -> tuple[int, int]:
        """A connection of `user` arrived: (online, how many older connections it replaced)."""
        k = self.k
        online, replaced, back_in = self._run(
            "connect",
            [k.alive, k.away, k.workers, k.where(user), k.parked, k.queue, k.partner, k.room,
             k.wake],
            [user, sid, worker, self.ttl_ms, WHERE_TTL,
             json.dumps(ev.error("replaced"), ensure_ascii=False)])
        if back_in:
            self._tell(user, "back", back_in)
        return int(online), int(replaced)

    def disconnect(self, user: str, sid: str, draining: bool = False) -> str:
        """A connection of `user` closed: 'here', 'draining' or 'away' (see disconnect.lua)."""
        k = self.k
        state, room = self._run(
            "disconnect", [k.alive, k.away, k.workers, k.where(user), k.parked, k.queue, k.room],
            [user, sid, self.ttl_ms, "1" if draining else "0"])
        if room:
            self._tell(user, "away", room)
        return state

    def _tell(self, user: str, what: str, room: str) -> None:
        self._run("tell", [self.k.chat(room)], [user, what, room])

    # the chat ---------------------------------------------------------------------------------
    def join(self, user: str, interests: list[str] | None) -> tuple[str, int]:
        k = self.k
        prefs = "" if interests is None else json.dumps(interests, ensure_ascii=False)
        res = self._run("join", [k.alive, k.queue, k.prefs, k.partner, k.wake, k.away, k.hosts],
                        [user, prefs, self.ttl_ms])
        return res[0], int(res[1]) if len(res) > 1 else 0

    def end_chat(self, user: str, reason: str, requeue: bool) -> tuple[str, str]:
        """End the user's chat: the home slot first (end_chat.lua), then its shard (close.lua
        tells the partner); returns (partner, room), '' when they were not chatting."""
        k = self.k
        partner, room, intent = self._run(
            "end_chat", [k.partner, k.room, k.last, k.queue, k.wake, k.closing, k.hosts],
            [user, reason, "1" if requeue else "0"])
        if room and intent:
            self.close_room(room, intent)
        return partner, room

    # private rooms ------------------------------------------------------------------------------
    def private_create(self, user: str, new_key) -> tuple[str, str, int]:
        """Make a private room hosted by `user` under a key from `new_key()` (another one is
        drawn if it is taken): ('ok', key, expires ms) or ('chatting', '', 0)."""
        k = self.k
        for _ in range(PRIVATE_KEY_TRIES):
            key = new_key()
            res = self._run("private_create", [k.private(key), k.hosts, k.partner, k.queue, k.alive],
                            [user, key, self.s.private_room_ttl, self.ttl_ms])
            if res[0] == "ok":
                return "ok", key, int(res[1])
            if res[0] == "chatting":
                return "chatting", "", 0
        raise redis.RedisError(f"{PRIVATE_KEY_TRIES} private room keys in a row were taken")

    def private_join(self, user: str, key: str, address_id: str) -> tuple[str, str]:
        """Join the private room `key` (private_join.lua), then open it in its shard (open.lua
        says `matched` to both): ('ok', room) or (error code, ''). `address_id`: the keyed
        hash of the client's address, whose wrong keys are counted with the user's."""
        k = self.k
        room = room_ids(1)[0]
        res = self._run(
            "private_join",
            [k.private(key), k.hosts, k.partner, k.room, k.queue, k.alive, k.workers, k.opening,
             k.guess("u:" + user), k.guess("a:" + address_id)],
            [user, room, self.s.private_guess_rate / 60, self.s.private_guess_burst, CHAT_TTL,
             self.ttl_ms])
        if res[0] != "ok":
            return res[0], ""
        self.open_room(res[1], res[2])
        return "ok", res[1]

    def room_of(self, user: str) -> str | None:
        """The user's chat now (the home slot's pointer), or None."""
        return self.r.hget(self.k.room, user)

    def message(self, user: str, msg_id: str, text: str, room: str | None = None,
                here: tuple[str, int] | None = None) -> MessageResult:
        """Store a message and emit it to the partner, in one atomic step in the chat's shard.
        `room`: the caller's idea of the user's chat (else the home slot is asked). `here`:
        (the partner the caller expects, the highest seq its worker delivered to them in this
        room) when the caller can deliver to them itself (message.lua says whether it must)."""
        room = room or self.room_of(user)
        if not room:
            return MessageResult("not_chatting", 0, 0, "")
        k = self.k
        expect, delivered = here or ("", 0)
        res = self._run(
            "message", k.message_keys(room, user),
            [user, msg_id, text, self.s.message_rate, self.s.message_burst, SENT_KEPT, SENT_TTL,
             HISTORY_MAXLEN, room, self.s.worker_id if here else "", expect, delivered])
        return MessageResult(res[0], int(res[1]), int(res[2]), res[3], res[4], bool(res[5]))

    def publish_to_sid(self, room: str, sid: str, event: str, data: dict) -> None:
        """To connection `sid` of this worker, on the channel of `room`'s shard: after every
        event that shard's scripts published to this worker before."""
        self._emit_on(self.k.room_tag(room), [self.s.worker_id], sid, event, data)

    def typing(self, user: str, typing: bool, room: str | None = None) -> bool:
        """Tell the partner; False when the user is not chatting (in `room`, if given)."""
        room = room or self.room_of(user)
        if not room:
            return False
        return bool(self._run("typing", [self.k.chat(room)], [user, "1" if typing else "0", room]))

    def report(self, user: str, reason: str, ts: int) -> bool:
        """Record a report about the current partner, or the last one if the chat just ended,
        and keep the two apart for BLOCK_TTL (block.lua). The history entry carries the
        reported one's keyed hashes, for a ban from the admin."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hget(self.k.partner, user)
        pipe.hget(self.k.room, user)
        pipe.hget(self.k.last, user)
        partner, room, last = pipe.execute()
        target = partner or last
        if not target:
            return False
        reported = Identity.unpack(self._run("block", [self.k.who(user), self.k.who(target)],
                                             [user, target, self.s.block_ttl * 1000]))
        stream = self.k.history_of(self.k.room_tag(room)) if room else self.k.history
        self.r.xadd(
            stream,
            {"type": "report", "user": user, "reported": target, "room": room or "",
             "reason": reason, "ts": str(ts), "reported_browser": reported.browser,
             "reported_addr": reported.addr},
            maxlen=HISTORY_MAXLEN, approximate=True,
        )
        return True

    def resume(self, user: str, since: int, sid: str) -> str:
        """Emit `resumed` to connection `sid` of this web worker; returns the state it told.

        The home slot says where the user is (and tells a user who is not chatting at once);
        a chatting user's snapshot comes from the chat's shard, which also makes this worker
        their route. A room not open yet is opened from its intent first."""
        k, worker = self.k, self.s.worker_id
        for _ in range(RESUME_TRIES):
            found = self._run("whereabouts", [k.partner, k.room, k.queue, k.hosts],
                              [user, sid, worker])
            if found[0] != "chatting":
                return found[0]
            room = found[1]
            state = self._run("snapshot", [k.chat(room), k.sent(room)],
                              [user, since, sid, worker, room])
            if state == "missing":
                intent = self.r.hget(k.opening, room)
                if intent:
                    self.open_room(room, intent)
                continue
            if state == "chatting":
                return state
        raise redis.RedisError(f"the chat of {user} kept changing during a resume")

    def snapshot(self, user: str, since: int, sid: str) -> str:
        """Emit `resumed` to `sid` without counting it as a reconnection (a replay after a gap)."""
        return self.resume(user, since, sid)

    def ended(self, user: str, room: str, sid: str) -> bool:
        """Tell connection `sid` of this worker again that `room` ended, when it did and the
        user is one close.lua told (ended.lua): its `partner_left` may have fallen into a gap
        of the worker's queue listener. Whether it was told."""
        return bool(self._run("ended", [self.k.chat(room)],
                              [user, sid, self.s.worker_id, room]))

    # the two halves of pairing and parting ----------------------------------------------------
    def open_room(self, room: str, intent: str) -> bool:
        """Open a paired room in its shard (open.lua, idempotent), then drop its intent."""
        k = self.k
        opened = self._run("open", [k.chat(room), k.history_of(k.room_tag(room))],
                           [room, intent, HISTORY_MAXLEN, CHAT_TTL])
        self.r.hdel(k.opening, room)
        return bool(opened)

    def close_room(self, room: str, intent: str) -> bool:
        """Close an ended room in its shard (close.lua, idempotent), then drop its intent."""
        k = self.k
        closed = self._run("close", [k.chat(room), k.history_of(k.room_tag(room)), k.sent(room)],
                           [room, intent, HISTORY_MAXLEN, SENT_TTL])
        self.r.hdel(k.closing, room)
        return bool(closed)

    def finish_pending(self, older_than_ms: int = STALE_INTENT_MS) -> int:
        """Carry out the intents left in the home slot at least `older_than_ms` ago (by a
        process killed between the two halves, or by reap.lua for the matcher); how many.
        Both intent hashes are read in one round trip (the same slot)."""
        k, done = self.k, 0
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(k.opening)
        pipe.hgetall(k.closing)
        opening, closing = pipe.execute()
        now = int(time.time() * 1000)
        for intents, finish in ((opening, self.open_room), (closing, self.close_room)):
            for room, intent in intents.items():
                try:
                    at = int(json.loads(intent).get("at", 0))
                except (ValueError, AttributeError):
                    at = 0
                if now - at >= older_than_ms:
                    finish(room, intent)
                    done += 1
        return done

    # the matcher's side ----------------------------------------------------------------------
    def match(self, on_pair=None, pairs: int | None = None) -> int:
        """Pair waiting users (match.lua, home slot) and open their rooms (open.lua, shards);
        `on_pair(intent)` sees each pairing's intent (users, time of pairing `at`, and each
        one's place in the queue `sa`/`sb`, all Redis's clock in ms). At most `pairs` pairs
        (default and most: MATCH_BATCH / 2): one fresh room id each, sent with the script."""
        k = self.k
        most = self.s.match_batch // 2
        n = most if pairs is None else max(1, min(pairs, most))
        made = self._run(
            "match",
            [k.queue, k.prefs, k.partner, k.room, k.last, k.alive, k.workers, k.opening],
            [int(self.s.interest_wait * 1000), self.s.match_batch, *room_ids(n)],
        )
        for i in range(0, len(made), 2):
            self.open_room(made[i], made[i + 1])
            if on_pair is not None:
                on_pair(json.loads(made[i + 1]))
        return len(made) // 2

    def reap(self, limit: int = 500) -> int:
        """End the chats of users gone past the grace (reap.lua), and close their rooms."""
        k = self.k
        gone = int(self._run(
            "reap",
            [k.alive, k.queue, k.prefs, k.partner, k.room, k.last, k.away, k.parked, k.closing,
             k.hosts],
            [limit],
        ))
        if gone:
            self.finish_pending(older_than_ms=0)
        return gone

    # events from outside the scripts --------------------------------------------------------
    def broadcast(self, event: str, data) -> None:
        """To every connection of every worker (`stats`): python-socketio's emit format on the
        shared channel (classic PUBLISH, which a cluster passes to every node)."""
        self.r.publish(self.s.socketio_channel, json.dumps(
            {"method": "emit", "event": event, "data": [data], "namespace": "/", "room": None},
            ensure_ascii=False))

    def emit_to(self, user: str, event: str, data) -> int:
        """To every connection of `user`, directed like the scripts' events (on the home tag's
        channel of each worker in their `where`); for emitters outside the chat's scripts."""
        workers = set(self.r.hvals(self.k.where(user)))
        self._emit_on(self.k.home, workers, USER_ROOM_PREFIX + user, event, data)
        return len(workers)

    def _emit_on(self, tag: str, workers, to: str, event: str, data) -> None:
        """python-socketio's emit to room `to`, on the channel of `tag` of each of `workers`
        (what lib/emit.lua publishes from inside the scripts)."""
        body = json.dumps({"method": "emit", "event": event, "data": [data], "namespace": "/",
                           "room": to}, ensure_ascii=False)
        publish = self.r.spublish if self.s.redis_cluster_url else self.r.publish
        for worker in workers:
            publish(tag + WORKER_CHANNEL_INFIX + worker, body)

    def counts(self) -> dict:
        """Online, waiting and chatting users now."""
        pipe = self.r.pipeline(transaction=False)
        pipe.zcard(self.k.queue)
        pipe.hlen(self.k.partner)
        waiting, chatting = pipe.execute()
        return {"online": self.online(), "waiting": int(waiting), "chatting": int(chatting)}

    # the word and link filter's counts (web/sockets.py counts, the admin reads) -------------------
    def count_filtered(self, reason: str, day: str) -> None:
        """One more message refused by the filter for `reason` (words, links) on UTC `day`.
        Not atomic, and need not be: the expiry is set again by every count."""
        key = self.k.filtered(day)
        pipe = self.r.pipeline(transaction=False)
        pipe.hincrby(key, reason, 1)
        pipe.expire(key, FILTERED_DAYS * 86400)
        pipe.execute()

    def filtered_counts(self, days: list[str]) -> dict[str, dict[str, int]]:
        """{day: {reason: count}} for each of `days` (an empty dict for a day without any)."""
        pipe = self.r.pipeline(transaction=False)
        for day in days:
            pipe.hgetall(self.k.filtered(day))
        return {day: {reason: int(n) for reason, n in got.items()}
                for day, got in zip(days, pipe.execute())}

    def wait_for_work(self, timeout: float) -> bool:
        """Block until a join wakes us or `timeout` passes (outside Lua: BLPOP cannot block there)."""
        return self.r.blpop([self.k.wake], timeout=timeout) is not None
