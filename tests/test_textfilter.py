"""The word and link filter (common/textfilter.py) as a pure function: what it refuses, and the
ordinary text it must let through."""
from __future__ import annotations

import time

import pytest

from common import config
from common.textfilter import LINKS, WORDS, TextFilter

TERMS = ["ass", "buy now", "Straße", "傻逼", "a片", "ｆｏｏ", "bad-word", "ばか", "씨발", "🖕"]
F = TextFilter(TERMS)
LINKS_ONLY = TextFilter(links=True)


@pytest.mark.parametrize("text", [
    "ass", "ASS", "you ass!", "(ass)", "Ass.", "ass's",
    "ａｓｓ",  # full width: NFKC
    "a\u200bss",  # a zero-width space inside
    "a\u00adss",  # a soft hyphen inside
    "BUY NOW", "buy   now please", "buy\nnow",
    "strasse", "STRASSE", "Straße",  # casefold: ß = ss
    "foo", "FOO bar",  # the term was full width, the text is not
    "你是傻逼吗", "傻逼", "大傻逼!",  # Han: as a substring
    "看a片", "a片",
    "bad-word", "a bad-word here", "bad word", "bad.word",  # what stands between words: any
    "buy, now!", "a 片",
    "このばかやろう",  # kana: as a substring
    "이 씨발놈",  # Hangul: as a substring
    "我是ass",  # a Latin word next to Han characters is still a word
    "well 🖕",  # a term without word characters: as a substring
])
def test_a_listed_term_is_refused_as_words(text):
    assert F.check(text) == WORDS


@pytest.mark.parametrize("text", [
    "class", "passage", "assess", "Massachusetts", "bass guitar", "ass_ist", "ass1",
    "buy nowhere", "rebuy now", "buy", "now",
    "strassen", "straßenbahn",
    "foobar", "food",
    "傻", "逼",  # one character of a two-character term
    "banana片", "b片",
    "badword", "bad-words", "bad, wordy",
    "hello world", "你好，世界", "",
])
def test_a_term_inside_another_word_or_a_near_miss_passes(text):
    assert F.check(text) is None


@pytest.mark.parametrize("text", [
    # invisible characters of every kind inside the word (Default_Ignorable_Code_Point)
    "a\ufe0fss", "a\U000e0073ss", "a\u034fss", "a\u061css", "a\u202ess", "a\u3164ss",
    "a\uffa0ss", "a\u180bss", "a\U0001d173ss", "a\u2066ss",
    "ａ\ufe0fｓｓ",  # full width and a variation selector
    "áss", "a\u0301ss", "ÁSS", "ȁs̈s",  # Latin diacritics, composed or not
    "\u0430ss", "a\u0455\u0455", "\u03b1ss",  # Cyrillic and Greek look-alikes
    "a s s", "A.S.S", "a-s-s!", "so a s s then",  # spelled out letter by letter
    "bu\u0443 n\u043ew",  # look-alikes in a term of two words
])
def test_invisible_marks_lookalikes_and_spelling_out_do_not_hide_a_term(text):
    assert F.check(text) == WORDS


@pytest.mark.parametrize("text", [
    "a b c", "I saw a cat", "Plan A: s", "e.g. s a", "U.S.A.", "café crème", "naïve",
    "Россия", "сор", "Ελλάδα", "ĉu vi", "這是一個測試", "がくせい", "ばが",
    "a\u0301", "1 2 3 s",
])
def test_ordinary_text_with_marks_and_other_scripts_passes(text):
    assert F.check(text) is None


def test_a_short_term_spelled_out_is_refused_but_not_inside_an_abbreviation():
    f = TextFilter(["sb", "fuck"])
    assert f.check("s b") == WORDS and f.check("F U C K") == WORDS and f.check("f.u.c.k") == WORDS
    for text in ("a U.S.B. cable", "x s b", "s b c", "P.S. b", "s b 2"):
        assert f.check(text) is None, text


@pytest.mark.parametrize("text", [
    "http://example.invalid", "see HTTPS://x.y/z", "www.example", "WWW.foo.bar",
    "example.com", "visit Example.COM/path?q=1", "foo.co.uk", "sub.domain.io", "my-site.xyz",
    "me@example.com", "加我微信abc.cn", "ｅｘａｍｐｌｅ．ｃｏｍ", "example。com", "a.b.c.net.",
    "example.c\u043em", "ex\u0430mple.\u0441om", "example\ufe0f.com", "exa\u0301mple.com",
])
def test_links_are_refused_when_links_are_on(text):
    assert LINKS_ONLY.check(text) == LINKS
    assert F.check(text) in (None, WORDS)  # and not by a filter without links


