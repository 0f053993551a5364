"""nginx in front of three web workers: spreading, sticky long-polling, a worker killed mid-chat.

Real processes (Redis, three web workers, the matcher, Debian's nginx with the config of
nginx/nginx.conf.j2 rendered by stack/cluster.py for their ports) driven by real Socket.IO
clients, all connecting from 127.0.0.1 through nginx.
"""
from __future__ import annotations

import asyncio
import collections
import base64
import json
import os
import shutil
import signal
import socket
import tempfile
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from conftest import Stack
from peer import (Peer, close_all, connect_all, exchange, join_and_pair, partners,
                  polling_peer, wait_for)
from procs import Fatal, Proc, free_port, wait_until

from stack.cluster import (NGINX_MISSING, find_nginx, local_nginx_conf, nginx_command,
                           nginx_limits, socket_dir)

GRACE = 8.0  # RESUME_GRACE of these stacks: room for a worker's clients to reconnect,
#               even on a busy machine


class NginxStack(Stack):
    """Redis, N web workers and the matcher (tests/conftest.py), and nginx in front of them."""

    def __init__(self, workers: int = 3, **env):
        self.nginx = None
        # nginx reaches the workers on Unix sockets, as in `python -m stack cluster`
        # (docker-compose.yml's nginx uses TCP: `make compose-test`)
        self.sockets = socket_dir()
        super().__init__(workers=workers, RESUME_GRACE=GRACE, sockets=self.sockets, **env)
        try:
            nginx = find_nginx()
            assert nginx, NGINX_MISSING
            self.port = free_port()
            self.nginx_dir = Path(tempfile.mkdtemp(prefix="nginx-"))
            # These tests run up to 90 clients from 127.0.0.1: no per-address cap here
            # (test_nginx_enforces_the_transport_limits checks the cap on an nginx of its own).
            conf = local_nginx_conf(
                self.nginx_dir, [(w.worker_id, f"unix:{w.unix_socket}") for w in self.webs],
                self.port, limits=nginx_limits(max_conns_per_addr=0, session_rate_per_min=0))
            self.nginx = Proc("nginx", nginx_command(nginx, conf))
            self.url = f"http://127.0.0.1:{self.port}"

            def up():
                if not self.nginx.alive():
                    raise Fatal(f"nginx exited:\n{self.nginx.output()}")
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:
                    return r.status == 200

            wait_until(up, 15, "nginx to proxy /healthz")
        except BaseException:
            self.stop()
            raise

    def procs(self):
        return [*super().procs(), *([self.nginx] if self.nginx else [])]

    def stop(self):
        if self.nginx:  # first: its idle upstream connections would hold up gunicorn's stop
            self.nginx.stop()
        for p in super().procs():  # all at once (each web worker takes about a second)
            p.signal(signal.SIGTERM)
        super().stop()
        shutil.rmtree(self.sockets, ignore_errors=True)

    def web(self, worker_id: str):
        return next(w for w in self.webs if w.worker_id == worker_id)


@pytest.fixture(scope="module")
def stack():
    """This module's shared stack (conftest's `fresh` flushes its Redis before each test)."""
    s = NginxStack()
    yield s
    s.stop()


@pytest.fixture
def own_stack():
    """A stack of its own, for a test that kills a worker."""
    s = NginxStack()
    yield s
    s.stop()
    # pytest shows what a teardown printed only when the test failed
    print(s.logs())


