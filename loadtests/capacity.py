"""`make capacity`: the chat's unit costs, and CPU per message against the number of web workers.

One file of ~870 lines on purpose, as a measurement script: one run's load generator, its
per-process accounting and its report, read together with docs/SCALING.md; what other load tests
share is in stacks.py and sampler.py.

    python loadtests/capacity.py --label before [--workers 1,2,4,8] [--seconds 40] [--repeat 1]

For each W in --workers: `python -m stack cluster` with W web workers (stacks.py's LocalStack: a
private Redis, SQLite, nginx, the matcher and the archiver, on free loopback ports), then a fixed
chat load with every client connected to web1's own port, not through nginx. web2..webW hold no
client, so what they spend is what a chat event costs a worker that holds neither of its ends
(python-socketio's Redis manager before directed delivery: every worker decodes every event).
With --nginx the W=1 point is run once more through nginx, to measure nginx per message.

The load comes from a generator of this file (`capacity.py generate`, one asyncio process
speaking Engine.IO/Socket.IO over aiohttp WebSockets), not locust: locust spends 13 - 16 % of a
core per 100 chatting users here (README.md), a whole core at 600, which on 2 cores would starve
the stack it measures. Its CPU is measured and left out of every figure but its own column.

CPU is each process's user + system time (psutil cpu_times) between two snapshots around the
measured window, after the clients are matched and a warm-up. Figures: % of one core per process
class, CPU-ms per delivered message (its `typing` event included, as the page sends one before
each message), memory per connection (the loaded worker's RSS delta / connections), Redis memory
per user, commands and bytes per message, database rows written per second by the archiver.

Writes loadtests/capacity/<label>.json, and loadtests/plots/capacity.png once both before.json
and after.json exist. Loopback only; clients, rates, durations and the sweep are bounded.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import queue
import random
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
OUT_DIR = HERE / "capacity"
PLOT = HERE / "plots" / "capacity.png"
MAX_CLIENTS = 2000
MAX_RATE = 2000  # messages/s offered in all
MAX_SECONDS = 120  # measured window per point
MAX_WORKERS = 16
MAX_SWEEP_S = 15 * 60  # the whole sweep, estimated before it starts and enforced while it runs
STARTUP_ESTIMATE_S = 15  # per point: stack start, connect, match, stop (measured: 5 - 10 s)

# ------------------------------------------------------------------------------ the generator


class Gen:
    """Counters shared by the generator's clients; only the measured window is counted."""

    def __init__(self, clients: int):
        self.window = False
        self.sent = self.acked = self.delivered = self.typing_delivered = 0
        self.late = 0  # sends more than one interval behind schedule: the generator lagged
        self.errors: dict[str, int] = {}
        self.ack_ms: list[float] = []
        self.delivery_ms: list[float] = []
        self.hello = self.matched = self.closed = 0
        self.all_hello = asyncio.Event()
        self.all_matched = asyncio.Event()
        self.changed = asyncio.Event()
        self.clients = clients
        self.stopping = asyncio.Event()

    def error(self, code: str) -> None:
        if self.window:
            self.errors[code] = self.errors.get(code, 0) + 1


