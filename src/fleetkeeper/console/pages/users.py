"""Users and roles: accounts, the RBAC editor (roles with device-group and release-tag scopes),
custom roles, and the roles that require two-factor sign-in."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.datastructures import FormData, UploadFile
from starlette.responses import RedirectResponse, Response

from fleetkeeper.access import service, signin
from fleetkeeper.access.permissions import GrantSet, Permission
from fleetkeeper.access.principal import Principal
from fleetkeeper.console.context import console_context
from fleetkeeper.console.forms import field, grants_from_form, scope_list, scope_text
from fleetkeeper.console.render import render
from fleetkeeper.console.session import page
from fleetkeeper.core.errors import ProblemError

router = APIRouter(include_in_schema=False)
Admin = Annotated[Principal, page(Permission.USERS_MANAGE)]
PAGE_SIZE = 50


def _see_other(path: str) -> Response:
    return RedirectResponse(path, status_code=303)


def _assignments_from_form(form_roles: list[str], form: FormData) -> list[service.RoleAssignmentSpec]:
    """Role checkboxes, each with the device groups and release tags it is narrowed to."""
    return [
        service.RoleAssignmentSpec(
            name,
            scope_list(field(form, f"device_groups:{name}")),
            scope_list(field(form, f"release_tags:{name}")),
        )
        for name in form_roles
    ]


def _role_names(form_values: list[str | UploadFile]) -> list[str]:
    return [value[:64] for value in form_values if isinstance(value, str)][:50]


def _correctable(refusal: ProblemError) -> bool:
    """A value in the form that the administrator can correct there (an unsafe scope group, an
    unknown role, a bad name): shown on the form with what they typed. Others: the error page."""
    return refusal.status == 422


@router.get("/users")
async def users(
    request: Request, principal: Admin, cursor: Annotated[str | None, Query(max_length=64)] = None
) -> Response:
    async with console_context(request).database.transaction() as session:
        found = await service.list_users(session, limit=PAGE_SIZE + 1, after=cursor)
        rows = [(user, await service.user_role_names(session, user.id)) for user in found[:PAGE_SIZE]]
        roles = await service.list_roles(session)
        policy = (await service.get_policy(session)).require_2fa_roles
    return render(
        request,
        "users/list.html",
        principal,
        rows=rows,
        roles=roles,
        require_2fa=set(policy),
        next_cursor=rows[-1][0].id if len(found) > PAGE_SIZE else None,
        paged=cursor is not None,
    )


@router.post("/users")
async def create_user(request: Request, principal: Admin) -> Response:
    form = await request.form()
    user, one_time = await service.create_user(
        console_context(request).database,
        principal,
        username=field(form, "username", 128),
        password=None,
        email=field(form, "email", 320) or None,
        display_name=field(form, "display_name", 200) or None,
        roles=[service.RoleAssignmentSpec(name) for name in _role_names(form.getlist("role"))],
    )
    return render(
        request, "users/one_time_password.html", principal, user=user, password=one_time, created=True
    )


@router.post("/users/policy")
async def set_policy(request: Request, principal: Admin) -> Response:
    form = await request.form()
    await service.set_require_2fa_roles(
        console_context(request).database, principal, _role_names(form.getlist("require_2fa"))
    )
    return _see_other("/users")


async def _user_page(
    request: Request,
    principal: Principal,
    user_id: str,
    *,
    typed: list[service.RoleAssignmentSpec] | None = None,
    refusal: ProblemError | None = None,
) -> Response:
    """The user's page; after a refused roles form, with the refusal and the roles as typed."""
    async with console_context(request).database.session() as session:
        user = await service.get_user(session, user_id)
        assignments = typed if typed is not None else await service.user_role_assignments(session, user_id)
        roles = await service.list_roles(session)
        sessions = await signin.list_sessions(session, user_id)
    return render(
        request,
        "users/detail.html",
        principal,
        status=refusal.status if refusal else 200,
        user=user,
        assignments={spec.role: spec for spec in assignments},
        roles=roles,
        sessions=sessions,
        scope_text=scope_text,
        is_self=user.id == principal.user_id,
        error=refusal.detail if refusal else "",
    )


@router.get("/users/{user_id}")
async def user_detail(request: Request, principal: Admin, user_id: str) -> Response:
    return await _user_page(request, principal, user_id)