async def test_clients_of_one_address_spread_over_all_workers_chat_and_rematch_across(fresh):
    peers = [Peer(fresh.url, f"c{i}") for i in range(90)]
    try:
        await connect_all(peers)
        per_worker = collections.Counter(p.worker for p in peers)
        assert set(per_worker) == {w.worker_id for w in fresh.webs}, per_worker
        # A random key per handshake: each worker's count is binomial around 30; 12 is far
        # below anything the hash ring gives (the chance of a false failure is under 0.1 %).
        assert min(per_worker.values()) >= 12, per_worker

        rooms = await join_and_pair(peers)
        cross = [pair for pair in rooms.values() if pair[0].worker != pair[1].worker]
        assert cross, "no pair spans two workers"
        await asyncio.gather(*(exchange(a, b, "hi") for a, b in rooms.values()))

        # Next, across workers: two users of different workers leave their partners; nobody
        # else is waiting, so the matcher pairs the two with each other.
        a1, b1 = cross[0]
        a2, b2 = next((x, y) for pair in rooms.values() if pair is not cross[0]
                      for x, y in (pair, pair[::-1]) if x.worker != a1.worker)
        for who in (a1, a2):
            assert await who.call("next") == {"ok": True}
        assert (await b1.next("partner_left"))["reason"] == "next"
        assert (await b2.next("partner_left"))["reason"] == "next"
        m1, m2 = await a1.next("matched"), await a2.next("matched")
        assert m1["room"] == m2["room"] and a1.worker != a2.worker
        await exchange(a1, a2, "after-next")
        assert sum(p.count("partner_left") for p in peers) == 2
    finally:
        await close_all(peers)


async def test_long_polling_clients_stay_on_their_worker_through_nginx(fresh):
    """Every request of a polling session reaches the worker that issued its sid.

    Browsers keep the affinity cookie nginx sets on the handshake; a client without cookies
    names its own key in the URL (?affinity=...). Both are exercised, and so is the upgrade
    from polling to WebSocket (a request with ?sid=... that must reach the same worker).
    """
    cookie = [polling_peer(fresh.url, f"poll{i}") for i in range(6)]
    keyed = [polling_peer(f"{fresh.url}/?affinity={uuid.uuid4().hex}", f"keyed{i}",
                          cookies=False) for i in range(2)]
    upgraded = [polling_peer(fresh.url, f"upgrade{i}", upgrade=True) for i in range(2)]
    peers = [*cookie, *keyed, *upgraded]
    try:
        await connect_all(peers)
        assert all(p.sio.transport() == "polling" for p in cookie + keyed)
        assert all(p.sio.transport() == "websocket" for p in upgraded), \
            [p.sio.transport() for p in upgraded]
        assert len({p.worker for p in peers}) >= 2, [p.worker for p in peers]
        assert all(any(c.key == "chat_affinity" for c in p.jar) for p in cookie)

        rooms = await join_and_pair(peers)
        for rnd in range(3):  # many polling requests per session, POSTs and long-poll GETs
            await asyncio.gather(*(exchange(a, b, f"r{rnd}") for a, b in rooms.values()))
        for room, (a, b) in rooms.items():
            assert await a.call("typing", {"typing": True}) == {"ok": True}
            assert await b.next("typing") == {"typing": True, "room": room}
        # one session each, never dropped: a request on another worker would have ended it
        assert all(p.sio.connected and p.count("hello") == 1 for p in peers)
    finally:
        await close_all(peers)


