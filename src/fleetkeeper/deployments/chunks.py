"""Devices of a deployment as chunks of ids (models.DeploymentChunk): writing them, finding a
device in them, and reading them back as rows — in SQL that PostgreSQL (arrays) and SQLite
(JSON lists) each spell their own way."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    FromClause,
    Integer,
    ScalarSelect,
    Select,
    SQLColumnExpression,
    func,
    insert,
    literal,
    select,
    true,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import aliased
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.type_api import TypeEngine
from sqlalchemy.types import NullType

from fleetkeeper.deployments.models import CHUNK_SIZE, DeploymentChunk
from fleetkeeper.devices.models import Device


def _spelled(name: str, type_: TypeEngine[Any], postgresql: str, sqlite: str) -> Any:
    """A SQL function written `postgresql` on PostgreSQL and `sqlite` elsewhere: templates whose
    {0}, {1}… are the function's arguments, compiled."""
    element = type(name, (FunctionElement,), {"type": type_, "inherit_cache": True, "name": name})

    def spelling(template: str) -> Callable[..., str]:
        def compile_(function: FunctionElement[Any], compiler: SQLCompiler, **kw: Any) -> str:
            return template.format(*(compiler.process(argument, **kw) for argument in function.clauses))

        return compile_

    compiles(element, "postgresql")(spelling(postgresql))
    compiles(element)(spelling(sqlite))
    return element


# `ids` (a chunk's device_ids) holds `device_id`: _holds(ids, device_id).
_holds = _spelled(
    "holds",
    Boolean(),
    postgresql="({1} = ANY ({0}))",
    sqlite="EXISTS (SELECT 1 FROM json_each({0}) AS held WHERE held.value = {1})",
)
# The aggregate that gathers a chunk's ids into device_ids.
_gathered = _spelled("gathered", NullType(), postgresql="array_agg({0})", sqlite="json_group_array({0})")
# How many ids a chunk's device_ids holds.
_size = _spelled("size", Integer(), postgresql="cardinality({0})", sqlite="json_array_length({0})")


def chunk_phase(
    deployment_number: SQLColumnExpression[int], device_id: SQLColumnExpression[str]
) -> ScalarSelect[int]:
    """The phase of the device's chunk in the deployment, NULL when no chunk holds it: two probes
    of the chunks' key (chunks do not overlap, so only the last one starting at or before the id
    can hold it), and the ids of that one chunk read."""
    starting_before = aliased(DeploymentChunk)  # not correlated with the chunk read below
    candidate = (
        select(starting_before.first_device_id)
        .where(
            starting_before.deployment_number == deployment_number,
            starting_before.first_device_id <= device_id,
        )
        .order_by(starting_before.first_device_id.desc())
        .limit(1)
        .correlate_except(starting_before)  # the deployment is the enclosing query's
        .scalar_subquery()
    )
    return (
        select(DeploymentChunk.phase)
        .where(
            DeploymentChunk.deployment_number == deployment_number,
            DeploymentChunk.first_device_id == candidate,
            DeploymentChunk.last_device_id >= device_id,
            _holds(DeploymentChunk.device_ids, device_id),
        )
        .correlate_except(DeploymentChunk)
        .scalar_subquery()
    )


async def phase_of(session: AsyncSession, deployment_number: int, device_id: str) -> int | None:
    """The phase of the chunk that holds the device, None when none of the deployment's does."""
    found = chunk_phase(literal(deployment_number, Integer), literal(device_id))
    return await session.scalar(select(found))


async def write_chunks(
    session: AsyncSession, deployment_number: int, phase: int, devices: ColumnElement[bool]
) -> int:
    """One INSERT … SELECT of the chunks of `devices` (a condition on Device) in one phase: the
    devices numbered in id order, CHUNK_SIZE to a chunk. Returns how many devices it wrote."""
    numbered = (
        select(
            Device.id.label("device_id"),
            # The databases' own "/" of two integers: integer division in both.
            (func.row_number().over(order_by=Device.id) - 1)
            .self_group()
            .op("/", return_type=Integer)(CHUNK_SIZE)
            .label("chunk"),
        )
        .where(devices)
        .subquery("numbered")
    )
    if session.get_bind().dialect.name == "postgresql":
        # The chunks are hashed in memory: 5,000 groups of a million ids need more than the
        # default 4 MB, and sorting them instead to group them cost a quarter more.
        await session.execute(select(func.set_config("work_mem", "64MB", true())))
    sizes = await session.scalars(
        insert(DeploymentChunk)
        .from_select(
            ["deployment_number", "phase", "first_device_id", "last_device_id", "device_ids"],
            select(
                literal(deployment_number, Integer),
                literal(phase, Integer),
                func.min(numbered.c.device_id),
                func.max(numbered.c.device_id),
                _gathered(numbered.c.device_id),
            ).group_by(numbered.c.chunk),
        )
        .returning(_size(DeploymentChunk.device_ids))
    )
    return sum(sizes)


def members(session: AsyncSession) -> tuple[FromClause, ColumnElement[str]]:
    """The chunks' devices as rows: a FROM clause to select from (with DeploymentChunk's columns
    and the device's), and the device id. A chunk's ids come in no promised order."""
    if session.get_bind().dialect.name == "postgresql":
        unnested = func.unnest(DeploymentChunk.device_ids).table_valued("value")
        member = unnested.render_derived(name="member").lateral()
        return DeploymentChunk.__table__.join(member, true()), member.c.value
    # SQLite reads a table-valued function's arguments from the tables before it, unasked.
    each = func.json_each(DeploymentChunk.device_ids).table_valued("value").alias("member")
    return DeploymentChunk.__table__.join(each, true()), each.c.value


def member_ids(session: AsyncSession, deployment_number: int, phase: int | None = None) -> Select[Any]:
    """The ids of the deployment's chunks (of one phase), as a query."""
    joined, device_id = members(session)
    query = (
        select(device_id).select_from(joined).where(DeploymentChunk.deployment_number == deployment_number)
    )
    return query.where(DeploymentChunk.phase == phase) if phase is not None else query
