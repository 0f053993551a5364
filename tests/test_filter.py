"""The word and link filter end to end: a real stack (web worker, matcher, Redis or a Redis
Cluster) started with FILTER_WORDS and FILTER_LINKS, driven by real Socket.IO clients, and the
admin console that shows the counts."""
from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import requests
from conftest import Stack
from peer import pair
from test_admin import PASSWORD, signed_in

WORD = "zorkbad"  # a listed word no test of the chat would send by chance


@pytest.fixture(scope="module", params=["redis", "cluster"])
def filtered_stack(request):
    extra = {}
    if request.param == "cluster":  # the session's cluster, under a prefix of its own
        extra = {"cluster": request.getfixturevalue("redis_cluster"),
                 "REDIS_PREFIX": "filter" + uuid.uuid4().hex[:8]}
    s = Stack(workers=1, FILTER_WORDS=f"{WORD},傻逼,buy now", FILTER_LINKS="on",
              ADMIN_PASSWORD=PASSWORD, **extra)
    yield s
    s.stop(background=True)


@pytest.fixture
def fstack(filtered_stack):
    """The module's stack for one test (new users each time, counts compared before/after);
    afterwards every process must still be alive."""
    yield filtered_stack
    for p in filtered_stack.procs():
        assert p.alive(), f"{p.name} died during the test:\n{p.output()[-4000:]}"


async def scraped(url: str) -> dict[str, float]:
    """The worker's /metrics samples, by their line's name and labels."""
    r = await asyncio.to_thread(requests.get, url + "/metrics", timeout=10)
    return {k: float(v) for k, v in (ln.rsplit(" ", 1) for ln in r.text.splitlines()
                                     if ln and not ln.startswith("#"))}


def utc_days() -> list[str]:
    """Today and yesterday (UTC): a test that runs across midnight counts on both."""
    today = datetime.now(UTC).date()
    return [today.isoformat(), (today - timedelta(days=1)).isoformat()]


def counted(stack: Stack, reason: str) -> int:
    return sum(int(stack.client.hget(stack.home_key(f"filtered:{day}"), reason) or 0)
               for day in utc_days())


async def test_a_filtered_message_is_refused_and_the_partner_gets_nothing(fstack, peers):
    url = fstack.urls()[0]
    a, b = await peers(url, "a"), await peers(url, "b")
    await pair(a, b)
    before = {r: counted(fstack, r) for r in ("words", "links")}
    metrics_before = await scraped(url)

    refused = {
        "w1": f"you {WORD.upper()}!",  # case
        "w2": "你是傻逼吗",  # Han, inside a sentence
        "w3": "ｂｕｙ   ｎｏｗ",  # full width, a phrase with spaces
        "l1": "see https://example.invalid/x",
        "l2": "add me: example.com",
    }
    for mid, text in refused.items():
        ack = await a.send(mid, text)
        assert ack["ok"] is False and ack["error"]["code"] == "filtered", (text, ack)
        assert ack["error"]["message"]

    # near misses pass: whole words only, a dot that is no link
    ack = await a.send("clean", f"{WORD}s and {WORD[1:]}, e.g. class 3.14")
    assert ack["ok"] is True, ack
    assert ack["seq"] == 1  # nothing refused was numbered or stored
    got = await b.next("message", where=lambda m: m["id"] == "clean")
    assert got["text"].startswith(f"{WORD}s")
    # one chat's events arrive in order: a refused message published would have come first
    assert [m["id"] for m in b.events["message"]] == ["clean"]

    # the other direction too, and the connection is still healthy
    ack = await b.send("b1", "傻逼")
    assert ack["error"]["code"] == "filtered"
    ack = await b.send("b2", "fine")
    assert ack["ok"] and ack["seq"] == 2
    await a.next("message", where=lambda m: m["id"] == "b2")
    assert [m["id"] for m in a.events["message"]] == ["b2"]

    assert counted(fstack, "words") - before["words"] == 4
    assert counted(fstack, "links") - before["links"] == 2
    ttl = fstack.client.ttl(fstack.home_key(f"filtered:{utc_days()[0]}"))
    assert 0 < ttl <= 8 * 86400

    metrics = await scraped(url)
    for sample, n in (('chat_filtered_total{reason="words"}', 4),
                      ('chat_filtered_total{reason="links"}', 2),
                      ('chat_refusals_total{code="filtered"}', 6)):
        assert metrics[sample] - metrics_before[sample] == n, sample


async def test_filtered_without_an_ack_is_an_error_event(fstack, peers):
    url = fstack.urls()[0]
    a, b = await peers(url, "a"), await peers(url, "b")
    await pair(a, b)
    await a.sio.emit("message", {"id": "x1", "text": WORD})
    err = await a.next("error")
    assert err["code"] == "filtered"
    ack = await a.send("x2", "still here")
    assert ack["ok"] and ack["seq"] == 1


async def test_the_admin_dashboard_shows_the_counts(fstack, peers):
    url = fstack.urls()[0]
    a, b = await peers(url, "a"), await peers(url, "b")
    await pair(a, b)
    for i, text in enumerate([WORD, WORD, "www.example.org"]):
        assert (await a.send(f"m{i}", text))["error"]["code"] == "filtered"
    words, links = counted(fstack, "words"), counted(fstack, "links")
    assert (words, links) >= (2, 1)

    r = await asyncio.to_thread(lambda: signed_in(url).get(url + "/admin/", timeout=10))
    assert r.status_code == 200

    def shown(id_: str) -> int:
        m = re.search(rf'id="{id_}">([\d,]+)<', r.text)
        assert m, f"no #{id_} on the dashboard"
        return int(m.group(1).replace(",", ""))

    today = utc_days()[0]
    here = fstack.client.hgetall(fstack.home_key(f"filtered:{today}"))
    assert shown("filtered-words-today") == int(here.get("words", 0))
    assert shown("filtered-links-today") == int(here.get("links", 0))
    assert shown("filtered-words-total") == words
    assert shown("filtered-links-total") == links
    assert "Word list on, links refused" in r.text
    assert f"<td>{today}</td>" in r.text
    # not for the public
    r = await asyncio.to_thread(requests.get, url + "/admin/", timeout=10, allow_redirects=False)
    assert r.status_code == 302
