"""The device key types, apart from the key store so that naming them loads no cryptography."""

from __future__ import annotations

from typing import Literal, get_args

KeyType = Literal["ed25519", "ecdsa-p256"]
KEY_TYPES: tuple[str, ...] = get_args(KeyType)
DEFAULT_KEY_TYPE: KeyType = "ed25519"
