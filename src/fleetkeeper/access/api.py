"""Routes for administering people: users, roles, the access policy."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from fleetkeeper.access import service, signin, twofactor
from fleetkeeper.access.auth import requires
from fleetkeeper.access.context import access_context
from fleetkeeper.access.models import Role
from fleetkeeper.access.permissions import Permission
from fleetkeeper.access.principal import Principal
from fleetkeeper.access.schemas import (
    AccessPolicyOut,
    AccessPolicyUpdate,
    CreatedUser,
    CreateRoleRequest,
    CreateUserRequest,
    PasswordResetResponse,
    RoleAssignmentModel,
    RoleOut,
    UpdateRoleRequest,
    UpdateUserRequest,
    UserOut,
    UserPage,
)

router = APIRouter(prefix="/api/v1", tags=["users and roles"])
Admin = Annotated[Principal, requires(Permission.USERS_MANAGE)]


def _specs(models: list[RoleAssignmentModel]) -> list[service.RoleAssignmentSpec]:
    return [service.RoleAssignmentSpec(m.role, m.device_groups, m.release_tags) for m in models]


def _role_out(role: Role) -> RoleOut:
    return RoleOut(
        id=role.id, name=role.name, description=role.description, builtin=role.is_builtin, grants=role.grants
    )


@router.get("/users")
async def list_users(
    principal: Admin,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
) -> UserPage:
    async with access_context(request).database.session() as session:
        users = await service.list_users(session, limit=limit + 1, after=cursor)
        items = [
            UserOut.from_row(user, roles=await service.user_role_names(session, user.id))
            for user in users[:limit]
        ]
    return UserPage(items=items, next_cursor=items[-1].id if len(users) > limit else None)


@router.post("/users", status_code=201)
async def create_user(body: CreateUserRequest, principal: Admin, request: Request) -> CreatedUser:
    """The password (given or generated) must be changed at the user's first sign-in."""
    user, one_time = await service.create_user(
        access_context(request).database,
        principal,
        username=body.username,
        password=body.password,
        email=body.email,
        display_name=body.display_name,
        roles=_specs(body.roles),
    )
    return CreatedUser(
        user=UserOut.from_row(user, roles=sorted(r.role for r in body.roles)), one_time_password=one_time
    )


@router.get("/users/{user_id}")
async def get_user(user_id: str, principal: Admin, request: Request) -> UserOut:
    async with access_context(request).database.session() as session:
        user = await service.get_user(session, user_id)
        return UserOut.from_row(user, roles=await service.user_role_names(session, user_id))


@router.patch("/users/{user_id}")
async def update_user(user_id: str, body: UpdateUserRequest, principal: Admin, request: Request) -> UserOut:
    """Disabling signs the user out everywhere and revokes their API tokens at once."""
    database = access_context(request).database
    user = await service.set_user_disabled(database, principal, user_id, body.disabled)
    async with database.session() as session:
        return UserOut.from_row(user, roles=await service.user_role_names(session, user_id))


@router.delete("/users/{user_id}", status_code=204)
async def delete_user(user_id: str, principal: Admin, request: Request) -> Response:
    await service.delete_user(access_context(request).database, principal, user_id)
    return Response(status_code=204)


@router.put("/users/{user_id}/roles")
async def set_roles(
    user_id: str, body: list[RoleAssignmentModel], principal: Admin, request: Request
) -> list[str]:
    """Replaces the user's roles; each may be narrowed to device groups and release tags."""
    return await service.set_user_roles(access_context(request).database, principal, user_id, _specs(body))


@router.post("/users/{user_id}/password-reset")
async def reset_password(user_id: str, principal: Admin, request: Request) -> PasswordResetResponse:
    return PasswordResetResponse(
        one_time_password=await service.reset_password(access_context(request).database, principal, user_id)
    )


@router.post("/users/{user_id}/2fa/reset", status_code=204)
async def reset_second_factor(user_id: str, principal: Admin, request: Request) -> Response:
    """For someone who lost their authenticator: turns their two-factor sign-in off and ends their
    sessions; they sign in with the password alone (and enrol again where policy requires 2FA)."""
    await twofactor.reset(access_context(request).database, principal, user_id)
    return Response(status_code=204)


@router.delete("/users/{user_id}/sessions", status_code=204)
async def end_user_sessions(user_id: str, principal: Admin, request: Request) -> Response:
    await signin.end_sessions_of(access_context(request).database, principal, user_id)
    return Response(status_code=204)


@router.get("/roles")
async def list_roles(principal: Admin, request: Request) -> list[RoleOut]:
    async with access_context(request).database.session() as session:
        return [_role_out(role) for role in await service.list_roles(session)]


@router.get("/roles/{name}")
async def get_role(name: str, principal: Admin, request: Request) -> RoleOut:
    async with access_context(request).database.session() as session:
        return _role_out(await service.get_role(session, name))


@router.post("/roles", status_code=201)
async def create_role(body: CreateRoleRequest, principal: Admin, request: Request) -> RoleOut:
    role = await service.create_role(
        access_context(request).database,
        principal,
        name=body.name,
        description=body.description,
        grants=[grant.model_dump(mode="json") for grant in body.grants],
    )
    return _role_out(role)


@router.put("/roles/{name}")
async def update_role(name: str, body: UpdateRoleRequest, principal: Admin, request: Request) -> RoleOut:
    grants = None if body.grants is None else [grant.model_dump(mode="json") for grant in body.grants]
    role = await service.update_role(
        access_context(request).database, principal, name, description=body.description, grants=grants
    )
    return _role_out(role)


@router.delete("/roles/{name}", status_code=204)
async def delete_role(name: str, principal: Admin, request: Request) -> Response:
    await service.delete_role(access_context(request).database, principal, name)
    return Response(status_code=204)


@router.get("/access/policy")
async def get_policy(principal: Admin, request: Request) -> AccessPolicyOut:
    async with access_context(request).database.transaction() as session:
        return AccessPolicyOut(require_2fa_roles=(await service.get_policy(session)).require_2fa_roles)


@router.put("/access/policy")
async def set_policy(body: AccessPolicyUpdate, principal: Admin, request: Request) -> AccessPolicyOut:
    """Roles whose holders must use two-factor sign-in (they are asked to enrol at next sign-in)."""
    roles = await service.set_require_2fa_roles(
        access_context(request).database, principal, body.require_2fa_roles
    )
    return AccessPolicyOut(require_2fa_roles=roles)
