"""Anonymous identities: a random user id and a signed token that proves it on reconnect.

A token expires (TOKEN_TTL, a day by default): a copied token is not a key for ever. Every
connection is answered with a fresh one in `hello`, so a user who keeps coming back keeps it.
"""
from __future__ import annotations

import secrets

from itsdangerous import BadSignature, URLSafeTimedSerializer


class Tokens:
    def __init__(self, secret_key: str, max_age: int):
        self._s = URLSafeTimedSerializer(secret_key, salt="chat-user")
        self.max_age = max_age

    @staticmethod
    def new_user() -> str:
        return secrets.token_hex(8)

    def sign(self, user: str) -> str:
        return self._s.dumps(user)

    def verify(self, token: str | None) -> str | None:
        """The user the token names, or None when it is forged, malformed or expired."""
        if not token:
            return None
        try:
            user = self._s.loads(token, max_age=self.max_age)
        except (BadSignature, ValueError, TypeError):  # SignatureExpired is a BadSignature
            return None
        return user if isinstance(user, str) and 0 < len(user) <= 64 else None
