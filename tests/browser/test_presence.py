"""Honest presence on the page: the stranger's dropped connection, a chat taken over by another
tab, a worker that drains, a snapshot between reconnections, and the browser's own network.

Events the server may not send yet are put on the Socket.IO queue by a write-only emitter, to the
page's user (`u:<user>`) or to one connection (its sid), exactly as a worker would publish them.
"""
from __future__ import annotations

import asyncio
import json
import time

import socketio
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from playwright.async_api import expect

from common.config import load
from common.store import Store

from .conftest import PHONE, SocketTap, Stranger, pair
from .test_access import assert_fits
from .test_i18n import check_translated

# Records every server event a page receives and keeps its socket at hand: the vendored client
# assigns `window.io` once, and the wrapper adds an onAny listener to the socket the page makes.
TAP_JS = """(() => {
  window.__events = [];
  let wrapped;
  Object.defineProperty(window, 'io', {
    configurable: true,
    get() { return wrapped; },
    set(factory) {
      wrapped = Object.assign((...args) => {
        const socket = factory(...args);
        window.__socket = socket;
        socket.onAny((name, data) => window.__events.push([name, data]));
        return socket;
      }, factory);
    },
  });
})();"""


async def tap(page) -> None:
    await page.add_init_script(TAP_JS)


async def received(person: Stranger, name: str) -> list:
    return await person.page.evaluate(
        "name => window.__events.filter(e => e[0] === name).map(e => e[1])", name)


async def wait_received(person: Stranger, name: str, count: int = 1) -> list:
    """Waits until the page has received `count` events called `name`; returns them all."""
    await person.page.wait_for_function(
        "([name, n]) => window.__events.filter(e => e[0] === name).length >= n", arg=[name, count])
    return await received(person, name)


async def identity(person: Stranger) -> tuple[str, str, str]:
    """(user, room, sid) of a page that is chatting."""
    user = (await wait_received(person, "hello"))[-1]["user"]
    await person.page.wait_for_function("() => window.__events.some("
                                         "e => e[0] === 'matched' || e[0] === 'resumed')")
    rooms = [d["room"] for n, d in await person.page.evaluate("window.__events")
             if n in ("matched", "resumed") and d.get("room")]
    sid = await person.page.evaluate("window.__socket.id")
    return user, rooms[-1], sid


class Server:
    """Publishes server events as an emitter outside the web workers would: to a user on their
    route (Store.emit_to, directed like the scripts' events), to a sid on the shared channel."""

    def __init__(self, stack):
        settings = load(stack.env)
        self.store = Store(stack.client, settings)
        self.mgr = socketio.RedisManager(stack.redis.url, channel=settings.socketio_channel,
                                         write_only=True)

    def to_user(self, user: str, event: str, data: dict) -> None:
        assert self.store.emit_to(user, event, data) >= 1  # the user's worker, known by route

    def to_sid(self, sid: str, event: str, data: dict) -> None:
        self.mgr.emit(event, data, room=sid, namespace="/")


async def chatting_pair(people, **kw) -> tuple[Stranger, Stranger]:
    a = await people(worker=0, prepare=tap, **kw)
    b = await people(worker=1, prepare=tap, **kw)
    await pair(a, b)
    return a, b


def status(person: Stranger):
    return person.page.locator("#chat-status")


async def test_partner_away_then_back_keeps_the_chat_open(people, fresh):
    server = Server(fresh)
    a, b = await chatting_pair(people)
    user, room, _ = await identity(a)

    server.to_user(user, "partner_away", {"room": "an-older-room"})  # late: ignored
    server.to_user(user, "partner_away", {"room": room})
    await expect(a.notice("notice_partner_away")).to_have_count(1)
    await expect(status(a)).to_have_text(a.t("chat_status_partner_away"))
    # the chat stays open: the composer works and what is sent is kept for the stranger
    await expect(a.input).to_be_enabled()
    await a.send("are you still there?")
    await b.sees("are you still there?")

    server.to_user(user, "partner_back", {"room": "an-older-room"})  # ignored as well
    server.to_user(user, "partner_back", {"room": room})
    await expect(a.notice("notice_partner_back")).to_have_count(1)
    await expect(status(a)).to_have_text(a.t("chat_status_chatting"))
    await expect(a.notice("notice_partner_away")).to_have_count(1)  # the late one said nothing
    await b.send("back again")
    await a.sees("back again")
    await expect(a.page.locator("#log .notice").last).to_have_text(a.t("notice_partner_back"))


