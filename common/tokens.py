"""Anonymous identities: a random user id and a signed token that proves it on reconnect."""
from __future__ import annotations

import secrets

from itsdangerous import BadSignature, URLSafeSerializer


class Tokens:
    def __init__(self, secret_key: str):
        self._s = URLSafeSerializer(secret_key, salt="chat-user")

    @staticmethod
    def new_user() -> str:
        return secrets.token_hex(8)

    def sign(self, user: str) -> str:
        return self._s.dumps(user)

    def verify(self, token: str | None) -> str | None:
        if not token:
            return None
        try:
            user = self._s.loads(token)
        except BadSignature:
            return None
        return user if isinstance(user, str) and 0 < len(user) <= 64 else None
