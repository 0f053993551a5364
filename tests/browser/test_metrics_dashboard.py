"""The metrics dashboard on a real Prometheus: it scrapes a stack's web worker, matcher and
archiver the way deploy/prometheus/prometheus.yml does, every query of the Grafana dashboard
(deploy/grafana/strangers.json) evaluates there and the main ones have data, and a screenshot
shows those panels in Prometheus's own graph page. (Grafana itself is not packaged by Debian;
its dashboard is checked query by query here, its JSON by tests/test_deploy_files.py.)"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from playwright.async_api import expect

from peer import Peer, pair, wait_for
from procs import ROOT, Fatal, Proc, free_port, wait_until
from test_metrics import MetricsStack

from .conftest import SCREENSHOTS, missing

PROMETHEUS = os.environ.get("PROMETHEUS") or shutil.which("prometheus") or "/usr/bin/prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "strangers.json"
RATE_WINDOW = "10s"  # Grafana's $__rate_interval, for a 1-s scrape interval
# Panels whose queries must have data once people chat (the others may rightly be empty: no
# refusals, no errors, no reaping in a healthy minute).
MUST_HAVE_DATA = ("Socket.IO connections", "Users online / waiting / chatting",
                  "Messages per second", "Delivery latency (server side)", "Match wait",
                  "Archiver entries per second")


class PrometheusServer(Proc):
    """A real Prometheus scraping `targets` ({job: ["host:port", ...]}) every second."""

    def __init__(self, targets: dict[str, list[str]]):
        if not Path(PROMETHEUS).exists():
            missing(f"no Prometheus at {PROMETHEUS} (apt-get install prometheus, or set PROMETHEUS)")
        folder = Path(tempfile.mkdtemp(prefix="prometheus-"))
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "scrape_configs": [{"job_name": job, "metrics_path": "/metrics",
                                      "static_configs": [{"targets": hosts}]}
                                     for job, hosts in targets.items()]}
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__("prometheus", [
            PROMETHEUS, f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}"])

        def ready():
            if not self.alive():
                raise Fatal(f"prometheus exited:\n{self.output()[-3000:]}")
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
                return r.status == 200

        try:
            wait_until(ready, 30, "Prometheus to be ready")
        except BaseException:
            self.stop()
            raise

    def query(self, expr: str) -> list:
        """The instant vector of `expr`; an error of Prometheus (a bad query) fails the test."""
        url = self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", (expr, body)
        return body["data"]["result"]


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of the Grafana dashboard."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(p["title"], t["expr"].replace("$__rate_interval", RATE_WINDOW))
            for p in panels for t in p.get("targets", [])]


@pytest.fixture(scope="module")
def watched():
    """A stack (nginx, a web worker, matcher and archiver with metrics ports) and a Prometheus
    scraping all three."""
    stack = MetricsStack()
    try:
        host = lambda url: urllib.parse.urlsplit(url).netloc  # noqa: E731
        prom = PrometheusServer({"strangers-web": [host(stack.webs[0].url)],
                                 "strangers-matcher": [host(stack.matcher_url)],
                                 "strangers-archiver": [host(stack.archiver_url)]})
    except BaseException:
        stack.stop()
        raise
    yield stack, prom
    prom.stop()
    stack.stop()


async def chat_for_a_while(url: str, pairs: int = 3, rounds: int = 20) -> list[Peer]:
    """`pairs` pairs exchanging a message each way about every 0.4 s, for a few seconds of data
    points (the pause paces the traffic; nothing waits on it)."""
    peers = [Peer(url, f"p{i}") for i in range(2 * pairs)]
    for p in peers:
        await p.connect()
    for a, b in zip(peers[::2], peers[1::2]):
        await pair(a, b)
    for n in range(rounds):
        for a, b in zip(peers[::2], peers[1::2]):
            assert (await a.send(f"{a.name}-{n}", "how are you?"))["ok"]
            assert (await b.send(f"{b.name}-{n}", "fine, thanks"))["ok"]
        await asyncio.sleep(0.4)
    return peers


async def test_prometheus_scrapes_every_process_and_runs_every_dashboard_query(watched, browser):
    stack, prom = watched
    # Prometheus takes its targets in a few seconds after it starts: chat once it scrapes them
    await wait_for(lambda: len(up := prom.query("up")) == 3
                   and all(s["value"][1] == "1" for s in up), 20,
                   "Prometheus to scrape the web worker, the matcher and the archiver")
    peers = await chat_for_a_while(stack.webs[0].url)
    try:
        await wait_for(lambda: prom.query(f"sum(rate(chat_messages_total[{RATE_WINDOW}])) > 0"),
                       15, "a message rate in Prometheus")
        await wait_for(lambda: prom.query("sum(chat_archiver_entries_total) > 0"), 15,
                       "the archiver's entries in Prometheus")

        empty = [title for title, expr in dashboard_queries()
                 if not prom.query(expr) and title in MUST_HAVE_DATA]
        assert not empty, f"dashboard panels without data while people chat: {empty}"
        online = prom.query("max(chat_users_online)")
        assert float(online[0]["value"][1]) == len(peers)

        await screenshot_of_the_graphs(browser, prom)
    finally:
        for p in peers:
            await p.close()


async def screenshot_of_the_graphs(browser, prom: PrometheusServer) -> None:
    """Four of the dashboard's panels, stacked in Prometheus's graph page."""
    wanted = ("Users online / waiting / chatting", "Messages per second",
              "Delivery latency (server side)", "Match wait")
    first = {}
    for title, expr in dashboard_queries():
        first.setdefault(title, expr)
    exprs = [first[title] for title in wanted]
    params = {}
    for i, expr in enumerate(exprs):
        params.update({f"g{i}.expr": expr, f"g{i}.tab": "0", f"g{i}.range_input": "10s"})
    context = await browser.new_context(viewport={"width": 1280, "height": 1560},
                                        color_scheme="light")
    try:
        page = await context.new_page()
        await page.goto(prom.url + "/classic/graph?" + urllib.parse.urlencode(params))
        graphs = page.locator(".graph_area")
        await expect(graphs).to_have_count(len(exprs), timeout=20_000)
        for i in range(len(exprs)):  # each panel drew its line
            await expect(graphs.nth(i).locator("svg path.path")).not_to_have_count(0, timeout=20_000)
        await page.evaluate("document.activeElement.blur(); window.scrollTo(0, 0)")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SCREENSHOTS / "metrics-desktop-light.png"))
    finally:
        await context.close()
    assert (SCREENSHOTS / "metrics-desktop-light.png").stat().st_size > 10_000
