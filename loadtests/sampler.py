"""What a load test run measures beside locust: every second, the CPU (% of one core) and RSS
of each process of the stack (its whole process tree: web workers, their gunicorn arbiters, the
matcher, the archiver, Redis, nginx, the relay, locust), how long each waited for a CPU, and each
web worker's connections (from its /readyz), written to procs.csv; and, on request, py-spy
profiles of the web workers and the matcher (or the relay).
"""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from stacks import get_json, stack_processes, web_workers

PY = sys.executable


def schedstat_wait_ns(pid: int) -> int | None:
    """Nanoseconds the process's main thread was runnable but waited for a CPU."""
    try:
        with open(f"/proc/{pid}/schedstat") as fh:
            return int(fh.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None


class Sampler(threading.Thread):
    """Every second: CPU % (of one core) and RSS of each process; connections per worker."""

    def __init__(self, roots: dict[str, int], out: Path):
        super().__init__(daemon=True)
        self.roots = roots  # label -> root pid (its whole tree is sampled)
        self.rows: list[dict] = []
        self.stopping = threading.Event()
        self.procs: dict[int, tuple[psutil.Process, str]] = {}
        self.ports: dict[str, int] = {}
        self.out = out
        self.lock = threading.Lock()

    def add_root(self, label: str, pid: int) -> None:
        with self.lock:
            self.roots[label] = pid

    def refresh(self) -> None:
        with self.lock:
            roots = dict(self.roots)
        for label, pid in roots.items():
            try:
                tree = stack_processes(pid)
            except psutil.Error:
                continue
            for p_pid, (p, group) in tree.items():
                if p_pid in self.procs:
                    continue
                try:
                    p.cpu_percent(None)
                except psutil.Error:
                    continue
                self.procs[p_pid] = (p, group)
            if label == "stack":
                self.ports = web_workers(pid) or self.ports

    def sample(self) -> None:
        t = time.time()
        for pid, (p, group) in list(self.procs.items()):
            try:
                with p.oneshot():
                    cpu = p.cpu_percent(None)
                    rss = p.memory_info().rss
            except psutil.Error:
                del self.procs[pid]
                continue
            self.rows.append({"t": t, "group": group, "pid": pid, "cpu": cpu,
                              "rss_kib": rss // 1024, "connections": "",
                              "runq_wait": self.runq_wait(pid, t)})
        for wid, port in self.ports.items():
            try:
                n = get_json(f"http://127.0.0.1:{port}/readyz", 1.0).get("connections")
            except (OSError, ValueError):
                continue
            self.rows.append({"t": t, "group": f"{wid} connections", "pid": "", "cpu": "",
                              "rss_kib": "", "connections": n})
        self.rows.append({"t": t, "group": "machine", "pid": "", "cpu": psutil.cpu_percent(None),
                          "rss_kib": "", "connections": os.getloadavg()[0]})

    _last_wait: dict[int, tuple[float, int]] = {}

    def runq_wait(self, pid: int, t: float):
        """% of the last interval the main thread was runnable but waited for a CPU
        (/proc/<pid>/schedstat: the cost of sharing the cores, not of the work)."""
        wait_ns = schedstat_wait_ns(pid)
        if wait_ns is None:
            return ""
        last = self._last_wait.get(pid)
        self._last_wait[pid] = (t, wait_ns)
        if not last or t <= last[0]:
            return ""
        return round(100 * (wait_ns - last[1]) / 1e9 / (t - last[0]), 1)

    def run(self) -> None:
        last_refresh = 0.0
        psutil.cpu_percent(None)
        while not self.stopping.is_set():
            if time.monotonic() - last_refresh > 3:
                self.refresh()
                last_refresh = time.monotonic()
            self.sample()
            self.stopping.wait(1.0)

    def stop(self) -> None:
        self.stopping.set()
        self.join(5)
        with open(self.out / "procs.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, ["t", "group", "pid", "cpu", "rss_kib", "connections",
                                    "runq_wait"], restval="")
            w.writeheader()
            w.writerows(self.rows)


def profile(sampler: Sampler, out: Path, delay: float, seconds: int) -> None:
    """py-spy record of every web worker, the matcher (or the relay), in parallel, in the
    steady phase."""
    spy = shutil.which("py-spy") or str(Path(PY).with_name("py-spy"))
    time.sleep(delay)
    targets = {g: pid for pid, (p, g) in list(sampler.procs.items())
               if (g.startswith("web") and not g.endswith("arbiter"))
               or g in ("matcher", "relay")}
    procs = []
    for g, pid in targets.items():
        procs.append(subprocess.Popen(
            [spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "100",
             "--format", "raw", "--output", str(out / f"py-spy-{g}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for p in procs:
        try:
            p.wait(seconds + 60)
        except subprocess.TimeoutExpired:
            p.kill()
    lines = []
    for g in targets:
        path = out / f"py-spy-{g}.txt"
        if not path.exists():
            continue
        lines += [f"== {g}: top frames by inclusive samples (self samples) =="] + \
            top_frames(path)
    (out / "py-spy-top.txt").write_text("\n".join(lines) + "\n")


def top_frames(path: Path, n: int = 25) -> list[str]:
    """Inclusive and self sample counts per function from py-spy's folded stacks."""
    incl: dict[str, int] = {}
    self_: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        try:
            c = int(count)
        except ValueError:
            continue
        frames = stack.split(";")
        if any("threadpool.py" in f for f in frames):
            continue  # gevent's thread pool waiting for work in another OS thread: idle
        total += c
        for f in set(frames):
            incl[f] = incl.get(f, 0) + c
        self_[frames[-1]] = self_.get(frames[-1], 0) + c
    rows = sorted(incl.items(), key=lambda kv: -kv[1])[:n]
    out = [f"total samples {total}"]
    for f, c in rows:
        out.append(f"{100 * c / max(total, 1):5.1f}% incl {100 * self_.get(f, 0) / max(total, 1):5.1f}% "
                   f"self  {f}")
    out.append("-- by self samples --")
    for f, c in sorted(self_.items(), key=lambda kv: -kv[1])[:n]:
        out.append(f"{100 * c / max(total, 1):5.1f}% self  {f}")
    return out