class Client:
    """One browser tab: connect as a new user, join, chat with whoever it is matched to."""

    def __init__(self, gen: Gen, i: int, typing: float):
        self.gen, self.i, self.typing = gen, i, typing
        self.ws = self.reader = None
        self.acks: dict[int, tuple[str, float]] = {}
        self.next_ack = 0
        self.n = 0
        self.room = None

    async def open(self, session, url: str) -> None:
        self.ws = await session.ws_connect(url, autoping=False, max_msg_size=1 << 20)
        self.reader = asyncio.get_running_loop().create_task(self.read())  # kept: not GC'd

    async def send(self, event: str, data: dict) -> None:
        self.next_ack += 1
        self.acks[self.next_ack] = (event, time.time())
        await self.ws.send_str(f"42{self.next_ack}" + json.dumps([event, data],
                                                                separators=(",", ":")))

    async def read(self) -> None:
        import aiohttp

        g = self.gen
        try:
            async for msg in self.ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                d = msg.data
                if d[:2] == "42":
                    event, *args = json.loads(d[2:])
                    if event == "message":
                        if g.window:
                            g.delivered += 1
                            sent_ms = float(args[0]["text"].split(" ", 1)[0])
                            g.delivery_ms.append(time.time() * 1000 - sent_ms)
                    elif event == "typing":
                        if g.window:
                            g.typing_delivered += 1
                    elif event == "hello":
                        g.hello += 1
                        g.changed.set()
                        if g.hello == g.clients:
                            g.all_hello.set()
                    elif event == "matched":
                        if self.room is None:
                            g.matched += 1
                            if g.matched == g.clients:
                                g.all_matched.set()
                        self.room = args[0]["room"]
                    elif event == "partner_left":
                        self.room = None
                        g.error("partner_left")
                    elif event == "error":
                        g.error(f"error {args[0].get('code')}")
                elif d[:2] == "43":
                    j = d.index("[", 2)
                    event, t0 = self.acks.pop(int(d[2:j]), ("?", 0.0))
                    res = json.loads(d[j:])[0]
                    if event == "message" and g.window:
                        if res.get("ok"):
                            g.acked += 1
                            g.ack_ms.append((time.time() - t0) * 1000)
                        else:
                            g.error(f"ack {res.get('error', {}).get('code')}")
                    elif not res.get("ok"):
                        g.error(f"{event} {res.get('error', {}).get('code')}")
                elif d == "2":  # Engine.IO ping
                    await self.ws.send_str("3")
                elif d[:1] == "0":  # Engine.IO open: connect the default namespace, no token
                    await self.ws.send_str('40{"since":0}')
                elif d[:2] in ("41", "44"):
                    g.error("disconnected by the server" if d[1] == "1" else "connect_error")
                    break
        except (aiohttp.ClientError, asyncio.CancelledError, ConnectionError):
            pass
        if not g.stopping.is_set():
            g.closed += 1
            g.error("connection_lost")

    async def chat(self, interval: float) -> None:
        g, loop = self.gen, asyncio.get_running_loop()
        await asyncio.sleep(random.uniform(0, interval))
        nxt = loop.time()
        filler = "hello stranger, how are you"
        while not g.stopping.is_set():
            try:
                if self.typing and random.random() < self.typing:
                    await self.send("typing", {"typing": True})
                self.n += 1
                await self.send("message", {"id": f"c{self.i}-{self.n}",
                                            "text": f"{time.time() * 1000:.1f} {filler}"})
            except (ConnectionError, RuntimeError):
                return
            if g.window:
                g.sent += 1
            nxt += interval * random.uniform(0.5, 1.5)
            delay = nxt - loop.time()
            if delay < -interval:  # behind by more than one send: forget the debt, count it
                g.late += 1
                nxt = loop.time()
            elif delay > 0:
                try:
                    await asyncio.wait_for(g.stopping.wait(), delay)
                except TimeoutError:
                    pass


def emit_line(**kw) -> None:
    print(json.dumps(kw), flush=True)


def socketio_url(base: str) -> str:
    """The WebSocket URL of a new Engine.IO v4 session at `base` (http://host:port)."""
    return base.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"


def percentiles(xs: list[float]) -> dict:
    if not xs:
        return {}
    xs = sorted(xs)
    return {f"p{p}": round(xs[min(len(xs) - 1, int(len(xs) * p / 100))], 1)
            for p in (50, 95, 99)}


