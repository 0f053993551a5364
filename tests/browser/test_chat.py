"""The chat as two (or three) people see it in their browsers."""
from __future__ import annotations

import asyncio
import re

from playwright.async_api import expect

from .conftest import SocketTap, pair


async def test_two_strangers_chat_then_next_and_leave(people):
    a = await people(worker=0)
    b = await people(worker=1)
    # no common interest: the matcher waits a moment (INTEREST_WAIT), so both see `waiting` first
    await a.start(["chess"])
    await b.start(["knitting"])
    await a.matched()
    await b.matched()
    for p in (a, b):  # the waiting notice stays above the matched one
        await expect(p.page.locator("#log .notice")).to_have_text(
            [p.t("notice_waiting"), p.t("notice_matched")])

    # A types: B sees that the stranger is typing
    await a.input.press_sequentially("Hello there")
    await expect(b.page.locator("#typing")).to_be_visible()
    await expect(b.page.locator("#typing")).to_have_text(b.t("typing"))

    # A sends with Enter: B gets it as the stranger's, A has it as their own
    await a.input.press("Enter")
    await expect(a.input).to_have_value("")
    await b.sees("Hello there")
    theirs = b.page.locator("#log .msg--theirs").last
    await expect(theirs.locator(".msg__who")).to_have_text("Stranger")
    mine = a.page.locator("#log .msg--mine").last
    await expect(mine.locator(".msg__bubble")).to_have_text("Hello there")
    await expect(mine.locator(".msg__who")).to_have_text("You")
    await expect(mine).not_to_have_class(re.compile(r"\bis-(pending|failed)\b"))
    await expect(b.page.locator("#typing")).to_be_hidden()
    # typing on straight after sending shows the indicator again at once
    await a.input.press_sequentially("and")
    await expect(b.page.locator("#typing")).to_be_visible()
    await a.input.fill("")

    # and back
    await b.send("Hi! How are you?")
    await a.sees("Hi! How are you?")

    # a third person is waiting; A presses Next: B is told, A meets C
    c = await people(worker=1)
    await c.start()
    await a.button("next").click()
    await expect(b.notice("notice_partner_next")).to_be_visible()
    await expect(b.page.locator("#chat-status")).to_have_text(b.t("chat_status_ended"))
    await expect(b.button("find_new")).to_be_visible()
    await expect(b.input).to_be_disabled()
    await a.matched()
    await c.matched()
    await expect(a.bubbles("theirs")).to_have_count(0)  # a new chat starts with an empty log
    await expect(a.bubbles("mine")).to_have_count(0)

    await a.send("Hi C")
    await c.sees("Hi C")
    await expect(b.bubbles("theirs")).to_have_count(1)  # B got nothing of the new chat

    # A leaves: both sides see the chat end
    await a.button("leave").click()
    await expect(a.notice("notice_you_left")).to_be_visible()
    await expect(a.page.locator("#chat-status")).to_have_text(a.t("chat_status_ended"))
    await expect(c.notice("notice_partner_left")).to_be_visible()
    await expect(c.input).to_be_disabled()
    for p in (a, b, c):
        assert p.dialogs == []


async def test_reload_mid_chat_resumes_the_same_chat(people):
    a = await people(worker=0)
    b = await people(worker=1)
    await pair(a, b)
    await a.send("before the reload")
    await b.sees("before the reload")
    await b.send("answer from B")
    await a.sees("answer from B")

    await a.page.reload()

    # the history is back, in order, and the chat goes on
    await expect(a.notice("notice_resumed")).to_be_visible()
    await expect(a.page.locator("#chat-status")).to_have_text(a.t("chat_status_chatting"))
    await expect(a.page.locator("#log .msg .msg__bubble")).to_have_text(
        ["before the reload", "answer from B"])
    await expect(a.bubbles("mine")).to_have_text(["before the reload"])
    await a.send("after the reload")
    await b.sees("after the reload")
    await b.send("still here")
    await a.sees("still here")

    # B never heard that the stranger was gone
    for key in ("notice_partner_left", "notice_partner_disconnected", "notice_partner_next"):
        await expect(b.notice(key)).to_have_count(0)
    await expect(b.page.locator("#chat-status")).to_have_text(b.t("chat_status_chatting"))
    await expect(b.page.locator("#log .msg .msg__bubble")).to_have_text(
        ["before the reload", "answer from B", "after the reload", "still here"])


