"""docker-compose.yml for real: built, started, used through nginx, broken on purpose, taken down.

Run by `make compose-test` (tests/compose/run.py chooses the engine and installs what is
missing); not collected by `make test` (the name does not match test_*.py). The engine
(tests/compose/engine.py) builds the images, then `compose up -d` starts the project's own
docker-compose.yml under a project name of its own, with random secrets and nginx published on
127.0.0.1 at a free port. Every check talks to that port only, as Socket.IO clients
(tests/peer.py), or to the containers through the engine (`exec`, `kill`, `restart`).
Figures (build times, `up` to ready, image sizes) are printed at the end.
"""
from __future__ import annotations

import asyncio
import collections
import os
import secrets
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from engine import (BASE_IMAGE, COMPOSE_FILE, Docker, EngineError, Podman,  # noqa: E402
                    compose_images, log, project_image)
from peer import (Peer, close_all, connect_all, join_and_pair, partners,  # noqa: E402
                  polling_peer, wait_for)
from peer import exchange as peer_exchange  # noqa: E402
from stack.ports import free_port  # noqa: E402

COMPOSE = yaml.safe_load(COMPOSE_FILE.read_text())
SERVICES = list(COMPOSE["services"])
WEBS = sorted(n for n, s in COMPOSE["services"].items() if s.get("command") == ["web"])
# services whose health check runs (their own, or the image's for the web workers)
HEALTH = [n for n, s in COMPOSE["services"].items()
          if not (s.get("healthcheck") or {}).get("disable")]
ONE_SHOT = [n for n, s in COMPOSE["services"].items() if s.get("restart") == "no"]
RESUME_GRACE = float(COMPOSE["x-app-env"]["RESUME_GRACE"])
READY_TIMEOUT = 240.0

sent_ids: set[str] = set()  # every message id acked in these tests: all must reach PostgreSQL


class Cluster:
    def __init__(self, engine, url: str):
        self.engine = engine
        self.url = url

    def logs(self) -> str:
        return "\n".join(f"----- {s} -----\n{self.engine.logs(s)}" for s in SERVICES)


def wait_ready(engine, url: str, timeout: float) -> dict[str, float]:
    """Until every health check passes, each web worker is ready (/readyz), the one-shot
    services have exited 0, the others run, and nginx answers on the published port.
    {what: seconds since the start of this wait} for each part."""
    t0 = time.monotonic()
    done: dict[str, float] = {}
    last_problem = ""
    while time.monotonic() < t0 + timeout:
        try:
            states = {c["Config"]["Labels"].get("com.docker.compose.service"): c["State"]
                      for c in engine.inspect_all()}
            for s in SERVICES:
                if s in done:
                    continue
                st = states.get(s)
                if st is None:
                    last_problem = f"{s}: no container"
                elif s in ONE_SHOT:
                    if st["Status"] == "exited" and st.get("ExitCode") == 0:
                        done[s] = time.monotonic() - t0
                    else:
                        last_problem = f"{s}: {st['Status']} ({st.get('ExitCode')})"
                elif st["Status"] != "running":
                    last_problem = f"{s}: {st['Status']}"
                elif s in HEALTH and not engine.healthy(s):
                    last_problem = f"{s}: health check not passing yet"
                elif s in WEBS and engine.exec(s, "python", "-c", READYZ, check=False,
                                               timeout=15).returncode != 0:
                    last_problem = f"{s}: /readyz not ready yet"
                else:
                    done[s] = time.monotonic() - t0
            if len(done) == len(SERVICES) and "nginx (host)" not in done:
                with urllib.request.urlopen(url + "/", timeout=5) as r:
                    assert r.status == 200
                done["nginx (host)"] = time.monotonic() - t0
            if "nginx (host)" in done:
                return done
        except (OSError, EngineError, AssertionError) as exc:
            last_problem = f"{type(exc).__name__}: {str(exc)[:300]}"
        time.sleep(0.5)
    raise AssertionError(f"not ready within {timeout:.0f} s; last: {last_problem}; "
                         f"ready: {sorted(done)}")


READYZ = ("import os, urllib.request; urllib.request.urlopen("
          "'http://127.0.0.1:%s/readyz' % os.environ.get('PORT', '5000'), timeout=3)")


