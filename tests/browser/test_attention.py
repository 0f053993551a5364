"""Attention and reading comfort: what a person sees of a chat while the tab is hidden, how
messages read, and the page's small helpers around the log."""
from __future__ import annotations

import re

from playwright.async_api import expect

from .conftest import Stranger, pair

# Chromium in Playwright is always "visible": the page is told otherwise the way a browser tells
# it, by document.hidden / visibilityState and a visibilitychange event.
SET_HIDDEN_JS = """(hidden) => {
  Object.defineProperty(document, 'hidden', { configurable: true, get: () => hidden });
  Object.defineProperty(document, 'visibilityState', {
    configurable: true, get: () => (hidden ? 'hidden' : 'visible') });
  document.dispatchEvent(new Event('visibilitychange'));
}"""


async def set_hidden(person: Stranger, hidden: bool) -> None:
    await person.page.evaluate(SET_HIDDEN_JS, hidden)


def favicon(person: Stranger):
    return person.page.locator("link#favicon")


async def test_a_hidden_tab_counts_messages_and_marks_the_chat_in_title_and_icon(people):
    a = await people(worker=0)
    b = await people(worker=1)
    title = a.t("page_title")
    plain_icon = await favicon(a).get_attribute("href")
    assert plain_icon.startswith("data:image/svg+xml")

    # A waits in a hidden tab: B's arrival marks the title and badges the icon
    await a.start()
    await set_hidden(a, True)
    await b.start(waits=False)
    await b.matched()
    matched_title = a.t("title_matched", title=title)
    await expect(a.page).to_have_title(matched_title)
    assert matched_title.startswith("• New stranger")
    await expect(favicon(a)).to_have_attribute("href", re.compile(r"^data:image/png;base64,"))

    # two messages: the title counts them
    await b.send("are you there?")
    await b.send("hello?")
    await expect(a.page).to_have_title(re.compile(r"^\(2\) "))
    await expect(a.page).to_have_title(a.t("title_unread", n=2, title=matched_title))

    # seen again: count, mark and badge are gone
    await set_hidden(a, False)
    await expect(a.page).to_have_title(title)
    await expect(favicon(a)).to_have_attribute("href", plain_icon)

    # a message while visible is not counted
    await b.send("ok, you're back")
    await a.sees("ok, you're back")
    await expect(a.page).to_have_title(title)

    # hidden again: the stranger writes, then leaves
    await set_hidden(a, True)
    await b.send("bye")
    await expect(a.page).to_have_title(re.compile(r"^\(1\) "))
    await b.button("leave").click()
    left_title = a.t("title_left", title=title)
    await expect(a.page).to_have_title(a.t("title_unread", n=1, title=left_title))
    await expect(favicon(a)).to_have_attribute("href", re.compile(r"^data:image/png;base64,"))
    await set_hidden(a, False)
    await expect(a.page).to_have_title(title)
    await expect(favicon(a)).to_have_attribute("href", plain_icon)
    await expect(a.notice("notice_partner_left")).to_be_visible()


async def test_the_hidden_tab_title_is_in_the_page_language(people):
    a = await people(worker=0, lang="zh-TW")
    b = await people(worker=1)
    await a.start()
    await set_hidden(a, True)
    await b.start(waits=False)
    await b.matched()
    await b.send("你好")
    title = a.t("title_matched", title=a.t("page_title"))
    await expect(a.page).to_have_title(a.t("title_unread", n=1, title=title))
    await a.page.locator("#lang-select").select_option("zh-CN")
    a.lang = "zh-CN"
    title = a.t("title_matched", title=a.t("page_title"))
    await expect(a.page).to_have_title(a.t("title_unread", n=1, title=title))


