"""Name what is wrong with a role's signatures, so each refusal carries its own problem code."""

from __future__ import annotations

from typing import Any

from tuf.api.metadata import Metadata, Root, Targets


def signature_problem(
    delegator: Root | Targets, role: str, metadata: Metadata[Any]
) -> tuple[str, str] | None:
    """None when `metadata` meets `role`'s threshold under `delegator`, else (code, detail).

    A signature by a key the delegator names that does not verify is refused even when the
    threshold is met otherwise: it is evidence of tampering, never an honest mistake.
    """
    result = delegator.get_verification_result(role, metadata.signed_bytes, metadata.signatures)
    named = set(delegator.get_delegated_role(role).keyids)
    signed_by = set(metadata.signatures)
    bad = sorted((signed_by & named) - set(result.signed))
    if bad:
        return "bad_signature", f"the {role} signature by key {bad[0]} does not verify"
    if result.verified:
        return None
    unknown = sorted(signed_by - named)
    if unknown:
        return "unknown_key", f"signed by key {unknown[0]}, which the root does not name for {role}"
    return "below_threshold", f"{len(result.signed)} of the {result.threshold} {role} signatures needed"