@pytest.fixture(scope="module")
def cluster():
    kind = os.environ.get("COMPOSE_ENGINE", "podman")
    project = f"strangers-ct-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {  # secrets only through the environment, new for every run
        "SECRET_KEY": secrets.token_urlsafe(48),
        "POSTGRES_PASSWORD": secrets.token_urlsafe(24),
        "ADMIN_PASSWORD": secrets.token_urlsafe(16),
        "HTTP_PORT": str(port),
        "HTTP_BIND": "127.0.0.1",
        "LOG_LEVEL": "INFO",
    }
    engine = (Docker if kind == "docker" else Podman)(project, env)
    fig = engine.figures
    fig["engine"] = kind
    fig["compose project"] = project
    engine.remove_stale_projects("strangers-ct-")
    volumes_before = set(engine.cli("volume", "ls", "-q", quiet=True).stdout.split())
    engine.remember_images()
    up = False
    try:
        base = engine.build_base()
        if kind == "podman":
            fig[f"base image {BASE_IMAGE} build"] = \
                "cached (podman image exists)" if base is None else f"{base:.1f} s"
        started = time.monotonic()
        times = engine.build_images()
        fig["all image builds, side by side (wall clock)"] = f"{time.monotonic() - started:.1f} s"
        for image, seconds in times.items():
            what = "project image" if image == project_image() else "stand-in"
            fig[f"  {what} {image} build"] = f"{seconds:.1f} s"

        started = time.monotonic()
        up = True
        engine.compose("up", "-d", "--no-build", timeout=300)
        fig["`up -d` returned after"] = f"{time.monotonic() - started:.1f} s"
        try:
            ready = wait_ready(engine, f"http://127.0.0.1:{port}", READY_TIMEOUT)
        except AssertionError:
            print(Cluster(engine, "").logs())
            raise
        total = time.monotonic() - started
        fig["`up -d` to all healthy and ready"] = f"{total:.1f} s"
        slowest = max((v, k) for k, v in ready.items() if k != "nginx (host)")
        fig["  slowest service"] = f"{slowest[1]} ({slowest[0]:.1f} s after `up -d` returned)"
        for s in ONE_SHOT:  # podman: started again until PostgreSQL took it (the override)
            fig[f"  {s}: runs until it succeeded"] = \
                str(engine.container(s).get("RestartCount", 0) + 1)
        log(f"cluster {project} ready on 127.0.0.1:{port} after {total:.1f} s")
        c = Cluster(engine, f"http://127.0.0.1:{port}")
        c.volumes_before = volumes_before
        yield c
    finally:
        if up and engine.inspect_all():  # the down test did not run, or failed
            engine.compose("down", "-v", timeout=180, check=False)
        left = engine.remaining()
        if left:
            engine.force_remove(left)
        sizes = engine.image_sizes([BASE_IMAGE, *compose_images().values(), project_image()])
        for image, size in sizes.items():
            fig[f"image size {image}"] = size
        engine.remove_built_images()
        if kind == "podman":
            gone = [i for i in engine.built if engine.image_exists(i)]
            fig["images removed after the run"] = ("all built by this run (base kept)"
                                                    if not gone else f"NOT removed: {gone}")
        print("\n==== compose test figures ====")
        width = max(len(k) for k in fig)
        for k, v in fig.items():
            print(f"  {k:<{width}}  {v}")
        print("==============================", flush=True)


@pytest.fixture(autouse=True)
def logs_on_failure(request, cluster):
    """A check that failed shows the end of every container's log."""
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed > failed:
        print(f"\n==== container logs after {request.node.name} ====\n{cluster.logs()}")


# ----------------------------------------------------------------------------- helpers

async def send(src: Peer, mid: str, text: str) -> dict:
    ack = await src.send(mid, text)
    assert ack["ok"], ack
    sent_ids.add(mid)
    return ack


async def exchange(a: Peer, b: Peer, tag: str) -> None:
    """a -> b and b -> a, each acked and received once; the ids are kept for the history check."""
    await peer_exchange(a, b, tag, sent_ids)