async def generate(a) -> None:
    """Connect, join, wait until every client is matched, chat; print the phases as JSON lines."""
    import aiohttp

    g = Gen(a.clients)
    url = socketio_url(a.url)
    clients = [Client(g, i, a.typing) for i in range(a.clients)]
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    sem = asyncio.Semaphore(50)

    async def open_one(c):
        async with sem:
            await c.open(session, url)

    try:
        t0 = time.monotonic()
        # a tenth first: the worker's one-time costs (first sessions, allocator arenas) land
        # before the parent's memory baseline, which it takes before answering on stdin
        first = max(2, a.clients // 10)
        await asyncio.wait_for(asyncio.gather(*(open_one(c) for c in clients[:first])), 60)
        while g.hello < first:
            await asyncio.wait_for(g.changed.wait(), 60)
            g.changed.clear()
        emit_line(phase="warm", clients=g.hello)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await asyncio.wait_for(asyncio.gather(*(open_one(c) for c in clients[first:])), 60)
        await asyncio.wait_for(g.all_hello.wait(), 60)
        emit_line(phase="connected", clients=g.hello, s=round(time.monotonic() - t0, 1))
        t0 = time.monotonic()
        await asyncio.gather(*(c.send("join", {}) for c in clients))
        await asyncio.wait_for(g.all_matched.wait(), 60)
        emit_line(phase="matched", clients=g.matched, s=round(time.monotonic() - t0, 1))
        interval = a.clients / a.rate
        chats = [asyncio.create_task(c.chat(interval)) for c in clients]
        await asyncio.sleep(a.warmup)
        g.window = True
        emit_line(phase="measure", t=time.time())
        await asyncio.sleep(a.seconds)
        g.window = False
        emit_line(phase="end", t=time.time())
        g.stopping.set()
        await asyncio.gather(*chats)
    except TimeoutError:
        emit_line(phase="failed", hello=g.hello, matched=g.matched)
        return
    finally:
        g.stopping.set()
        await asyncio.gather(*(c.ws.close() for c in clients if c.ws is not None),
                             return_exceptions=True)
        await session.close()
    emit_line(phase="result", clients=a.clients, offered_per_s=a.rate, sent=g.sent,
              acked=g.acked, delivered=g.delivered, typing_delivered=g.typing_delivered,
              late=g.late, connections_lost=g.closed, errors=g.errors,
              ack_ms=percentiles(g.ack_ms), delivery_ms=percentiles(g.delivery_ms))


# ------------------------------------------------------------------------------ measuring

def stack_helpers():
    """stacks.py: LocalStack, stack_processes, web_workers, ... (loadtests/ is not a package;
    imported here, not at the top, so that the generator's process does without it)."""
    sys.path.insert(0, str(HERE))
    import stacks

    return stacks


def on_cpu_ns(pid: int) -> int | None:
    """Nanoseconds on a CPU of all the process's live threads (schedstat): exact where
    cpu_times counts 10 ms clock ticks, for the short join-and-match phase."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat") as fh:
                total += int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return total


def machine_busy_s() -> tuple[float, float]:
    """CPU seconds the machine was busy (all cores), and those of them spent in softirq: the
    kernel's loopback networking, which no process is charged with."""
    import psutil

    t = psutil.cpu_times()._asdict()
    busy = sum(v for k, v in t.items() if k not in ("idle", "iowait", "guest", "guest_nice"))
    return busy, t.get("softirq", 0.0)


class Point:
    """One stack, one load, one measured window."""

    def __init__(self, lr, workers: int, via_nginx: bool, a, logdir: Path):
        self.lr, self.w, self.via_nginx, self.a, self.logdir = lr, workers, via_nginx, a, logdir

    def snapshot(self) -> dict:
        import psutil
        from sampler import schedstat_wait_ns

        snap = {"t": time.monotonic(), "machine_busy_s": machine_busy_s(), "procs": {}}
        for pid, (p, group) in self.procs.items():
            try:
                ct = p.cpu_times()
                snap["procs"][pid] = {"group": group, "cpu_s": ct.user + ct.system,
                                      "rss": p.memory_info().rss,
                                      "wait_ns": schedstat_wait_ns(pid),
                                      "on_cpu_ns": on_cpu_ns(pid)}
            except psutil.Error:
                continue
        for label, p in (("generator", self.gen_ps), ("self", psutil.Process())):
            try:
                ct = p.cpu_times()
                snap["procs"][label] = {"group": label, "cpu_s": ct.user + ct.system,
                                        "rss": 0, "wait_ns": None}
            except psutil.Error:
                pass
        return snap

    def extras(self) -> dict:
        """Redis INFO counters and memory, archived rows, the loaded worker's connections."""
        import redis

        out = {}
        try:
            info = self.redis.info()
            out["redis"] = {k: info.get(k) for k in (
                "total_commands_processed", "total_net_input_bytes", "total_net_output_bytes",
                "used_memory", "connected_clients", "pubsub_channels")}
            out["redis"]["used_memory_dataset"] = self.redis.info("memory")["used_memory_dataset"]
            calls = self.redis.info("commandstats")
            for cmd in ("evalsha", "publish"):  # commands run inside scripts are counted too
                out["redis"][cmd] = calls.get(f"cmdstat_{cmd}", {}).get("calls", 0)
        except (OSError, redis.RedisError) as exc:  # figures without them are still figures
            out["redis_error"] = repr(exc)
        try:
            with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5) as db:
                out["db_messages"] = db.execute("SELECT count(*) FROM messages").fetchone()[0]
                out["db_rooms"] = db.execute("SELECT count(*) FROM rooms").fetchone()[0]
        except sqlite3.Error as exc:
            out["db_error"] = repr(exc)
        try:
            out["connections"] = self.lr.get_json(
                f"http://127.0.0.1:{self.ports['web1']}/readyz").get("connections")
        except (OSError, ValueError):
            pass
        return out

    def key_sizes(self, sample: int = 40) -> dict:
        """MEMORY USAGE of a sample of the per-user keys that grow with each message sent: the
        resume buffer (a list, capped) and the de-duplication hash."""
        import redis

        out = {}
        try:
            for kind in ("sent", "dedupe"):
                keys = []
                for key in self.redis.scan_iter(match=f"*:{kind}:*", count=1000):
                    keys.append(key)
                    if len(keys) >= sample:
                        break
                if not keys:
                    continue
                sizes = [self.redis.memory_usage(k, samples=0) or 0 for k in keys]
                lens = [self.redis.llen(k) if kind == "sent" else self.redis.hlen(k)
                        for k in keys]
                out[kind] = {"keys_sampled": len(keys),
                             "bytes_per_key": round(statistics.mean(sizes)),
                             "entries_per_key": round(statistics.mean(lens), 1),
                             "bytes_per_entry": round(sum(sizes) / max(1, sum(lens)), 1)}
        except (OSError, redis.RedisError) as exc:
            out["error"] = repr(exc)
        return out

    def run(self) -> dict:
        import psutil
        import redis

        lr, a = self.lr, self.a
        stack = lr.LocalStack(self.logdir, self.w, "cluster")
        gen = None
        try:
            stack.wait_ready()
            self.ports = lr.web_workers(stack.p.pid)
            if len(self.ports) != self.w or "web1" not in self.ports:
                # stack/cluster.py picks each worker's port by binding port 0 and closing it:
                # two workers can be handed the same one, and the second never listens
                raise RuntimeError(f"{len(self.ports)} of {self.w} web workers listen "
                                   f"({sorted(self.ports)}); see stack.log")
            self.procs = lr.stack_processes(stack.p.pid)
            redis_ports = [c.laddr.port for p, g in self.procs.values() if g == "redis"
                           for c in p.net_connections(kind="tcp")
                           if c.status == psutil.CONN_LISTEN]
            if not redis_ports:
                raise RuntimeError("no listening redis-server in the stack")
            redis_port = redis_ports[0]
            self.redis = redis.Redis(host="127.0.0.1", port=redis_port, socket_timeout=5)
            self.db = Path(stack.tmp) / "chat.db"
            url = stack.url if self.via_nginx else f"http://127.0.0.1:{self.ports['web1']}"
            lr.check_loopback(url)
            cmd = [PY, str(Path(__file__).resolve()), "generate", "--url", url,
                   "--clients", str(a.clients), "--rate", str(a.rate), "--typing",
                   str(a.typing), "--warmup", str(a.warmup), "--seconds", str(a.seconds)]
            with open(self.logdir / "generator.log", "a") as log:
                gen = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True, stderr=log,
                                       start_new_session=True)
            self.gen_ps = psutil.Process(gen.pid)
            lines: queue.Queue = queue.Queue()
            threading.Thread(target=lambda: [lines.put(x) for x in gen.stdout] and None,
                             daemon=True).start()
            deadline = time.monotonic() + 150 + a.warmup + a.seconds
            marks, result, before = {}, None, {}
            while result is None:
                try:
                    line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
                except queue.Empty:
                    raise TimeoutError("the generator overran its time") from None
                msg = json.loads(line)
                phase = msg["phase"]
                if phase == "warm":  # the baseline for memory per connection
                    before = {"clients": msg["clients"], **self.extras(),
                              "rss": {pid: p.memory_info().rss
                                      for pid, (p, _) in self.procs.items()}}
                    gen.stdin.write("go\n")
                    gen.stdin.flush()
                elif phase == "measure":
                    marks["s0"] = self.snapshot()
                    marks["x0"] = self.extras()
                elif phase == "end":
                    marks["s1"] = self.snapshot()
                    marks["x1"] = self.extras()
                    marks["keys"] = self.key_sizes()
                elif phase == "result":
                    result = msg
                elif phase == "failed":
                    raise RuntimeError(f"the generator could not start its chats: {msg}")
                else:  # connected, matched: around the joins, the cost of a match
                    marks[phase] = msg
                    marks[f"s_{phase}"] = self.snapshot()
                    if phase == "matched":
                        marks["x_matched"] = self.extras()
                    print(f"capacity:   {phase}: {msg.get('clients')} clients in "
                          f"{msg.get('s')} s", flush=True)
            gen.wait(30)
        finally:
            if gen is not None and gen.poll() is None:
                os.killpg(gen.pid, signal.SIGKILL)
                gen.wait(10)
            stack.stop()
        return self.figures(before, marks, result)

    def figures(self, before: dict, m: dict, res: dict) -> dict:
        s0, s1, x0, x1 = m["s0"], m["s1"], m["x0"], m["x1"]
        window = s1["t"] - s0["t"]
        delivered = res["delivered"]
        cpu: dict[str, float] = {}  # class -> CPU seconds in the window
        idle: dict[str, float] = {}
        wait: dict[str, float] = {}
        for pid, p1 in s1["procs"].items():
            p0 = s0["procs"].get(pid)
            if not p0:
                continue
            d = p1["cpu_s"] - p0["cpu_s"]
            g = p1["group"]
            if g == "web1":
                cls = "loaded worker"
            elif g.startswith("web") and g.endswith("arbiter"):
                cls = "web arbiters"
            elif g.startswith("web"):
                cls = "idle workers"
                idle[g] = d
            else:
                cls = g
            cpu[cls] = cpu.get(cls, 0.0) + d
            if g in ("web1", "redis") and p0["wait_ns"] is not None and p1["wait_ns"] is not None:
                wait[g] = round(100 * (p1["wait_ns"] - p0["wait_ns"]) / 1e9 / window, 1)
        cluster_classes = ("loaded worker", "idle workers", "web arbiters", "redis", "matcher",
                           "archiver", "nginx")
        cpu["cluster"] = sum(cpu.get(c, 0.0) for c in cluster_classes)
        ours = cpu["cluster"] + sum(cpu.get(c, 0.0) for c in ("honcho", "generator", "self"))
        busy = s1["machine_busy_s"][0] - s0["machine_busy_s"][0]
        cpu["machine (all cores)"] = busy
        cpu["kernel softirq"] = s1["machine_busy_s"][1] - s0["machine_busy_s"][1]
        # other people's work on the shared machine, and kernel time charged to no process
        cpu["others"] = busy - ours
        pct = {k: round(100 * v / window, 1) for k, v in cpu.items()}
        ms_per_msg = {k: round(1000 * v / delivered, 4) if delivered else None
                      for k, v in cpu.items()
                      if k not in ("others", "self", "kernel softirq", "machine (all cores)")}
        idle_pct = {k: round(100 * v / window, 1) for k, v in sorted(idle.items())}
        per_idle = (sum(idle.values()) / len(idle)) if idle else None
        rss_end = {pid: p["rss"] for pid, p in s1["procs"].items()}
        web1_pid = next(pid for pid, p in s1["procs"].items() if p["group"] == "web1")
        conns = x1.get("connections") or res["clients"]
        added = conns - (before.get("connections") or before["clients"])
        mem = {"connections": conns, "connections_at_baseline": conns - added,
               "loaded_worker_rss_baseline_mib": round(before["rss"][web1_pid] / 2**20, 1),
               "loaded_worker_rss_after_mib": round(rss_end[web1_pid] / 2**20, 1),
               "web_kib_per_connection": round(
                   (rss_end[web1_pid] - before["rss"][web1_pid]) / 1024 / added, 1)}
        idle_rss = [p["rss"] for p in s1["procs"].values() if p["group"].startswith("web")
                    and p["group"] not in ("web1",) and not p["group"].endswith("arbiter")]
        if idle_rss:
            mem["idle_worker_rss_mib"] = round(statistics.mean(idle_rss) / 2**20, 1)
        if self.via_nginx:
            ng0 = sum(v for pid, v in before["rss"].items() if self.procs[pid][1] == "nginx")
            ng1 = sum(p["rss"] for p in s1["procs"].values() if p["group"] == "nginx")
            mem["nginx_kib_per_connection"] = round((ng1 - ng0) / 1024 / added, 1)
        r0, r1, rb = x0.get("redis"), x1.get("redis"), before.get("redis")
        red = {}
        if r0 and r1 and delivered:
            red = {"commands_per_msg": round((r1["total_commands_processed"]
                                              - r0["total_commands_processed"]) / delivered, 2),
                   "evalsha_per_msg": round((r1["evalsha"] - r0["evalsha"]) / delivered, 2),
                   "publish_per_msg": round((r1["publish"] - r0["publish"]) / delivered, 2),
                   "dataset_growth_per_msg_bytes": round(
                       (r1["used_memory_dataset"] - r0["used_memory_dataset"])
                       / max(1, res["acked"])),
                   "net_in_bytes_per_msg": round((r1["total_net_input_bytes"]
                                                  - r0["total_net_input_bytes"]) / delivered),
                   "net_out_bytes_per_msg": round((r1["total_net_output_bytes"]
                                                   - r0["total_net_output_bytes"]) / delivered),
                   "pubsub_channels": r1["pubsub_channels"],
                   "connected_clients": r1["connected_clients"]}
            if rb and "db_messages" in x1 and "db_messages" in before:
                # everything a user holds at the end, messages so far included: the dataset's
                # deltas are too coarse (encodings, AOF) to split off a small fixed part
                red["used_memory_per_user_at_end_bytes"] = round(
                    (r1["used_memory"] - rb["used_memory"]) / added)
                red["messages_per_user_at_end"] = round(
                    (x1["db_messages"] - before["db_messages"]) / res["clients"], 1)
            red["keys"] = m.get("keys", {})
        db = {}
        if "db_messages" in x0 and "db_messages" in x1:
            db = {"message_rows_per_s": round((x1["db_messages"] - x0["db_messages"]) / window,
                                              1),
                  "room_rows_per_s": round((x1["db_rooms"] - x0["db_rooms"]) / window, 1)}
        per_match = {}
        sc, sm = m.get("s_connected"), m.get("s_matched")
        if sc and sm:  # every client joined once and was matched once, nothing else happened
            matches = res["clients"] // 2
            for pid, p1 in sm["procs"].items():
                p0 = sc["procs"].get(pid)
                if p0 and p1["group"] in ("matcher", "redis", "web1") and p0["on_cpu_ns"] \
                        is not None and p1["on_cpu_ns"] is not None:
                    per_match[p1["group"]] = round(
                        (p1["on_cpu_ns"] - p0["on_cpu_ns"]) / 1e6 / matches, 3)
            per_match = {"matches": matches, "seconds": round(sm["t"] - sc["t"], 2),
                         "cpu_ms_per_match": per_match}
        return {
            "workers": self.w, "via": "nginx" if self.via_nginx else "direct to web1",
            "window_s": round(window, 2), "clients": res["clients"],
            "offered_msgs_per_s": res["offered_per_s"],
            "sent_per_s": round(res["sent"] / window, 1),
            "acked_per_s": round(res["acked"] / window, 1),
            "delivered_per_s": round(delivered / window, 1),
            "typing_delivered_per_s": round(res["typing_delivered"] / window, 1),
            "errors": res["errors"], "connections_lost": res["connections_lost"],
            "generator_late_sends": res["late"],
            "cpu_pct_of_one_core": pct,
            "idle_worker_cpu_pct": idle_pct,
            "idle_worker_cpu_pct_mean": round(100 * per_idle / window, 2) if idle else None,
            "idle_worker_cpu_ms_per_msg": (round(1000 * per_idle / delivered, 4)
                                           if idle and delivered else None),
            "cpu_ms_per_msg": ms_per_msg,
            "runq_wait_pct": wait,
            "memory": mem, "redis": red, "db": db, "joins_and_matches": per_match,
            "latency_ms": {"ack": res["ack_ms"], "delivery": res["delivery_ms"]},
        }


