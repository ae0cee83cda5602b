"""Passwords: argon2id hashing off the event loop, the password policy, one-time passwords."""

from __future__ import annotations

import asyncio
import secrets
import string
from functools import cache
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from fleetkeeper.core.errors import ProblemError

MIN_LENGTH = 12
MAX_LENGTH = 256
_hasher = PasswordHasher()
# Verified against when the account does not exist, so that the answer takes as long either way.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))
_PASSWORD_ALPHABET = string.ascii_letters + string.digits


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return await asyncio.to_thread(_hasher.verify, password_hash or _DUMMY_HASH, password) and bool(
            password_hash
        )
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str | None) -> bool:
    """True when the hash was made with weaker parameters than the current ones."""
    return bool(password_hash) and _hasher.check_needs_rehash(password_hash or "")


def generate_one_time_password(length: int = 24) -> str:
    """Letters and digits only, so that it never looks like a command-line option."""
    return "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(length))


@cache
def _common_passwords() -> frozenset[str]:
    path = Path(__file__).with_name("common-passwords.txt")
    lines = path.read_text(encoding="utf-8").splitlines()
    return frozenset(line.strip().lower() for line in lines if line.strip() and not line.startswith("#"))


class WeakPasswordError(ProblemError):
    status = 422
    code = "weak_password"


def check_password_policy(password: str, username: str) -> None:
    """At least 12 characters, not the username, not a commonly used password."""
    if len(password) < MIN_LENGTH:
        raise WeakPasswordError(f"a password needs at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise WeakPasswordError(f"a password has at most {MAX_LENGTH} characters")
    if password.strip().lower() == username.strip().lower():
        raise WeakPasswordError("the password must not be the username")
    if password.lower() in _common_passwords():
        raise WeakPasswordError("this password is on the list of commonly used passwords")