async def test_the_strangers_connection_drops_comes_back_then_drops_for_good(people, fresh):
    """The real flow: the server says when B's last connection is gone and when B is back."""
    a, b = await chatting_pair(people)
    await b.page.evaluate("window.__socket.disconnect()")  # B's only connection ends
    await expect(a.notice("notice_partner_away")).to_have_count(1)
    await expect(status(a)).to_have_text(a.t("chat_status_partner_away"))
    await a.send("kept for you")  # the composer works; the server stores it for B

    await b.page.evaluate("window.__socket.connect()")
    await expect(a.notice("notice_partner_back")).to_have_count(1)
    await expect(status(a)).to_have_text(a.t("chat_status_chatting"))
    await b.sees("kept for you")
    await b.send("back")
    await a.sees("back")

    # gone for longer than the grace: the chat ends as before, with the usual notice
    await b.page.evaluate("window.__socket.disconnect()")
    await expect(a.notice("notice_partner_away")).to_have_count(2)
    await expect(a.notice("notice_partner_disconnected")).to_be_visible()
    await expect(status(a)).to_have_text(a.t("chat_status_ended"))
    await expect(a.input).to_be_disabled()


def expired_token(stack, user: str) -> str:
    """A token for `user`, signed as the workers sign them, but older than TOKEN_TTL."""
    settings = load(stack.env)

    class Aged(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - settings.token_ttl - 60

    return URLSafeTimedSerializer(settings.secret_key, salt="chat-user", signer=Aged).dumps(user)


async def test_an_expired_token_ends_the_chat_honestly(people, fresh):
    """Tokens expire: a page that comes back with an old one is a new person to the server,
    and says so, instead of showing a chat it no longer has."""
    a, b = await chatting_pair(people)
    user, _, _ = await identity(a)
    token = expired_token(fresh, user)
    await a.page.evaluate("""token => {
      sessionStorage.setItem('chat.token', token);
      window.__socket.disconnect();
      window.__socket.connect();
    }""", token)
    hellos = await wait_received(a, "hello", 2)
    assert hellos[-1]["user"] != user
    await expect(a.notice("notice_chat_gone")).to_be_visible()
    await expect(status(a)).to_have_text(a.t("chat_status_ended"))
    await expect(a.button("find_new")).to_be_visible()
    # the stranger is told the truth: away, then gone after the grace
    await expect(b.notice("notice_partner_away")).to_be_visible()
    await expect(b.notice("notice_partner_disconnected")).to_be_visible()


class DropMessages(SocketTap):
    """Drops the server's `message` events that carry `marker`, as a worker whose queue
    listener was away would miss them."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker
        self.dropped = 0

    async def install(self, page):
        await tap(page)
        await super().install(page)

    def to_page(self, message) -> list:
        if (isinstance(message, str) and message.startswith('42["message"')
                and self.marker in message):
            self.dropped += 1
            return []
        return [message]


async def test_a_snapshot_without_a_reconnect_only_adds_what_is_missing(people, fresh):
    server = Server(fresh)
    net = DropMessages("lost in the gap")
    a = await people(worker=0, prepare=net.install)
    b = await people(worker=1, prepare=tap)
    await asyncio.wait_for(net.upgraded.wait(), 10)
    await pair(a, b)
    user, room, _ = await identity(a)
    await a.send("one")
    await b.sees("one")
    await b.send("two")
    await a.sees("two")
    await b.send("lost in the gap")  # acknowledged to B, never shown to A
    await b.send("four")
    await a.sees("four")
    assert net.dropped == 1  # on its way before "four" (one ordered channel), so dropped by now
    await expect(a.bubbles("theirs")).to_have_text(["two", "four"])

    # the worker replays the room after a gap in its queue: a `resumed` with no reconnection
    seqs = [int(s) for s in await b.page.locator("#log .msg").evaluate_all(
        "nodes => nodes.map(n => n.dataset.seq)")]
    texts = await b.page.locator("#log .msg .msg__bubble").all_text_contents()
    mine_b = await b.page.locator("#log .msg").evaluate_all(
        "nodes => nodes.map(n => n.classList.contains('msg--mine'))")
    history = [{"id": f"h{seq}", "seq": seq, "text": text, "ts": int(time.time() * 1000),
                "mine": not mine} for seq, text, mine in zip(seqs, texts, mine_b)]
    hellos = len(await received(a, "hello"))
    server.to_user(user, "resumed", {"state": "chatting", "room": room, "interests": [],
                                     "history": history})
    await wait_received(a, "resumed")

    await expect(a.page.locator("#log .msg .msg__bubble")).to_have_text(
        ["one", "two", "lost in the gap", "four"])
    await expect(a.notice("notice_resumed")).to_have_count(0)
    await expect(a.notice("notice_matched")).to_have_count(1)  # the log was not cleared
    assert len(await received(a, "hello")) == hellos
    # the chat goes on in the same order on both sides
    await a.send("five")
    await b.sees("five")
    await expect(b.page.locator("#log .msg .msg__bubble")).to_have_text(
        ["one", "two", "lost in the gap", "four", "five"])


async def test_a_chat_taken_over_by_another_tab_waits_for_use_here(people, fresh):
    a, b = await chatting_pair(people)
    await a.send("from the first tab")
    await b.sees("from the first tab")

    # the same token in a second window: it resumes the chat
    token = await a.page.evaluate("sessionStorage.getItem('chat.token')")

    async def same_token(page):
        await tap(page)
        await page.add_init_script(f"sessionStorage.setItem('chat.token', {json.dumps(token)})")

    a2 = await people(worker=1, prepare=same_token)
    await expect(a2.notice("notice_resumed")).to_be_visible()
    await expect(a2.bubbles("mine")).to_have_text(["from the first tab"])
    # the server tells the first tab, which took it over (one live tab per user)
    assert [e["code"] for e in await wait_received(a, "error")] == ["replaced"]

    banner = a.page.locator("#banner")
    await expect(banner).to_be_visible()
    await expect(a.page.locator("#banner-text")).to_have_text(a.t("banner_replaced"))
    use_here = a.button("banner_use_here")
    await expect(use_here).to_be_visible()
    await a.page.wait_for_function("() => !window.__socket.connected && !window.__socket.active")

    # the chat goes on in the second window; the first one stays off (no tug of war)
    await a2.send("from the second tab")
    await b.sees("from the second tab")
    await b.send("to whoever has it")
    await a2.sees("to whoever has it")
    assert len(await received(a, "hello")) == 1
    assert not await a.page.evaluate("window.__socket.connected || window.__socket.active")
    await expect(a.notice("notice_reconnecting")).to_have_count(0)

    # typed in the first tab meanwhile: held, not lost
    await a.input.fill("held in the first tab")
    await a.input.press("Enter")
    await expect(a.page.locator("#log .msg--mine.is-pending")).to_have_count(1)

    # "Use here": the first tab takes the chat back, catches up and sends what it held
    await use_here.click()
    await wait_received(a, "hello", 2)
    await expect(banner).to_be_hidden()
    await expect(a.input).to_be_focused()
    await b.sees("held in the first tab")
    await expect(a.page.locator("#log .msg.is-pending")).to_have_count(0)
    await expect(a.page.locator("#log .msg .msg__bubble")).to_have_text(
        ["from the first tab", "from the second tab", "to whoever has it",
         "held in the first tab"])
    await expect(b.bubbles("theirs")).to_have_text(
        ["from the first tab", "from the second tab", "held in the first tab"])

    # and now the second window is the one told, and it too waits to be asked
    await expect(a2.page.locator("#banner-text")).to_have_text(a2.t("banner_replaced"))
    await expect(a2.button("banner_use_here")).to_be_visible()
    await a.send("only here now")
    await b.sees("only here now")
    assert len(await received(a2, "hello")) == 1
    await expect(a2.page.locator("#log .msg__bubble", has_text="only here now")).to_have_count(0)


class HoldFirstMessage(SocketTap):
    """Swallows the page's first `message`: its ack never comes, so it is still pending when the
    connection goes away, as one in flight during a drain."""

    def __init__(self):
        super().__init__()
        self.held = 0

    async def install(self, page):
        await tap(page)
        await super().install(page)

    def to_server(self, message) -> list:
        if not self.held and isinstance(message, str) and self.MESSAGE.match(message):
            self.held += 1
            return []
        return [message]


async def test_draining_moves_the_page_at_once_and_loses_nothing(people, fresh):
    server = Server(fresh)
    net = HoldFirstMessage()
    a = await people(worker=0, prepare=net.install)
    b = await people(worker=1, prepare=tap)
    await asyncio.wait_for(net.upgraded.wait(), 10)
    await pair(a, b)
    _, _, sid = await identity(a)

    await a.input.fill("in flight during the drain")
    await a.input.press("Enter")
    pending = a.page.locator("#log .msg--mine.is-pending")
    await expect(pending).to_have_count(1)
    assert net.held == 1

    started = time.monotonic()
    server.to_sid(sid, "draining", {})
    await wait_received(a, "hello", 2)
    moved = time.monotonic() - started
    await expect(pending).to_have_count(0)
    await b.sees("in flight during the drain")
    print(f"\ndraining: new hello after {moved * 1000:.0f} ms")

    await expect(a.page.locator("#banner")).to_be_hidden()
    for key in ("notice_reconnecting", "notice_reconnected", "notice_resumed"):
        await expect(a.notice(key)).to_have_count(0)
    await b.send("still here")
    await a.sees("still here")
    await expect(b.bubbles("theirs")).to_have_count(1)  # once, not twice


async def test_offline_holds_sends_and_online_sends_them_at_once(people, fresh):
    a, b = await chatting_pair(people)
    await a.send("before")
    await b.sees("before")

    await a.context.set_offline(True)
    await expect(a.page.locator("#banner-text")).to_have_text(a.t("banner_offline"))
    await expect(a.page.locator("#banner")).to_be_visible()
    await expect(a.notice("notice_offline")).to_have_count(1)
    await expect(a.input).to_be_enabled()
    for text in ("held one", "held two"):
        await a.input.fill(text)
        await a.input.press("Enter")
    await expect(a.page.locator("#log .msg--mine.is-pending")).to_have_count(2)
    hellos = len(await received(a, "hello"))
    # not written into a dead socket: nothing was even tried while offline
    assert await a.page.evaluate("!window.__socket.connected && !window.__socket.active")

    started = time.monotonic()
    await a.context.set_offline(False)
    await wait_received(a, "hello", hellos + 1)
    back = time.monotonic() - started
    await expect(b.bubbles("theirs")).to_have_text(["before", "held one", "held two"])
    delivered = time.monotonic() - started
    print(f"\nonline -> hello {back * 1000:.0f} ms, -> held messages shown to the partner "
          f"{delivered * 1000:.0f} ms")
    await expect(a.page.locator("#log .msg.is-pending")).to_have_count(0)
    await expect(a.page.locator("#banner")).to_be_hidden()
    await expect(a.notice("notice_reconnected")).to_have_count(1)
    await b.send("welcome back")
    await a.sees("welcome back")


async def test_presence_texts_are_translated_and_fit_a_phone(people, fresh):
    server = Server(fresh)
    lang = "zh-TW"
    a, b = await chatting_pair(people, lang=lang, **PHONE)
    user, room, sid = await identity(a)
    server.to_user(user, "partner_away", {"room": room})
    await expect(status(a)).to_have_text(a.t("chat_status_partner_away"))
    await expect(a.notice("notice_partner_away")).to_be_visible()
    server.to_sid(sid, "error", {"code": "replaced", "message": "Opened elsewhere."})
    await expect(a.button("banner_use_here")).to_be_visible()
    await expect(a.page.locator("#banner-text")).to_have_text(a.t("banner_replaced"))
    await check_translated(a, lang)
    await assert_fits(a.page)
    # by keyboard: the banner's button comes right after the language switcher
    await a.page.locator("#lang-select").focus()
    await a.page.keyboard.press("Tab")
    await expect(a.button("banner_use_here")).to_be_focused()
    await a.page.keyboard.press("Enter")
    await wait_received(a, "hello", 2)
    await expect(a.input).to_be_focused()  # back where the chat goes on
    # an error code the page has never heard of still gets a sentence in its language
    _, _, sid = await identity(a)
    server.to_sid(sid, "error", {"code": "brand_new_code", "message": "Something new."})
    await expect(a.notice("error_unknown")).to_be_visible()
    await check_translated(a, lang)
