"""Sessions of the fake SmartAPI: TOTP check, opaque JWT-looking tokens, midnight-IST expiry.

Tokens are random strings shaped like the real ones (``eyJhbGciOiJIUzUxMiJ9.<payload>.<sig>``)
so client code cannot rely on decoding them, exactly as with the real service. Every token of a
session dies at 00:00 IST after the login (``protocol.next_midnight_ist``), on logout, or when a
test invalidates it to simulate AG8001 mid-session.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field
from datetime import datetime

import pyotp

from trading_backend.brokers.angel_one.protocol import next_midnight_ist

_JWT_HEADER = "eyJhbGciOiJIUzUxMiJ9"  # base64url of {"alg":"HS512"}, like the real tokens


def _opaque(kind: str) -> str:
    body = base64.urlsafe_b64encode(f'{{"k":"{kind}","n":"{secrets.token_hex(12)}"}}'.encode())
    sig = secrets.token_urlsafe(32)
    return f"{_JWT_HEADER}.{body.decode().rstrip('=')}.{sig}"


class TOTP(pyotp.TOTP):
    """pyotp's TOTP without its >= 112-bit secret check (pyotp >= 2.10): SmartAPI secrets
    and the classic 16-character test secret ``JBSWY3DPEHPK3PXP`` (80 bits) are shorter,
    and a login server must verify the secrets it actually issued."""

    min_secret_length_bits = 80


def totp_code(secret: str, at: datetime) -> str:
    """The 6-digit code for ``secret`` at ``at``."""
    return TOTP(secret).at(at)


def verify_totp(secret: str, code: str, now: datetime) -> bool:
    """RFC 6238 (30 s, SHA-1, 6 digits) with one step of tolerance either side, as a real
    login server does for clock skew."""
    code = str(code).strip()
    if not code.isdigit() or len(code) != 6:
        return False
    try:
        return TOTP(secret).verify(code, for_time=now, valid_window=1)
    except (ValueError, TypeError):  # a malformed seeded secret never matches
        return False


@dataclass(slots=True)
class Session:
    """One login: its three tokens share the hard midnight expiry."""

    client_code: str
    api_key: str
    created: datetime
    expires: datetime
    jwt: str = field(default_factory=lambda: _opaque("jwt"))
    refresh: str = field(default_factory=lambda: _opaque("refresh"))
    feed: str = field(default_factory=lambda: _opaque("feed"))
    revoked: bool = False

    def alive(self, now: datetime) -> bool:
        return not self.revoked and now < self.expires


class SessionStore:
    """Token -> session lookups. Old JWTs stay valid after generateTokens (as observed live);
    only logout, invalidation or midnight kill them."""

    def __init__(self) -> None:
        self._by_jwt: dict[str, Session] = {}
        self._by_refresh: dict[str, Session] = {}
        self._by_feed: dict[str, Session] = {}
        self.sessions: list[Session] = []

    def create(self, client_code: str, api_key: str, now: datetime) -> Session:
        session = Session(client_code, api_key, now, next_midnight_ist(now))
        self.sessions.append(session)
        self._by_jwt[session.jwt] = session
        self._by_refresh[session.refresh] = session
        self._by_feed[session.feed] = session
        return session

    def refresh(self, session: Session) -> Session:
        """New JWT and feed token on the same session (same refresh token, same expiry)."""
        session.jwt = _opaque("jwt")
        session.feed = _opaque("feed")
        self._by_jwt[session.jwt] = session
        self._by_feed[session.feed] = session
        return session

    def by_jwt(self, token: str) -> Session | None:
        return self._by_jwt.get(token)

    def by_refresh(self, token: str) -> Session | None:
        return self._by_refresh.get(token)

    def by_feed(self, token: str) -> Session | None:
        return self._by_feed.get(token)

    def revoke_client(self, client_code: str) -> int:
        """Kill every session of a client (logout everywhere / AG8001 mid-session)."""
        count = 0
        for session in self.sessions:
            if session.client_code == client_code and not session.revoked:
                session.revoked = True
                count += 1
        return count


def strip_bearer(value: str | None) -> str:
    """``Bearer x`` / ``bearer x`` / ``x`` -> ``x``; the SDK passes both spellings around."""
    if not value:
        return ""
    value = value.strip()
    if value[:7].lower() == "bearer ":
        return value[7:].strip()
    return value
