"""Which users this worker holds connections for, and the heartbeat that keeps them alive.

The worker keeps no chat state: only this map of its own sockets, so that it can refresh the
presence of its users in Redis. If the worker dies, the refreshes stop and the matcher's reaper
ends its users' chats once the grace period has passed.
"""
from __future__ import annotations

import logging
from collections import defaultdict

log = logging.getLogger("web.presence")

CHUNK = 2000  # users per touch call, so one heartbeat never holds Redis long


class Connections:
    def __init__(self):
        self._sids: dict[str, set[str]] = defaultdict(set)
        self._user: dict[str, str] = {}
        # Set by web/drain.py when the worker stops: its clients are told to resume elsewhere,
        # so their disconnects are not a user going away.
        self.draining = False

    def add(self, sid: str, user: str) -> None:
        if sid in self._user:  # never one socket in two users' sets
            self.remove(sid)
        self._user[sid] = user
        self._sids[user].add(sid)

    def remove(self, sid: str) -> tuple[str | None, bool]:
        """(user, whether that was the user's last connection here)."""
        user = self._user.pop(sid, None)
        if user is None:
            return None, False
        sids = self._sids.get(user)
        if sids is not None:
            sids.discard(sid)
            if not sids:
                del self._sids[user]
                return user, True
        return user, False

    def user_of(self, sid: str) -> str | None:
        return self._user.get(sid)

    def items(self) -> list[tuple[str, str]]:
        """(sid, user) of every local connection, a copy: safe to use across greenlet switches."""
        return list(self._user.items())

    def users(self) -> list[str]:
        return list(self._sids)

    def __len__(self) -> int:
        return len(self._user)


def heartbeat_loop(sleep, store, conns: Connections, interval: float, stopping,
                   worker: str) -> None:
    """Refresh this worker's and every local user's presence each `interval` s until `stopping()`.

    The worker's own deadline says its connections are live (common/lua/lib/presence.lua): it is
    refreshed even with no user, and a worker killed -9 stops refreshing it.
    """
    while not stopping():
        users = conns.users()
        try:
            store.touch(users[:CHUNK], worker)
            for i in range(CHUNK, len(users), CHUNK):
                store.touch(users[i:i + CHUNK], worker)
        except Exception as exc:  # Redis down: keep trying; users resume when it is back
            log.warning("heartbeat failed for %d users: %s", len(users), exc)
        sleep(interval)
