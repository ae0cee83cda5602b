"""Accounts, roles and the access policy as other domains and the routes see them: the one module
they import from access. The work is done in users, roles and policy."""

from __future__ import annotations

from fleetkeeper.access.permissions import Permission as Permission
from fleetkeeper.access.policy import get_policy as get_policy
from fleetkeeper.access.policy import pending_actions as pending_actions
from fleetkeeper.access.policy import roles_requiring_2fa as roles_requiring_2fa
from fleetkeeper.access.policy import set_require_2fa_roles as set_require_2fa_roles
from fleetkeeper.access.principal import Principal as Principal
from fleetkeeper.access.roles import RoleAssignmentSpec as RoleAssignmentSpec
from fleetkeeper.access.roles import builtin_role_id as builtin_role_id
from fleetkeeper.access.roles import create_role as create_role
from fleetkeeper.access.roles import delete_role as delete_role
from fleetkeeper.access.roles import get_role as get_role
from fleetkeeper.access.roles import list_roles as list_roles
from fleetkeeper.access.roles import sync_builtin_roles as sync_builtin_roles
from fleetkeeper.access.roles import update_role as update_role
from fleetkeeper.access.roles import user_grants as user_grants
from fleetkeeper.access.roles import user_role_assignments as user_role_assignments
from fleetkeeper.access.roles import user_role_names as user_role_names
from fleetkeeper.access.roles import validate_grants as validate_grants
from fleetkeeper.access.scopes import given_as_scope as given_as_scope
from fleetkeeper.access.scopes import register_scope_check as register_scope_check
from fleetkeeper.access.users import FIRST_ADMIN_USERNAME as FIRST_ADMIN_USERNAME
from fleetkeeper.access.users import USERNAME_PATTERN as USERNAME_PATTERN
from fleetkeeper.access.users import change_own_password as change_own_password
from fleetkeeper.access.users import create_user as create_user
from fleetkeeper.access.users import delete_user as delete_user
from fleetkeeper.access.users import end_sessions as end_sessions
from fleetkeeper.access.users import ensure_first_admin as ensure_first_admin
from fleetkeeper.access.users import ensure_outranks as ensure_outranks
from fleetkeeper.access.users import get_user as get_user
from fleetkeeper.access.users import list_users as list_users
from fleetkeeper.access.users import normalize_username as normalize_username
from fleetkeeper.access.users import recover_password as recover_password
from fleetkeeper.access.users import reset_password as reset_password
from fleetkeeper.access.users import revoke_all_credentials as revoke_all_credentials
from fleetkeeper.access.users import set_user_disabled as set_user_disabled
from fleetkeeper.access.users import set_user_roles as set_user_roles
