"""The network an address belongs to, for limits that count a block of addresses as one source.

Whoever holds one address of a network usually holds its neighbours too (an IPv6 /64 is a single
subscriber's), so a limit per address would be a limit per try. An IPv4 address mapped into IPv6
counts as IPv4; anything that is no IP address (a test client, a Unix socket) counts as itself.
"""

from __future__ import annotations

import ipaddress

from fleetkeeper.core.config import Settings


def network_prefix(address: str | None, *, v4: int, v6: int) -> str:
    """`address`'s network as `a.b.c.0/24` or `2001:db8::/64`, with the prefix length given."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return str(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = v4 if isinstance(ip, ipaddress.IPv4Address) else v6
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def network_of(address: str | None, settings: Settings) -> str:
    """The network for the enrollment limits: a /24 (IPv4) or /56 (IPv6) by default
    (`enrollment_network_prefix_v4`, `enrollment_network_prefix_v6`)."""
    return network_prefix(
        address, v4=settings.enrollment_network_prefix_v4, v6=settings.enrollment_network_prefix_v6
    )