# ------------------------------------------------------------------------------ the report

def spread(values: list[float]) -> dict:
    v = [x for x in values if x is not None]
    if not v:
        return {"mean": None, "min": None, "max": None, "n": 0}
    return {"mean": round(statistics.mean(v), 4), "min": min(v), "max": max(v), "n": len(v)}


def summarise(points: list[dict]) -> dict:
    """Per W (direct points): mean, min and max over the repeats of the figures the plot uses."""
    out = {}
    for w in sorted({p["workers"] for p in points if p["via"] != "nginx"}):
        ps = [p for p in points if p["workers"] == w and p["via"] != "nginx"]
        out[str(w)] = {
            "cluster_cpu_ms_per_msg": spread([p["cpu_ms_per_msg"]["cluster"] for p in ps]),
            "loaded_worker_cpu_ms_per_msg": spread([p["cpu_ms_per_msg"].get("loaded worker")
                                                    for p in ps]),
            "idle_worker_cpu_pct": spread([p["idle_worker_cpu_pct_mean"] for p in ps]),
            "idle_worker_cpu_ms_per_msg": spread([p["idle_worker_cpu_ms_per_msg"] for p in ps]),
            "redis_cpu_ms_per_msg": spread([p["cpu_ms_per_msg"].get("redis") for p in ps]),
            "delivered_per_s": spread([p["delivered_per_s"] for p in ps]),
        }
    return out


