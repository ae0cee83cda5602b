"""The password policy and hashing."""

from __future__ import annotations

import pytest

from fleetkeeper.access.passwords import (
    WeakPasswordError,
    check_password_policy,
    generate_one_time_password,
    hash_password,
    verify_password,
)


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("short-pass1", "at least 12"),
        ("Operator-Jane", "username"),
        ("Password1234", "commonly used"),
        ("raspberrypi123", "commonly used"),
        ("x" * 300, "at most"),
    ],
)
def test_policy_refuses(password: str, reason: str) -> None:
    with pytest.raises(WeakPasswordError, match=reason):
        check_password_policy(password, "operator-jane")


def test_policy_accepts_a_long_uncommon_password() -> None:
    check_password_policy("tulip-orbit-canyon-7", "jane")


async def test_argon2id_hash_verifies_only_the_password() -> None:
    hashed = await hash_password("tulip-orbit-canyon-7")
    assert hashed.startswith("$argon2id$")
    assert await verify_password(hashed, "tulip-orbit-canyon-7")
    assert not await verify_password(hashed, "tulip-orbit-canyon-8")
    assert not await verify_password(None, "anything")
    assert not await verify_password("not-a-hash", "anything")


def test_one_time_passwords_are_random_and_plain() -> None:
    passwords = {generate_one_time_password() for _ in range(100)}
    assert len(passwords) == 100
    assert all(p.isalnum() and len(p) == 24 for p in passwords)
