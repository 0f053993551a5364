"""Limits as a person meets them: too long a message, too many messages too fast."""
from __future__ import annotations

import re

from playwright.async_api import Route, expect

from .conftest import MAX_LEN, pair

TOO_LONG = "x" * (MAX_LEN + 1)


async def unlimited_page(route: Route):
    """Serves the page with its own length check lifted, as a modified client would be."""
    response = await route.fetch()
    html = await response.text()
    assert f'data-max-len="{MAX_LEN}"' in html
    await route.fulfill(response=response, body=html.replace(
        f'data-max-len="{MAX_LEN}"', 'data-max-len="100000"'))


async def test_too_long_message_is_refused_by_the_page_and_by_the_server(people):
    a = await people(worker=0)
    b = await people(worker=1)
    await pair(a, b)

    # the page refuses: a notice, the text stays in the box, nothing is sent
    await a.input.fill(TOO_LONG)
    await expect(a.page.locator("#char-count")).to_have_text(f"{MAX_LEN + 1} / {MAX_LEN}")
    await expect(a.page.locator("#char-count")).to_have_class(re.compile(r"\bis-over\b"))
    await a.input.press("Enter")
    notice = a.page.locator("#composer-notice")
    await expect(notice).to_be_visible()
    await expect(notice).to_have_text(a.t("local_too_long", n=MAX_LEN + 1, max=MAX_LEN))
    await expect(a.input).to_have_value(TOO_LONG)
    await expect(a.page.locator("#log .msg")).to_have_count(0)
    # exactly 500 goes through
    await a.send("y" * MAX_LEN)
    await b.sees("y" * MAX_LEN)

    # a page without the check (reloaded, so the same user in the same chat): the server refuses
    await a.page.route(re.compile(r"^[^?#]*/$"), unlimited_page)
    await a.page.reload()
    await expect(a.notice("notice_resumed")).to_be_visible()
    await a.input.fill(TOO_LONG)
    await a.input.press("Enter")
    failed = a.page.locator("#log .msg--mine.is-failed")
    await expect(failed).to_have_count(1)
    await expect(failed.locator(".msg__state")).to_have_text(a.t("msg_failed"))
    await expect(failed.locator(".msg__retry")).to_have_count(0)  # retrying would not help
    await expect(a.notice("error_too_long")).to_be_visible()

    # nothing of it reached B: the next message is the only new one
    await a.send("short again")
    await expect(b.bubbles("theirs")).to_have_text(["y" * MAX_LEN, "short again"])
    assert a.dialogs == [] and b.dialogs == []


async def test_a_flood_is_slowed_down_and_only_accepted_messages_arrive(people):
    a = await people(worker=0)
    b = await people(worker=1)
    await pair(a, b)

    # 20 messages in one go, through the page's own composer
    await a.page.evaluate("""() => {
        const input = document.getElementById('message-input');
        const form = document.getElementById('composer');
        for (let i = 1; i <= 20; i += 1) {
            input.value = 'flood ' + i;
            input.dispatchEvent(new Event('input', {bubbles: true}));
            form.requestSubmit();
        }
    }""")
    mine = a.page.locator("#log .msg--mine")
    await expect(mine).to_have_count(20)
    await expect(a.page.locator("#log .msg--mine.is-pending")).to_have_count(0)

    # the user is told to slow down, where they type and in the log
    slow_down = a.t("error_rate_limited")
    await expect(a.page.locator("#composer-notice")).to_have_text(slow_down)
    await expect(a.page.locator("#composer-notice")).to_be_visible()
    await expect(a.notice("error_rate_limited")).to_be_visible()

    failed = a.page.locator("#log .msg--mine.is-failed")
    assert await failed.count() > 0
    await expect(failed.first.locator(".msg__state")).to_have_text(a.t("msg_failed"))
    await expect(failed.first.locator(".msg__retry")).to_have_text(a.t("msg_retry"))
    accepted = await a.page.locator(
        "#log .msg--mine:not(.is-failed):not(.is-pending) .msg__bubble").all_text_contents()
    assert 0 < len(accepted) < 20, accepted

    # B gets exactly the accepted ones, each once, in the order A's page shows them (by seq)
    await expect(b.bubbles("theirs")).to_have_text(accepted)
    assert sorted(accepted) == sorted(set(accepted))
