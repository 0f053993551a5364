"""The page on a phone, and with a keyboard only."""
from __future__ import annotations

from playwright.async_api import Page, expect

from .conftest import PHONE, pair

NO_SIDEWAYS_SCROLL_JS = """() => {
  const doc = document.scrollingElement;
  const log = document.getElementById('log');
  const wide = [...document.querySelectorAll('body *')]
    .filter((el) => el.checkVisibility() && !el.closest('.visually-hidden, dialog:not([open])'))
    .filter((el) => { const r = el.getBoundingClientRect();
                      return r.width > 0 && (r.left < -1 || r.right > innerWidth + 1); })
    .map((el) => `${el.tagName}#${el.id}.${el.className}`);
  return {doc: [doc.scrollWidth, doc.clientWidth], log: [log.scrollWidth, log.clientWidth], wide};
}"""


async def assert_fits(page: Page) -> None:
    fit = await page.evaluate(NO_SIDEWAYS_SCROLL_JS)
    assert fit["doc"][0] <= fit["doc"][1], f"the page scrolls sideways: {fit}"
    assert fit["log"][0] <= fit["log"][1], f"the log scrolls sideways: {fit}"
    assert not fit["wide"], f"elements stick out of the screen: {fit['wide']}"


async def assert_in_viewport(page: Page, selector: str) -> None:
    box = await page.locator(selector).bounding_box()
    size = page.viewport_size
    assert box is not None, f"{selector} is not shown"
    assert box["x"] >= 0 and box["y"] >= 0, (selector, box)
    assert box["x"] + box["width"] <= size["width"], (selector, box, size)
    assert box["y"] + box["height"] <= size["height"], (selector, box, size)


async def test_phone_has_no_sideways_scroll_and_the_input_is_in_view(people):
    a = await people(worker=0, lang="en", **PHONE)
    b = await people(worker=1, lang="zh-CN", **PHONE)
    for p in (a, b):
        await expect(p.button("start")).to_be_visible()
        await assert_fits(p.page)
        await assert_in_viewport(p.page, "#start-btn")

    interests = ["photography-and-travels", "music"]
    await pair(a, b, interests, interests, interests)
    long_word = "https://example.com/" + "very-long-path-" * 20
    long_zh = "这是一条很长的中文消息，没有空格也应该自动换行，" * 8
    await a.send(long_word)
    await a.send(long_zh)
    await b.send("x" * 500)
    await b.sees(long_zh)
    await a.sees("x" * 500)
    await a.input.fill("a draft\nwith\nseveral\nlines\nthat\ngrows\nthe\nbox")
    for p in (a, b):
        await assert_fits(p.page)
        for selector in ("#message-input", "#send-btn", "#next-btn", "#leave-btn"):
            await assert_in_viewport(p.page, selector)

    await b.button("leave").click()
    await expect(a.button("find_new")).to_be_visible()
    for p in (a, b):
        await assert_fits(p.page)
        await assert_in_viewport(p.page, "#find-new-btn")


async def tab_to(page: Page, selector: str, limit: int = 30) -> None:
    """Presses Tab until `selector` has the focus."""
    for _ in range(limit):
        await page.keyboard.press("Tab")
        if await page.evaluate("(s) => document.activeElement.matches(s)", selector):
            return
    raise AssertionError(f"Tab never reached {selector}")


async def test_the_whole_flow_works_with_the_keyboard_only(people):
    a = await people(worker=0)
    b = await people(worker=1)
    c = await people(worker=1)
    log = a.page.locator("#log")
    await expect(log).to_have_attribute("aria-live", "polite")
    await expect(log).to_have_attribute("role", "log")

    # start: Tab to the button, Enter
    await tab_to(a.page, "#start-btn")
    await a.page.keyboard.press("Enter")
    await expect(a.notice("notice_waiting")).to_be_visible()
    await b.start(waits=False)
    await a.matched()
    await expect(a.input).to_be_focused()  # the page puts the cursor where one types

    # send: type and Enter; the message appears in the live log on both sides
    await a.page.keyboard.type("typed, not clicked")
    await a.page.keyboard.press("Enter")
    await expect(log.locator(".msg--mine .msg__bubble")).to_have_text(["typed, not clicked"])
    await b.sees("typed, not clicked")
    await b.send("a reply")
    await expect(log.locator(".msg--theirs .msg__bubble")).to_have_text(["a reply"])

    # next: Tab to it, Space
    await c.start()
    await tab_to(a.page, "#next-btn")
    await a.page.keyboard.press("Space")
    await expect(b.notice("notice_partner_next")).to_be_visible()
    await a.matched()
    await c.matched()
    await expect(a.input).to_be_focused()
    await a.page.keyboard.type("hello C")
    await a.page.keyboard.press("Enter")
    await c.sees("hello C")

    # leave: Tab to it, Enter; the focus lands on "Find a new stranger"
    await tab_to(a.page, "#leave-btn")
    await a.page.keyboard.press("Enter")
    await expect(a.notice("notice_you_left")).to_be_visible()
    await expect(c.notice("notice_partner_left")).to_be_visible()
    await expect(a.page.locator("#find-new-btn")).to_be_focused()

    # and round again: search, then cancel the search
    await a.page.keyboard.press("Enter")
    await expect(a.notice("notice_waiting")).to_be_visible()
    # the join's ack may follow the waiting notice; until then the buttons are aria-disabled
    await expect(a.page.locator("#cancel-btn")).to_have_attribute("aria-disabled", "false")
    await tab_to(a.page, "#cancel-btn")
    await a.page.keyboard.press("Space")
    await expect(a.button("start")).to_be_visible()
    await expect(a.page.locator("#start-btn")).to_be_focused()
