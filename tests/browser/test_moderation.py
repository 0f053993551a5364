"""A banned browser in a real page: refused at connect (a reload) or told while it waits, it sees
the banned view with the ban's end in its language, and no way to start a chat.

The ban is written into Redis as the admin console writes it (common/moderation.py Bans), on
the keyed hash of the page's own browser cookie.
"""
from __future__ import annotations

import re
import time

from playwright.async_api import expect
from procs import TEST_SECRET

from common.keys import Keys
from common.moderation import BROWSER_COOKIE, Bans, Hasher, Identity, valid_browser_id

from .conftest import I18N, Stranger


async def browser_hash(person: Stranger) -> str:
    """The keyed hash of the browser id cookie the page was given (HttpOnly: from the context)."""
    cookies = {c["name"]: c for c in await person.context.cookies()}
    cookie = cookies[BROWSER_COOKIE]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and valid_browser_id(cookie["value"])
    return Hasher(TEST_SECRET).identity(cookie["value"], None).browser


def ban(stack, browser: str, seconds: int = 3600) -> int:
    until = int(time.time() * 1000) + seconds * 1000
    Bans(stack.client, Keys(stack.env.get("REDIS_PREFIX", "chat"))).ban(
        Identity(browser=browser), until)
    return until


def banned_text(lang: str) -> re.Pattern:
    """The banned view's sentence in `lang`, whatever the time's format."""
    before, _, after = I18N[lang]["banned_text"].partition("{time}")
    return re.compile("^" + re.escape(before) + r".*\d.*" + re.escape(after) + "$")


async def sees_banned(person: Stranger, lang: str) -> None:
    page = person.page
    await expect(page.locator("#banned-view")).to_be_visible()
    await expect(page.locator("#banned-title")).to_have_text(I18N[lang]["banned_title"])
    await expect(page.locator("#banned-text")).to_have_text(banned_text(lang))
    for view in ("#start-view", "#chat-view", "#loading-view"):
        await expect(page.locator(view)).to_be_hidden()
    await expect(page.locator("#start-btn")).to_be_hidden()
    await expect(page.locator("#online")).to_be_hidden()  # no "connecting…": it stays down


async def test_a_banned_browser_sees_the_banned_page_on_its_next_visit(people, fresh):
    a = await people(lang="zh-TW")
    await expect(a.page.locator("#start-view")).to_be_visible()
    ban(fresh, await browser_hash(a))
    await a.page.reload()  # a new tab would do the same: the cookie is the browser's
    await sees_banned(a, "zh-TW")
    # the cookie survives: the same browser id, not a fresh one that escapes the ban
    second = await a.context.new_page()
    await second.goto(fresh.urls()[1] + "/")
    await expect(second.locator("#banned-view")).to_be_visible()
    await second.close()


async def test_a_browser_banned_while_waiting_is_shown_the_banned_page(people, fresh):
    a = await people()
    await a.start()
    ban(fresh, await browser_hash(a))
    b = await people(worker=1)
    await b.start()  # wakes the matcher: it takes the banned one out of the queue and says so
    await sees_banned(a, "en")
    await expect(b.page.locator("#chat-status")).to_have_text(I18N["en"]["chat_status_waiting"])