def fmt(v, nd=1) -> str:
    return "–" if v is None else f"{v:.{nd}f}"


def table(points: list[dict]) -> str:
    head = ("| W | via | msgs/s delivered | loaded worker % | idle worker % (each) | Redis % | "
            "matcher % | archiver % | nginx % | cluster % | cluster CPU-ms/msg | "
            "loaded worker ms/msg | idle worker ms/msg | Redis ms/msg | generator % | "
            "softirq % | others % | web1 waited for a CPU % | KiB/conn | DB rows/s | errors |")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for p in points:
        c, ms = p["cpu_pct_of_one_core"], p["cpu_ms_per_msg"]
        idle = p["idle_worker_cpu_pct"]
        idle_txt = (f"{p['idle_worker_cpu_pct_mean']:.1f} ({min(idle.values()):.1f}–"
                    f"{max(idle.values()):.1f})") if idle else "–"
        rows.append(
            f"| {p['workers']} | {'nginx' if p['via'] == 'nginx' else 'web1'} | "
            f"{fmt(p['delivered_per_s'])} | {fmt(c.get('loaded worker'))} | {idle_txt} | "
            f"{fmt(c.get('redis'))} | {fmt(c.get('matcher'))} | {fmt(c.get('archiver'))} | "
            f"{fmt(c.get('nginx')) if p['via'] == 'nginx' else '–'} | {fmt(c['cluster'])} | "
            f"{fmt(ms['cluster'], 3)} | {fmt(ms.get('loaded worker'), 3)} | "
            f"{fmt(p['idle_worker_cpu_ms_per_msg'], 3)} | {fmt(ms.get('redis'), 3)} | "
            f"{fmt(c.get('generator'))} | {fmt(c.get('kernel softirq'))} | "
            f"{fmt(c.get('others'))} | "
            f"{fmt(p['runq_wait_pct'].get('web1'))} | "
            f"{fmt(p['memory'].get('web_kib_per_connection'))} | "
            f"{fmt(p['db'].get('message_rows_per_s'))} | "
            f"{sum(p['errors'].values()) + p['connections_lost']} |")
    return "\n".join(rows)