async def test_a_link_cannot_be_made_to_read_as_another_address(people):
    # a right-to-left override inside the address would show ".../\u202egpj.exe" as
    # ".../exe.jpg"; one before it would reverse the whole link
    a = await people(worker=0)
    b = await people(worker=1)
    await pair(a, b)
    await a.send("see https://example.com/\u202egpj.exe now",
                 shown="see https://example.com/gpj.exe now")
    await a.send("\u202eand https://example.com/x here")
    await b.sees("now")
    await b.sees("here")
    links = b.page.locator("#log .msg--theirs a")
    await expect(links).to_have_count(2)
    await expect(links.nth(0)).to_have_text("https://example.com/gpj.exe")
    await expect(links.nth(0)).to_have_attribute("href", "https://example.com/%E2%80%AEgpj.exe")
    for i in range(2):
        await expect(links.nth(i)).to_have_attribute("dir", "ltr")
        assert await links.nth(i).evaluate(
            "el => getComputedStyle(el).unicodeBidi") == "isolate"


async def test_messages_read_well_links_direction_and_runs(people):
    a = await people(worker=0)
    b = await people(worker=1)
    await pair(a, b)
    await a.send("look at https://example.com/page?q=1, it's good")
    await a.send("javascript:alert(1) and ftp://example.com/file are text")
    arabic = "مرحبا، كيف حالك؟"
    await b.send(arabic)
    await a.sees(arabic)
    await b.sees("are text")

    # the https URL is a link that opens in a new tab and tells the site nothing
    first = b.bubbles("theirs").nth(0)
    link = first.locator("a")
    await expect(link).to_have_count(1)
    await expect(link).to_have_text("https://example.com/page?q=1")
    await expect(link).to_have_attribute("href", "https://example.com/page?q=1")
    await expect(link).to_have_attribute("target", "_blank")
    await expect(link).to_have_attribute("rel", "noopener noreferrer nofollow")
    await expect(first).to_have_text("look at https://example.com/page?q=1, it's good")
    # other schemes stay text
    second = b.bubbles("theirs").nth(1)
    await expect(second).to_have_text("javascript:alert(1) and ftp://example.com/file are text")
    await expect(second.locator("a")).to_have_count(0)
    await expect(b.page.locator("#log a")).to_have_count(1)

    # every message text says dir=auto: the Arabic one reads right to left
    arabic_bubble = a.bubbles("theirs").filter(has_text=arabic)
    await expect(arabic_bubble).to_have_attribute("dir", "auto")
    assert await arabic_bubble.evaluate("el => getComputedStyle(el).direction") == "rtl"
    await expect(b.page.locator("#log .msg__bubble:not([dir=auto])")).to_have_count(0)

    # A's two messages in a row: B sees one name/time line over them
    await expect(b.page.locator("#log .msg--theirs")).to_have_count(2)
    await expect(b.page.locator("#log .msg--theirs .msg__who:visible")).to_have_count(1)
    await expect(b.page.locator("#log .msg--theirs time:visible")).to_have_count(1)
    header = b.page.locator("#log .msg--theirs").nth(0).locator(".msg__who")
    await expect(header).to_be_visible()
    await expect(header).to_have_text(b.t("stranger"))
    # and A sees their own run the same way, with B's answer under its own header
    await expect(a.page.locator("#log .msg--mine .msg__who:visible")).to_have_count(1)
    await expect(a.page.locator("#log .msg--theirs .msg__who:visible")).to_have_count(1)
    # the other side's message starts a new run
    await expect(b.page.locator("#log .msg--mine .msg__who:visible")).to_have_count(1)


AT_BOTTOM_JS = "el => el.scrollHeight - el.scrollTop - el.clientHeight < 2"


