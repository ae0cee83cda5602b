"""Reading the console's HTML forms into what the domain services take: scope lists and grants."""

from __future__ import annotations

import re
from typing import Any

from starlette.datastructures import FormData

from fleetkeeper.access.permissions import Permission
from fleetkeeper.core.errors import ProblemError

MAX_SCOPES = 200
_SEPARATORS = re.compile(r"[,\s]+")


def scope_list(text: str) -> list[str] | None:
    """Device groups or release tags typed as "a, b c"; nothing typed means everywhere (None)."""
    names = [name for name in _SEPARATORS.split(text.strip()) if name]
    if len(names) > MAX_SCOPES:
        raise ProblemError(f"at most {MAX_SCOPES} groups or tags", code="invalid_scope", status=422)
    return sorted(set(names)) or None


def field(form: FormData, name: str, limit: int = 2000) -> str:
    value = form.get(name, "")
    return value[:limit] if isinstance(value, str) else ""


def grants_from_form(form: FormData) -> list[dict[str, Any]]:
    """Checkboxes `grant` (one per permission) with an optional `scopes:<permission>` text each."""
    grants = []
    for value in form.getlist("grant"):
        try:
            permission = Permission(str(value))
        except ValueError:
            raise ProblemError(
                f"unknown permission {value!r}", code="unknown_permission", status=422
            ) from None
        scopes = scope_list(field(form, f"scopes:{value}")) if permission.scope_kind else None
        grants.append({"permission": permission.value, "scopes": scopes})
    return grants


def scope_text(scopes: list[str] | None) -> str:
    return ", ".join(scopes or [])
