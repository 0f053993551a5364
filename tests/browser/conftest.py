"""Browser end-to-end tests: headless Chromium (Playwright) against a real stack.

One stack (Redis, two web workers, the matcher) and one browser for the whole session; every test
gets an empty Redis (`fresh`, from tests/conftest.py) and its own browser contexts, one per
stranger, closed when the test ends. Pages are pointed straight at a worker's URL, so two
strangers on two workers is just two URLs.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import os
import tempfile
import re
from pathlib import Path

import pytest

from conftest import Stack  # tests/conftest.py (pytest imports it first, as `conftest`)

try:
    from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect
except ImportError:  # `pip install -e '.[test]'` brings it; without it these tests are left out
    collect_ignore_glob = ["test_*.py"]
else:
    expect.set_options(timeout=10_000)

ROOT = Path(__file__).resolve().parents[2]
# The README's pictures are refreshed with `make screenshots`; a plain test run renders the same
# pages into a temporary folder, so running the tests leaves the work tree clean.
SCREENSHOTS = Path(os.environ.get("SCREENSHOT_DIR") or tempfile.mkdtemp(prefix="screenshots-"))
I18N: dict[str, dict[str, str]] = json.loads((ROOT / "web" / "i18n.json").read_text("utf-8"))
MAX_LEN = 500

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

DESKTOP = {"viewport": {"width": 1280, "height": 800}}
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True,
         "has_touch": True}


def fmt(lang: str, key: str, **values) -> str:
    """The table's text for `key` in `lang`, with {name} filled in as the page (i18n.js) does it."""
    text = I18N[lang][key]

    def fill(m: re.Match) -> str:
        name = m.group(1)
        if name not in values:
            return m.group(0)
        value = values[name]
        if isinstance(value, (list, tuple)):
            return I18N[lang]["list_separator"].join(value)
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    return re.sub(r"\{(\w+)\}", fill, text)


def missing(what: str):
    """A missing system package: fail in CI, where it must be there; skip on a laptop."""
    if os.environ.get("CI"):
        pytest.fail(what)
    pytest.skip(what)


@pytest.fixture(scope="session")
def stack():
    """Overrides the suite's shared stack: the browser tests get their own."""
    s = Stack(workers=2)
    yield s
    s.stop()


@pytest.fixture(scope="session")
async def browser():
    if not Path(CHROMIUM).exists():
        missing(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM)")
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        await b.close()


class SocketTap:
    """A man in the middle on a page's Socket.IO websocket; subclasses decide what passes.

    `to_server(message)` -> the messages the server gets for one from the page, `to_page(message)`
    -> the messages the page gets for one from the server (both default to the message itself).
    `upgraded` is set once the page talks over the websocket (Engine.IO's upgrade packet `5`).
    """

    MESSAGE = re.compile(r'42\d*\["message"')  # a client `message` event, with or without ack

    def __init__(self):
        self.upgraded = asyncio.Event()

    async def install(self, page):
        await page.route_web_socket(re.compile(r"/socket\.io/"), self.route)

    def route(self, ws):
        server = ws.connect_to_server()

        def from_page(message):
            if message == "5":
                self.upgraded.set()
            for m in self.to_server(message):
                server.send(m)

        def from_server(message):
            for m in self.to_page(message):
                ws.send(m)

        ws.on_message(from_page)
        server.on_message(from_server)

    def to_server(self, message) -> list:
        return [message]

    def to_page(self, message) -> list:
        return [message]