def plot() -> bool:
    """before vs after: whole-cluster CPU-ms per message and one idle worker's CPU against W."""
    files = {lab: OUT_DIR / f"{lab}.json" for lab in ("before", "after")}
    if not all(f.exists() for f in files.values()):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (lab, f) in enumerate(files.items()):
        data = json.loads(f.read_text())
        summ = data["summary"]
        ws = sorted(int(w) for w in summ)
        for ax, key, scale in ((axes[0], "cluster_cpu_ms_per_msg", 1),
                               (axes[1], "idle_worker_cpu_pct", 1)):
            xs, ys, lo, hi = [], [], [], []
            for w in ws:
                s = summ[str(w)][key]
                if s["mean"] is None:
                    continue
                xs.append(w)
                ys.append(s["mean"] * scale)
                lo.append((s["mean"] - s["min"]) * scale)
                hi.append((s["max"] - s["mean"]) * scale)
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, color=f"C{i}",
                        label=f"{lab} ({data['meta']['commit'][:7]}"
                              f"{', dirty' if data['meta'].get('dirty') else ''})")
    p = json.loads(files["before"].read_text())["meta"]["params"]
    axes[0].set_title("whole cluster: CPU-ms per delivered message", fontsize=10)
    axes[0].set_ylabel("CPU-ms per message (its typing included)")
    axes[1].set_title("a web worker without clients: CPU % of one core", fontsize=10)
    axes[1].set_ylabel("% of one core")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 2, 4, 8])
        ax.set_xticklabels(["1", "2", "4", "8"])
        ax.set_xlabel("web workers (all clients on one of them)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"loadtests/capacity.py: {p['clients']} clients, {p['rate']} msgs/s offered, "
                 f"{p['seconds']} s measured per point; error bars: min–max of the repeats",
                 fontsize=9)
    fig.tight_layout()
    PLOT.parent.mkdir(exist_ok=True)
    fig.savefig(PLOT, dpi=90)
    plt.close(fig)
    return True


