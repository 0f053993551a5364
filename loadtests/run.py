"""`make loadtest`: one bounded, headless locust run against a local chat, with a report.

    python loadtests/run.py --users 100 --spawn-rate 10 --duration 2m [--target URL[,URL...]]

Without --target it starts a local cluster on free loopback ports (`python -m stack cluster`:
nginx + WORKERS web workers + matcher + archiver + a private Redis, when nginx is installed and
the command exists; else `python -m stack run`), with its data in a temporary folder, and stops
it afterwards. Only loopback targets are accepted (127.0.0.1, ::1, localhost), and the size and
the length of a run are bounded (MAX_USERS, MAX_SECONDS).

The baseline: without --target (unless --no-baseline), the same locust load (users, spawn rate,
duration, processes) first runs against loadtests/relay.py, the thinnest relay on the same stack
(one Flask-SocketIO process on gevent, chat state in memory), then against the product; both
are sampled alike and the report puts them side by side: delivery and match percentiles,
whole-cluster CPU (every process but locust and honcho; for the relay, the relay) and CPU-ms
per delivered message, and the two ratios product / baseline beside the issue's goals (p99
delivery <= 3x, CPU per message <= 1.5x, at 1000 users). --baseline-only runs only the relay;
with --target the baseline runs only when --baseline is given.

Writes into loadtests/results/<timestamp>-<users>u/ (or --results-dir):
    locust_stats.csv, locust_stats_history.csv (full history), locust_failures.csv,
    locust_exceptions.csv, report.html   locust's own CSV and HTML report
    summary.json      the locustfile's ledger check: lost, duplicates, errors by code, counts
    procs.csv         CPU and RSS of every process (web workers, matcher, Redis, nginx,
                      archiver, locust) sampled every second with psutil, and connections per
                      web worker (from its /readyz)
    run.json          parameters, `uptime` before the run, per-process figures, KiB/connection
    summary.md        the same as a table row for loadtests/RESULTS.md
    plot.png          users, messages/s, latency percentiles and CPU over time
    locust.log, stack.log
    baseline/         the same files for the relay's run (relay.log instead of stack.log);
                      run.json and summary.md above also carry the side-by-side comparison
Exit code: 0 when nothing was lost, duplicated, misdelivered and no error was counted (in the
product's run and the baseline's); 1 otherwise; 2 for a refused command line.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import psutil

import clusterstats  # loadtests/clusterstats.py (this folder is on sys.path: run as a script)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
LOCUST = str(Path(PY).with_name("locust"))
MAX_USERS = 5000
MAX_SECONDS = 1800
LOOPBACK_NAMES = {"localhost"}


def parse_duration(raw: str) -> int:
    """'90', '90s', '3m', '1h30m' -> seconds."""
    raw = str(raw).strip().lower()
    if raw.isdigit():
        return int(raw)
    total, num = 0, ""
    for ch in raw:
        if ch.isdigit():
            num += ch
        elif ch in "hms" and num:
            total += int(num) * {"h": 3600, "m": 60, "s": 1}[ch]
            num = ""
        else:
            raise ValueError(f"bad duration {raw!r} (e.g. 90, 90s, 3m)")
    if num:
        raise ValueError(f"bad duration {raw!r} (e.g. 90, 90s, 3m)")
    return total


def check_loopback(url: str) -> str:
    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ValueError(f"{url!r}: an http:// URL is needed")
    host = u.hostname
    if host not in LOOPBACK_NAMES:
        try:
            if not ipaddress.ip_address(host).is_loopback:
                raise ValueError
        except ValueError:
            raise ValueError(f"{url!r}: only loopback targets (127.0.0.1, ::1, localhost) "
                             "are allowed") from None
    else:  # localhost must really be loopback here
        for info in socket.getaddrinfo(host, None):
            if not ipaddress.ip_address(info[4][0]).is_loopback:
                raise ValueError(f"{host} does not resolve to loopback here")
    return url.rstrip("/")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read().decode())


# --------------------------------------------------------------------------- the local stack

class LocalStack:
    """`python -m stack cluster` (or `run`) on free loopback ports, stopped by stop()."""

    def __init__(self, out: Path, workers: int, kind: str = "auto", extra_env: dict | None = None):
        self.kind = kind if kind != "auto" else self.pick()
        self.port = free_port()
        self.tmp = tempfile.mkdtemp(prefix="loadtest-instance-")
        env = {**os.environ, "PORT": str(self.port), "INSTANCE_DIR": self.tmp,
               "PYTHONUNBUFFERED": "1", "WORKERS": str(workers),
               # every simulated user comes from 127.0.0.1: no per-address cap (nginx's or a
               # worker's) for a load test; the attacks it guards against are tested elsewhere
               "MAX_CONNS_PER_ADDR": "0", "SESSION_RATE": "0"}
        for k in ("REDIS_URL", "DATABASE_URL"):  # a private Redis and SQLite, always
            env.pop(k, None)
        env.update(extra_env or {})
        self.log = open(out / "stack.log", "w")
        self.p = subprocess.Popen([PY, "-m", "stack", self.kind], cwd=ROOT, env=env,
                                  stdout=self.log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"

    @staticmethod
    def pick() -> str:
        try:
            r = subprocess.run([PY, "-m", "stack", "cluster", "--help"], cwd=ROOT,
                               capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return "run"
        nginx = shutil.which("nginx") or Path("/usr/sbin/nginx").exists()
        return "cluster" if r.returncode == 0 and nginx else "run"

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.p.poll() is not None:
                raise RuntimeError(f"stack exited ({self.p.returncode}); see stack.log")
            try:
                webs = web_workers(self.p.pid)
                if webs and all(get_json(f"http://127.0.0.1:{port}/readyz").get("ok")
                                for port in webs.values()):
                    if get_json(self.url + "/readyz").get("ok"):
                        return
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the local {self.kind} is not ready after {timeout:.0f} s")

    def stop(self) -> None:
        stop_group(self.p, 30)
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def stop_group(p: subprocess.Popen, grace: float) -> None:
    """SIGTERM to a process started with its own session, SIGKILL after `grace` seconds."""
    if p.poll() is not None:
        return
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)
    except ProcessLookupError:
        pass


RELAY_SCRIPT = "loadtests/relay.py"


class RelayProcess:
    """The baseline: loadtests/relay.py on a free loopback port, stopped by stop()."""

    def __init__(self, out: Path):
        self.port = free_port()
        self.log = open(out / "relay.log", "w")
        self.p = subprocess.Popen([PY, RELAY_SCRIPT, "--port", str(self.port)], cwd=ROOT,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                  stdout=self.log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.p.poll() is not None:
                raise RuntimeError(f"the relay exited ({self.p.returncode}); see relay.log")
            try:
                if get_json(self.url + "/readyz").get("ok"):
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"the relay is not ready after {timeout:.0f} s")

    def stop(self) -> None:
        stop_group(self.p, 15)
        self.log.close()


def classify(p: psutil.Process) -> str | None:
    """A group name for a process of the stack, or None for shells and the like."""
    try:
        name = p.name()
        cmd = " ".join(p.cmdline())
    except (psutil.Error, OSError):
        return None
    if "redis-server" in name or "redis-server" in cmd:
        return "redis"
    if name.startswith("nginx") or cmd.startswith("nginx"):
        return "nginx"
    if RELAY_SCRIPT in cmd:
        return "relay"
    if "locust" in cmd:
        return "locust"
    if name in ("sh", "bash", "dash", "zsh"):
        return None
    if " -m web" in cmd or "gunicorn" in cmd or "chat-web" in cmd:
        # gunicorn: an arbiter process and its one worker (the one without children)
        try:
            is_worker = not p.children()
        except (psutil.Error, OSError):
            is_worker = False
        try:
            wid = p.environ().get("WORKER_ID", "web")
        except (psutil.Error, OSError):
            wid = "web"
        return f"{wid}" if is_worker else f"{wid} arbiter"
    if " -m matcher" in cmd:
        return "matcher"
    if " -m archiver" in cmd:
        return "archiver"
    if " -m stack" in cmd:
        return "honcho"
    return None


def web_workers(root_pid: int) -> dict[str, int]:
    """{worker id: listening port} of the gunicorn workers under root_pid."""
    out = {}
    try:
        procs = psutil.Process(root_pid).children(recursive=True)
    except psutil.Error:
        return out
    for p in procs:
        group = classify(p)
        if not group or group.endswith("arbiter") or not group.startswith("web"):
            continue
        try:
            for c in p.net_connections(kind="tcp"):
                if c.status == psutil.CONN_LISTEN:
                    out[group] = c.laddr.port
        except (psutil.Error, OSError):
            continue
    return out


# --------------------------------------------------------------------------- sampling

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
                root = psutil.Process(pid)
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            for p in tree:
                if p.pid in self.procs:
                    continue
                group = classify(p)
                if group:
                    try:
                        p.cpu_percent(None)
                    except psutil.Error:
                        continue
                    self.procs[p.pid] = (p, group)
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
        try:
            with open(f"/proc/{pid}/schedstat") as fh:
                wait_ns = int(fh.read().split()[1])
        except (OSError, ValueError, IndexError):
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


# --------------------------------------------------------------------------- the report

def read_stats(out: Path) -> dict[str, dict]:
    rows = {}
    path = out / "locust_stats.csv"
    if path.exists():
        with open(path, newline="") as fh:
            for r in csv.DictReader(fh):
                rows[f"{r['Type']} {r['Name']}"] = r
    return rows


def pct(rows, key, p):
    r = rows.get(key)
    if not r or r.get("Request Count") in (None, "0"):
        return None
    v = r.get(p)
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def process_figures(rows: list[dict], t0: float, t1: float) -> dict[str, dict]:
    """Mean CPU % and max RSS per group (summed over its processes) between t0 and t1."""
    by_t: dict[str, dict[float, list]] = {}
    for r in rows:
        if r["cpu"] == "" or r["group"] == "machine":
            continue
        by_t.setdefault(r["group"], {}).setdefault(round(r["t"]), []).append(r)
    out = {}
    for group, samples in by_t.items():
        cpus, rss, waits = [], [], []
        for t, rs in samples.items():
            total_rss = sum(x["rss_kib"] for x in rs)
            rss.append(total_rss)
            if t0 <= t <= t1:
                cpus.append(sum(x["cpu"] for x in rs))
                waits += [x["runq_wait"] for x in rs if x.get("runq_wait") not in ("", None)]
        out[group] = {"cpu_mean_pct": round(sum(cpus) / len(cpus), 1) if cpus else None,
                      "cpu_max_pct": round(max(cpus), 1) if cpus else None,
                      "runq_wait_mean_pct": round(sum(waits) / len(waits), 1) if waits else None,
                      "rss_max_mib": round(max(rss) / 1024, 1) if rss else None,
                      "processes": len({x["pid"] for rs in samples.values() for x in rs})}
    machine = [r for r in rows if r["group"] == "machine" and t0 <= r["t"] <= t1]
    if machine:
        cores = psutil.cpu_count() or 1
        total = sum(r["cpu"] for r in machine) / len(machine)
        ours = sum(v["cpu_mean_pct"] or 0 for v in out.values())
        out["machine (all cores)"] = {
            "cpu_mean_pct": round(total, 1),
            "load_avg_1min_mean": round(sum(r["connections"] for r in machine) / len(machine), 2),
            # what the rest of the machine (other people's runs) took, in % of one core
            "others_cpu_mean_pct_of_one_core": round(max(0.0, total * cores - ours), 1)}
    return out


def kib_per_connection(rows: list[dict], baseline: dict[str, int]) -> dict[str, dict]:
    """(RSS at the sample with the most connections - RSS before the run) / connections."""
    conns: dict[str, dict[int, int]] = {}
    rss: dict[str, dict[int, int]] = {}
    for r in rows:
        g = r["group"]
        if g.endswith(" connections"):
            conns.setdefault(g[:-12], {})[round(r["t"])] = r["connections"]
        elif g in baseline and r["rss_kib"] != "":
            rss.setdefault(g, {})[round(r["t"])] = r["rss_kib"]
    out = {}
    for wid, series in conns.items():
        if not series or wid not in baseline:
            continue
        t, n = max(series.items(), key=lambda kv: (kv[1], -kv[0]))
        r = rss.get(wid, {}).get(t)
        if not n or r is None:
            continue
        out[wid] = {"connections": n, "rss_before_kib": baseline[wid], "rss_at_peak_kib": r,
                    "kib_per_connection": round((r - baseline[wid]) / n, 1)}
    return out


def plot(out: Path, proc_rows: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = out / "locust_stats_history.csv"
    series: dict[str, dict[str, list]] = {}
    users_t, users = [], []
    t_start = None
    with open(hist, newline="") as fh:
        for r in csv.DictReader(fh):
            t = float(r["Timestamp"])
            t_start = t if t_start is None else t_start
            key = f"{r['Type']} {r['Name']}".strip()
            if key == "Aggregated" or r["Name"] == "Aggregated":
                users_t.append(t - t_start)
                users.append(int(r["User Count"]))
                continue
            s = series.setdefault(key, {"t": [], "rps": [], "50%": [], "95%": [], "99%": []})
            s["t"].append(t - t_start)

            def num(v):
                try:
                    return float(v)
                except (TypeError, ValueError):
                    return float("nan")

            s["rps"].append(num(r["Requests/s"]))
            for p in ("50%", "95%", "99%"):
                v = num(r.get(p))
                s[p].append(v if v > 0 else float("nan"))
    fig, axes = plt.subplots(5, 1, figsize=(11, 16), sharex=True)
    ax = axes[0]
    ax.plot(users_t, users, color="k")
    ax.set_ylabel("users")
    ax.set_title(title, fontsize=10)
    ax = axes[1]
    for key, label in (("ACK message", "messages sent (acked) /s"),
                       ("DELIVERY send → partner", "messages received /s"),
                       ("ACK typing", "typing events /s")):
        if key in series:
            ax.plot(series[key]["t"], series[key]["rps"], label=label)
    ax.set_ylabel("per second")
    ax.legend(loc="upper left", fontsize=8)
    for ax, keys, ylabel in (
            (axes[2], ("DELIVERY send → partner", "ACK message"), "ms (last 10 s window)"),
            (axes[3], ("MATCH join → matched", "MATCH both waiting → matched"),
             "ms (last 10 s window)")):
        styles = {"50%": ":", "95%": "--", "99%": "-"}
        for i, key in enumerate(keys):
            if key not in series:
                continue
            for p, ls in styles.items():
                ax.plot(series[key]["t"], series[key][p], ls, color=f"C{i}",
                        label=f"{key} p{p[:-1]}")
        ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.legend(loc="upper left", fontsize=7, ncol=2)
    ax = axes[4]
    if t_start is not None:
        groups: dict[str, dict[int, float]] = {}
        for r in proc_rows:
            if r["cpu"] == "" or r["group"] == "machine":
                continue
            groups.setdefault(r["group"], {}).setdefault(round(r["t"] - t_start), 0.0)
            groups[r["group"]][round(r["t"] - t_start)] += r["cpu"]
        for g in sorted(groups):
            pts = sorted(groups[g].items())
            if max(v for _, v in pts) < 2:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=g)
        ax.legend(loc="upper left", fontsize=7, ncol=3)
    ax.set_ylabel("CPU % of one core")
    ax.set_xlabel("seconds since the start")
    fig.tight_layout()
    fig.savefig(out / "plot.png", dpi=90)
    plt.close(fig)


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


def fmt(v, nd=0):
    if v is None:
        return "–"
    return f"{v:.{nd}f}"


# --------------------------------------------------------------------------- the baseline

# Not the product's cluster: the load generator, and the local process manager of `stack
# cluster` (honcho, which only relays log lines; a deployment has none).
NOT_CLUSTER = ("locust", "honcho", "machine (all cores)")
# The goals at 1000 users, product / baseline in the same run.
GOALS = {"p99_delivery": 3.0, "cpu_per_message": 1.5}
DELIVERED = "DELIVERY send → partner"


def load_window(out: Path, users: int, seconds: int) -> tuple[float, float, int] | None:
    """(t0, t1, messages delivered between them): from the moment every user is spawned to the
    end of locust's run time (before the drain), from locust_stats_history.csv."""
    hist = out / "locust_stats_history.csv"
    if not hist.exists():
        return None
    first = spawned = None
    delivered = []
    with open(hist, newline="") as fh:
        for r in csv.DictReader(fh):
            t = float(r["Timestamp"])
            if r["Name"] == "Aggregated":
                first = t if first is None else first
                if spawned is None and int(r["User Count"]) >= users:
                    spawned = t
            elif f"{r['Type']} {r['Name']}" == DELIVERED:
                delivered.append((t, int(r["Total Request Count"])))
    if first is None or spawned is None:
        return None
    pts = [(t, n) for t, n in delivered if spawned <= t <= first + seconds - 1]
    if len(pts) < 2 or pts[-1][0] <= pts[0][0]:
        return None
    return pts[0][0], pts[-1][0], pts[-1][1] - pts[0][1]


