"""What devices report about themselves, and the operator's tags: bounded, then indexed as
attributes for the filter language."""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

from sqlalchemy import delete, insert
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.core.errors import ProblemError
from fleetkeeper.devices.models import DeviceAttribute

MAX_BYTES = 64 * 1024
MAX_DEPTH = 5
MAX_VALUES = 1000
MAX_STRING = 1024
MAX_TAGS = 50
_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
_TAG_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
# Attribute namespaces that an inventory report does not replace.
KEPT_PREFIXES = ("tag.", "identity.")


def _invalid(detail: str) -> ProblemError:
    return ProblemError(detail, code="invalid_inventory", status=422)


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def check_inventory(report: Any) -> dict[str, Any]:
    """The contract's limits (docs/device-api.md): size, depth, count, key and string shapes."""
    if not isinstance(report, dict):
        raise _invalid("the inventory is a JSON object")
    if len(canonical(report)) > MAX_BYTES:
        raise _invalid(f"the inventory is larger than {MAX_BYTES} bytes")
    reserved = sorted(key for key in report if f"{key}." in KEPT_PREFIXES)
    if reserved:
        # Operators own tags and the enrollment owns identity: a device must not write either.
        raise _invalid(f"the keys {', '.join(reserved)} are reserved for tags and the enrollment identity")
    _check_release(report.get("release"))
    count = 0

    def walk(value: Any, depth: int, where: str) -> None:
        nonlocal count
        if depth > MAX_DEPTH:
            raise _invalid(f"{where}: nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            for key, item in value.items():
                if not _KEY.match(key):
                    raise _invalid(f"{where}: key {key[:70]!r} is not 1-64 of A-Z a-z 0-9 _ -")
                walk(item, depth + 1, f"{where}.{key}" if where else key)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, depth + 1, f"{where}[{index}]")
        else:
            count += 1
            if count > MAX_VALUES:
                raise _invalid(f"more than {MAX_VALUES} values")
            if isinstance(value, str) and len(value) > MAX_STRING:
                raise _invalid(f"{where}: strings have at most {MAX_STRING} characters")
            if isinstance(value, float) and not math.isfinite(value):
                raise _invalid(f"{where}: numbers must be finite")

    walk(report, 0, "")
    return report


def _check_release(release: Any) -> None:
    """`release` is reserved: the release the device runs, {"name", "version"} (and the agent adds
    its "release_counter"), which deployments compare with theirs: a device that runs it already
    is not asked to install it again."""
    if release is None:
        return
    if (
        not isinstance(release, dict)
        or not all(isinstance(release.get(key), str) and release[key] for key in ("name", "version"))
        or not isinstance(release.get("release_counter", 0), int)
        or isinstance(release.get("release_counter"), bool)
    ):
        raise _invalid(
            'release is reserved: {"name": "<release name>", "version": "<release version>", '
            '"release_counter": <integer, optional>}'
        )


def inventory_hash(report: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(report)).hexdigest()


def flatten(value: Any, prefix: str = "") -> dict[str, str | int | float | bool | None]:
    """Scalars under their dotted paths; lists are not indexed."""
    flat: dict[str, str | int | float | bool | None] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}.{key}" if prefix else key))
    elif not isinstance(value, list) and prefix:
        flat[prefix] = value
    return flat


def attribute_rows(device_id: str, flat: dict[str, str | int | float | bool | None]) -> list[dict[str, Any]]:
    rows = []
    for key, value in flat.items():
        if value is None:
            continue
        if isinstance(value, bool):
            text, number = ("true" if value else "false"), None
        elif isinstance(value, int | float):
            text, number = str(value), float(value)
        else:
            text, number = value, _number(value)
        rows.append(
            {"device_id": device_id, "key": key[:200], "value_text": text[:MAX_STRING], "value_num": number}
        )
    return rows


def _number(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


async def replace_attributes(
    session: AsyncSession, device_id: str, flat: dict[str, Any], *, namespace: str | None
) -> None:
    """Replaces one namespace of a device's indexed attributes: `tag.`, `identity.`, or (None) the
    inventory's, which is everything outside the kept namespaces."""
    query = delete(DeviceAttribute).where(DeviceAttribute.device_id == device_id)
    if namespace is None:
        for prefix in KEPT_PREFIXES:
            query = query.where(~DeviceAttribute.key.startswith(prefix, autoescape=True))
    else:
        query = query.where(DeviceAttribute.key.startswith(namespace, autoescape=True))
    await session.execute(query)
    rows = [row for row in attribute_rows(device_id, flat) if _in_namespace(row["key"], namespace)]
    if rows:
        await session.execute(insert(DeviceAttribute), rows)


def _in_namespace(key: str, namespace: str | None) -> bool:
    if namespace is None:
        return not key.startswith(KEPT_PREFIXES)
    return key.startswith(namespace)


def check_tags(tags: Any) -> dict[str, str]:
    if not isinstance(tags, dict) or len(tags) > MAX_TAGS:
        raise ProblemError(
            f"tags are an object of at most {MAX_TAGS} entries", code="invalid_tags", status=422
        )
    for key, value in tags.items():
        if not _TAG_KEY.match(key) or not isinstance(value, str) or len(value) > 256:
            raise ProblemError(
                f"tag {key[:70]!r}: keys are 1-64 of A-Z a-z 0-9 _ -, values strings up to 256 characters",
                code="invalid_tags",
                status=422,
            )
    return dict(tags)