async def test_killed_worker_clients_reconnect_through_nginx_and_resume(own_stack):
    s = own_stack
    ws = [Peer(s.url, f"ws{i}") for i in range(24)]
    polling = [polling_peer(s.url, f"poll{i}") for i in range(6)]
    peers = [*ws, *polling]
    newer: list[Peer] = []
    try:
        await connect_all(peers)
        # each polling client chats with a WebSocket client on another worker, so that whichever
        # worker dies, some polling clients have a partner who survives (left to the matcher's
        # order, polling clients often paired with each other on one worker)
        rooms: dict[str, list[Peer]] = {}
        rest = list(ws)
        for p in polling:
            mate = next(w for w in rest if w.worker != p.worker)
            rest.remove(mate)
            rooms.update(await join_and_pair([p, mate]))
        rooms.update(await join_and_pair(rest))
        await asyncio.gather(*(exchange(a, b, "before") for a, b in rooms.values()))

        # the worker to kill: the one with most polling clients whose partner is on another
        # worker (their cookie's key must find a survivor), then most such clients in all
        partner_of = partners(rooms)

        def victims_on(worker):
            return [p for p in peers if p.worker == worker and partner_of[p].worker != worker]

        dead = max((w.worker_id for w in s.webs),
                   key=lambda w: (sum(p in polling for p in victims_on(w)), len(victims_on(w))))
        victims = victims_on(dead)
        assert any(v in polling for v in victims), [(p.name, p.worker) for p in peers]
        last_seen = {p: max(m["seq"] for m in p.events["message"]) for p in victims}
        loop = asyncio.get_running_loop()

        s.web(dead).kill()  # kill -9: no disconnect handler, no goodbye to anyone
        killed_at = loop.time()
        await wait_for(lambda: not any(v.sio.connected for v in victims), 10,
                       "the victims to notice their worker is gone")

        # in the gap: partners keep writing; victims write too, but nothing is acked, so the
        # client keeps those messages to resend (as the page's composer.js does); and the message each victim
        # sent last before the kill counts as not acked as well (an ack lost with the worker)
        acks = await asyncio.gather(*(partner_of[v].send(f"gap-{partner_of[v].name}", "there?")
                                      for v in victims))
        assert all(a["ok"] for a in acks), acks
        gap = {v: a["seq"] for v, a in zip(victims, acks)}
        pending = {v: [(f"before-{v.name}", "resent: ack lost"), (f"gap-{v.name}", "offline")]
                   for v in victims}

        # reconnect through nginx with the token and the last seq shown; polling clients keep
        # their cookie (its key now hashes past the dead worker to the same survivor each time)
        for v in victims:
            n = (polling_peer(s.url, f"{v.name}-again", jar=v.jar) if hasattr(v, "jar")
                 else Peer(s.url, f"{v.name}-again"))
            newer.append(n)
        await asyncio.gather(*(n.connect(token=v.token, since=last_seen[v])
                               for n, v in zip(newer, victims)))
        for n, v in zip(newer, victims):
            assert n.user == v.user and n.worker != dead, (n.worker, dead)
            resumed = await n.next("resumed")
            assert resumed["state"] == "chatting", resumed
            assert [m["seq"] for m in resumed["history"] if not m["mine"]] == [gap[v]]
            for mid, text in pending[v]:  # the resend: same ids
                ack = await n.send(mid, text)
                assert ack["ok"], ack
            await n.send(f"after-{v.name}", "back")

        for n, v in zip(newer, victims):
            p = partner_of[v]
            await p.next("message", where=lambda m, v=v: m["id"] == f"after-{v.name}")
            # what the partner's page shows: messages by seq (docs/protocol.md: a message whose
            # ack died with its worker may be emitted again on resend, with the same seq)
            shown = {m["seq"]: m["id"] for m in p.events["message"]}
            got = collections.Counter(shown.values())
            for mid in (f"before-{v.name}", f"gap-{v.name}", f"after-{v.name}"):
                assert got[mid] == 1, (mid, got)  # exactly once
            await exchange(n, p, "resumed")  # and the chat goes on across the survivors

        # the partners never hear "left": watch until the dead worker's users' presence would
        # have run out (the kill + the grace + margin) - an observation window, not a sync
        await asyncio.sleep(max(0.0, killed_at + GRACE + 1.5 - loop.time()))
        assert all(partner_of[v].count("partner_left") == 0 for v in victims)
        for n in newer:
            assert n.count("partner_left") == 0
        await exchange(newer[0], partner_of[victims[0]], "still")
    finally:
        await close_all([*peers, *newer])


# ------------------------------------------------------------------------------ transport limits


def _raw(port: int, data: bytes, timeout: float = 15) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(data)
    return s


def _status(s: socket.socket) -> int | None:
    """The status of the answer on `s`, None if nginx closed it without one."""
    buf = b""
    while b"\r\n" not in buf:
        try:
            chunk = s.recv(4096)
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        buf += chunk
    return int(buf.split()[1])


