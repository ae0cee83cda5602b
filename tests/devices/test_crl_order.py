"""A CRL that replaces a loaded one within the same second must still take effect (OpenSSL keeps
the first of an issuer's CRLs whose last update is not strictly later)."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from fleetkeeper.core.db import Database
from fleetkeeper.core.pki import PkiPaths, load_or_create_ca
from fleetkeeper.devices.certificates import build_crl


async def test_a_replacing_crl_is_strictly_later(database: Database, tmp_path: Path) -> None:
    ca, _ = load_or_create_ca(PkiPaths(tmp_path / "pki"))
    _, first = await build_crl(database, ca)
    _, second = await build_crl(database, ca, replacing=first)
    _, third = await build_crl(database, ca, replacing=second)
    updates = [x509.load_pem_x509_crl(pem).last_update_utc for pem in (first, second, third)]
    assert updates[0] < updates[1] < updates[2]