def window_p99s(out: Path, key: str, t0: float, t1: float) -> list[float]:
    """p99 of `key` in consecutive 10-s windows between t0 and t1 (locust's history rows carry
    the percentiles of the last 10 s): a few seconds in which another process took the cores
    move the whole run's p99 a lot, and these medians much less."""
    out_p, next_t = [], t0 + 10
    with open(out / "locust_stats_history.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            t = float(r["Timestamp"])
            if f"{r['Type']} {r['Name']}" != key or t < next_t or t > t1:
                continue
            next_t = t + 10
            try:
                out_p.append(float(r["99%"]))
            except ValueError:
                pass
    return out_p


def cluster_figures(rows: list[dict], out: Path, users: int, seconds: int) -> dict:
    """Whole-cluster CPU (every sampled process but NOT_CLUSTER) over the load window, and its
    CPU-ms per delivered message: the figure the product is compared with the relay by."""
    window = load_window(out, users, seconds)
    if window is None:
        return {"window_s": None, "delivered": None, "cpu_mean_pct": None,
                "cpu_ms_per_message": None, "msgs_per_s": None, "groups": []}
    t0, t1, delivered = window
    figures = process_figures(rows, t0, t1)
    groups = sorted(g for g, v in figures.items()
                    if g not in NOT_CLUSTER and v.get("cpu_mean_pct") is not None)
    cpu = sum(figures[g]["cpu_mean_pct"] for g in groups)
    span = t1 - t0
    p99s = window_p99s(out, DELIVERED, t0, t1)
    return {"delivery_p99_10s_windows": p99s,
            "delivery_p99_10s_median": statistics.median(p99s) if p99s else None,
            "window_s": span, "delivered": delivered, "cpu_mean_pct": round(cpu, 1),
            "cpu_ms_per_message": round(cpu / 100 * span * 1000 / delivered, 3)
            if delivered else None,
            "msgs_per_s": round(delivered / span, 1),
            "locust_cpu_mean_pct": (figures.get("locust") or {}).get("cpu_mean_pct"),
            "others_cpu_mean_pct_of_one_core": (figures.get("machine (all cores)") or {}).get(
                "others_cpu_mean_pct_of_one_core"),
            "groups": groups}


def compare(base: dict | None, prod: dict | None) -> dict:
    """The two ratios product / baseline beside the issue's goals (None when a side is missing)."""
    def ratio(get):
        try:
            x, y = get(prod), get(base)
        except (TypeError, KeyError, AttributeError):
            return None
        return round(x / y, 2) if x is not None and y else None

    p99 = ratio(lambda i: i["latency_ms"][DELIVERED]["99%"])
    quiet = ratio(lambda i: i["cluster"]["delivery_p99_10s_median"])
    cpu = ratio(lambda i: i["cluster"]["cpu_ms_per_message"])
    return {"p99_delivery_ratio": p99, "p99_delivery_goal": GOALS["p99_delivery"],
            "p99_delivery_met": None if p99 is None else p99 <= GOALS["p99_delivery"],
            "p99_delivery_10s_median_ratio": quiet,
            "cpu_per_message_ratio": cpu, "cpu_per_message_goal": GOALS["cpu_per_message"],
            "cpu_per_message_met": None if cpu is None else cpu <= GOALS["cpu_per_message"]}


def comparison_lines(base: dict | None, prod: dict | None, comp: dict) -> list[str]:
    """summary.md's side-by-side table: the relay (baseline) and the product, one run."""
    def side(info, get, nd=0):
        if not info:
            return "not run"
        try:
            return get(info)
        except (KeyError, TypeError):
            return "–"

    def trio(key):
        return lambda i: "/".join(fmt(i["latency_ms"][key].get(p)) for p in ("50%", "95%", "99%"))

    def cl(key, nd=1):
        return lambda i: fmt(i["cluster"].get(key), nd)

    def verdict(i):
        v = i["verdict"]
        return f"{v.get('lost')} / {v.get('duplicates')} / {sum(i['errors'].values())}"

    def goal(r, g, met):
        return "–" if r is None else f"{r:.2f}x (goal ≤ {g:g}x: {'met' if met else 'missed'})"

    rows = [
        ("delivery send → partner p50/p95/p99 ms", trio(DELIVERED),
         goal(comp["p99_delivery_ratio"], comp["p99_delivery_goal"], comp["p99_delivery_met"])),
        ("delivery p99, median of the 10-s windows of the load window (noise check)",
         cl("delivery_p99_10s_median", 0),
         "–" if comp["p99_delivery_10s_median_ratio"] is None
         else f"{comp['p99_delivery_10s_median_ratio']:.2f}x"),
        ("match both waiting → matched p50/p95/p99 ms", trio("MATCH both waiting → matched"),
         ""),
        ("match join → matched p50/p95/p99 ms", trio("MATCH join → matched"), ""),
        ("ack message p50/p95/p99 ms", trio("ACK message"), ""),
        ("messages delivered /s (load window)", cl("msgs_per_s"), ""),
        ("whole-cluster CPU, % of one core (load window)", cl("cpu_mean_pct"), ""),
        ("CPU-ms per delivered message", cl("cpu_ms_per_message", 2),
         goal(comp["cpu_per_message_ratio"], comp["cpu_per_message_goal"],
              comp["cpu_per_message_met"])),
        ("processes counted as the cluster", lambda i: ", ".join(i["cluster"]["groups"]) or "–",
         ""),
        ("load generator (locust) CPU, % of one core", cl("locust_cpu_mean_pct"), ""),
        ("others' CPU on the machine, % of one core", cl("others_cpu_mean_pct_of_one_core"), ""),
        ("lost / duplicates / errors", verdict, ""),
    ]
    lines = ["## Baseline: the thinnest relay beside the product, same load, same run", "",
             "| | baseline (relay.py) | product | product / baseline |", "|---|---|---|---|"]
    for name, get, r in rows:
        lines.append(f"| {name} | {side(base, get)} | {side(prod, get)} | {r} |")
    window = " / ".join(f"{k} {fmt(i['cluster'].get('window_s'))} s"
                        for k, i in (("baseline", base), ("product", prod)) if i)
    lines += ["", f"- load window (every user spawned → end of the run time): {window}; "
              "CPU-ms per message = cluster CPU over the window / messages delivered in it"]
    return lines


# --------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="loadtests/run.py", description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=int(os.environ.get("USERS") or 50))
    ap.add_argument("--spawn-rate", type=float, default=float(os.environ.get("SPAWN_RATE") or 10))
    ap.add_argument("--duration", default=os.environ.get("DURATION") or "60s",
                    help="locust --run-time, spawning included (90, 90s, 3m)")
    ap.add_argument("--target", default=os.environ.get("TARGET") or "",
                    help="loopback base URL(s), comma-separated; none: start a local stack")
    ap.add_argument("--processes", default=os.environ.get("PROCESSES") or "auto",
                    help="locust processes: auto (1 up to 300 users, else 2), or a number")
    ap.add_argument("--workers", type=int, default=int(os.environ.get("WORKERS") or 1),
                    help="web workers of the local cluster")
    ap.add_argument("--stack", choices=("auto", "cluster", "run"), default="auto")
    ap.add_argument("--mode", choices=("chat", "idle"), default="chat")
    ap.add_argument("--results-dir", default="")
    ap.add_argument("--label", default="", help="a note kept in run.json and the summary")
    ap.add_argument("--locust-nice", type=int, default=int(os.environ.get("LOCUST_NICE") or 0),
                    metavar="N", help="run locust under `nice -n N` (0-19): the stack gets the "
                    "cores first, as with a load generator on other machines")
    ap.add_argument("--py-spy", type=int, default=0, metavar="SECONDS",
                    help="once spawning is done, profile each web worker and the matcher "
                         "this long with py-spy (pip install py-spy): py-spy-<name>.txt "
                         "(folded stacks, for any flame graph tool) and py-spy-top.txt")
    base = ap.add_mutually_exclusive_group()
    base.add_argument("--no-baseline", action="store_true",
                      help="skip the baseline (the relay run before the product)")
    base.add_argument("--baseline-only", action="store_true",
                      help="run only the baseline relay (loadtests/relay.py)")
    base.add_argument("--baseline", action="store_true",
                      help="with --target: run the baseline too (without --target it is the "
                           "default)")
    ap.add_argument("--redis-cluster", type=int, default=0, metavar="MASTERS",
                    help="run the product on a local Redis Cluster of this many masters "
                         "(REDIS_CLUSTER_URL in the environment: on that one); the report gives "
                         "each master's share of the chat's scripts")
    ap.add_argument("locust_args", nargs="*", help="more locust options, after --")
    a = ap.parse_args(argv)

    try:
        seconds = parse_duration(a.duration)
        if not 1 <= a.users <= MAX_USERS:
            raise ValueError(f"--users must be 1..{MAX_USERS}")
        if not 5 <= seconds <= MAX_SECONDS:
            raise ValueError(f"--duration must be 5 s..{MAX_SECONDS} s")
        if not 0 < a.spawn_rate <= 1000:
            raise ValueError("--spawn-rate must be in (0, 1000]")
        if not 0 <= a.locust_nice <= 19:
            raise ValueError("--locust-nice must be 0..19")
        targets = [check_loopback(u) for u in a.target.split(",") if u.strip()]
        procs = (1 if a.users <= 300 else 2) if a.processes == "auto" else int(a.processes)
        if not 1 <= procs <= max(2, os.cpu_count() or 1):
            raise ValueError("--processes must be between 1 and the number of cores")
    except ValueError as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    with_baseline = a.baseline_only or a.baseline or not (a.no_baseline or targets)
    with_product = not a.baseline_only

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(a.results_dir) if a.results_dir else HERE / "results" / f"{stamp}-{a.users}u"
    out.mkdir(parents=True, exist_ok=True)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    phases = " then ".join(k for k, on in (("baseline relay", with_baseline),
                                           ("product", with_product)) if on)
    print(f"loadtest: {a.users} users, {a.spawn_rate}/s, {seconds} s, {procs} locust "
          f"process(es); {phases}; uptime: {uptime}\nloadtest: results in {out}", flush=True)

    done: dict[str, dict] = {}
    if with_baseline:
        print(f"loadtest: baseline: the same load against {RELAY_SCRIPT}; its files in "
              f"{out / 'baseline'}", flush=True)
        done["baseline"] = run_phase(a, "baseline", out / "baseline", [], procs, seconds, stamp)
    if with_product:
        cluster = None
        if a.redis_cluster and not targets:
            sys.path.insert(0, str(ROOT / "tests"))
            from rediscluster import RedisClusterServer  # the tests' local cluster

            cluster = RedisClusterServer(masters=a.redis_cluster)
            os.environ["REDIS_CLUSTER_URL"] = cluster.url
            print(f"loadtest: the product on a local Redis Cluster of {a.redis_cluster} masters "
                  f"({cluster.url})", flush=True)
        cluster_url = os.environ.get("REDIS_CLUSTER_URL")
        try:
            nodes = clusterstats.masters(cluster_url) if cluster_url else None
            before, t0 = (clusterstats.reading(nodes), time.time()) if nodes else (None, 0)
            done["product"] = run_phase(a, "product", out, targets, procs, seconds, stamp)
            if nodes:
                spread = clusterstats.spread(before, clusterstats.reading(nodes),
                                             time.time() - t0)
                done["product"]["info"]["redis_cluster"] = spread
                done["product"]["cluster_table"] = clusterstats.table(spread)
        finally:
            if cluster is not None:
                cluster.stop()

    base_info = done.get("baseline", {}).get("info")
    prod_info = done.get("product", {}).get("info")
    comp = compare(base_info, prod_info)
    lines = comparison_lines(base_info, prod_info, comp) if base_info is not None else []
    if done.get("product", {}).get("cluster_table"):
        lines += ["", "## Redis Cluster: the chat's scripts (EVALSHA) and CPU per master, whole run",
                  "", done["product"]["cluster_table"]]
    if prod_info is not None:
        prod_info["baseline"] = base_info
        prod_info["comparison"] = comp
        (out / "run.json").write_text(json.dumps(prod_info, indent=1, ensure_ascii=False))
        if lines:
            with open(out / "summary.md", "a") as fh:
                fh.write("\n" + "\n".join(lines) + "\n")
    else:
        (out / "run.json").write_text(json.dumps({"baseline": base_info, "comparison": comp},
                                                 indent=1, ensure_ascii=False))
        (out / "summary.md").write_text(
            f"# Load test {stamp}: {a.users} users ({a.mode}), {a.spawn_rate}/s, {seconds} s, "
            "baseline only (the relay's own report: baseline/summary.md)\n\n"
            + "\n".join(lines) + "\n")
    if base_info is not None or done.get("product", {}).get("cluster_table"):
        print("\n" + "\n".join(lines), flush=True)
    return 1 if any(d["bad"] for d in done.values()) else 0


def run_phase(a, kind: str, out: Path, targets: list[str], procs: int, seconds: int,
              stamp: str) -> dict:
    """One locust run (spawn, run, drain, ledger check) against the product (a local stack or
    --target) or the baseline relay, sampled and reported in `out`: {"info", "lines", "bad"}."""
    out.mkdir(parents=True, exist_ok=True)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    info = {"users": a.users, "spawn_rate": a.spawn_rate, "duration_s": seconds,
            "locust_processes": procs, "mode": a.mode, "label": a.label,
            "uptime_before": uptime, "cores": os.cpu_count(), "started": stamp, "kind": kind}

    stack = relay = None
    sampler = Sampler({}, out)
    try:
        if kind == "baseline":
            relay = RelayProcess(out)
            info["stack"] = f"baseline: {RELAY_SCRIPT} (one process, chat state in memory)"
            print(f"loadtest: starting the relay on {relay.url}", flush=True)
            relay.wait_ready()
            targets = [relay.url]
            sampler.add_root("relay", relay.p.pid)
            sampler.ports["relay"] = relay.port
        elif not targets:
            stack = LocalStack(out, a.workers, a.stack)
            info["stack"] = f"python -m stack {stack.kind}" + (
                f" (WORKERS={a.workers})" if stack.kind == "cluster" else "")
            print(f"loadtest: starting {info['stack']} on {stack.url}", flush=True)
            stack.wait_ready()
            targets = [stack.url]
            sampler.add_root("stack", stack.p.pid)
        else:
            info["stack"] = "external: " + ",".join(targets)
            # sample the processes that listen on the target ports, when they are ours to see
            for u in targets:
                port = urllib.parse.urlsplit(u).port
                for c in psutil.net_connections(kind="tcp"):
                    if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid:
                        sampler.add_root(f"target {port}", c.pid)
        info["targets"] = targets
        sampler.refresh()
        time.sleep(2)
        baseline = {}
        for pid, (p, group) in sampler.procs.items():
            if (group.startswith("web") and not group.endswith("arbiter")) or group == "relay":
                try:
                    baseline[group] = p.memory_info().rss // 1024
                except psutil.Error:
                    pass
        # worker ports for an external target: the targets themselves when they are workers
        if not sampler.ports and targets:
            for u in targets:
                try:
                    wid = get_json(u + "/readyz").get("worker")
                except (OSError, ValueError):
                    wid = None
                if wid:
                    sampler.ports[wid] = urllib.parse.urlsplit(u).port
        sampler.start()

        cmd = [LOCUST, "-f", str(HERE / "locustfile.py"), "--headless", "-u", str(a.users),
               "-r", str(a.spawn_rate), "-t", f"{seconds}s", "--host", targets[0],
               "--chat-urls", ",".join(targets), "--chat-mode", a.mode,
               "--chat-summary", str(out / "summary.json"),
               "--csv", str(out / "locust"), "--csv-full-history", "--html",
               str(out / "report.html"), "--stop-timeout", "10", "--only-summary"]
        if procs > 1:
            # A master port of this run's own, on loopback: with the default (5557 on every
            # interface) the workers of another locust run on the machine join this master and
            # get its users (seen: two foreign workers joined a baseline run, ~300 users more).
            port = free_port()
            cmd += ["--processes", str(procs), "--master-bind-host", "127.0.0.1",
                    "--master-bind-port", str(port), "--master-host", "127.0.0.1",
                    "--master-port", str(port)]
        cmd += a.locust_args
        if a.locust_nice:
            # The load generator yields the cores to what it measures, as if it ran elsewhere;
            # both sides of a run get the same, so the comparison stays fair.
            cmd = ["nice", "-n", str(a.locust_nice), *cmd]
        info["locust_command"] = " ".join(cmd)
        t_start = time.time()
        with open(out / "locust.log", "w") as log:
            lp = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
            sampler.add_root("locust", lp.pid)
            spy = None
            if a.py_spy:
                spy = threading.Thread(target=profile, args=(
                    sampler, out, a.users / a.spawn_rate + 5, a.py_spy), daemon=True)
                spy.start()
            try:
                locust_rc = lp.wait(seconds + 240)  # spawn + run + drain + checks, bounded
            except subprocess.TimeoutExpired:
                os.killpg(lp.pid, signal.SIGKILL)
                locust_rc = lp.wait()
                print("loadtest: locust overran its time and was killed", file=sys.stderr)
        t_end = time.time()
        info["locust_exit_code"] = locust_rc
    finally:
        sampler.stop()
        if stack is not None:
            stack.stop()
        if relay is not None:
            relay.stop()

    # ---- the report
    summary = {}
    if (out / "summary.json").exists():
        summary = json.loads((out / "summary.json").read_text())
    stats = read_stats(out)
    spawn_end = t_start + a.users / a.spawn_rate
    steady = (min(spawn_end, t_end - 10), t_end)
    figures = process_figures(sampler.rows, *steady)
    info["processes"] = figures
    info["kib_per_connection"] = kib_per_connection(sampler.rows, baseline)
    lat = {}
    for key in ("MATCH join → matched", "MATCH join → matched (interests)",
                "MATCH both waiting → matched", "ACK message", "DELIVERY send → partner",
                "DELIVERY server → partner", "ACK join", "ACK next", "RESUME reload → resumed",
                "WS connect"):
        lat[key] = {p: pct(stats, key, p) for p in ("50%", "95%", "99%", "100%")}
        lat[key]["count"] = int(stats[key]["Request Count"]) if key in stats else 0
    info["latency_ms"] = lat
    # messages/s in the steady phase: acked messages per second from the history file
    rates = {"ACK message": [], "DELIVERY send → partner": []}
    hist = out / "locust_stats_history.csv"
    if hist.exists():
        with open(hist, newline="") as fh:
            for r in csv.DictReader(fh):
                key = f"{r['Type']} {r['Name']}"
                if key in rates and steady[0] <= float(r["Timestamp"]) <= steady[1] - 6:
                    try:
                        rates[key].append(float(r["Requests/s"]))
                    except ValueError:
                        pass
    info["msgs_per_s"] = {k: round(sum(v) / len(v), 1) if v else None for k, v in rates.items()}
    m = summary.get("messages", {})
    errors = summary.get("errors", {})
    info["verdict"] = {k: m.get(k) for k in ("expected", "received", "lost", "duplicates",
                                             "misdelivered", "seq mismatch", "matched missing")}
    info["errors"] = errors
    info["stopped_early"] = bool(summary.get("stopped_early"))
    info["cluster"] = cluster_figures(sampler.rows, out, a.users, seconds)
    (out / "run.json").write_text(json.dumps(info, indent=1, ensure_ascii=False))

    def trio(key):
        d = lat.get(key, {})
        return "/".join(fmt(d.get(p)) for p in ("50%", "95%", "99%"))

    kib = info["kib_per_connection"]
    kib_txt = ", ".join(f"{w}: {v['kib_per_connection']} ({v['connections']} conns)"
                        for w, v in sorted(kib.items())) or "–"
    proc_txt = "; ".join(f"{g} {fmt(v.get('cpu_mean_pct'))}% / {fmt(v.get('rss_max_mib'))} MiB"
                         f" (waited for a CPU {fmt(v.get('runq_wait_mean_pct'))}%)"
                         for g, v in sorted(figures.items())
                         if g != "machine (all cores)" and not g.endswith("arbiter"))
    lines = [
        f"# Load test {stamp}{' (baseline relay)' if kind == 'baseline' else ''}: "
        f"{a.users} users ({a.mode}), {a.spawn_rate}/s, {seconds} s",
        "",
        f"- target: {info['stack']}; locust processes: {procs}; exit code {info['locust_exit_code']}",
        f"- before the run: `{uptime}`",
        f"- machine CPU (all cores, steady phase): "
        f"{fmt(figures.get('machine (all cores)', {}).get('cpu_mean_pct'))}%; of which other "
        f"processes than this run's (% of one core): "
        f"{fmt(figures.get('machine (all cores)', {}).get('others_cpu_mean_pct_of_one_core'))}; "
        f"mean 1-min load average "
        f"{fmt(figures.get('machine (all cores)', {}).get('load_avg_1min_mean'), 2)}",
        "",
        "| users | match join→matched p50/p95/p99 ms | match both waiting→matched | "
        "ack p50/p95/p99 | delivery p50/p95/p99 | msgs/s sent/recv | expected | lost | dup | "
        "errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {a.users} | {trio('MATCH join → matched')} | {trio('MATCH both waiting → matched')}"
        f" | {trio('ACK message')} | {trio('DELIVERY send → partner')} | "
        f"{fmt(info['msgs_per_s']['ACK message'], 1)}/"
        f"{fmt(info['msgs_per_s']['DELIVERY send → partner'], 1)} | {m.get('expected', '–')} | "
        f"{m.get('lost', '–')} | {m.get('duplicates', '–')} | "
        f"{sum(errors.values()) if errors else 0} |",
        "",
        f"- errors by code: {json.dumps(errors, ensure_ascii=False) if errors else 'none'}",
        f"- run: {summary.get('elapsed_s')} s until the check"
        f"{' - STOPPED EARLY (see locust.log)' if summary.get('stopped_early') else ''}; "
        f"messages settled {summary.get('settled_s')} s after the {5} s drain",
        f"- ledger: {json.dumps(m, ensure_ascii=False)}",
        f"- CPU mean % of one core / max RSS, steady phase: {proc_txt}",
        f"- KiB per connection in a web worker (RSS delta / connections): {kib_txt}",
        f"- whole cluster ({', '.join(info['cluster']['groups']) or '–'}), load window "
        f"{fmt(info['cluster']['window_s'])} s: CPU {fmt(info['cluster']['cpu_mean_pct'], 1)}% "
        f"of one core, {fmt(info['cluster']['msgs_per_s'], 1)} messages delivered/s, "
        f"{fmt(info['cluster']['cpu_ms_per_message'], 2)} CPU-ms per delivered message",
    ]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    try:
        plot(out, sampler.rows, f"{a.users} users, {a.spawn_rate}/s, {seconds} s, "
                                f"{procs} locust process(es); {info['stack']}")
    except Exception as exc:  # a report without a plot is still a report
        print(f"loadtest: no plot: {exc!r}", file=sys.stderr)
    print("\n".join(lines), flush=True)
    bad = any(m.get(k) for k in ("lost", "duplicates", "misdelivered", "seq mismatch",
                                 "matched missing")) or bool(errors) or not summary \
        or bool(summary.get("stopped_early"))
    return {"info": info, "lines": lines, "bad": bad}


if __name__ == "__main__":
    sys.exit(main())
