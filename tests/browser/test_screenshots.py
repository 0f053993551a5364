"""Screenshots of the real page for the README (written to docs/screenshots/ by
`make screenshots`; to a temporary folder by a plain test run).

They are taken from a real chat between two browsers, so they also show that the page works at
the size and in the scheme each one names."""
from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from playwright.async_api import expect
from sqlalchemy import insert

from common.history.db import make_engine
from common.history.migrate import upgrade
from common.history.models import Report, Room

from .conftest import DESKTOP, PHONE, SCREENSHOTS, Stranger, missing, pair
from .test_attention import SET_HIDDEN_JS
from .test_moderation import ban, browser_hash

EN_CHAT = [
    ("b", "Hi! Where are you writing from?"),
    ("a", "Hey! Lisbon. Just got back from two weeks in Kyoto, still a bit jet-lagged."),
    ("b", "Kyoto, nice. What was the best part?"),
    ("a", "The food, honestly. And a tiny record shop near the river that only plays jazz."),
]
ZH_CHAT = [
    ("b", "嗨！你也喜歡爬山嗎？"),
    ("a", "對啊，上週末剛去了合歡山，日出超級美。"),
    ("b", "好羨慕！我一直想去，但怕高山症。"),
    ("a", "慢慢走、多喝水就好，第一次可以先住清境一晚適應。"),
    ("b", "好主意，謝謝你的建議"),
]