@pytest.mark.parametrize("text", [
    "e.g. this", "i.e. that", "Mr.Smith", "3.14", "version 1.2.3", "ok.me too", "no.it is not",
    "the end.So what", "http", "www", "file.txt", "hello. com", "a..com", "dot.com-ish",
    "Привет. Как дела?", "конец.Да", "Ελλάδα.Ναι",
])
def test_text_with_dots_that_is_no_link_passes(text):
    assert LINKS_ONLY.check(text) is None


def test_off_by_default_and_empty_terms_are_ignored():
    assert not TextFilter().active
    assert TextFilter().check("ass http://x.com") is None
    f = TextFilter(["", "  ", "\u200b"])
    assert not f.active and f.describe() == "off"
    assert TextFilter(["x"], links=True).describe() == "1 term(s), links on"


def test_words_first_then_links():
    both = TextFilter(["ass"], links=True)
    assert both.check("ass at example.com") == WORDS
    assert both.check("at example.com") == LINKS
    assert both.check("fine") is None


def test_a_term_too_long_is_refused_at_start():
    with pytest.raises(ValueError):
        TextFilter(["x" * 101])


def test_terms_from_a_list_or_a_file(tmp_path):
    assert TextFilter.terms_of(None) == []
    assert TextFilter.terms_of("a, b c ,,傻逼，d") == ["a", "b c", "傻逼", "d"]
    path = tmp_path / "words.txt"
    path.write_text("# a comment\nfoo\n\n  bar baz  \n傻逼\n", encoding="utf-8")
    assert TextFilter.terms_of(str(path)) == ["foo", "bar baz", "傻逼"]


def test_settings_read_validate_and_hide_the_list(tmp_path):
    base = {"SECRET_KEY": "k" * 40, "INSTANCE_DIR": str(tmp_path)}
    s = config.load(base)
    assert s.filter_words is None and s.filter_links == "off"
    assert not TextFilter.from_settings(s).active
    s = config.load({**base, "FILTER_WORDS": "ass,傻逼", "FILTER_LINKS": "on"})
    f = TextFilter.from_settings(s)
    assert f.check("傻逼") == WORDS and f.check("x.com") == LINKS
    assert "ass" not in s.describe()  # the list is not logged
    with pytest.raises(config.ConfigError, match="FILTER_WORDS"):
        config.load({**base, "FILTER_WORDS": str(tmp_path / "missing.txt")})
    with pytest.raises(config.ConfigError, match="FILTER_WORDS"):
        config.load({**base, "FILTER_WORDS": "x" * 200})
    with pytest.raises(config.ConfigError, match="FILTER_LINKS"):
        config.load({**base, "FILTER_LINKS": "yes"})


def test_cost_per_message_is_small(capsys):
    """Prints the cost of a check (not asserted: it depends on the machine)."""
    words = [f"word{i}" for i in range(5000)] + [f"词{i}" for i in range(500)] + ["buy now"]
    f = TextFilter(words, links=True)
    texts = ["hello there, how are you doing today? " * 12,  # ~450 ASCII characters
             "Hello there. How are you doing today? " * 12,  # with dots: the link regex runs
             "你好，今天过得怎么样？我们聊聊天吧。" * 25,  # ~450 Han characters
             "short"]
    for text in texts:
        assert f.check(text) is None
    n = 2000
    # the worst a client can send: every word the first of 5,000 listed two-word terms, a
    # 500-letter spelling-out run against terms of every length, look-alikes everywhere
    worst = TextFilter([f"buy thing{i}" for i in range(5000)] + ["z" + "q" * n for n in range(1, 16)])
    worst_texts = ["buy " * 125, "q " * 250, "\u0430 \u0455 " * 125, "a\u0301" * 250,
                   "\ufdfa" * 499 + "\u0430"]  # NFKD makes U+FDFA 18 characters
    for text in worst_texts:
        assert worst.check(text) is None
    for f, text in [*((f, t) for t in texts), *((worst, t) for t in worst_texts)]:
        t0 = time.perf_counter()
        for _ in range(n):
            f.check(text)
        per = (time.perf_counter() - t0) / n
        with capsys.disabled():
            print(f"\nfilter check, {len(text)} chars {text[:6]!r}…, {f.describe()}: "
                  f"{per * 1e6:.1f} µs")
