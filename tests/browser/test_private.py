"""Private rooms as two friends see them: one makes a private chat, the other opens its link."""
from __future__ import annotations

import re

from playwright.async_api import expect

from common.limits import PRIVATE_KEY_ALPHABET, PRIVATE_KEY_LEN

KEY = re.compile(f"[{PRIVATE_KEY_ALPHABET}]{{{PRIVATE_KEY_LEN}}}")


async def test_a_friend_opens_the_link_and_they_chat(people):
    host = await people(worker=0)
    await host.button("private_create").click()
    await expect(host.notice("notice_waiting_friend")).to_be_visible()
    await expect(host.page.locator("#chat-status")).to_have_text(host.t("chat_status_waiting_friend"))
    await expect(host.page.locator("#private-key")).to_have_text(KEY)
    key = await host.page.locator("#private-key").text_content()
    link = await host.page.locator("#private-link").input_value()
    assert link.endswith("/?room=" + key), link

    friend = await people(worker=1, path="?room=" + key)
    await expect(friend.notice("notice_matched_private")).to_be_visible()
    await expect(host.notice("notice_matched_private")).to_be_visible()
    await expect(host.page.locator("#private-share")).to_be_hidden()
    assert "room=" not in friend.page.url  # the key leaves the address bar (and its history)
    await host.send("you made it!")
    await friend.sees("you made it!")
    await friend.send("hi, it's me")
    await host.sees("hi, it's me")

    # a third person with the key is told the room is full: by a link with the key in the
    # fragment (/#room=KEY, never sent to a server), and typing it
    third = await people(worker=0, path="#room=" + key)
    await expect(third.page.locator("#private-error")).to_have_text(third.t("error_room_full"))
    assert "room=" not in third.page.url
    await third.page.locator("#private-error").evaluate("e => { e.textContent = '' }")
    await third.page.locator("#private-key-input").fill(key.lower())
    await third.button("private_join").click()
    await expect(third.page.locator("#private-error")).to_have_text(third.t("error_room_full"))
    # typed in full width (a Chinese input method's): the same key, the same answer
    await third.page.locator("#private-error").evaluate("e => { e.textContent = '' }")
    wide = "".join(chr(ord(c) + 0xFEE0) for c in key)
    await third.page.locator("#private-key-input").fill(wide)
    await third.button("private_join").click()
    await expect(third.page.locator("#private-error")).to_have_text(third.t("error_room_full"))
    await expect(third.page.locator("#start-view")).to_be_visible()

    # a reload resumes the same chat; Next then looks for a random stranger
    await friend.page.reload()
    await friend.sees("you made it!")
    await host.button("next").click()
    await expect(friend.notice("notice_partner_next")).to_be_visible()
    await expect(host.notice("notice_waiting")).to_be_visible()
    await expect(host.page.locator("#chat-status")).to_have_text(host.t("chat_status_waiting"))


async def test_a_mistyped_or_unknown_key_says_so_on_the_start_card(people):
    guest = await people(worker=1)
    field = guest.page.locator("#private-key-input")
    await field.fill("0O1IL")
    await field.press("Enter")
    await expect(guest.page.locator("#private-error")).to_have_text(guest.t("private_key_invalid"))
    await field.fill("ABCD EFGH")  # a pasted key with a space: the same key, unknown
    await guest.button("private_join").click()
    await expect(guest.page.locator("#private-error")).to_have_text(guest.t("error_room_not_found"))
    await expect(guest.page.locator("#start-view")).to_be_visible()


async def test_a_link_opened_in_a_tab_already_on_the_page_joins(people):
    """Only the fragment changes (no reload): the page still takes the key and joins."""
    host = await people(worker=0)
    await host.button("private_create").click()
    await expect(host.page.locator("#private-key")).to_have_text(KEY)
    key = await host.page.locator("#private-key").text_content()
    friend = await people(worker=1)
    await friend.page.evaluate("k => { window.location.hash = 'room=' + k }", key)
    await expect(friend.notice("notice_matched_private")).to_be_visible()
    await expect(host.notice("notice_matched_private")).to_be_visible()
    assert "room=" not in friend.page.url