def limited_nginx(stack, name: str, **limits) -> tuple[Proc, int]:
    """An nginx of the template in front of `stack`'s workers with these limits, answering."""
    port = free_port()
    conf = local_nginx_conf(Path(tempfile.mkdtemp(prefix=f"nginx-{name}-")),
                            [(w.worker_id, f"127.0.0.1:{w.port}") for w in stack.webs], port,
                            limits=nginx_limits(**limits))
    nginx = Proc(f"nginx-{name}", nginx_command(find_nginx(), conf))

    def up():
        assert nginx.alive(), nginx.output()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/nginx-health", timeout=2) as r:
            return r.status == 200

    try:
        wait_until(up, 15, "nginx to answer")
    except BaseException:
        nginx.stop()
        raise
    return nginx, port


def test_nginx_enforces_the_transport_limits(stack):
    """nginx in front of the workers refuses what the workers' own guards refuse (body sizes,
    slow headers) and caps the connections of one address; this nginx has a cap of 3 and a
    1 s header timeout, the config otherwise the template's."""
    cap = 3
    nginx, port = limited_nginx(stack, "limits", max_conns_per_addr=cap, header_timeout_ms=1000)
    held = []
    try:
        # bodies: MAX_BODY_BYTES for pages, MAX_FRAME_BYTES for Socket.IO, from the header
        big = _raw(port, b"POST /admin/login HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                   % (1024 * 1024))
        assert _status(big) == 413
        frame = _raw(port, b"POST /socket.io/?EIO=4&transport=polling&sid=x HTTP/1.1\r\n"
                     b"Host: x\r\nContent-Length: %d\r\n\r\n" % (20 * 1024))
        assert _status(frame) == 413
        for s in (big, frame):
            s.close()
        # slow headers: closed after the header timeout, though a byte trickles in now and then
        slow = _raw(port, b"GET / HTTP/1.1\r\nHost: x\r\n")
        with slow:
            wait_until(lambda: _status(slow) in (None, 408), 15, "nginx to drop slow headers")
        # the cap: `cap` WebSockets held by one address, the next request is refused with 429
        for _ in range(cap):
            key = base64.b64encode(os.urandom(16)).decode()
            ws = _raw(port, (f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
                             f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                             f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                             f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
            assert _status(ws) == 101
            held.append(ws)
        one_more = _raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        with one_more:
            assert _status(one_more) == 429
        held.pop().close()

        def served():
            with _raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n") as s:
                return _status(s) == 200

        wait_until(served, 15, "a request once the address is under its cap again")
    finally:
        for s in held:
            s.close()
        nginx.stop()


def test_nginx_limits_new_sessions_per_address_not_requests_of_open_ones(stack):
    """One new Socket.IO session a minute, burst 2, from one address: the fourth handshake at once
    is refused with 429; a poll of an open session (it carries its sid) is never counted."""
    nginx, port = limited_nginx(stack, "sessions", max_conns_per_addr=0, session_rate_per_min=1,
                                session_burst=2)
    base = f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=polling&affinity=one"
    try:
        got = [_get(base) for _ in range(4)]
        assert [status for status, _ in got] == [200, 200, 200, 429], got
        sid = json.loads(got[0][1][1:])["sid"]
        for _ in range(3):  # its own requests pass, however many (here: pongs)
            status, body = _get(f"{base}&sid={sid}", data=b"3")
            assert status == 200, body
    finally:
        nginx.stop()


def _get(url: str, data: bytes | None = None) -> tuple[int, str]:
    """(status, body) of a GET (a POST with `data`), errors included."""
    try:
        with urllib.request.urlopen(url, data=data, timeout=5) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def _handshake_status(url: str) -> tuple[int, str]:
    """(status, body) of a new Engine.IO polling session at `url`."""
    try:
        with urllib.request.urlopen(f"{url}/socket.io/?EIO=4&transport=polling",
                                    timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


async def test_full_workers_refuse_newcomers_with_the_reason_and_chats_go_on():
    """MAX_CONNECTIONS per worker: past it a worker answers 503 with the reason and nginx tries
    the next one for a new WebSocket; when every worker is full, nginx answers 503 itself.
    Users already connected keep chatting, and a freed place is taken again."""
    s = NginxStack(workers=2, MAX_CONNECTIONS=2)
    peers = [Peer(s.url, f"in{i}") for i in range(4)]
    late: list[Peer] = []
    try:
        await connect_all(peers)  # two per worker: nginx passes a full worker's 503 on
        assert collections.Counter(p.worker for p in peers) == {w.worker_id: 2 for w in s.webs}
        for web in s.webs:  # a worker reached directly says why
            status, body = _handshake_status(web.url)
            assert status == 503 and "full" in body, (status, body)
        # every worker full: a newcomer, long-polling or WebSocket, is tried on every worker,
        # which are then marked, and nginx answers the next ones alone
        status, body = _handshake_status(s.url)
        assert status == 503 and "full" in body, (status, body)
        got = [_get(f"{s.url}/socket.io/?EIO=4&transport=websocket") for _ in range(2)]
        assert [st for st, _ in got] == [503, 503], got
        assert "The chat is full or restarting" in got[1][1], got

        rooms = await join_and_pair(peers)
        await asyncio.gather(*(exchange(a, b, "still here") for a, b in rooms.values()))

        await peers.pop().close()

        async def place_taken():
            newcomer = Peer(s.url, "late")
            try:
                await newcomer.connect(timeout=3)
            except Exception:
                await close_all([newcomer])
                return False
            late.append(newcomer)
            return True

        await wait_for(place_taken, 20, "the freed place to be given to a newcomer")
        assert "Traceback" not in s.logs()
    finally:
        await close_all([*peers, *late])
        s.stop()


def _affinity(p: Peer) -> str:
    """The key nginx's affinity cookie gave a polling peer (its worker is hash(key)'s)."""
    return next(c.value for c in p.jar if c.key == "chat_affinity")


async def test_polling_chatter_keeps_its_session_while_its_worker_refuses_newcomers():
    """A full worker's 503 to a newcomer never moves the requests of the sessions it holds.

    nginx takes a worker that answered a new session's handshake with 503 out of the pool for
    new sessions (max_fails=1); the long-polling requests of a user already chatting there
    carry its sid and must still reach it: on any other worker the session is unknown (400
    Invalid session), and the user is thrown out. Here worker A is full, a newcomer with the
    chatter's own affinity key (hash(key) is A) is refused by A and let in by B before each of
    the chatter's messages, and the chatter's session survives every round: one session, every
    message acked and delivered exactly once both ways. A long-polling newcomer of that key is
    let in by B as well: a session's requests are routed by the worker named in its sid.
    """
    cap = 3
    s = NginxStack(workers=2, MAX_CONNECTIONS=cap)
    chatter = polling_peer(s.url, "chatter")
    others: list[Peer] = []
    try:
        await chatter.connect()
        assert chatter.sio.transport() == "polling"
        a = s.web(chatter.worker)
        b = next(w for w in s.webs if w is not a)
        partner = Peer(b.url, "partner")  # straight to B: A's places are the chatter's and fillers'
        fillers = [Peer(a.url, f"filler{i}") for i in range(cap - 1)]
        others += [partner, *fillers]
        await connect_all(others)
        assert {f.worker for f in fillers} == {a.worker_id} and partner.worker == b.worker_id
        status, body = _get(f"{a.url}/socket.io/?EIO=4&transport=polling")
        assert status == 503 and "This server is full" in body, (status, body)  # A is full

        rooms = await join_and_pair([chatter, partner])
        key = _affinity(chatter)
        sent: set[str] = set()
        for rnd in range(6):
            # a newcomer of the chatter's key: A refuses it (503), nginx passes it on to B and
            # takes A out of the pool for new sessions
            newcomer = Peer(f"{s.url}/?affinity={key}", f"newcomer{rnd}")
            others.append(newcomer)
            await newcomer.connect()
            assert newcomer.worker == b.worker_id, (newcomer.worker, a.worker_id)
            # the chatter's POSTs and long-poll GETs (each with its sid) right after it
            for pair in rooms.values():
                await exchange(*pair, f"r{rnd}", sent)
            assert chatter.sio.connected and chatter.sio.transport() == "polling"
            await newcomer.close()  # B's place, for the next round's newcomer

        # one session all along (a new one would have said hello again), nothing twice
        assert chatter.sio.connected and chatter.count("hello") == 1
        assert chatter.worker == a.worker_id and chatter.count("partner_away") == 0
        for p in (chatter, partner):
            ids = collections.Counter(m["id"] for m in p.events["message"])
            assert set(ids) == {i for i in sent if not i.endswith(p.name)}, ids
            assert set(ids.values()) == {1}, ids

        # a long-polling newcomer of that key is let in by B too, and its session's later
        # requests (a join: a POST and the poll with its answer) reach B, named in its sid
        late = polling_peer(f"{s.url}/?affinity={key}", "late")
        others.append(late)
        await late.connect()
        assert late.worker == b.worker_id and late.sio.transport() == "polling"
        assert late.sio.eio.sid.startswith(b.worker_id + "."), late.sio.eio.sid
        assert await late.call("join", {}) == {"ok": True}
        assert late.count("hello") == 1
        assert "Traceback" not in s.logs(), s.logs()
    finally:
        await close_all([chatter, *others])
        s.stop()


def test_nginx_access_log_keeps_no_room_key_and_no_client_address(stack):
    """A private room's link `/?room=KEY` opened through nginx: its access line says that the
    page was served, without the key (the query string) and without the client's address."""
    key = "QZ7XW3KP"
    status, _ = _get(f"{stack.url}/?room={key}")
    assert status == 200
    log = stack.nginx_dir / "logs" / "access.log"

    def page_line():  # the log is written in buffers flushed every second
        lines = log.read_text().splitlines() if log.exists() else []
        return [ln for ln in lines if '"GET / HTTP/1.1" 200' in ln]

    lines = wait_until(page_line, 15, "the page's line in nginx's access log")
    text = log.read_text()
    assert key not in text and "room=" not in text, lines
    assert not any(ln.startswith("127.0.0.1") for ln in text.splitlines()), lines


def test_nginx_access_log_tells_new_sessions_from_open_ones_without_their_sid(stack):
    """With no query string in the log, `group=` says what the sid said: a handshake went to
    chat_web, a request of the open session to its worker's own group (loadtests/overload.py
    counts new sessions by it); the sid itself is not logged."""
    status, body = _get(f"{stack.url}/socket.io/?EIO=4&transport=polling")
    assert status == 200, body
    sid = json.loads(body[1:])["sid"]
    status, _ = _get(f"{stack.url}/socket.io/?EIO=4&transport=polling&sid={sid}", data=b"1")
    assert status == 200
    log = stack.nginx_dir / "logs" / "access.log"

    def io_lines():
        lines = log.read_text().splitlines() if log.exists() else []
        return [ln for ln in lines if '"POST /socket.io/ ' in ln or '"GET /socket.io/ ' in ln]

    worker = sid.split(".")[0]

    def both_logged():
        # nginx writes its access log in buffers (flushed each second), and the module's other
        # tests wrote to it before: wait for this test's two lines, not for any two
        lines = io_lines()
        handshake = any(ln.startswith("[") and '"GET /socket.io/ ' in ln
                        and ln.endswith(" group=chat_web") for ln in lines)
        post = any('"POST /socket.io/ ' in ln and ln.endswith(f" group=chat_web_{worker}")
                   for ln in lines)
        return handshake and post

    wait_until(both_logged, 15, "the handshake's and the POST's lines")
    assert sid not in log.read_text()
