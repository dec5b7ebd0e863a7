"""Password hashing with argon2 (pwdlib)."""

from __future__ import annotations

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

_hasher = PasswordHash((Argon2Hasher(),))

MIN_PASSWORD_LENGTH = 8


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password: str, password_hash: str) -> bool:
    try:
        return _hasher.verify(password, password_hash)
    except Exception:  # noqa: BLE001 - a malformed hash is a failed check, not a crash
        return False


# A real hash to verify against when the user does not exist, so the time taken does not
# reveal which usernames are registered.
DUMMY_HASH = hash_password("not-a-real-password-0")