@router.post("/users/{user_id}/roles")
async def set_roles(request: Request, principal: Admin, user_id: str) -> Response:
    form = await request.form()
    specs = _assignments_from_form(_role_names(form.getlist("role")), form)
    try:
        await service.set_user_roles(console_context(request).database, principal, user_id, specs)
    except ProblemError as refusal:
        if not _correctable(refusal):
            raise
        return await _user_page(request, principal, user_id, typed=specs, refusal=refusal)
    return _see_other(f"/users/{user_id}")


@router.post("/users/{user_id}/disabled")
async def set_disabled(request: Request, principal: Admin, user_id: str) -> Response:
    form = await request.form()
    disabled = field(form, "disabled") == "true"
    await service.set_user_disabled(console_context(request).database, principal, user_id, disabled)
    return _see_other(f"/users/{user_id}")


@router.post("/users/{user_id}/password-reset")
async def reset_password(request: Request, principal: Admin, user_id: str) -> Response:
    database = console_context(request).database
    password = await service.reset_password(database, principal, user_id)
    async with database.session() as session:
        user = await service.get_user(session, user_id)
    return render(
        request, "users/one_time_password.html", principal, user=user, password=password, created=False
    )


@router.post("/users/{user_id}/sessions/end")
async def end_sessions(request: Request, principal: Admin, user_id: str) -> Response:
    await signin.end_sessions_of(console_context(request).database, principal, user_id)
    return _see_other(f"/users/{user_id}")


# --- roles ------------------------------------------------------------------------------------


def _grant_rows(grants_json: list[dict[str, Any]]) -> list[tuple[Permission, bool, str]]:
    """Each permission: whether the grants give it, and where (text for the scope field)."""
    grants = GrantSet.from_json(grants_json).grants
    return [
        (permission, permission in grants, scope_text(sorted(grants.get(permission) or [])))
        for permission in Permission
    ]


async def _roles_page(
    request: Request,
    principal: Principal,
    *,
    typed: FormData | None = None,
    refusal: ProblemError | None = None,
) -> Response:
    """The roles and the new-role form; after a refused form, with the refusal and what was typed."""
    async with console_context(request).database.session() as session:
        found = await service.list_roles(session)
    return render(
        request,
        "users/roles.html",
        principal,
        status=refusal.status if refusal else 200,
        roles=found,
        grant_rows=_grant_rows(grants_from_form(typed) if typed is not None else []),
        typed_name=field(typed, "name", 64) if typed is not None else "",
        typed_description=field(typed, "description", 500) if typed is not None else "",
        error=refusal.detail if refusal else "",
    )


@router.get("/roles")
async def roles(request: Request, principal: Admin) -> Response:
    return await _roles_page(request, principal)


@router.post("/roles")
async def create_role(request: Request, principal: Admin) -> Response:
    form = await request.form()
    try:
        role = await service.create_role(
            console_context(request).database,
            principal,
            name=field(form, "name", 64).strip(),
            description=field(form, "description", 500),
            grants=grants_from_form(form),
        )
    except ProblemError as refusal:
        if not _correctable(refusal):
            raise
        return await _roles_page(request, principal, typed=form, refusal=refusal)
    return _see_other(f"/roles/{role.name}")


async def _role_page(
    request: Request,
    principal: Principal,
    name: str,
    *,
    typed: FormData | None = None,
    refusal: ProblemError | None = None,
) -> Response:
    """A role and its form; after a refused form, with the refusal and the grants as typed."""
    async with console_context(request).database.session() as session:
        role = await service.get_role(session, name)
    return render(
        request,
        "users/role.html",
        principal,
        status=refusal.status if refusal else 200,
        role=role,
        grant_rows=_grant_rows(grants_from_form(typed) if typed is not None else role.grants),
        description=field(typed, "description", 500) if typed is not None else role.description,
        error=refusal.detail if refusal else "",
    )


@router.get("/roles/{name}")
async def role_detail(request: Request, principal: Admin, name: str) -> Response:
    return await _role_page(request, principal, name)


@router.post("/roles/{name}")
async def update_role(request: Request, principal: Admin, name: str) -> Response:
    form = await request.form()
    try:
        await service.update_role(
            console_context(request).database,
            principal,
            name,
            description=field(form, "description", 500),
            grants=grants_from_form(form),
        )
    except ProblemError as refusal:
        if not _correctable(refusal):
            raise
        return await _role_page(request, principal, name, typed=form, refusal=refusal)
    return _see_other(f"/roles/{name}")


@router.post("/roles/{name}/delete")
async def delete_role(request: Request, principal: Admin, name: str) -> Response:
    await service.delete_role(console_context(request).database, principal, name)
    return _see_other("/roles")
