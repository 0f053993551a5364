"""Prometheus metrics on real processes: a web worker's /metrics, the matcher's and the
archiver's METRICS_PORT, and nginx keeping /metrics from the public.

One stack for the module: nginx (tests/test_nginx.py's NginxStack) in front of one web worker,
and a matcher and an archiver each started with a METRICS_PORT of its own.
"""
from __future__ import annotations

import tempfile
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from peer import Peer, pair, wait_for
from procs import ArchiverProc, Fatal, MatcherProc, free_port, wait_until
from test_nginx import NginxStack


def scrape(url: str, headers: dict | None = None) -> dict[tuple, float]:
    """{(sample name, ((label, value), ...)): value} of a /metrics page."""
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def status(url: str, headers: dict | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}),
                                    timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


class MetricsStack(NginxStack):
    def __init__(self):
        super().__init__(workers=1, matchers=0,
                         DATABASE_URL=f"sqlite:///{tempfile.mkdtemp(prefix='hist-')}/chat.db")
        try:
            self.matcher_url = self._daemon(MatcherProc, self.matchers, "matcher")
            self.archiver_url = self._daemon(ArchiverProc, self.archivers, "archiver")
        except BaseException:
            self.stop()
            raise

    def _daemon(self, kind, into: list, name: str) -> str:
        port = free_port()
        proc = kind({**self.env, "METRICS_PORT": str(port)}, name)
        into.append(proc)
        url = f"http://127.0.0.1:{port}/metrics"

        def up():
            if not proc.alive():
                raise Fatal(f"{name} exited:\n{proc.output()}")
            return scrape(url)

        wait_until(up, 30, f"the {name}'s metrics port")
        return url


@pytest.fixture(scope="module")
def stack():
    """This module's stack (conftest's `fresh` flushes its Redis before each test)."""
    s = MetricsStack()
    yield s
    s.stop()


async def chat(url: str) -> tuple[Peer, Peer]:
    a, b = Peer(url, "A"), Peer(url, "B")
    await a.connect()
    await b.connect()
    await pair(a, b)
    ack = await a.send("m1", "hello")
    assert ack["ok"], ack
    await b.next("message")
    return a, b


async def test_worker_metrics_count_connections_messages_refusals_and_latency(fresh):
    worker = fresh.webs[0].url + "/metrics"
    before = scrape(worker)
    a, b = await chat(fresh.webs[0].url)
    try:
        refused = await a.send("m2", "x" * 501)  # MAX_MESSAGE_LEN is 500
        assert refused["ok"] is False and refused["error"]["code"] == "too_long"
        after = scrape(worker)
        assert value(after, "chat_connections") == 2
        assert value(after, "chat_users_online") == 2
        assert value(after, "chat_users_chatting") == 2
        assert value(after, "chat_users_waiting") == 0
        assert value(after, "chat_messages_total") - value(before, "chat_messages_total") == 1
        diff = {code: value(after, "chat_refusals_total", code=code)
                - value(before, "chat_refusals_total", code=code)
                for code in ("too_long", "not_chatting", "internal")}
        assert diff == {"too_long": 1, "not_chatting": 0, "internal": 0}
        assert value(after, "chat_delivery_seconds_count") - \
            value(before, "chat_delivery_seconds_count") == 1
        assert value(after, "chat_delivery_seconds_bucket", le="+Inf") == \
            value(after, "chat_delivery_seconds_count") > 0
    finally:
        await a.close()
        await b.close()
    await wait_for(lambda: value(scrape(worker), "chat_connections") == 0, 10,
                   "the connections gauge to drop to 0")


async def test_matcher_metrics_port_counts_matches_and_their_wait(fresh):
    before = scrape(fresh.matcher_url)
    a, b = await chat(fresh.webs[0].url)
    try:
        after = await wait_for(
            lambda: (s := scrape(fresh.matcher_url))
            and value(s, "chat_matches_total") - value(before, "chat_matches_total") >= 1
            and s, 10, "the matcher to count the match")
        assert value(after, "chat_match_wait_seconds_count") - \
            value(before, "chat_match_wait_seconds_count") == 2  # one per user of the pair
        assert value(after, "chat_matcher_pass_seconds_count") > 0
        assert ("chat_reaped_total", ()) in after
    finally:
        await a.close()
        await b.close()


async def test_archiver_metrics_port_counts_entries_written(fresh):
    before = scrape(fresh.archiver_url)
    a, b = await chat(fresh.webs[0].url)  # `opened` and one `message`
    try:
        after = await wait_for(
            lambda: (s := scrape(fresh.archiver_url))
            and value(s, "chat_archiver_entries_total")
            - value(before, "chat_archiver_entries_total") >= 2 and s,
            30, "the archiver to count the entries it wrote")
        assert value(after, "chat_archiver_batch_size_count") > \
            value(before, "chat_archiver_batch_size_count")
        assert 0 <= value(after, "chat_archiver_lag_seconds") < 30
        assert value(after, "chat_archiver_database_errors_total") == 0
    finally:
        await a.close()
        await b.close()


def test_metrics_are_not_served_through_nginx_or_any_proxy(stack):
    worker = stack.webs[0].url
    assert status(worker + "/metrics") == 200
    for path in ("/metrics", "/metrics?x=1", "//metrics", "/./metrics"):
        assert status(stack.url + path) == 404, path
    # a proxy that forwards everything (an ingress) does not make them public either
    assert status(worker + "/metrics", {"X-Forwarded-For": "203.0.113.7"}) == 404
    assert status(stack.url + "/healthz") == 200


def test_dashboard_and_scrape_config_name_only_what_the_processes_export(stack):
    """Every chat_* series deploy/grafana/strangers.json queries is exported by a process of
    this stack, and deploy/prometheus/prometheus.yml scrapes the compose services by name."""
    import json
    import re

    import yaml

    from procs import ROOT

    exported = set()
    for url in (stack.webs[0].url + "/metrics", stack.matcher_url, stack.archiver_url):
        exported |= {name for name, _ in scrape(url)}
    dash = json.loads((ROOT / "deploy" / "grafana" / "strangers.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bchat_[a-z_]+", e)}
    assert used and not used - exported, sorted(used - exported)
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("connections", "online", "messages", "refusals", "delivery", "match", "lag"):
        assert topic in titles, topic

    prom = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in prom["scrape_configs"] for sc in job["static_configs"]
               for t in sc["targets"]}
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    port = compose["x-app-env"]["METRICS_PORT"]
    webs = [n for n, s in compose["services"].items() if s.get("command") == ["web"]]
    assert targets == {f"{w}:5000" for w in webs} | {f"matcher:{port}", f"archiver:{port}"}