async def test_a_new_messages_pill_when_reading_further_up(people):
    a = await people(worker=0)
    b = await people(worker=1)
    await pair(a, b)
    pill = a.page.locator("#new-pill")
    for i in range(7):  # under the message burst (10): the rest of the test sends 3 more
        await b.send("\n".join(f"message {i}, row {r}" for r in range(5)))
    await expect(a.bubbles("theirs")).to_have_count(7)
    assert await a.log.evaluate("el => el.scrollHeight > el.clientHeight + 200")
    # at the bottom, new messages never bring the pill
    assert await a.log.evaluate(AT_BOTTOM_JS)
    await expect(pill).to_be_hidden()

    # A reads further up; B writes: the pill shows and the log stays where A reads
    await a.log.evaluate("el => { el.scrollTop = 0; }")
    await b.send("a new one")
    await a.sees("a new one")
    await expect(pill).to_be_visible()
    await expect(pill).to_have_text(a.t("new_messages"))
    assert await a.log.evaluate("el => el.scrollTop") == 0

    # the pill takes A to the bottom and goes
    await pill.click()
    await expect(pill).to_be_hidden()
    await a.page.wait_for_function(f"({AT_BOTTOM_JS})(document.getElementById('log'))")

    # scrolled up again: B writes, the pill shows; scrolling down by hand hides it
    await a.log.evaluate("el => { el.scrollTop = 0; }")
    await b.send("another")
    await a.sees("another")
    await expect(pill).to_be_visible()
    await a.log.evaluate("el => { el.scrollTop = el.scrollHeight; }")
    await expect(pill).to_be_hidden()
    await b.send("at the bottom again")
    await a.sees("at the bottom again")
    await expect(pill).to_be_hidden()


async def test_waiting_shows_the_time_waited_and_how_many_wait(people):
    a = await people(worker=0)
    info = a.page.locator("#wait-info")
    await expect(info).to_be_hidden()
    await a.start()
    await expect(info).to_be_visible()
    # m:ss, counting up each second
    await expect(a.page.locator("#wait-time")).to_have_text(re.compile(
        "^" + re.escape(a.t("wait_time", time="0:0")) + r"[0-2]$"))
    await expect(a.page.locator("#wait-time")).to_have_text(a.t("wait_time", time="0:02"))
    await expect(a.page.locator("#wait-time")).to_have_text(a.t("wait_time", time="0:03"))
    # the server's `stats` (every STATS_INTERVAL, 5 s) tell how many wait: A alone
    await expect(a.page.locator("#wait-count")).to_have_text(a.t("wait_count", n=1), timeout=15_000)
    await expect(info).to_have_text(re.compile(re.escape(a.t("wait_count", n=1))))

    # matched: the line goes
    b = await people(worker=1)
    await b.start(waits=False)
    await a.matched()
    await b.matched()
    await expect(info).to_be_hidden()
    await expect(b.page.locator("#wait-info")).to_be_hidden()


async def test_esc_twice_is_next_and_one_esc_does_nothing(people):
    a = await people(worker=0)
    b = await people(worker=1)
    await pair(a, b)
    await expect(a.input).to_be_focused()

    # one Esc: a hint, and the chat goes on
    await a.input.press("Escape")
    await expect(a.page.locator("#composer-notice")).to_have_text(a.t("esc_again"))
    await b.send("still here?")
    await a.sees("still here?")
    await expect(a.page.locator("#chat-status")).to_have_text(a.t("chat_status_chatting"))
    await expect(b.notice("notice_partner_next")).to_have_count(0)

    # two Esc further apart than a second: still nothing (the pause is what is tested); any
    # other key between two Esc starts again (A's Enter here)
    await a.send("one more")
    await a.input.press("Escape")
    await a.page.wait_for_timeout(1300)
    await a.input.press("Escape")
    await a.send("after the second Esc")  # its Enter ends the Esc sequence
    await b.send("and now?")
    await a.sees("and now?")
    await expect(a.page.locator("#chat-status")).to_have_text(a.t("chat_status_chatting"))
    await a.input.press("Escape")
    await a.send("typed between")
    await a.input.press("Escape")
    await b.send("still?")
    await a.sees("still?")
    await expect(a.page.locator("#chat-status")).to_have_text(a.t("chat_status_chatting"))
    await expect(b.notice("notice_partner_next")).to_have_count(0)

    # Esc Esc: Next, and the focus goes where Next puts it (the input of the next chat)
    c = await people(worker=1)
    await c.start()
    await a.send("bye")
    await a.input.press("Escape")
    await a.input.press("Escape")
    await expect(b.notice("notice_partner_next")).to_be_visible()
    await a.matched()
    await c.matched()
    await expect(a.input).to_be_focused()
    await expect(b.page.locator("#chat-status")).to_have_text(b.t("chat_status_ended"))