class Stranger:
    """One person: a browser context with one page on one web worker."""

    def __init__(self, context: BrowserContext, page: Page, lang: str):
        self.context, self.page, self.lang = context, page, lang
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        page.on("dialog", self._on_dialog)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    async def _on_dialog(self, dialog):
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        await dialog.dismiss()

    def t(self, key: str, **values) -> str:
        return fmt(self.lang, key, **values)

    # locators -----------------------------------------------------------------------------------
    @property
    def log(self):
        return self.page.locator("#log")

    @property
    def input(self):
        return self.page.locator("#message-input")

    def notice(self, key: str, **values):
        return self.page.locator("#log .notice", has_text=self.t(key, **values))

    def bubbles(self, who: str = "theirs"):
        """Message bubbles in the log: who is 'theirs' (the stranger's) or 'mine'."""
        return self.page.locator(f"#log .msg--{who} .msg__bubble")

    def button(self, key: str):
        return self.page.get_by_role("button", name=self.t(key), exact=True)

    # actions ------------------------------------------------------------------------------------
    async def start(self, interests: list[str] | None = None, waits: bool = True):
        """From the start screen: (interests,) Start chatting; returns when the page is waiting,
        or, with `waits` false (someone may be waiting already), waiting or matched."""
        await expect(self.button("start")).to_be_visible()
        await expect(self.page.locator("#online")).to_have_class(re.compile(r"\bis-live\b"))
        if interests:
            await self.page.locator("#interests-input").fill(", ".join(interests) + ",")
        await self.button("start").click()
        if waits:
            await expect(self.notice("notice_waiting")).to_be_visible()
        else:  # the matcher may be quicker than the worker's `waiting`: then there is none
            await expect(self.page.locator("#chat-status")).to_have_text(re.compile("|".join(
                re.escape(self.t(k)) for k in ("chat_status_waiting", "chat_status_chatting"))))

    async def matched(self, interests: list[str] | None = None):
        """Sees the matched notice (naming the shared `interests`, in any order)."""
        if interests:
            texts = {self.t("notice_matched_interests", interests=list(order))
                     for order in itertools.permutations(interests)}
            notice = self.page.locator("#log .notice", has_text=re.compile(
                "|".join(re.escape(text) for text in texts)))
        else:
            notice = self.notice("notice_matched")
        await expect(notice).to_be_visible()
        await expect(self.page.locator("#chat-status")).to_have_text(self.t("chat_status_chatting"))
        await expect(self.input).to_be_enabled()

    async def send(self, text: str, shown: str | None = None):
        """Types `text` and sends it with Enter; returns when the server acknowledged it. The
        page shows it as `shown` (default: as typed)."""
        await self.input.fill(text)
        await self.input.press("Enter")
        mine = self.page.locator("#log .msg--mine").filter(
            has=self.page.locator(".msg__bubble", has_text=text if shown is None else shown)).last
        await expect(mine).not_to_have_class(re.compile(r"\bis-(pending|failed)\b"))

    async def sees(self, text: str):
        await expect(self.bubbles("theirs").filter(has_text=text)).to_have_count(1)


class Opener:
    """Opens strangers' pages in fresh browser contexts; `close()` closes them all and fails on
    JavaScript errors of any page (a test may close one earlier)."""

    def __init__(self, browser: Browser):
        self.browser = browser
        self.made: list[Stranger] = []

    async def open(self, url: str, lang: str = "en", *, wait_online: bool = True, prepare=None,
                   path: str = "", **options) -> Stranger:
        """`path`: after the page's "/", e.g. "#room=KEY" (a link someone shared)."""
        opts = {**DESKTOP, "locale": {"en": "en-US"}.get(lang, lang), **options}
        context = await self.browser.new_context(**opts)
        page = await context.new_page()
        person = Stranger(context, page, lang)
        self.made.append(person)
        if prepare is not None:  # e.g. routes, before the page loads
            await prepare(page)
        await page.goto(url.rstrip("/") + "/" + path)
        if wait_online:
            await expect(page.locator("#online")).to_have_class(re.compile(r"\bis-live\b"))
        return person

    async def close(self) -> None:
        errors = [e for p in self.made for e in p.errors]
        for p in self.made:
            await p.context.close()
        assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
async def people(browser: Browser, fresh: Stack):
    """Opens strangers: `await people(worker=0, lang="en", prepare=None, **context_options)`."""
    opener = Opener(browser)

    async def open_one(worker: int = 0, lang: str = "en", **kwargs) -> Stranger:
        return await opener.open(fresh.urls()[worker], lang, **kwargs)

    yield open_one
    await opener.close()


async def pair(a: Stranger, b: Stranger, interests_a=None, interests_b=None, shared=None):
    """a starts, then b; both see `matched`."""
    await a.start(interests_a)
    await b.start(interests_b, waits=False)
    await a.matched(shared)
    await b.matched(shared)


@pytest.fixture
async def strangers(browser: Browser):
    """Opens strangers at any URL (a worker's, nginx's): `await strangers(url, lang="en",
    prepare=None, **context_options)`; closes them as `people` does."""
    opener = Opener(browser)
    yield opener.open
    await opener.close()
