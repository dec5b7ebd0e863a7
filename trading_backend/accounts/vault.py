"""Broker credentials encrypted at rest (Fernet; MultiFernet over a list of keys, newest
first, so old ciphertexts stay readable while everything new uses the newest key)."""

from __future__ import annotations

import json

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from trading_backend.domain import DomainError, ErrorCode


class Vault:
    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise ValueError("the vault needs at least one key")
        try:
            self._fernet = MultiFernet([Fernet(k.encode()) for k in keys])
        except ValueError as exc:
            raise ValueError(
                "MASTER_ENCRYPTION_KEY must hold Fernet keys (32 url-safe base64 bytes);"
                " generate one with `trading-backend keys generate`"
            ) from exc

    def encrypt(self, data: dict[str, str]) -> str:
        return self._fernet.encrypt(json.dumps(data, sort_keys=True).encode()).decode()

    def decrypt(self, token: str | None) -> dict[str, str]:
        if not token:
            return {}
        try:
            return dict(json.loads(self._fernet.decrypt(token.encode())))
        except InvalidToken:
            raise DomainError(
                "stored credentials cannot be decrypted with the configured keys",
                ErrorCode.SYSTEM_ERROR,
            ) from None

    def rotate(self, token: str) -> str:
        return self._fernet.rotate(token.encode()).decode()


def mask(value: str) -> str:
    """Show enough to recognise a credential, never enough to use it."""
    if len(value) <= 4:
        return "****"
    return "****" + value[-4:]
