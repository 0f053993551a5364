"""The admin console in a browser, next to a real chat: an admin signs in with the form, watches
the live numbers move while two strangers chat, reads the chat's transcript once the archiver
has written it, and downloads it as CSV and JSON.

A stack of its own: Redis, two web workers, the matcher and the history archiver, over a
temporary SQLite database, with ADMIN_PASSWORD set.
"""
from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import signal
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from playwright.async_api import Page, expect

from conftest import Stack  # tests/conftest.py

from .conftest import pair

PASSWORD = "browser admin pass 马"
ZONE = "Asia/Shanghai"  # the admin's browser zone: the console shows and exports times in it
CSV_COLUMNS = ["message_id", "room_id", "seq", "side", "sender", "text", "sent_at_utc",
               "sent_at_local", "time_zone"]
# (sender, text): a Chinese one, markup that must stay text, and a "formula" for the CSV
SCRIPT = [
    ("a", "Hello from A"),
    ("b", "你好，世界 🌏"),
    ("a", "<b>html</b> & 'quotes'"),
    ("b", "=1+1 stays text"),
]
TEXTS = [text for _, text in SCRIPT]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Overrides the browser suite's stack for this module: with an archiver and the console."""
    url = f"sqlite:///{tmp_path_factory.mktemp('admin-browser') / 'chat.db'}"
    s = Stack(workers=2, archivers=1, DATABASE_URL=url, ADMIN_PASSWORD=PASSWORD, DISPLAY_TZ="")
    yield s
    for p in s.procs():  # all at once: each web worker takes about a second to stop
        p.signal(signal.SIGTERM)
    s.stop()
    assert PASSWORD not in s.logs(), "the admin password appeared in a log"


