"""Access tokens: short-lived JWTs (HS256, algorithm pinned). They carry the login session
(``sid``) so revoking the session ends them before they expire."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

from trading_backend.domain import DomainError, ErrorCode


@dataclass(frozen=True, slots=True)
class TokenClaims:
    user_id: str
    role: str
    issued_at: datetime
    session_id: str | None


class TokenService:
    def __init__(self, secret: str, algorithm: str = "HS256", minutes: int = 60) -> None:
        self._secret = secret
        self._algorithm = algorithm
        self.minutes = minutes

    def issue(self, user_id: str, role: str, session_id: str | None = None) -> str:
        now = datetime.now(UTC)
        payload: dict[str, object] = {
            "sub": user_id,
            "role": role,
            "iat": now,
            "exp": now + timedelta(minutes=self.minutes),
            "type": "access",
        }
        if session_id is not None:
            payload["sid"] = session_id
        return jwt.encode(payload, self._secret, algorithm=self._algorithm)

    def verify(self, token: str) -> TokenClaims:
        try:
            payload = jwt.decode(
                token,
                self._secret,
                algorithms=[self._algorithm],  # pinned: never accept "none" or another alg
                options={"require": ["sub", "exp", "iat"]},
            )
        except jwt.ExpiredSignatureError:
            raise DomainError("token expired", ErrorCode.NOT_AUTHENTICATED) from None
        except jwt.PyJWTError:
            raise DomainError("invalid token", ErrorCode.NOT_AUTHENTICATED) from None
        if payload.get("type") != "access":
            raise DomainError("invalid token", ErrorCode.NOT_AUTHENTICATED)
        return TokenClaims(
            user_id=str(payload["sub"]),
            role=str(payload.get("role", "USER")),
            issued_at=datetime.fromtimestamp(int(payload["iat"]), UTC),
            session_id=str(payload["sid"]) if payload.get("sid") else None,
        )