async def shoot(person: Stranger, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await person.page.evaluate("document.activeElement && document.activeElement.blur()")
    await person.page.screenshot(path=str(SCREENSHOTS / name), animations="disabled")


async def converse(a: Stranger, b: Stranger, lines) -> None:
    for who, text in lines:
        sender, receiver = (a, b) if who == "a" else (b, a)
        await sender.send(text)
        await receiver.sees(text)


def has_cjk_font() -> bool:
    if not shutil.which("fc-list"):
        return True  # not fontconfig: trust the system
    out = subprocess.run(["fc-list", ":lang=zh-tw", "family"], capture_output=True, text=True)
    return bool(out.stdout.strip())


async def test_screenshots(people):
    if not has_cjk_font():  # the Chinese shots would show boxes instead of characters
        missing("no Chinese font for the screenshots (apt-get install fonts-noto-cjk)")
    # English, light: the start screen, then a chat between a desktop and a phone
    a = await people(worker=0, lang="en", color_scheme="light", **DESKTOP)
    b = await people(worker=1, lang="en", color_scheme="light", **PHONE)
    await a.page.locator("#interests-input").fill("travel, music, ")
    await expect(a.page.locator("#interest-chips .chip")).to_have_count(2)
    await shoot(a, "start-desktop-light.png")

    await pair(a, b, ["travel", "music"], ["music", "food", "travel"], ["travel", "music"])
    await converse(a, b, EN_CHAT)
    await b.input.press_sequentially("Okay, now I want to go")
    await expect(a.page.locator("#typing")).to_be_visible()
    await shoot(a, "chat-desktop-light.png")
    await b.input.fill("Okay, now I want to go. Any tips for a first trip?")
    await b.input.press("Enter")
    await a.sees("Okay, now I want to go. Any tips for a first trip?")
    await a.input.press_sequentially("Go in autumn")
    await expect(b.page.locator("#typing")).to_be_visible()
    await shoot(b, "chat-phone-light.png")

    # Traditional Chinese, dark: desktop and phone
    c = await people(worker=0, lang="zh-TW", color_scheme="dark", **DESKTOP)
    d = await people(worker=1, lang="zh-TW", color_scheme="dark", **PHONE)
    await pair(c, d, ["爬山", "攝影"], ["爬山"], ["爬山"])
    await converse(c, d, ZH_CHAT[:-1])
    await d.input.press_sequentially("好主意")
    await expect(c.page.locator("#typing")).to_be_visible()
    await shoot(c, "chat-desktop-dark.png")
    await d.input.fill(ZH_CHAT[-1][1])
    await d.input.press("Enter")
    await c.sees(ZH_CHAT[-1][1])
    await c.input.press_sequentially("不客氣")
    await expect(d.page.locator("#typing")).to_be_visible()
    await shoot(d, "chat-phone-dark.png")

    # English, light: a private chat made, its key and link on the creator's card
    e = await people(worker=0, lang="en", color_scheme="light", **DESKTOP)
    await e.button("private_create").click()
    await expect(e.page.locator("#private-share")).to_be_visible()
    await expect(e.page.locator("#private-key")).to_have_text(re.compile(r"^\S{8}$"))
    await shoot(e, "private-desktop-light.png")

    for name in ("start-desktop-light", "chat-desktop-light", "chat-desktop-dark",
                 "chat-phone-light", "chat-phone-dark", "private-desktop-light"):
        assert (SCREENSHOTS / f"{name}.png").stat().st_size > 10_000


# A browser's tab strip: Chromium in Playwright is headless and draws none, and what the picture
# must show is the tab's title and icon, which the page sets itself (both read from the page).
TAB_STRIP_HTML = """<!doctype html><meta charset="utf-8">
<style>
  body { margin: 0; background: #dee1e6; font: 13px system-ui, sans-serif; }
  .strip { display: flex; align-items: end; gap: 2px; height: 44px; padding: 0 8px; }
  .tab { display: flex; align-items: center; gap: 8px; width: 200px; height: 34px;
         padding: 0 12px; border-radius: 8px 8px 0 0; color: #3c4043; white-space: nowrap; }
  .tab span { overflow: hidden; text-overflow: ellipsis; }
  .tab.front { background: #fff; }
  .tab img { width: 16px; height: 16px; flex: none; }
</style>
<div class="strip">
  <div class="tab front"><span>Mail</span></div>
  <div class="tab" style="width: 440px"><img id="icon" alt=""><span id="title"></span></div>
</div>"""


async def test_screenshot_of_a_hidden_tab(people, browser):
    """The tab of a chat the person is not looking at: the stranger's arrival and two unread
    messages in the title, the badge on the icon."""
    a = await people(worker=0, lang="en", color_scheme="light", **DESKTOP)
    b = await people(worker=1, lang="en", color_scheme="light", **DESKTOP)
    await a.start()
    await a.page.evaluate(SET_HIDDEN_JS, True)  # another tab is in front
    await b.start(waits=False)
    await b.matched()
    await b.send("Hi! Anyone there?")
    await b.send("I'm from Lisbon :)")
    await expect(a.page).to_have_title(re.compile(r"^\(2\) "))
    title = await a.page.title()
    icon = await a.page.locator("link#favicon").get_attribute("href")
    assert icon.startswith("data:image/png;base64,")  # the badge

    context = await browser.new_context(viewport={"width": 700, "height": 44},
                                        device_scale_factor=2)
    try:
        strip = await context.new_page()
        await strip.set_content(TAB_STRIP_HTML)
        await strip.evaluate("""([title, icon]) => {
              document.getElementById('title').textContent = title;
              document.getElementById('icon').src = icon;
            }""", [title, icon])
        await expect(strip.locator("#icon")).to_have_js_property("complete", True)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await strip.screenshot(path=str(SCREENSHOTS / "hidden-tab-desktop-light.png"))
    finally:
        await context.close()
    assert (SCREENSHOTS / "hidden-tab-desktop-light.png").stat().st_size > 3_000
def seed_report(url: str) -> int:
    """A room and a report on its side A, with the keyed hashes a ban needs; the report's id."""
    upgrade(url)
    engine = make_engine(url)
    room, at = uuid.uuid4().hex, datetime.now(UTC) - timedelta(minutes=12)
    with engine.begin() as conn:
        conn.execute(insert(Room.__table__).values(
            id=room, user1="5f1c0a9e2b7d4c31", user2="a83e6d0f19c2b574", interests=["music"],
            opened_at=at, closed_at=at + timedelta(minutes=4), close_reason="left",
            closed_by="a83e6d0f19c2b574", user1_browser=uuid.uuid4().hex,
            user1_addr=uuid.uuid4().hex, user2_browser=uuid.uuid4().hex,
            user2_addr=uuid.uuid4().hex))
        res = conn.execute(insert(Report.__table__).values(
            stream_id=uuid.uuid4().hex, room_id=room, reporter="a83e6d0f19c2b574",
            reported="5f1c0a9e2b7d4c31", reason="spam", created_at=at + timedelta(minutes=4),
            reported_browser=uuid.uuid4().hex, reported_addr=uuid.uuid4().hex))
        report_id = int(res.inserted_primary_key[0])
    engine.dispose()
    return report_id


async def test_screenshots_of_a_ban(people, fresh, browser):
    # the page of a banned browser
    a = await people(worker=0, lang="en", color_scheme="light", **DESKTOP)
    ban(fresh, await browser_hash(a), seconds=7 * 86400)
    await a.page.reload()
    await expect(a.page.locator("#banned-view")).to_be_visible()
    await shoot(a, "banned-desktop-light.png")

    # the admin bans the reported side of a report, then reads the moderation log
    instance = Path(fresh.env["INSTANCE_DIR"])  # the stack's default SQLite history
    report_id = seed_report(f"sqlite:///{instance / 'chat.db'}")
    base = fresh.urls()[0]
    ctx = await browser.new_context(**DESKTOP, locale="en-US", color_scheme="light")
    try:
        admin = await ctx.new_page()
        await admin.goto(base + "/admin/login")
        await admin.locator("#password").fill((instance / "admin_password").read_text().strip())
        await admin.get_by_role("button", name="Sign in").click()
        await expect(admin.get_by_role("heading", name="Dashboard")).to_be_visible()
        await admin.goto(base + "/admin/reports")
        form = admin.locator(f"#ban-report-{report_id}")
        await form.locator("select[name=duration]").select_option("7d")
        await form.locator("input[name=reason]").fill("Spam links, again")
        await form.get_by_role("button", name="Ban").click()
        await expect(admin.get_by_text("Banned the reported side")).to_be_visible()
        await admin.get_by_role("navigation", name="Console").get_by_role(
            "link", name="Bans").click()
        await expect(admin.locator("#moderation-table")).to_contain_text("Spam links, again")
        await admin.evaluate("document.activeElement && document.activeElement.blur()")
        await admin.screenshot(path=str(SCREENSHOTS / "admin-ban-desktop-light.png"),
                               animations="disabled")
    finally:
        await ctx.close()
    for name in ("banned-desktop-light", "admin-ban-desktop-light"):
        assert (SCREENSHOTS / f"{name}.png").stat().st_size > 10_000


async def test_screenshot_of_a_report_and_its_block(people):
    """A stranger reported after a chat: the report is recorded and the two are kept apart."""
    a = await people(worker=0, lang="en", color_scheme="light", **DESKTOP)
    b = await people(worker=1, lang="en", color_scheme="light", **DESKTOP)
    await pair(a, b)
    await converse(a, b, [("b", "hey"), ("b", "check out my crypto channel, 100x guaranteed!!"),
                          ("a", "no thanks")])
    await b.button("leave").click()
    await expect(a.notice("notice_partner_left")).to_be_visible()
    await a.button("report").click()
    await a.page.locator("#report-dialog input[value=spam]").check()
    await a.button("report_submit").click()
    said = re.compile(".+".join(map(re.escape, a.t("notice_reported_blocked", time="@@").split("@@"))))
    await expect(a.page.locator("#log .notice", has_text=said)).to_be_visible()
    await shoot(a, "report-desktop-light.png")
    assert (SCREENSHOTS / "report-desktop-light.png").stat().st_size > 10_000
