"""Password hashing with argon2id, off the event loop."""

from __future__ import annotations

import asyncio
import secrets
import string

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(password_hash: str, password: str) -> bool:
    try:
        return await asyncio.to_thread(_hasher.verify, password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


_PASSWORD_ALPHABET = string.ascii_letters + string.digits


def generate_one_time_password(length: int = 24) -> str:
    """Letters and digits only, so that it never looks like a command-line option."""
    return "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(length))
