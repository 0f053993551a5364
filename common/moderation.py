"""Who a visitor is, for blocks and bans, without keeping who they are: keyed hashes only.

A browser is a long-lived random id in an HttpOnly cookie (BROWSER_COOKIE, set by the page), so
it survives a new tab (user tokens are per tab); an address is the client's IP as the proxy saw
it. Neither is stored: only HMAC-SHA256 with SECRET_KEY of each, with a label so that a browser
and an address never share a hash, cut to 128 bits. Without the key a hash names nobody.

Blocks (a report) are keyed on the reporter's browser and hold the reported one's browser (and
user id); bans on both the browser and the address, so a new cookie alone does not escape one.
Both live in the home slot with a TTL (common/keys.py); match.lua reads them on every pass.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from dataclasses import dataclass

from werkzeug.http import parse_cookie

BROWSER_COOKIE = "bid"
BROWSER_COOKIE_AGE = 400 * 86400  # the longest a browser keeps a cookie (Chrome's cap)
BROWSER_ID_LEN = 32  # hex digits of 128 random bits
HASH_LEN = 32  # hex digits of the truncated HMAC


def new_browser_id() -> str:
    return secrets.token_hex(BROWSER_ID_LEN // 2)


def valid_browser_id(value: object) -> bool:
    """A cookie value we could have set: anything else is ignored (and replaced by the page)."""
    return (isinstance(value, str) and len(value) == BROWSER_ID_LEN
            and all(c in "0123456789abcdef" for c in value))


def browser_id_of(environ: dict) -> str | None:
    """The browser id in a WSGI environ's cookies, or None."""
    raw = environ.get("HTTP_COOKIE")
    if not raw or len(raw) > 8192:
        return None
    value = parse_cookie(raw).get(BROWSER_COOKIE)
    return value if valid_browser_id(value) else None


def client_address(environ: dict, trusted_proxies: int) -> str:
    """The client's address: behind `trusted_proxies` proxies, the one the outermost trusted
    proxy put into X-Forwarded-For (as werkzeug's ProxyFix reads it; Socket.IO's environ does
    not pass through the Flask app's ProxyFix), else the peer's."""
    if trusted_proxies:
        forwarded = [a.strip() for a in environ.get("HTTP_X_FORWARDED_FOR", "").split(",")]
        if len(forwarded) >= trusted_proxies and forwarded[-trusted_proxies]:
            return forwarded[-trusted_proxies][:64]
    return str(environ.get("REMOTE_ADDR") or "")[:64]


def address_scope(address: str) -> str:
    """What of an address names one subscriber: an IPv4 address as it is, an IPv6 address's /64
    (a home or phone gets a whole /64 and may use any address in it: per address, a guesser or
    a banned visitor would get 2^64 fresh budgets); an IPv4-mapped IPv6 address is its IPv4."""
    try:
        ip = ipaddress.ip_address(address.strip().split("%", 1)[0])
    except ValueError:
        return address  # not an IP (a unix socket's peer): as it is
    if ip.version == 6:
        if ip.ipv4_mapped:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


@dataclass(frozen=True)
class Identity:
    """A visitor's keyed hashes ('' when unknown: no cookie, no address)."""

    browser: str = ""
    addr: str = ""

    def packed(self) -> str:
        """As the home slot's `who:<user>` holds it (and match.lua reads it)."""
        return f"{self.browser}|{self.addr}"

    @classmethod
    def unpack(cls, raw: str | None) -> Identity:
        browser, _, addr = (raw or "").partition("|")
        return cls(browser[:HASH_LEN], addr[:HASH_LEN])

    @property
    def hashes(self) -> tuple[str, ...]:
        return tuple(h for h in (self.browser, self.addr) if h)


class Hasher:
    """HMAC-SHA256 with the secret key: the only way an id or address becomes storable."""

    def __init__(self, secret_key: str):
        self._key = secret_key.encode()

    def _digest(self, label: str, value: str) -> str:
        mac = hmac.new(self._key, f"{label}:{value}".encode(), hashlib.sha256)
        return mac.hexdigest()[:HASH_LEN]

    def identity(self, browser_id: str | None, address: str | None) -> Identity:
        return Identity(self._digest("browser", browser_id) if browser_id else "",
                        self._digest("addr", address_scope(address)) if address else "")

    def of_environ(self, environ: dict, trusted_proxies: int) -> Identity:
        return self.identity(browser_id_of(environ), client_address(environ, trusted_proxies))


class Bans:
    """Bans in the home slot: `ban:<hash>` -> when it ends (ms), expiring then."""

    def __init__(self, client, keys):
        self.r = client
        self.k = keys

    def until(self, ident: Identity) -> int:
        """When the latest ban on this browser or address ends (ms), 0 when there is none."""
        if not ident.hashes:
            return 0
        return self._latest(self.r.mget([self.k.ban(h) for h in ident.hashes]))

    @staticmethod
    def _latest(values) -> int:
        now = int(time.time() * 1000)
        ends = [int(v) for v in values if v and v.isdigit() and int(v) > now]
        return max(ends, default=0)

    def admit(self, user: str, ident: Identity, ttl: int) -> int:
        """At connect, in one round trip: store who `user` is for moderation (`who:<user>`,
        which match.lua, reports and the history read) and return `until` of their browser and
        address. (A banned visitor's entry is refused with them and expires unread.)"""
        pipe = self.r.pipeline(transaction=False)
        pipe.set(self.k.who(user), ident.packed(), ex=ttl)
        for h in ident.hashes:
            pipe.get(self.k.ban(h))
        return self._latest(pipe.execute()[1:])

    def ban(self, ident: Identity, until_ms: int) -> None:
        pipe = self.r.pipeline(transaction=False)
        for h in ident.hashes:
            pipe.set(self.k.ban(h), int(until_ms), pxat=int(until_ms))
        pipe.execute()

    def unban(self, ident: Identity) -> int:
        """Lift the bans on this browser and address; how many were there."""
        if not ident.hashes:
            return 0
        pipe = self.r.pipeline(transaction=False)
        for h in ident.hashes:
            pipe.delete(self.k.ban(h))
        return sum(pipe.execute())
