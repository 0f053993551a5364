"""Admin sign-in: the password check, the lockout, and server-side sessions, all shared by every
web worker through Redis.

- The password is compared with hmac.compare_digest against ADMIN_PASSWORD; it only ever
  travels in a POST body, and is never logged or echoed back.
- Lockout: FAIL_LIMIT wrong passwords from one client address within FAIL_WINDOW lock that
  address out for LOCK_SECONDS from the last of them; while locked, even the right password is
  refused. The count is one Redis string per address (SET NX EX + INCR in one MULTI), so it holds
  across workers and restarts of a worker; the address is named there by its keyed hash
  (common/moderation.py: never in clear; an IPv6 client is its /64, so moving inside it does
  not buy more guesses). `python -m web.admin unlock [ADDRESS ...]` (make
  admin-unlock) deletes those strings: the way out for a developer who locked themself out, and
  for an operator with shell access (web/admin/__main__.py).
- Sessions: the signed Flask cookie carries only a random session id; the id lives in Redis with
  an idle timeout (SESSION_IDLE, renewed on use) and a hard limit (SESSION_MAX). Logout deletes
  it, so a copied cookie is worthless afterwards. A session also holds a keyed hash of the
  password it was opened with: a worker started with another ADMIN_PASSWORD (the operator
  changed it, maybe because it leaked) ends it, so a new password signs everyone out.
"""
from __future__ import annotations

import hmac
import secrets
import time

import redis

from common.keys import Keys
from common.moderation import Hasher

FAIL_LIMIT = 5
FAIL_WINDOW = 15 * 60
LOCK_SECONDS = 15 * 60
SESSION_IDLE = 8 * 3600
SESSION_MAX = 24 * 3600


def password_ok(given: str | None, expected: str | None) -> bool:
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


class Guard:
    def __init__(self, client: redis.Redis, keys: Keys, secret_key: str,
                 password: str | None = None):
        self.r = client
        self.k = keys
        self._hasher = Hasher(secret_key)
        # which password a session was opened with, without keeping it in Redis
        self._password_tag = hmac.new(secret_key.encode("utf-8"),
                                      b"admin-password\0" + (password or "").encode("utf-8"),
                                      "sha256").hexdigest()[:32]

    # lockout -----------------------------------------------------------------------------------
    def tag(self, address: str) -> str:
        """The keyed hash a client address is counted under."""
        return self._hasher.identity(None, address or "unknown").addr

    def _fail_key(self, who: str) -> str:
        return self._tag_key(self.tag(who))

    def _tag_key(self, tag: str) -> str:
        return self.k.admin("fail:" + tag)

    def locked_for(self, who: str) -> int:
        """Seconds this address stays locked out, 0 when it may try."""
        key = self._fail_key(who)
        pipe = self.r.pipeline(transaction=False)
        pipe.get(key)
        pipe.ttl(key)
        count, ttl = pipe.execute()
        if count is not None and int(count) >= FAIL_LIMIT:
            return max(int(ttl), 1)
        return 0

    def failed(self, who: str) -> int:
        """Count one wrong password; return the count in the current window."""
        key = self._fail_key(who)
        pipe = self.r.pipeline(transaction=True)
        pipe.set(key, 0, ex=FAIL_WINDOW, nx=True)
        pipe.incr(key)
        count = int(pipe.execute()[1])
        if count >= FAIL_LIMIT:
            self.r.expire(key, LOCK_SECONDS)
        return count

    def succeeded(self, who: str) -> None:
        self.r.delete(self._fail_key(who))

    def failures(self) -> dict[str, tuple[int, int]]:
        """Every address with failed sign-ins counted: its tag -> (count, seconds left)."""
        prefix = self._tag_key("")
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in prefix) + "*"
        found = {}
        for key in self.r.scan_iter(match=pattern, count=500):
            pipe = self.r.pipeline(transaction=False)
            pipe.get(key)
            pipe.ttl(key)
            count, ttl = pipe.execute()
            if count is not None:
                found[key[len(prefix):]] = (int(count), max(int(ttl), 0))
        return found

    def unlock(self, tag: str) -> bool:
        """Forget the failed sign-ins of one address, by its tag (lifting its lockout); False:
        there were none."""
        return bool(self.r.delete(self._tag_key(tag)))

    # sessions ----------------------------------------------------------------------------------
    def _session_key(self, sid: str) -> str:
        return self.k.admin("session:" + sid)

    def start_session(self) -> str:
        sid = secrets.token_urlsafe(32)
        self.r.set(self._session_key(sid), f"{int(time.time() * 1000)}|{self._password_tag}",
                   ex=SESSION_IDLE)
        return sid

    def session_valid(self, sid: str | None) -> bool:
        if not sid or not isinstance(sid, str) or len(sid) > 100:
            return False
        key = self._session_key(sid)
        pipe = self.r.pipeline(transaction=False)
        pipe.get(key)
        pipe.expire(key, SESSION_IDLE)
        started, _ = pipe.execute()
        if started is None:
            return False
        started, _, password_tag = started.partition("|")
        if (not hmac.compare_digest(password_tag, self._password_tag) or not started.isdigit()
                or time.time() * 1000 - int(started) > SESSION_MAX * 1000):
            self.r.delete(key)  # opened with another password, or too old
            return False
        return True

    def end_session(self, sid: str | None) -> None:
        if sid and isinstance(sid, str):
            self.r.delete(self._session_key(sid))
