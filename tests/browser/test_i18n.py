"""Languages: the page speaks the browser's language (en, zh-TW, zh-CN), the switcher changes it,
and no string is left untranslated, in any state of the page."""
from __future__ import annotations

import re

import pytest
from playwright.async_api import expect

from .conftest import I18N, ROOT, Stranger, fmt, pair

# The product's one name: the README's title, the page's brand and title in every language.
PRODUCT = "Strangers"

# Every element with a data-i18n* key, and every text a person can see or hear.
SNAPSHOT_JS = """() => {
  const keyed = [];
  for (const el of document.querySelectorAll(
      '[data-i18n], [data-i18n-placeholder], [data-i18n-aria-label], [data-i18n-title]')) {
    const d = el.dataset;
    keyed.push({
      where: el.id || el.className || el.tagName,
      vars: d.i18nVars ? JSON.parse(d.i18nVars) : null,
      text: d.i18n ? [d.i18n, el.textContent] : null,
      placeholder: d.i18nPlaceholder ? [d.i18nPlaceholder, el.getAttribute('placeholder')] : null,
      aria: d.i18nAriaLabel ? [d.i18nAriaLabel, el.getAttribute('aria-label')] : null,
      title: d.i18nTitle ? [d.i18nTitle, el.getAttribute('title')] : null,
    });
  }
  const shown = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const el = node.parentElement;
    const text = node.textContent.trim();
    if (!text || el.closest('script, style, noscript, template')) continue;
    const box = el.closest('option') ? el.closest('select') : el;
    if (!box.checkVisibility()) continue;
    shown.push(text);
  }
  for (const el of document.querySelectorAll('[placeholder], [title], [aria-label]')) {
    if (!el.checkVisibility()) continue;
    for (const attr of ['placeholder', 'title', 'aria-label']) {
      const value = el.getAttribute(attr);
      if (value) shown.push(value.trim());
    }
  }
  return {keyed, shown, title: document.title, lang: document.documentElement.lang};
}"""


def template_re(template: str) -> re.Pattern:
    parts = re.split(r"\{\w+\}", template)
    return re.compile(".+?".join(re.escape(p) for p in parts), re.S)


async def check_translated(person: Stranger, lang: str) -> None:
    """The page is wholly in `lang`: every data-i18n* string is the table's, nothing English."""
    await expect(person.page.locator("html")).to_have_attribute("lang", lang)
    await expect(person.page.locator("#lang-select")).to_have_value(lang)
    snap = await person.page.evaluate(SNAPSHOT_JS)
    assert snap["title"] in {fmt(lang, "page_title")} | {
        fmt(lang, "title_unread", n=n, title=fmt(lang, "page_title")) for n in range(1, 10)}

    wrong = []
    for item in snap["keyed"]:
        vars_ = item["vars"] or {}
        for attr in ("text", "placeholder", "aria", "title"):
            if item[attr] is None:
                continue
            key, actual = item[attr]
            assert key in I18N[lang], f"{item['where']}: key {key!r} is not in the {lang} table"
            expected = fmt(lang, key, **vars_)
            if actual != expected:
                wrong.append(f"{item['where']} {attr}: {actual!r}, the table says {expected!r}")
    assert not wrong, "\n".join(wrong)

    if lang != "en":
        english = [(key, template_re(text)) for key, text in I18N["en"].items()
                   if text != I18N[lang][key]]
        leaks = [(text, key) for text in snap["shown"] for key, rx in english
                 if rx.fullmatch(text) and not template_re(I18N[lang][key]).fullmatch(text)]
        assert not leaks, f"English text on a {lang} page: {leaks}"


@pytest.mark.parametrize("locale, lang", [
    ("en-US", "en"), ("zh-TW", "zh-TW"), ("zh-CN", "zh-CN"),
    ("zh-HK", "zh-TW"), ("zh", "zh-CN"), ("fr-FR", "en"),
])
async def test_the_page_speaks_the_browser_language(people, locale, lang):
    person = await people(lang=lang, locale=locale)
    assert await person.page.evaluate("navigator.languages") == [locale]
    await expect(person.page.locator("#welcome-title")).to_have_text(I18N[lang]["welcome_title"])
    await expect(person.button("start")).to_be_visible()
    await expect(person.page.locator("#interests-input")).to_have_attribute(
        "placeholder", I18N[lang]["interests_placeholder"])
    await expect(person.page.locator("#online-text")).to_have_text(
        template_re(I18N[lang]["online_count"]))
    await check_translated(person, lang)
    # the same name in every language; the words around it are the language's own
    await expect(person.page.locator(".brand__name")).to_have_text(PRODUCT)
    await expect(person.page).to_have_title(re.compile("^" + re.escape(PRODUCT + " — ") + r"\S"))
    assert (ROOT / "README.md").read_text("utf-8").startswith(f"# {PRODUCT} — ")