# Counts the notes played and the notifications shown, by wrapping the browser's own APIs.
SPY_JS = """() => {
  window.__spy = { notes: 0, notifications: [] };
  const make = AudioContext.prototype.createOscillator;
  AudioContext.prototype.createOscillator = function () { window.__spy.notes += 1; return make.call(this); };
  const Real = window.Notification;
  window.Notification = class extends Real {
    constructor(title, options) { super(title, options); window.__spy.notifications.push(options.body); }
  };
  Object.defineProperty(window.Notification, 'permission', { get: () => Real.permission });
  window.Notification.requestPermission = (...args) => Real.requestPermission(...args);
}"""


async def test_sound_and_notifications_are_opt_in_and_remembered(people):
    a = await people(worker=0, permissions=["notifications"])
    b = await people(worker=1)
    sound, notify = a.page.locator("#sound-toggle"), a.page.locator("#notify-toggle")
    # off by default, with names a screen reader reads and titles that say so
    await expect(sound).to_have_attribute("aria-pressed", "false")
    await expect(notify).to_have_attribute("aria-pressed", "false")
    await expect(a.page.get_by_role("button", name=a.t("sound_label"))).to_be_visible()
    await expect(sound).to_have_attribute("title", a.t("sound_off"))
    assert await a.page.evaluate("localStorage.getItem('chat.sound')") is None

    await sound.click()
    await notify.click()
    await expect(sound).to_have_attribute("aria-pressed", "true")
    await expect(notify).to_have_attribute("aria-pressed", "true")
    await expect(notify).to_have_attribute("title", a.t("notify_on"))
    assert await a.page.evaluate("localStorage.getItem('chat.sound')") == "1"
    assert await a.page.evaluate("localStorage.getItem('chat.notify')") == "1"

    # remembered over a reload
    await a.page.reload()
    await expect(a.page.locator("#online")).to_have_class(re.compile(r"\bis-live\b"))
    await expect(sound).to_have_attribute("aria-pressed", "true")
    await expect(notify).to_have_attribute("aria-pressed", "true")

    # hidden: a message plays the sound and shows a notification; visible: neither
    await pair(a, b)
    await a.page.evaluate(SPY_JS)
    await b.send("seen")
    await a.sees("seen")
    await set_hidden(a, True)
    await b.send("ping")
    await a.page.wait_for_function("window.__spy.notifications.length === 1")
    spy = await a.page.evaluate("window.__spy")
    assert spy["notifications"] == [a.t("notify_message")]
    assert spy["notes"] == 2  # the chime's two notes
    await set_hidden(a, False)

    # turned off: remembered off; nothing plays while hidden
    await sound.click()
    await notify.click()
    await expect(sound).to_have_attribute("aria-pressed", "false")
    await expect(notify).to_have_attribute("aria-pressed", "false")
    assert await a.page.evaluate("localStorage.getItem('chat.sound')") is None
    assert await a.page.evaluate("localStorage.getItem('chat.notify')") is None
    await set_hidden(a, True)
    await b.send("pong")
    await expect(a.page).to_have_title(re.compile(r"^\(1\) "))
    spy = await a.page.evaluate("window.__spy")
    assert spy["notifications"] == [a.t("notify_message")] and spy["notes"] == 2
    await a.page.reload()
    await expect(sound).to_have_attribute("aria-pressed", "false")
    await expect(notify).to_have_attribute("aria-pressed", "false")


async def test_notifications_stay_off_when_the_browser_says_no(people):
    a = await people(worker=0)
    await a.page.evaluate("""() => {
      window.__asked = 0;
      Object.defineProperty(Notification, 'permission', { configurable: true, get: () => 'default' });
      Notification.requestPermission = () => { window.__asked += 1; return Promise.resolve('denied'); };
    }""")
    notify = a.page.locator("#notify-toggle")
    await notify.click()
    await a.page.wait_for_function("window.__asked === 1")
    await expect(notify).to_have_attribute("aria-pressed", "false")
    assert await a.page.evaluate("localStorage.getItem('chat.notify')") is None
