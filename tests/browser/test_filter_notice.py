"""The word and link filter as a person meets it: the message is not sent, a notice says why
(in the page's language), the text is back in the composer to edit, and the stranger sees
nothing of it."""
from __future__ import annotations

import pytest
from playwright.async_api import expect

from conftest import Stack  # tests/conftest.py

from .conftest import pair

WORD = "zorkbad"


@pytest.fixture(scope="module")
def stack():
    """Overrides the browser suite's stack for this module: one worker with the filter on."""
    s = Stack(workers=1, FILTER_WORDS=f"{WORD},傻逼", FILTER_LINKS="on")
    yield s
    s.stop()


@pytest.mark.parametrize("lang", ["en", "zh-TW"])
async def test_a_filtered_message_comes_back_to_the_composer_with_a_notice(people, lang):
    a = await people(lang=lang)
    b = await people()
    await pair(a, b)

    notice = a.page.locator("#composer-notice")
    for text in (f"hello {WORD.upper()} you", "我的網站 example.com"):
        await a.input.fill(text)
        await a.input.press("Enter")
        await expect(notice).to_be_visible()
        await expect(notice).to_have_text(a.t("error_filtered"))
        await expect(a.input).to_have_value(text)  # kept to be edited
        await expect(a.page.locator("#log .msg--mine")).to_have_count(0)

    # edited, it goes through; the stranger sees only that one
    await a.input.fill("")
    await a.send("hello there, class")
    await b.sees("hello there, class")
    await expect(b.bubbles("theirs")).to_have_text(["hello there, class"])
    await expect(a.bubbles("mine")).to_have_text(["hello there, class"])
    assert a.dialogs == [] and b.dialogs == []
