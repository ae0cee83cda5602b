from __future__ import annotations

from fleetkeeper_agent.client import tls_context
from tests.agent.fakeserver import FakeCA


def test_the_device_trusts_the_fleet_ca_alone() -> None:
    """Not the system's CA bundle as well: a public CA must not vouch for the fleet's server."""
    context = tls_context(FakeCA.create().pem)
    assert context.cert_store_stats()["x509_ca"] == 1
    assert [ca["subject"] for ca in context.get_ca_certs()] == [((("commonName", "test fleet CA"),),)]