async def reload_until(page: Page, check, timeout: float = 20, what: str = "the page"):
    """Reload `page` until `check()` (an awaitable of expect()s with short timeouts) passes:
    for what only a new request shows (rows the archiver writes in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await check()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None
        await page.reload()


async def test_admin_watches_a_chat_then_reads_and_exports_its_transcript(browser, stack,
                                                                          strangers):
    base = stack.urls()[0]
    admin_ctx = await browser.new_context(viewport={"width": 1280, "height": 800},
                                          locale="en-US", timezone_id=ZONE)
    dashboard = admin = await admin_ctx.new_page()
    admin_errors: list[str] = []
    admin.on("pageerror", lambda exc: admin_errors.append(str(exc)))
    try:
        # ---- sign in with the form: typed, submitted, sent back to the page asked for
        async def sign_in():
            await admin.goto(base + "/admin/")
            await expect(admin).to_have_url(re.compile(r"/admin/login\?next=/admin/$"))
            await admin.locator("#password").click()
            await admin.keyboard.type(PASSWORD)
            await expect(admin.locator("#password")).to_have_value(PASSWORD)
            await admin.get_by_role("button", name="Sign in").click()
            await expect(admin).to_have_url(base + "/admin/")
            await expect(admin.get_by_role("heading", name="Dashboard")).to_be_visible()
            # the product's one name (web/i18n.json's app_name, the chat page's brand)
            await expect(admin).to_have_title("Dashboard · Strangers admin")
            await expect(admin.locator(".topbar .brand")).to_have_text("Strangers admin")
            # admin.js tells the server the browser's zone and re-renders once in it
            await expect(admin.locator("#tz-name")).to_have_text(ZONE)
            await expect(admin.locator("#live-chatting")).to_have_text("0")
            # the "Updated" clock, once admin.js's poll has rewritten it: 24-hour in the
            # tables' zone, though the browser's locale (en-US) says "1:05:09 PM"
            clock = admin.locator("#live-status time")
            served = await clock.get_attribute("datetime")
            await expect(clock).not_to_have_attribute("datetime", served, timeout=10_000)
            iso, shown = await clock.evaluate("el => [el.getAttribute('datetime'), "
                                              "el.textContent]")  # one poll's, both
            at = datetime.fromisoformat(iso.replace("Z", "+00:00"))
            assert shown == at.astimezone(ZoneInfo(ZONE)).strftime("%H:%M:%S"), (shown, at)
            await expect(admin.locator("#live-status")).to_have_text(
                re.compile(r"^Updated \d\d:\d\d:\d\d$"))

        # meanwhile two strangers open the chat, one on each worker
        _, a, b = await asyncio.gather(sign_in(), strangers(stack.urls()[0]),
                                       strangers(stack.urls()[1]))

        # ---- they chat: the dashboard's live numbers follow (it polls every 3 s)
        await pair(a, b)
        people = {"a": (a, b), "b": (b, a)}

        async def chat():
            for who, text in SCRIPT:
                sender, receiver = people[who]
                await sender.send(text)
                await receiver.sees(text)

        async def numbers_while_chatting():
            await expect(dashboard.locator("#live-chatting")).to_have_text("2")
            await expect(dashboard.locator("#live-online")).to_have_text("2")
            await expect(dashboard.locator("#live-waiting")).to_have_text("0")

        await asyncio.gather(chat(), numbers_while_chatting())  # both while the chat goes on
        await a.button("leave").click()
        await expect(b.notice("notice_partner_left")).to_be_visible()

        # ---- in a second tab (the dashboard keeps polling in the first): the rooms list,
        # once the archiver has written the room and its messages
        admin = await admin_ctx.new_page()
        admin.on("pageerror", lambda exc: admin_errors.append(str(exc)))
        await admin.goto(base + "/admin/")
        await admin.get_by_role("navigation", name="Console").get_by_role(
            "link", name="Rooms").click()
        rows = admin.locator("#rooms-table tbody tr")

        async def room_listed():
            await expect(rows).to_have_count(1, timeout=1000)
            await expect(rows.first.locator("td.num").first).to_have_text(str(len(TEXTS)),
                                                                         timeout=1000)

        await reload_until(admin, room_listed, what="the archived room in the list")
        await rows.first.get_by_role("link").click()
        await expect(admin).to_have_url(re.compile(r"/admin/rooms/[0-9a-zA-Z]+$"))
        room_id = admin.url.rsplit("/", 1)[1]
        await expect(admin.locator("h1")).to_contain_text(room_id)

        transcript = admin.locator("#transcript .msg__text")

        async def transcript_complete():
            await expect(transcript).to_have_text(TEXTS, timeout=1000)
            # the close is archived too: "left by A" or "by B"
            await expect(admin.locator("dl.meta")).to_contain_text(
                re.compile(r"left by [AB]"), timeout=1000)

        await reload_until(admin, transcript_complete, what="the whole transcript")
        # the markup is text on the page, never an element
        await expect(admin.locator("#transcript b")).to_have_count(0)
        await expect(admin.locator("#transcript .msg__text").nth(2)).to_have_text(
            "<b>html</b> & 'quotes'")
        # the two sides alternate, as they wrote
        sides = await admin.locator("#transcript .msg__who").all_text_contents()
        assert sides[0] != sides[1] and sides[0::2] == [sides[0]] * 2 \
            and sides[1::2] == [sides[1]] * 2 and set(sides) == {"A", "B"}, sides

        # ---- the room's exports, downloaded through the links
        export = admin.locator("dl.meta")
        async with admin.expect_download() as info:
            await export.get_by_role("link", name="CSV", exact=True).click()
        csv_download = await info.value
        assert re.fullmatch(r"chat-messages-\d{8}T\d{6}Z\.csv", csv_download.suggested_filename)
        assert await csv_download.failure() is None
        raw = Path(await csv_download.path()).read_bytes()
        assert raw.startswith(b"\xef\xbb\xbf"), raw[:20]  # the BOM: Excel reads UTF-8
        assert b"\r\n" in raw
        table = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
        assert table[0] == CSV_COLUMNS
        rows_csv = [dict(zip(CSV_COLUMNS, r)) for r in table[1:]]
        assert [r["text"] for r in rows_csv] == [*TEXTS[:3], "'=1+1 stays text"]  # no formula
        assert [r["seq"] for r in rows_csv] == ["1", "2", "3", "4"]
        assert {r["room_id"] for r in rows_csv} == {room_id}
        assert [r["side"] for r in rows_csv] == sides
        assert all(r["time_zone"] == ZONE and r["sent_at_local"].endswith("+08:00")
                   and r["sent_at_utc"].endswith("Z") for r in rows_csv), rows_csv

        async with admin.expect_download() as info:
            await export.get_by_role("link", name="JSON", exact=True).click()
        json_download = await info.value
        assert re.fullmatch(r"chat-messages-\d{8}T\d{6}Z\.json",
                            json_download.suggested_filename)
        items = json.loads(Path(await json_download.path()).read_text("utf-8"))
        assert [m["text"] for m in items] == TEXTS  # exactly as typed
        assert [m["seq"] for m in items] == [1, 2, 3, 4]
        assert {m["room_id"] for m in items} == {room_id}
        assert [m["message_id"] for m in items] == [int(r["message_id"]) for r in rows_csv]
        assert all(m["time_zone"] == ZONE for m in items)

        # ---- meanwhile the dashboard has seen the chat end
        await expect(dashboard.locator("#live-chatting")).to_have_text("0")
        await expect(dashboard.locator("#live-waiting")).to_have_text("0")
        await expect(dashboard.locator("#live-online")).to_have_text("2")  # both still connected

        assert admin_errors == [], admin_errors
        for p in (a, b):
            assert p.dialogs == []
    finally:
        await admin_ctx.close()
    for p in stack.procs():
        assert p.alive(), f"{p.name} died during the test:\n{p.output()[-4000:]}"
