"""The chat state in Redis: the atomic operations (Lua scripts in ./lua) and the reads around them.

Web workers and the matcher both go through this class, so the key layout (common/keys.py) and
the scripts are used one way only.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import redis

from . import events as ev
from .config import Settings
from .keys import USER_ROOM_PREFIX, Keys, worker_channel

LUA_DIR = Path(__file__).with_name("lua")
HISTORY_MAXLEN = 1_000_000  # safety cap on the history stream while no archiver drains it
SENT_KEPT = 200  # messages per user kept for replay on resume
SENT_TTL = 3600  # seconds the replay and de-duplication keys outlive the last message
WHERE_TTL = 86400  # seconds a user's connection list outlives their last connection
RESUME_TRIES = 5  # resume.lua retries when the partner changed between its read and the script
POOL_MAX = 100  # Redis connections per process
POOL_WAIT = 10.0  # seconds a command may wait for a free one


def redis_client(url: str, **kwargs) -> redis.Redis:
    """A client for short commands; blocking reads use their own timeout (redis-py #4119).

    Its pool is bounded and blocking: when Redis stalls for a moment, a web worker's greenlets
    (one per busy connection) wait for one of POOL_MAX connections instead of failing with
    redis-py's "Too many connections" (its default pool refuses a 101st connection).
    """
    kwargs.setdefault("socket_connect_timeout", 5)
    kwargs.setdefault("socket_timeout", 10)
    kwargs.setdefault("health_check_interval", 30)
    kwargs.setdefault("retry_on_timeout", True)
    pool = redis.BlockingConnectionPool.from_url(url, decode_responses=True, max_connections=POOL_MAX,
                                                 timeout=POOL_WAIT, **kwargs)
    return redis.Redis(connection_pool=pool)


def lua_string(value: str) -> str:
    """A Lua string literal of any text: every byte but letters and digits as a decimal escape."""
    return '"' + "".join(chr(b) if chr(b).isalnum() and b < 128 else "\\%d" % b
                         for b in value.encode()) + '"'


def lua_prelude(settings: Settings) -> str:
    """What every script can use: the helpers of lua/lib/*.lua and the constants they need."""
    names = ", ".join(f"{name} = {lua_string(name)}" for name in ev.LUA_EVENTS)
    keys = Keys(settings.redis_prefix)
    return (f"local WORKER_CHANNEL_PREFIX = {lua_string(worker_channel(settings.socketio_channel, ''))}\n"
            f"local WHERE_PREFIX = {lua_string(keys.where_prefix)}\n"
            f"local USER_ROOM_PREFIX = {lua_string(USER_ROOM_PREFIX)}\n"
            f"local EV = {{{names}}}\n"
            f"local REASON_DISCONNECTED = {lua_string(ev.REASON_DISCONNECTED)}\n"
            + "".join(p.read_text() for p in sorted((LUA_DIR / "lib").glob("*.lua"))))


@dataclass
class MessageResult:
    status: str  # ok | dup | not_chatting | rate_limited
    seq: int
    ts: int
    room: str


class Store:
    def __init__(self, client: redis.Redis, settings: Settings):
        self.r = client
        self.s = settings
        self.k = Keys(settings.redis_prefix)
        self.ttl_ms = int(settings.resume_grace * 1000)
        prelude = lua_prelude(settings)
        self._scripts = {
            p.stem: client.register_script(prelude + p.read_text())
            for p in sorted(LUA_DIR.glob("*.lua"))
        }

    def _run(self, name: str, keys: list[str], args: list) -> object:
        return self._scripts[name](keys=keys, args=args)

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
        online, replaced = self._run(
            "connect",
            [k.alive, k.away, k.workers, k.where(user), k.parked, k.queue, k.partner, k.room,
             k.wake],
            [user, sid, worker, self.ttl_ms, WHERE_TTL,
             json.dumps(ev.error("replaced"), ensure_ascii=False)])
        return int(online), int(replaced)

    def disconnect(self, user: str, sid: str, draining: bool = False) -> str:
        """A connection of `user` closed: 'here', 'draining' or 'away' (see disconnect.lua)."""
        k = self.k
        return self._run(
            "disconnect",
            [k.alive, k.away, k.workers, k.where(user), k.parked, k.queue, k.partner, k.room],
            [user, sid, self.ttl_ms, "1" if draining else "0"])

    # the chat ---------------------------------------------------------------------------------
    def join(self, user: str, interests: list[str] | None) -> tuple[str, int]:
        k = self.k
        prefs = "" if interests is None else json.dumps(interests, ensure_ascii=False)
        res = self._run("join", [k.alive, k.queue, k.prefs, k.partner, k.wake, k.away],
                        [user, prefs, self.ttl_ms])
        return res[0], int(res[1]) if len(res) > 1 else 0

    def end_chat(self, user: str, reason: str, requeue: bool) -> tuple[str, str]:
        k = self.k
        partner, room = self._run(
            "end_chat",
            [k.partner, k.room, k.last, k.queue, k.room_seq, k.room_info, k.history, k.wake],
            [user, reason, "1" if requeue else "0", HISTORY_MAXLEN],
        )
        return partner, room

    def message(self, user: str, msg_id: str, text: str) -> MessageResult:
        """Store a message and emit it to the partner, in one atomic step."""
        k = self.k
        res = self._run(
            "message",
            [k.partner, k.room, k.room_seq, k.dedupe(user), k.bucket(user), k.sent(user),
             k.history],
            [user, msg_id, text, self.s.message_rate, self.s.message_burst, SENT_KEPT, SENT_TTL,
             HISTORY_MAXLEN],
        )
        return MessageResult(res[0], int(res[1]), int(res[2]), res[3])

    def typing(self, user: str, typing: bool) -> bool:
        """Tell the partner; False when the user is not chatting."""
        return bool(self._run("typing", [self.k.partner, self.k.room],
                              [user, "1" if typing else "0"]))

    def report(self, user: str, reason: str, ts: int) -> bool:
        """Record a report about the current partner, or the last one if the chat just ended."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hget(self.k.partner, user)
        pipe.hget(self.k.room, user)
        pipe.hget(self.k.last, user)
        partner, room, last = pipe.execute()
        target = partner or last
        if not target:
            return False
        self.r.xadd(
            self.k.history,
            {"type": "report", "user": user, "reported": target, "room": room or "",
             "reason": reason, "ts": str(ts)},
            maxlen=HISTORY_MAXLEN, approximate=True,
        )
        return True

    def resume(self, user: str, since: int, sid: str) -> str:
        """Emit `resumed` to connection `sid` of this web worker (resume.lua); returns the state
        it told."""
        k = self.k
        for _ in range(RESUME_TRIES):
            partner = self.r.hget(k.partner, user) or ""
            state = self._run(
                "resume",
                [k.partner, k.room, k.queue, k.room_info, k.sent(user),
                 k.sent(partner) if partner else k.sent(user), k.away],
                [user, partner, since, sid, self.s.worker_id])
            if state != "retry":
                return state
        raise redis.RedisError(f"the partner of {user} kept changing during a resume")

    def snapshot(self, user: str, since: int, sid: str) -> str:
        """Emit `resumed` to `sid` without counting it as a reconnection (a replay after a gap)."""
        return self.resume(user, since, sid)

    # the matcher's side ----------------------------------------------------------------------
    def match(self) -> int:
        k = self.k
        pairs = self.s.match_batch // 2
        rooms = [uuid.uuid4().hex for _ in range(pairs)]
        return int(self._run(
            "match",
            [k.queue, k.prefs, k.partner, k.room, k.last, k.alive, k.room_info, k.history],
            [int(self.s.interest_wait * 1000), self.s.match_batch, HISTORY_MAXLEN, *rooms],
        ))

    def reap(self, limit: int = 500) -> int:
        k = self.k
        return int(self._run(
            "reap",
            [k.alive, k.queue, k.prefs, k.partner, k.room, k.last, k.room_seq, k.room_info,
             k.away, k.history, k.parked],
            [limit, HISTORY_MAXLEN],
        ))

    def counts(self) -> dict:
        """Online, waiting and chatting users now."""
        pipe = self.r.pipeline(transaction=False)
        pipe.zcard(self.k.queue)
        pipe.hlen(self.k.partner)
        waiting, chatting = pipe.execute()
        return {"online": self.online(), "waiting": int(waiting), "chatting": int(chatting)}

    def wait_for_work(self, timeout: float) -> bool:
        """Block until a join wakes us or `timeout` passes (outside Lua: BLPOP cannot block there)."""
        return self.r.blpop([self.k.wake], timeout=timeout) is not None
