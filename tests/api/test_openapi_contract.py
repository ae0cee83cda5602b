"""The management API keeps its OpenAPI contract under generated input (schemathesis).

A real server on each backend is driven by a dedicated fuzzing administrator with requests that
fit the document and requests that break it; every answer must be documented (status, content
type, headers, body shape) and none may be a server error. The run is bounded (a fixed number of
examples per operation) and deterministic (the same inputs every run), so it never flakes.
Operations that would end the fuzzer's own session or change who can sign in are left out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx2
import hypothesis
import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.schemas import APIOperation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import (
    BACKENDS,
    RunningServer,
    _drop,
    migrated_postgres_database,
    start_server,
)

EXAMPLES_PER_OPERATION = 12
FUZZER = "fuzzer"
FUZZER_PASSWORD = "fuzzing is a form of care 7"

# Operations whose success would end the fuzzer's run or change the server under it for every
# other operation: its own session and sessions in general, signing keys, the sign-in policy,
# and deletions (each has its own tests).
EXCLUDED_PATHS = (
    "/api/v1/auth/sign-out",
    "/api/v1/auth/signing-keys/rotate",
    "/api/v1/access/policy",
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]

# The fuzzer sends thousands of requests from one address in a minute: the limits under test
# elsewhere are lifted here so that every operation is reached.
LIFTED_LIMITS = {
    "FLEETKEEPER_API_LIMIT_PER_PRINCIPAL": "1000000/minute",
    "FLEETKEEPER_SIGN_IN_LIMIT_PER_ADDRESS": "1000000/minute",
    "FLEETKEEPER_SIGN_IN_LIMIT_PER_ACCOUNT": "1000000/minute",
    "FLEETKEEPER_ENROLLMENT_LIMIT_PER_ADDRESS": "1000000/minute",
}


def _sign_in(server: RunningServer, username: str, password: str) -> str:
    response = httpx2.post(
        f"{server.management_url}/api/v1/auth/sign-in",
        json={"username": username, "password": password},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def _fuzzing_administrator(server: RunningServer) -> str:
    """Signs in a dedicated administrator (not `admin`, whom the fuzzer could lock out) and
    returns its access token."""
    assert server.admin_password
    url = server.management_url
    first = _sign_in(server, "admin", server.admin_password)
    admin_password = "the first administrator 42"
    changed = httpx2.post(
        f"{url}/api/v1/me/password",
        json={"current_password": server.admin_password, "new_password": admin_password},
        headers={"authorization": f"Bearer {first}"},
        timeout=30,
    )
    assert changed.status_code == 204, changed.text
    admin = {"authorization": f"Bearer {_sign_in(server, 'admin', admin_password)}"}
    created = httpx2.post(
        f"{url}/api/v1/users",
        json={"username": FUZZER, "password": FUZZER_PASSWORD + "-initial", "roles": [{"role": "admin"}]},
        headers=admin,
        timeout=30,
    )
    assert created.status_code == 201, created.text
    initial = _sign_in(server, FUZZER, FUZZER_PASSWORD + "-initial")
    changed = httpx2.post(
        f"{url}/api/v1/me/password",
        json={"current_password": FUZZER_PASSWORD + "-initial", "new_password": FUZZER_PASSWORD},
        headers={"authorization": f"Bearer {initial}"},
        timeout=30,
    )
    assert changed.status_code == 204, changed.text
    return _sign_in(server, FUZZER, FUZZER_PASSWORD)


@pytest.fixture(scope="module", params=BACKENDS)
def fuzzed_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningServer, str]]:
    data_dir: Path = tmp_path_factory.mktemp("fuzzed") / "data"
    database_url = migrated_postgres_database() if request.param == "postgresql" else None
    server = start_server(data_dir, database_url, env=LIFTED_LIMITS)
    try:
        yield server, _fuzzing_administrator(server)
    finally:
        server.stop()
        if database_url:
            asyncio.run(_drop(database_url))


def _operations(server: RunningServer) -> list[APIOperation]:
    schema = schemathesis.openapi.from_url(f"{server.management_url}/api/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    return [
        operation
        for operation in operations
        if operation.method.upper() != "DELETE" and operation.path not in EXCLUDED_PATHS
    ]


def _keeps_contract(operation: APIOperation, mode: GenerationMode, token: str) -> None:
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis.settings(
        max_examples=EXAMPLES_PER_OPERATION,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(headers={"Authorization": f"Bearer {token}"}, checks=CHECKS, timeout=30)

    run()


def _described(failure: BaseException) -> str:
    return f"{type(failure).__name__}: {str(failure)[:3000]}"


def test_the_api_keeps_its_contract(fuzzed_server: tuple[RunningServer, str]) -> None:
    server, token = fuzzed_server
    broken: list[str] = []
    operations = _operations(server)
    assert len(operations) > 50
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _keeps_contract(operation, mode, token)
            except hypothesis.errors.Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE, f"{operation.label}: no valid request to send"
            except (Exception, FailureGroup) as failure:
                # Every operation is tried, and every broken one told, in one run.
                broken.append(f"{operation.label} ({mode.value}):\n{_described(failure)}")
    assert not broken, "\n\n".join(broken)