def psql(engine, sql: str) -> str:
    r = engine.exec("postgres", "psql", "-U", "chat", "-d", "chat", "-v", "ON_ERROR_STOP=1",
                    "-At", "-c", sql, timeout=30)
    return r.stdout.strip()


# ------------------------------------------------------------------------------ checks

@pytest.mark.timeout(60)
def test_every_service_runs_and_its_health_check_passes(cluster):
    e = cluster.engine
    for s in SERVICES:
        st = e.state(s)
        if s in ONE_SHOT:
            assert (st["Status"], st["ExitCode"]) == ("exited", 0), (s, st)
        else:
            assert st["Status"] == "running", (s, st)
    for s in HEALTH:
        assert e.healthy(s), f"{s}: health check fails\n{e.logs(s)}"
    # the app containers run as the image's user, on a read-only file system
    for s in WEBS[:1] + ["matcher"]:
        assert e.exec(s, "id", "-u").stdout.strip() == "10001"
        r = e.exec(s, "sh", "-c", "touch /app/x", check=False)
        assert r.returncode != 0 and "Read-only" in r.stderr, r.stderr
    # nginx: the published port is on 127.0.0.1 only
    ports = e.container("nginx")["NetworkSettings"]["Ports"]
    bound = [(b["HostIp"], b["HostPort"]) for b in ports["80/tcp"]]
    assert bound == [("127.0.0.1", cluster.url.rsplit(":", 1)[1])], bound
    with urllib.request.urlopen(cluster.url + "/nginx-health", timeout=5) as r:
        assert r.read() == b"ok\n"


@pytest.mark.timeout(90)
async def test_two_strangers_chat_and_a_third_takes_over_after_next(cluster):
    a, b, c = (Peer(cluster.url, n) for n in ("alice", "bob", "carol"))
    try:
        await connect_all([a, b, c])
        await a.join()
        await b.join()
        ma, mb = await a.next("matched", 15), await b.next("matched", 15)
        assert ma["room"] == mb["room"]
        await exchange(a, b, "first")
        assert await a.call("typing", {"typing": True}) == {"ok": True}
        assert await b.next("typing") == {"typing": True, "room": ma["room"]}

        await c.join()  # nobody free: carol waits
        await asyncio.sleep(1.0)
        assert c.count("matched") == 0
        assert await a.call("next") == {"ok": True}  # alice moves on: bob is told,
        assert (await b.next("partner_left"))["reason"] == "next"
        mc, ma2 = await c.next("matched", 15), await a.next("matched", 15)  # carol takes over
        assert mc["room"] == ma2["room"] != ma["room"]
        await exchange(a, c, "second")
        # bob is idle: nothing of the new room reaches him
        assert b.count("message") == 1 and b.count("matched") == 1
        assert a.count("partner_left") == 0 and c.count("partner_left") == 0
    finally:
        await close_all([a, b, c])


@pytest.mark.timeout(120)
async def test_sixty_clients_spread_over_every_web_worker_and_chat_across_them(cluster):
    # 50 WebSocket clients and 10 long-polling ones (sticky through nginx's affinity cookie)
    peers = [Peer(cluster.url, f"ws{i}") for i in range(50)]
    peers += [polling_peer(cluster.url, f"poll{i}") for i in range(10)]
    try:
        # 60 at once on 2 shared cores beside five containers: a slow moment of the machine
        # once took more than the default 10 s to answer one of them
        await connect_all(peers, timeout=30)
        per_worker = collections.Counter(p.worker for p in peers)
        cluster.engine.figures["60 clients per web worker"] = dict(sorted(per_worker.items()))
        assert set(per_worker) == set(WEBS), per_worker
        # each count is binomial around 20: under 5 has a chance far below 0.1 %
        assert min(per_worker.values()) >= 5, per_worker
        rooms = await join_and_pair(peers)
        assert any(x.worker != y.worker for x, y in rooms.values()), "no pair spans two workers"
        await asyncio.gather(*(exchange(x, y, "sixty") for x, y in rooms.values()))
        # one Engine.IO session each, never dropped: a polling request that reached another
        # worker would have ended it
        assert all(p.sio.connected and p.count("hello") == 1 for p in peers)
        assert sum(p.count("partner_left") for p in peers) == 0
    finally:
        await close_all(peers)