async def test_markup_in_a_message_is_shown_as_text(people):
    a = await people(worker=0)
    b = await people(worker=1)
    await pair(a, b)
    payloads = ["<img src=x onerror=alert(1)>", "<script>alert(2)</script>",
                '"><svg onload=alert(3)>&amp;']
    for text in payloads:
        await a.send(text)
    await expect(b.bubbles("theirs")).to_have_text(payloads)
    await expect(a.bubbles("mine")).to_have_text(payloads)
    # after the resume replay too (history goes through another code path)
    await b.page.reload()
    await expect(b.notice("notice_resumed")).to_be_visible()
    await expect(b.bubbles("theirs")).to_have_text(payloads)

    for p in (a, b):
        markup = p.page.locator("#log img, #log script, #log svg, #log iframe")
        await expect(markup).to_have_count(0)
        assert p.dialogs == []


class WaitingAfterMatched(SocketTap):
    """Hands each `waiting` to the page only after the next `matched`: the matcher can pair a
    user before the worker's own `waiting` reply is out. (When it did so by itself, the
    `waiting` already comes after its `matched`: it is passed on at once and counted as well.)"""

    def __init__(self):
        super().__init__()
        self.held: list[str] = []
        self.reordered = 0
        self.matched_first = False  # a `matched` came with no `waiting` held before it

    def to_page(self, message) -> list:
        if isinstance(message, str) and message.startswith('42["waiting"'):
            if self.matched_first:  # late by itself already
                self.matched_first = False
                self.reordered += 1
                return [message]
            self.held.append(message)
            return []
        if isinstance(message, str) and message.startswith('42["matched"'):
            self.matched_first = not self.held
            out, self.held = [message, *self.held], []
            self.reordered += len(out) - 1
            return out
        return [message]


async def test_a_waiting_that_arrives_after_matched_does_not_end_the_chat(people):
    net = WaitingAfterMatched()
    a = await people(worker=0)
    b = await people(worker=1, prepare=net.install)
    await asyncio.wait_for(net.upgraded.wait(), 10)

    await a.start()
    await b.button("start").click()
    await a.matched()
    await b.matched()
    await a.send("still there?")
    await b.sees("still there?")  # B's page still shows the chat
    assert net.reordered == 1

    # the same after Next: B's `waiting` comes after B's new `matched`
    c = await people(worker=0)
    await c.start()
    await b.button("next").click()
    await expect(a.notice("notice_partner_next")).to_be_visible()
    await c.matched()
    await b.matched()
    await c.send("hi B")
    await b.sees("hi B")
    await expect(b.page.locator("#chat-status")).to_have_text(b.t("chat_status_chatting"))
    assert net.reordered == 2


class ReverseMessages(SocketTap):
    """Hands the server the page's next `count` messages in reverse order, as a server that
    handles a quick burst concurrently may."""

    def __init__(self, count: int):
        super().__init__()
        self.count = count
        self.held: list[str] = []

    def to_server(self, message) -> list:
        if self.count and isinstance(message, str) and self.MESSAGE.match(message):
            self.held.append(message)
            if len(self.held) < self.count:
                return []
            out, self.count, self.held = list(reversed(self.held)), 0, []
            return out
        return [message]


async def test_both_people_see_the_messages_in_the_same_order(people):
    net = ReverseMessages(3)
    a = await people(worker=0, prepare=net.install)
    b = await people(worker=1)
    await pair(a, b)
    for text in ("one", "two", "three"):
        await a.input.fill(text)
        await a.input.press("Enter")
    await expect(b.bubbles("theirs")).to_have_count(3)
    await expect(a.page.locator("#log .msg.is-pending")).to_have_count(0)
    order = await b.bubbles("theirs").all_text_contents()  # the server's order, not the typed one
    assert sorted(order) == ["one", "three", "two"]
    await expect(a.bubbles("mine")).to_have_text(order)
    await b.send("four")
    await a.sees("four")
    await expect(a.page.locator("#log .msg .msg__bubble")).to_have_text([*order, "four"])
