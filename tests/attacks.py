"""Figures for docs/RELIABILITY.md: the transport attacks of tests/test_guard.py, each run for a
few seconds against one real web worker (its own Redis, worker and matcher on free loopback
ports) while a normal pair on the same worker chats; prints the pair's delivery latency p50/p99
during each attack, the worker's memory before/after, and how fast a 20 MiB frame is cut.

    .venv/bin/python tests/attacks.py [--seconds 3]

Targets 127.0.0.1 only (the attacker connects from 127.0.0.2, another loopback address);
every attack is bounded in count and in time.
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import statistics
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peer import Peer, close_all, pair  # noqa: E402
from procs import MatcherProc, RedisServer, WebWorker, base_env  # noqa: E402
from test_guard import (ATTACKER, MALFORMED_FRAMES, MALFORMED_HTTP, MIB, connect,  # noqa: E402
                        frame_header, handshake, read_response, rss_mib, send_until_cut,
                        ws_open)

MAX_ROUNDS = 2000  # no attack loops more often than this, whatever the duration
PAIR_RATE = 4.0  # messages per second per side: under MESSAGE_RATE (5/s)


def huge_frame(web, stats):
    s = ws_open(web, ATTACKER)
    with s:
        t0 = time.perf_counter()
        s.sendall(frame_header(20 * MIB))
        sent, _ = send_until_cut(s, 20 * MIB)
        stats.setdefault("cut_ms", []).append((time.perf_counter() - t0) * 1000)
        stats.setdefault("cut_mib", []).append(sent / MIB)


def polling_post(web, stats):
    sid = handshake(web)
    s = connect(web, ATTACKER)
    with s:
        body = b"4" + b"x" * 20_000
        s.sendall(f"POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\n"
                  f"Host: 127.0.0.1\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        stats.setdefault("status", set()).add(read_response(s)[0])


def admin_300_mib(web, stats):
    s = connect(web, ATTACKER)
    with s:
        s.sendall(b"POST /admin/login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Content-Length: %d\r\n\r\n" % (300 * MIB))
        sent, _ = send_until_cut(s, 300 * MIB)
        stats.setdefault("status", set()).add(read_response(s)[0])
        stats.setdefault("sent_mib", []).append(sent / MIB)


def slowloris(web, stats, held=[]):  # noqa: B006 - the held sockets live across rounds
    try:
        s = connect(web, ATTACKER, timeout=2)
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        held.append(s)
        stats["opened"] = stats.get("opened", 0) + 1
    except OSError:
        stats["refused"] = stats.get("refused", 0) + 1
    while len(held) > 200:
        held.pop(0).close()


def malformed(web, stats, i=[0]):  # noqa: B006 - a counter across rounds
    raws = [*MALFORMED_HTTP, *MALFORMED_FRAMES]
    raw = raws[i[0] % len(raws)]
    i[0] += 1
    s = ws_open(web, ATTACKER) if raw in MALFORMED_FRAMES else connect(web, ATTACKER)
    with s:
        s.sendall(raw)
        try:
            s.recv(65536)
        except OSError:
            pass


ATTACKS = {"none (baseline)": None, "20 MiB WebSocket frames": huge_frame,
           "oversized polling POSTs": polling_post, "300 MiB POSTs to /admin/login": admin_300_mib,
           "slowloris from one address": slowloris, "malformed requests and frames": malformed}


class Target:
    """What an attack needs of the worker (picklable, for the attacker's own process)."""

    def __init__(self, web: WebWorker):
        self.port, self.url = web.port, web.url


def run_attack(fn, target: Target, seconds: float) -> tuple[int, dict]:
    """In a process of its own, so the attacker's CPU and GIL are not the pair's."""
    stats: dict = {}
    deadline = time.monotonic() + seconds
    rounds = 0
    while fn and time.monotonic() < deadline and rounds < MAX_ROUNDS:
        try:
            fn(target, stats)
        except OSError as exc:
            stats.setdefault("errors", set()).add(type(exc).__name__)
        rounds += 1
    return rounds, stats


async def chat(a: Peer, b: Peer, seconds: float, tag: str) -> list[float]:
    """Messages a -> b and b -> a in turn for `seconds`: each one's delivery time in ms."""
    latencies = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    n = 0
    while loop.time() < deadline:
        src, dst = (a, b) if n % 2 == 0 else (b, a)
        mid = f"{tag}-{n}"
        t0 = loop.time()
        ack = await src.send(mid, "ping")
        assert ack.get("ok"), ack
        await dst.next("message", where=lambda m, mid=mid: m["id"] == mid)
        latencies.append((loop.time() - t0) * 1000)
        n += 1
        await asyncio.sleep(max(0.0, 1 / (2 * PAIR_RATE) - (loop.time() - t0)))
    return latencies


def pct(values: list[float], p: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


async def main(seconds: float) -> None:
    redis = RedisServer()
    env = base_env(redis.url)
    web = WebWorker(env, "attacked")
    matcher = MatcherProc(env, "attacks-matcher")
    try:
        web.wait_ready()
        a, b = Peer(web.url, "alice"), Peer(web.url, "bob")
        await asyncio.gather(a.connect(), b.connect())
        await pair(a, b)
        print(f"one worker, defaults (MAX_FRAME_BYTES 16 KiB, MAX_BODY_BYTES 64 KiB, "
              f"MAX_CONNS_PER_ADDR 64, HEADER_TIMEOUT 10 s); {seconds:g} s per attack\n")
        print(f"{'attack':32} {'rounds':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
              f"{'RSS MiB':>13}  notes")
        loop = asyncio.get_running_loop()
        for name, fn in ATTACKS.items():
            before = rss_mib(web)
            with concurrent.futures.ProcessPoolExecutor(1) as pool:
                attack = loop.run_in_executor(pool, run_attack, fn, Target(web), seconds)
                (rounds, stats), lat = await asyncio.gather(attack, chat(a, b, seconds, name[:8]))
            with urllib.request.urlopen(web.url + "/healthz", timeout=10) as r:
                assert r.status == 200
            notes = []
            if "cut_ms" in stats:
                notes.append(f"cut after {statistics.median(stats['cut_mib']):.2f} MiB, "
                             f"median {statistics.median(stats['cut_ms']):.1f} ms")
            if "sent_mib" in stats:
                notes.append(f"{max(stats['sent_mib']):.2f} MiB sent at most")
            if "status" in stats:
                notes.append(f"status {sorted(stats['status'])}")
            if "opened" in stats or "refused" in stats:
                notes.append(f"{stats.get('opened', 0)} opened")
            if "errors" in stats:
                notes.append(f"client errors {sorted(stats['errors'])}")
            print(f"{name:32} {rounds:>7} {pct(lat, 50):>7.1f} {pct(lat, 99):>7.1f} "
                  f"{max(lat):>7.1f} {before:>6.0f}->{rss_mib(web):<6.0f} {'; '.join(notes)}")
        await close_all([a, b])
        log = web.output()
        print(f"\nworker log: {log.count('Traceback')} tracebacks, "
              f"{sum(' WARNING ' in x for x in log.splitlines())} WARNING lines")
    finally:
        web.stop()
        matcher.stop()
        redis.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    asyncio.run(main(min(args.seconds, 30.0)))