@pytest.mark.timeout(120)
async def test_matcher_restart_waiting_users_are_matched_afterwards(cluster):
    e = cluster.engine
    before = e.state("matcher")["StartedAt"]
    early, late = Peer(cluster.url, "early"), Peer(cluster.url, "late")
    try:
        await connect_all([early, late])
        await early.join()  # alone in the wait list, across the restart
        await asyncio.sleep(0.5)
        assert early.count("matched") == 0
        restart = asyncio.create_task(asyncio.to_thread(
            e.cli, "restart", e.cname("matcher"), timeout=60))

        def down_or_done():
            return restart.done() or e.state("matcher")["Status"] != "running"

        await wait_for(lambda: asyncio.to_thread(down_or_done), 30, "the matcher to stop")
        joined_while_down = not restart.done()
        await late.join()
        await restart
        st = e.state("matcher")
        assert st["Status"] == "running" and st["StartedAt"] != before, st
        m1, m2 = await early.next("matched", 20), await late.next("matched", 20)
        assert m1["room"] == m2["room"]
        await exchange(early, late, "after-restart")
        e.figures["matcher restart: 2nd user joined while it was down"] = \
            "yes" if joined_while_down else "no (the restart was quicker than the poll)"
    finally:
        await close_all([early, late])


@pytest.mark.timeout(180)
async def test_killed_web_container_clients_resume_on_the_others(cluster):
    e = cluster.engine
    ws = [Peer(cluster.url, f"kws{i}") for i in range(24)]
    polling = [polling_peer(cluster.url, f"kpoll{i}") for i in range(6)]
    peers = [*ws, *polling]
    newer: list[Peer] = []
    try:
        await connect_all(peers)
        rooms = await join_and_pair(peers)
        await asyncio.gather(*(exchange(a, b, "before") for a, b in rooms.values()))
        partner_of = partners(rooms)

        def victims_on(worker):
            return [p for p in peers if p.worker == worker and partner_of[p].worker != worker]

        dead = max(WEBS, key=lambda w: (len(victims_on(w)), sum(p in polling
                                                                for p in victims_on(w))))
        victims = victims_on(dead)
        assert victims, [(p.name, p.worker) for p in peers]
        last_seen = {p: max(m["seq"] for m in p.events["message"]) for p in victims}
        loop = asyncio.get_running_loop()

        old_address = address(e, dead)
        e.cli("kill", e.cname(dead))  # SIGKILL: no goodbye to anyone
        killed_at = loop.time()
        await wait_for(lambda: not any(v.sio.connected for v in victims), 15,
                       "the victims to notice their worker is gone")

        # in the gap the partners write; the victims' last messages count as not acked
        acks = await asyncio.gather(*(send(partner_of[v], f"gap-{partner_of[v].name}", "there?")
                                      for v in victims))
        gap = {v: a["seq"] for v, a in zip(victims, acks)}

        # reconnect through nginx with the token and the last seq shown (polling clients with
        # their cookie, whose key now hashes past the dead worker)
        for v in victims:
            n = (polling_peer(cluster.url, f"{v.name}-again", jar=v.jar) if v in polling
                 else Peer(cluster.url, f"{v.name}-again"))
            newer.append(n)
        t0 = loop.time()
        await asyncio.gather(*(n.connect(token=v.token, since=last_seen[v], timeout=20)
                               for n, v in zip(newer, victims)))
        e.figures["kill: victims reconnected and resumed through nginx in"] = \
            f"{(loop.time() - t0) * 1000:.0f} ms ({len(victims)} clients, " \
            f"{sum(v in polling for v in victims)} of them long-polling)"
        for n, v in zip(newer, victims):
            assert n.user == v.user and n.worker != dead, (n.worker, dead)
            resumed = await n.next("resumed")
            assert resumed["state"] == "chatting", resumed
            assert [m["seq"] for m in resumed["history"] if not m["mine"]] == [gap[v]]
            await send(n, f"before-{v.name}", "resent: ack lost")  # resend, same id
            await send(n, f"after-{v.name}", "back")
        for n, v in zip(newer, victims):
            p = partner_of[v]
            await p.next("message", where=lambda m, v=v: m["id"] == f"after-{v.name}")
            await exchange(n, p, "resumed")

        # the partners never hear "left": watch until the dead worker's users' presence
        # would have run out (the kill + RESUME_GRACE + margin)
        await asyncio.sleep(max(0.0, killed_at + RESUME_GRACE + 3 - loop.time()))
        assert all(partner_of[v].count("partner_left") == 0 for v in victims)
        assert all(n.count("partner_left") == 0 for n in newer)
        for n, v in zip(newer, victims):  # each message once, none lost
            got = collections.Counter(m["id"] for m in partner_of[v].events["message"])
            ids = [k for k in got if v.name in k]
            assert ids and all(got[k] == 1 for k in ids), got
        await exchange(newer[0], partner_of[victims[0]], "still")
    finally:
        await close_all([*peers, *newer])

    # the engine does not start a killed container by itself (podman: unless-stopped counts
    # a kill as stopped by the user); start it as an operator would: it comes back on a new
    # address, and nginx must send clients to it again
    st = e.state(dead)
    e.figures["kill: engine restarted the killed container itself"] = \
        "yes" if st["Status"] == "running" else "no"
    if st["Status"] != "running":
        e.cli("start", e.cname(dead), timeout=60)
    await wait_for(lambda: asyncio.to_thread(e.healthy, dead), 60, f"{dead} healthy again",
                   step=1)
    started_again = loop.time()
    back: list[Peer] = []
    try:
        async def reached():
            p = Peer(cluster.url, f"back{len(back)}")
            back.append(p)
            await p.connect()
            return p.worker == dead

        await wait_for(reached, 60, f"nginx to send a client to {dead} again", step=0.5)
        e.figures["kill: started again, new clients reach it after"] = (
            f"{loop.time() - started_again:.1f} s (address {old_address} -> "
            f"{address(e, dead)})")
    finally:
        await close_all(back)


