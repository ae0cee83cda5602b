"""Wire types of the access API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, Field, StringConstraints

from fleetkeeper.access.permissions import Permission
from fleetkeeper.core.wire import IsSet, Member, RequestBody, RowModel

Secret = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=128, strip_whitespace=True)]
ScopeList = Annotated[list[Annotated[str, StringConstraints(max_length=128)]], Field(max_length=200)]
# Where a change asks who is at the keyboard (access/reauth.py).
ConfirmingPassword = Annotated[
    Secret | None, Field(description="the current password; not needed within 10 minutes of signing in")
]


class SignInRequest(RequestBody):
    username: Name
    password: Secret
    totp_code: Annotated[str, StringConstraints(max_length=16)] | None = None
    recovery_code: Annotated[str, StringConstraints(max_length=32)] | None = None


class RefreshRequest(RequestBody):
    refresh_token: Annotated[str, StringConstraints(min_length=1, max_length=512)]


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "Bearer"  # noqa: S105
    expires_in: int
    refresh_token: str
    session_id: str
    pending_actions: list[str]


class GrantModel(RequestBody):
    permission: Member[Permission]
    scopes: ScopeList | None = None


class RoleAssignmentModel(RequestBody):
    role: Name
    device_groups: ScopeList | None = None
    release_tags: ScopeList | None = None


class UserOut(RowModel):
    id: str
    username: str
    email: str | None
    display_name: str | None
    auth_source: str
    is_disabled: bool
    must_change_password: bool
    two_factor_enabled: IsSet = Field(validation_alias="totp_enabled_at")
    created_at: datetime
    last_sign_in_at: datetime | None
    roles: list[str] = Field(default=[])


class UserPage(BaseModel):
    items: list[UserOut]
    next_cursor: str | None


class CreateUserRequest(RequestBody):
    username: Name
    password: Secret | None = Field(default=None, description="omit to generate a one-time password")
    email: Annotated[str, StringConstraints(max_length=320)] | None = None
    display_name: Annotated[str, StringConstraints(max_length=200)] | None = None
    roles: list[RoleAssignmentModel] = Field(default_factory=list, max_length=50)


class CreatedUser(BaseModel):
    user: UserOut
    one_time_password: str | None = Field(description="shown only in this response")


class UpdateUserRequest(RequestBody):
    disabled: bool


class PasswordResetResponse(BaseModel):
    one_time_password: str


class ChangePasswordRequest(RequestBody):
    current_password: Secret
    new_password: Secret


class MeOut(BaseModel):
    user: UserOut
    permissions: list[dict[str, Any]]
    pending_actions: list[str]
    auth_method: str


class SessionOut(RowModel):
    id: str
    auth_method: str
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    address: str | None
    user_agent: str | None
    current: bool


class TotpEnrollment(BaseModel):
    secret: str
    otpauth_uri: str


class TotpCode(RequestBody):
    code: Annotated[str, StringConstraints(min_length=1, max_length=32)]


class ConfirmTotpRequest(TotpCode):
    password: ConfirmingPassword = None


class DisableTotpRequest(RequestBody):
    password: Secret
    code: Annotated[str, StringConstraints(min_length=1, max_length=32)]


class RecoveryCodes(BaseModel):
    recovery_codes: list[str] = Field(description="each works once; shown only in this response")


class CreateApiTokenRequest(RequestBody):
    name: Annotated[str, StringConstraints(min_length=1, max_length=100, strip_whitespace=True)]
    expires_in_days: int = Field(default=90, ge=1, le=366)
    grants: list[GrantModel] | None = Field(default=None, description="omit for everything you hold now")
    password: ConfirmingPassword = None


class ApiTokenOut(RowModel):
    id: str
    name: str
    grants: list[dict[str, Any]]
    created_at: datetime
    expires_at: datetime
    last_used_at: datetime | None


class CreatedApiToken(BaseModel):
    token: ApiTokenOut
    secret: str = Field(description="the bearer token; shown only in this response")


class RoleOut(BaseModel):
    id: str
    name: str
    description: str
    builtin: bool
    grants: list[dict[str, Any]]


class CreateRoleRequest(RequestBody):
    name: Name
    description: Annotated[str, StringConstraints(max_length=500)] = ""
    grants: list[GrantModel] = Field(max_length=50)


class UpdateRoleRequest(RequestBody):
    description: Annotated[str, StringConstraints(max_length=500)] | None = None
    grants: list[GrantModel] | None = Field(default=None, max_length=50)


class AccessPolicyOut(BaseModel):
    require_2fa_roles: list[str]


class AccessPolicyUpdate(RequestBody):
    require_2fa_roles: list[Name] = Field(max_length=50)


class SigningKeyRotated(BaseModel):
    kid: str


class OidcStatus(BaseModel):
    enabled: bool
    login_url: str | None