CODE_DIRS = ("web", "common", "matcher", "archiver", "stack", "nginx")


def code_digest() -> str:
    """A digest of the server code as it is in the working tree: the sweep measures that, and
    others may be editing it meanwhile."""
    import hashlib

    h = hashlib.sha256()
    for d in CODE_DIRS:
        for path in sorted((ROOT / d).rglob("*")):
            if path.is_file() and path.suffix in (".py", ".lua", ".j2", ".conf"):
                h.update(str(path.relative_to(ROOT)).encode())
                h.update(path.read_bytes())
    return h.hexdigest()[:16]


def git_state() -> dict:
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=False).stdout

    changed = [line[3:] for line in git("status", "--porcelain", "--", *CODE_DIRS).splitlines()]
    return {"commit": git("rev-parse", "HEAD").strip(), "dirty": bool(changed),
            "changed_files": changed, "code_digest": code_digest()}


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("python-socketio", "python-engineio", "flask-socketio", "gevent", "redis"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["generate"]:
        ap = argparse.ArgumentParser(prog="capacity.py generate")
        ap.add_argument("--url", required=True)
        ap.add_argument("--clients", type=int, required=True)
        ap.add_argument("--rate", type=float, required=True)
        ap.add_argument("--typing", type=float, default=1.0)
        ap.add_argument("--warmup", type=float, default=10)
        ap.add_argument("--seconds", type=float, required=True)
        asyncio.run(generate(ap.parse_args(argv[1:])))
        return 0

    ap = argparse.ArgumentParser(prog="loadtests/capacity.py", description=__doc__.splitlines()[0])
    ap.add_argument("--label", default="", help="the JSON's name: before, after, ...")
    ap.add_argument("--workers", default="1,2,4,8", help="web worker counts, comma-separated")
    ap.add_argument("--clients", type=int, default=600, help="chatting clients (even)")
    ap.add_argument("--rate", type=float, default=500, help="messages per second, all clients")
    ap.add_argument("--typing", type=float, default=1.0,
                    help="typing events per message (the page sends one before each)")
    ap.add_argument("--warmup", type=float, default=10, help="seconds of chat before measuring")
    ap.add_argument("--seconds", type=float, default=40, help="measured seconds per point")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each W")
    ap.add_argument("--nginx", action=argparse.BooleanOptionalAction, default=True,
                    help="one more W=1 point with the clients through nginx")
    ap.add_argument("--plot-only", action="store_true",
                    help="only draw the plot from the JSONs that exist")
    a = ap.parse_args(argv)
    if a.plot_only:
        print("capacity: " + (f"wrote {PLOT.relative_to(ROOT)}" if plot() else
                              "the plot needs loadtests/capacity/before.json and after.json"))
        return 0
    try:
        ws = [int(x) for x in a.workers.split(",") if x.strip()]
        if not ws or not all(1 <= w <= MAX_WORKERS for w in ws):
            raise ValueError(f"--workers: 1..{MAX_WORKERS} each")
        if not (2 <= a.clients <= MAX_CLIENTS and a.clients % 2 == 0):
            raise ValueError(f"--clients: an even number, 2..{MAX_CLIENTS}")
        if not 0 < a.rate <= MAX_RATE:
            raise ValueError(f"--rate: (0, {MAX_RATE}]")
        if a.rate / a.clients > 4:
            raise ValueError("--rate / --clients over 4 messages/s per client: past "
                             "MESSAGE_RATE (5/s) the figures would count refusals")
        if not (5 <= a.seconds <= MAX_SECONDS and 0 <= a.warmup <= 60 and 1 <= a.repeat <= 5
                and 0 <= a.typing <= 1):
            raise ValueError(f"--seconds 5..{MAX_SECONDS}, --warmup 0..60, --repeat 1..5, "
                             "--typing 0..1")
        if a.label and not re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", a.label):
            raise ValueError("--label: letters, digits, _ . - only")
        runs = [(w, False) for _ in range(a.repeat) for w in ws]
        if a.nginx:
            runs.append((1, True))
        estimate = len(runs) * (STARTUP_ESTIMATE_S + a.warmup + a.seconds)
        if estimate > MAX_SWEEP_S:
            raise ValueError(f"the sweep would take about {estimate / 60:.0f} min, over "
                             f"{MAX_SWEEP_S // 60}: fewer points, repeats or seconds")
    except ValueError as exc:
        print(f"capacity: {exc}", file=sys.stderr)
        return 2

    lr = stack_helpers()
    if lr.LocalStack.pick() != "cluster":
        print("capacity: `python -m stack cluster` needs nginx (apt-get install nginx)",
              file=sys.stderr)
        return 2
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    logdir = HERE / "results" / f"capacity-{stamp}"
    logdir.mkdir(parents=True, exist_ok=True)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True,
                            check=False).stdout.strip()
    meta = {"label": a.label, "started": stamp, "uptime_before": uptime, "cores": os.cpu_count(),
            **git_state(), "versions": versions(),
            "command": "python loadtests/capacity.py " + " ".join(argv),
            "params": {"workers": ws, "clients": a.clients, "rate": a.rate, "typing": a.typing,
                       "warmup": a.warmup, "seconds": a.seconds, "repeat": a.repeat,
                       "nginx": a.nginx},
            "generator": "capacity.py generate (asyncio + aiohttp WebSockets, one process)",
            "logs": str(logdir.relative_to(ROOT))}
    print(f"capacity: {len(runs)} points, about {estimate / 60:.1f} min; uptime: {uptime}\n"
          f"capacity: logs in {logdir.relative_to(ROOT)}", flush=True)
    t_start = time.monotonic()
    points, skipped = [], []
    for i, (w, via_nginx) in enumerate(runs):
        p = None
        for attempt in (1, 2):  # a point whose stack did not start right is run once more
            if time.monotonic() - t_start + STARTUP_ESTIMATE_S + a.warmup + a.seconds \
                    > MAX_SWEEP_S:
                skipped.append({"workers": w, "via_nginx": via_nginx,
                                "why": "sweep time limit"})
                break
            print(f"capacity: [{i + 1}/{len(runs)}] W={w}"
                  f"{' through nginx' if via_nginx else ''}"
                  f"{' (again)' if attempt > 1 else ''}", flush=True)
            pdir = logdir / f"{i + 1:02d}-w{w}{'-nginx' if via_nginx else ''}-{attempt}"
            pdir.mkdir()
            try:
                p = Point(lr, w, via_nginx, a, pdir).run()
                break
            except (RuntimeError, TimeoutError, OSError, KeyError, IndexError) as exc:
                print(f"capacity:   failed: {exc} (see {pdir.relative_to(ROOT)})",
                      file=sys.stderr)
                if attempt == 2:
                    skipped.append({"workers": w, "via_nginx": via_nginx, "why": str(exc)})
        if p is None:
            continue
        p["repeat"] = sum(1 for q in points if q["workers"] == w and q["via"] == p["via"]) + 1
        points.append(p)
        c = p["cpu_pct_of_one_core"]
        print(f"capacity:   {p['delivered_per_s']} msgs/s delivered; cluster {c['cluster']} % "
              f"= {p['cpu_ms_per_msg']['cluster']} CPU-ms/msg; loaded worker "
              f"{c.get('loaded worker')} %; idle workers {p['idle_worker_cpu_pct'] or '–'}; "
              f"Redis {c.get('redis')} %; others {c.get('others')} %", flush=True)
    meta["elapsed_s"] = round(time.monotonic() - t_start)
    if code_digest() != meta["code_digest"]:
        meta["code_changed_during_sweep"] = True
        print("capacity: WARNING: the server code changed in the working tree during the sweep;"
              " the points may not all measure the same code", file=sys.stderr)
    result = {"meta": meta, "points": points, "skipped": skipped,
              "summary": summarise(points)}
    name = a.label or stamp
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / f"{name}.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print("\n" + table(points) + "\n")
    for w, s in result["summary"].items():
        c = s["cluster_cpu_ms_per_msg"]
        print(f"W={w}: cluster CPU-ms/msg {fmt(c['mean'], 3)} (min {fmt(c['min'], 3)}, max "
              f"{fmt(c['max'], 3)}, {c['n']} run(s)); idle worker "
              f"{fmt(s['idle_worker_cpu_pct']['mean'], 2)} % of a core")
    print(f"capacity: wrote {(OUT_DIR / f'{name}.json').relative_to(ROOT)}")
    if plot():
        print(f"capacity: wrote {PLOT.relative_to(ROOT)}")
    else:
        print("capacity: the plot is drawn once loadtests/capacity/before.json and after.json "
              "both exist")
    return 1 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