async def test_two_chinese_strangers_see_only_their_language(people):
    a = await people(worker=0, lang="zh-TW")
    b = await people(worker=1, lang="zh-CN")
    for p, lang in ((a, "zh-TW"), (b, "zh-CN")):
        await check_translated(p, lang)

    await a.start(["爬山", "音樂"])
    await check_translated(a, "zh-TW")  # waiting
    await b.start(["爬山"], waits=False)
    await a.matched(["爬山"])
    await b.matched(["爬山"])
    await expect(a.page.locator("#shared-interests")).to_have_text(
        fmt("zh-TW", "shared_interests", interests=["爬山"]))

    await a.send("你好！週末有去爬山嗎？")
    await b.sees("你好！週末有去爬山嗎？")
    await expect(b.page.locator("#log .msg--theirs .msg__who")).to_have_text(["陌生人"])
    await expect(a.page.locator("#log .msg--mine .msg__who")).to_have_text(["你"])
    await b.input.press_sequentially("去了")
    await expect(a.page.locator("#typing")).to_have_text(I18N["zh-TW"]["typing"])
    await b.input.fill("x" * 501)
    await b.input.press("Enter")
    await expect(b.page.locator("#composer-notice")).to_be_visible()
    for p, lang in ((a, "zh-TW"), (b, "zh-CN")):
        await check_translated(p, lang)  # chatting, typing, a local refusal

    await b.button("leave").click()
    await expect(a.notice("notice_partner_left")).to_be_visible()
    await expect(b.notice("notice_you_left")).to_be_visible()
    await a.button("report").click()
    await expect(a.page.locator("#report-dialog")).to_be_visible()
    for p, lang in ((a, "zh-TW"), (b, "zh-CN")):
        await check_translated(p, lang)  # ended, with the report dialog open on A
    await a.button("report_submit").click()
    # ... and says until when the two are kept apart (a date and time in the page's language)
    said = re.compile(".+".join(map(re.escape, a.t("notice_reported_blocked", time="@@").split("@@"))))
    await expect(a.page.locator("#log .notice", has_text=said)).to_be_visible()
    await check_translated(a, "zh-TW")


async def test_the_switcher_changes_the_language_everywhere_and_is_remembered(people):
    a = await people(worker=0, lang="en")
    b = await people(worker=1, lang="en")
    await check_translated(a, "en")
    await pair(a, b)
    await a.send("hello")
    await b.send("hi")
    await a.sees("hi")

    for lang in ("zh-TW", "zh-CN", "en", "zh-CN"):
        await a.page.locator("#lang-select").select_option(lang)
        a.lang = lang
        status = a.page.locator("#chat-status")
        await expect(status).to_have_text(I18N[lang]["chat_status_chatting"])
        await expect(a.notice("notice_matched")).to_be_visible()
        await expect(a.page.locator("#log .msg__who")).to_have_text(
            [I18N[lang]["you"], I18N[lang]["stranger"]])
        await check_translated(a, lang)
    assert await a.page.evaluate("localStorage.getItem('chat.lang')") == "zh-CN"

    # the choice outlives a reload and beats the browser's language
    await a.page.reload()
    await expect(a.notice("notice_resumed")).to_be_visible()
    await check_translated(a, "zh-CN")
    await check_translated(b, "en")  # the other side is not affected


def test_every_language_has_every_string_with_the_same_placeholders():
    names = lambda text: sorted(re.findall(r"\{(\w+)\}", text))  # noqa: E731
    for lang, table in I18N.items():
        assert table.keys() == I18N["en"].keys(), lang
        for key, text in table.items():
            assert text.strip(), (lang, key)
            assert names(text) == names(I18N["en"][key]), (lang, key, text)