def address(engine, service: str) -> str:
    nets = engine.container(service)["NetworkSettings"].get("Networks") or {}
    return ",".join(n.get("IPAddress", "") for n in nets.values()) or "?"


@pytest.mark.timeout(90)
async def test_history_is_archived_in_postgres_exactly_once(cluster):
    e = cluster.engine
    assert sent_ids, "the chat tests sent nothing"
    ids = ",".join("'" + i.replace("'", "''") + "'" for i in sorted(sent_ids))

    def archived():
        return int(psql(e, f"SELECT count(DISTINCT client_id) FROM messages "
                           f"WHERE client_id IN ({ids})"))

    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await wait_for(lambda: asyncio.to_thread(lambda: archived() == len(sent_ids)), 60,
                   f"{len(sent_ids)} messages in PostgreSQL", step=1)
    e.figures["messages archived in PostgreSQL"] = \
        f"{len(sent_ids)} (all; waited {loop.time() - t0:.1f} s)"
    dupes = psql(e, "SELECT room_id, client_id, count(*) FROM messages "
                    "GROUP BY room_id, client_id HAVING count(*) > 1")
    assert dupes == "", f"stored twice: {dupes}"
    # the room that "next" ended is closed, with the reason
    closed = psql(e, "SELECT count(*) FROM rooms WHERE close_reason = 'next'")
    assert int(closed) >= 1
    text = psql(e, "SELECT text FROM messages WHERE client_id = 'first-alice'")
    assert text.startswith("hello from alice on web"), text


@pytest.mark.timeout(240)
def test_down_removes_every_container_volume_and_network(cluster):
    e = cluster.engine
    started = time.monotonic()
    e.compose("down", "-v", timeout=180)
    e.figures["`down -v`"] = f"{time.monotonic() - started:.1f} s"
    left = e.remaining()
    new_volumes = set(e.cli("volume", "ls", "-q", quiet=True).stdout.split()) - \
        cluster.volumes_before
    if new_volumes:
        left["volumes (anonymous)"] = sorted(new_volumes)
    assert not left, f"left behind by `down -v`: {left}"
    with pytest.raises(OSError):
        urllib.request.urlopen(cluster.url + "/nginx-health", timeout=3)
