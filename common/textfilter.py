"""The word and link filter: decides whether a chat message is refused (`filtered`) before it
reaches Redis. Off unless FILTER_WORDS or FILTER_LINKS says otherwise (common/config.py).

Built once at start-up (TextFilter.from_settings); a check is one tokenising regex and a few
set lookups per message (tests/test_textfilter.py prints the figure):

- Text and terms are compared after NFKC (full-width letters, ligatures and circled forms become
  plain ones) and casefold (ß = ss, Σ = σ), with every default-ignorable character (zero-width
  space and joiners, soft hyphen, variation selectors, bidi controls, tag characters, Hangul
  fillers, …) and the diacritics of Latin, Greek and Cyrillic letters removed, so "ＢＡＤ", "Bad",
  "b\u200bad", "b\ufe0fad" and "bád" are all "bad" (kana's voicing marks and other scripts'
  vowel signs are kept: they make another letter, not a decorated one).
- Within reason, look-alikes: a word whose letters are all Latin or Cyrillic/Greek letters that
  look Latin ("bаd" with a Cyrillic а, "рау") is also read in Latin; a word with any other
  Cyrillic or Greek letter is left as it is (Russian and Greek text is not mangled). Digits and
  symbols standing for letters ("b4d", "a$$") are not read as letters: too many ordinary words
  and numbers would be refused.
- A word spelled out one letter at a time ("b a d", "b.a.d", "b-a-d") is read as the word, for
  words of up to SPELLED_MAX letters: a whole run of one-letter words is also looked up joined
  (a whole run only: "U.S.B." is not "sb").
- Words of spaced scripts match whole words only: "ass" refuses "ass" and "ASS!" but never
  "class" or "passage". A word is a run of letters, digits and `_` outside the scripts below.
- Scripts written without spaces (Han, kana, Hangul, Thai, Lao, Khmer, Myanmar) have no word
  boundaries to look for: their terms match anywhere, as substrings.
- A term made of several words ("buy now", "bad-word", "a片") matches those words in that
  order, whatever spaces or punctuation stand between them in the message ("buy, now").
- Links (FILTER_LINKS=on): any http:// or https:// URL, anything starting with www., and any
  bare domain of a common top-level domain (example.com, foo.co.uk/x, ex。com); e-mail
  addresses carry a domain and are refused too; Cyrillic/Greek look-alike letters read as Latin
  ("example.cоm"). A dot between two words of an unlisted ending ("e.g", "Mr.Smith", "3.14") is
  not a link, nor is a domain spelled with spaces or words ("example . com", "example dot com"):
  too close to ordinary text to refuse.
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path

WORDS, LINKS = "words", "links"  # the reasons a message is refused, as counted (common/keys.py)
REASONS = (WORDS, LINKS)
MAX_TERMS = 100_000  # terms in a list; more is a mistake (a wrong file), refused at start-up
MAX_TERM_LEN = 100  # characters of one term after normalisation

# Scripts written without spaces between words: their terms match as substrings.
UNSPACED = ("\u0e00-\u0eff"  # Thai, Lao
            "\u1000-\u109f"  # Myanmar
            "\u1780-\u17ff"  # Khmer
            "\u1100-\u11ff\u3130-\u318f\uac00-\ud7af"  # Hangul
            "\u2e80-\u2fdf\u3005-\u3007\u3021-\u3029\u3038-\u303b"  # CJK radicals, 々〆〇, numerals
            "\u3040-\u30ff\u31f0-\u31ff"  # Hiragana, Katakana
            "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # Han
            "\U00020000-\U0003134f")  # Han, extensions B-G
# a word of a spaced script (\w without the unspaced scripts), or one unspaced character
_TOKEN = re.compile(rf"[^\W{UNSPACED}]+|[{UNSPACED}]")
# Characters that would split a word without showing: Unicode's Default_Ignorable_Code_Point
# (soft hyphen, combining grapheme joiner, Arabic letter mark, Hangul fillers, Khmer inherent
# vowels, Mongolian selectors, zero-width space/joiners, direction marks and embeddings, word
# joiner and invisible operators, variation selectors, BOM, shorthand format controls, musical
# formatting, tag characters), and the diacritical marks that Latin, Greek and Cyrillic letters
# decompose into (NFKD): "bád" is "bad".
_INVISIBLE = re.compile("[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f"
                        "\u200b-\u200f\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff"
                        "\uffa0\ufff0-\ufff8\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
                        "\U000e0000-\U000e0fff"
                        "\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")
# Cyrillic and Greek letters (after casefold) that look like a Latin one, and Latin variants.
_LOOKALIKE = str.maketrans({
    "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "у": "y", "х": "x", "і": "i", "ј": "j",
    "ѕ": "s", "ԁ": "d", "һ": "h", "ԛ": "q", "ԝ": "w", "ӏ": "l", "к": "k",
    "α": "a", "ο": "o", "ν": "v", "ι": "i", "κ": "k", "ρ": "p", "τ": "t", "υ": "u", "χ": "x",
    "ı": "i", "ɑ": "a", "ɡ": "g"})
_LOOKALIKE_CHARS = re.compile("[" + "".join(map(chr, _LOOKALIKE)) + "]")
SPELLED_MAX = 16  # letters of a word spelled out one at a time that is still recognised
# Dots that a link could be written with to slip past: NFKC keeps these as they are.
_DOTS = re.compile("[\u3002\uff61\u2024]")

# Top-level domains a bare domain is recognised by: generic ones and the country codes people
# in this chat's languages meet most. A link with another ending still needs http(s):// or www.
# Endings that are everyday English words (me, to, in, it, my, us, at, be, …) are left out:
# "ok.me too" typed without a space is not a link.
TLDS = (
    "com", "net", "org", "info", "biz", "xyz", "top", "io", "app", "dev", "site", "online",
    "shop", "store", "club", "vip", "pro", "tv", "cc", "ly", "gg", "ai", "blog", "cloud", "icu",
    "tech", "wiki", "website",
    "cn", "tw", "hk", "mo", "sg", "jp", "kr", "uk", "de", "fr", "ru", "nl", "es", "ca", "au",
    "br", "eu", "ch", "se", "pl", "cz", "ir", "ua", "tk", "ml",
)
SCHEME = re.compile(r"(?:https?://|\bwww\.)\S")
# ".com" ending a word: the character before the dot must be a letter or digit (_has_link).
# The pattern starts with a literal, which the regex engine finds by a fast scan.
BARE_DOMAIN = re.compile(rf"\.(?:{'|'.join(TLDS)})(?![\w-])")


def normalize(text: str) -> str:
    """NFKC, casefolded, invisible characters and Latin/Greek/Cyrillic diacritics removed: the
    form every check compares. NFC(NFKD(x)) is NFKC(x); the marks go in between."""
    if text.isascii():  # the common case: NFKC changes nothing
        return text.casefold()
    if not unicodedata.is_normalized("NFKD", text):  # quick checks, in C: Han text passes
        text = unicodedata.normalize("NFKD", text)
    text = _INVISIBLE.sub("", text)
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    return text.casefold()


def lookalike(tok: str) -> str | None:
    """The Latin reading of a word written with Cyrillic or Greek look-alikes, or None when it
    has none or has a letter that looks like no Latin one."""
    if tok.isascii():
        return None
    latin = tok.translate(_LOOKALIKE)
    return latin if latin != tok and latin.isascii() else None


def tokens(norm: str) -> list[str]:
    """The words of normalised text: runs of word characters of spaced scripts, and each
    character of an unspaced script on its own (so their terms match inside longer runs)."""
    return _TOKEN.findall(norm)


class TextFilter:
    """`check(text)` -> None (passes), WORDS or LINKS. Immutable once built.

    A term is its tokens (`tokens`); a message is refused when its tokens contain a term's
    tokens one after another. Spaces and punctuation between the words of a term do not matter
    ("buy now" also refuses "buy, now" and "buy-now"); a term without any word character (an
    emoji) matches as a plain substring."""

    def __init__(self, terms: Iterable[str] = (), links: bool = False):
        single: set[str] = set()
        multi: dict[str, set[tuple[str, ...]]] = {}
        symbols: set[str] = set()
        for raw in terms:
            term = " ".join(normalize(raw).split())
            if not term:
                continue
            if len(term) > MAX_TERM_LEN:
                raise ValueError(f"a term is longer than {MAX_TERM_LEN} characters: "
                                 f"{term[:20]!r}…")
            toks = tokens(term)
            if not toks:
                symbols.add(term)
            elif len(toks) == 1:
                single.add(toks[0])
            else:  # first word -> {words after it: set of the rests of that length}
                multi.setdefault(toks[0], {}).setdefault(len(toks) - 1, set()).add(
                    tuple(toks[1:]))
        self.size = (len(single) + sum(len(r) for m in multi.values() for r in m.values())
                     + len(symbols))
        if self.size > MAX_TERMS:
            raise ValueError(f"more than {MAX_TERMS} terms")
        self.single = frozenset(single)
        # a check costs words x distinct lengths, never words x terms sharing a first word
        self.multi = {first: tuple((n, frozenset(rests)) for n, rests in sorted(by_len.items()))
                      for first, by_len in multi.items()}
        spelled = [t for t in single if 2 <= len(t) <= SPELLED_MAX]
        self.spelled = bool(spelled)
        # the letters those are made of (a token of one is a word of a spaced script, never Han)
        self.spelled_letters = frozenset("".join(spelled))
        self.multi_first = frozenset(multi)
        self.symbols = tuple(sorted(symbols))
        self.links = links

    @property
    def active(self) -> bool:
        return bool(self.size or self.links)

    def describe(self) -> str:
        """One log line's worth: how much is filtered, never the words themselves."""
        if not self.active:
            return "off"
        return f"{self.size} term(s), links {'on' if self.links else 'off'}"

    def check(self, text: str) -> str | None:
        """Why `text` is refused (WORDS, LINKS), or None when it passes."""
        if not self.active:
            return None
        norm = normalize(text)
        if self.size and self._has_term(norm):
            return WORDS
        if self.links and self._has_link(norm):
            return LINKS
        return None

    @staticmethod
    def _has_link(norm: str) -> bool:
        if not norm.isascii():  # other dots, and look-alike letters ("example.cоm")
            norm = _DOTS.sub(".", norm).translate(_LOOKALIKE)
        # every link has "://" or a dot: most messages are passed by a few scans in C
        if ("://" in norm or "www." in norm) and SCHEME.search(norm):
            return True
        if "." in norm:
            for m in BARE_DOMAIN.finditer(norm):
                if m.start() and norm[m.start() - 1].isalnum():
                    return True
        return False

    def _has_term(self, norm: str) -> bool:
        toks = tokens(norm)
        if self._has_words(toks):
            return True
        if not norm.isascii() and _LOOKALIKE_CHARS.search(norm):  # the words read in Latin
            latin = [lookalike(t) or t for t in toks]
            if latin != toks and self._has_words(latin):
                return True
        return any(symbol in norm for symbol in self.symbols)

    def _has_words(self, toks: list[str]) -> bool:
        if not self.single.isdisjoint(toks):
            return True
        if self.multi and not self.multi_first.isdisjoint(toks):
            for i, tok in enumerate(toks):
                for n, rests in self.multi.get(tok, ()):
                    if tuple(toks[i + 1:i + 1 + n]) in rests:
                        return True
        return self.spelled and self._has_spelled(toks)

    def _has_spelled(self, toks: list[str]) -> bool:
        """A listed word spelled out letter by letter: a whole run of one-letter words, joined.
        Only a whole run: a stretch inside one would read "U.S.B." as "sb". A one-letter word
        of a letter no listed word has (or one Han character) spoils its run."""
        run: list[str] = []
        spoilt = False
        for tok in (*toks, ""):
            if len(tok) == 1:
                if tok in self.spelled_letters:
                    run.append(tok)
                else:
                    spoilt = True
                continue
            if not spoilt and 2 <= len(run) <= SPELLED_MAX and "".join(run) in self.single:
                return True
            run, spoilt = [], False
        return False

    # from the settings ---------------------------------------------------------------------------
    @staticmethod
    def terms_of(value: str | None) -> list[str]:
        """FILTER_WORDS: a file's lines (a value starting with `/`, `./` or `../`; blank lines
        and lines starting with `#` are skipped), else a comma-separated list (a full-width
        comma `，` separates too). OSError when the file cannot be read."""
        if not value:
            return []
        if value.startswith(("/", "./", "../")):
            lines = Path(value).read_text(encoding="utf-8").splitlines()
            return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        return [t.strip() for t in value.replace("\uff0c", ",").split(",") if t.strip()]

    @classmethod
    def from_settings(cls, settings) -> TextFilter:
        return cls(cls.terms_of(settings.filter_words), settings.filter_links == "on")
