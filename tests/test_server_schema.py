"""The server against its own OpenAPI document, with schemathesis.

A real server serves an identity model on an ephemeral port; schemathesis loads
``/openapi.json`` from it and, for every operation, sends requests generated from the
document (valid ones, then invalid ones) and checks each answer: no server error, a
documented status and content type, a body that matches the documented schema, and every
invalid request refused with a 4xx. Generation is derandomized, so every run sends the
same requests.

The identity model never fails, so the only 5xx allowed is a 504 for an item whose
deadline (a generated, possibly tiny, timeout) passed before it ran.
"""

from __future__ import annotations

import asyncio
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import asyncml
from tests.test_server import started

#: Requests generated per operation and mode (valid, invalid): most for bodies, the fewest
#: for the versioned paths, which share their handlers with the unversioned ones.
BODY_EXAMPLES = 25
EXAMPLES = 10
VERSIONED_EXAMPLES = 6
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


Case = schemathesis.Case[Any]


def echo(batch: list[Any]) -> list[Any]:
    return batch


def _set_a_timeout(case: Case) -> bool:
    headers = {name.lower() for name in case.headers or {}}
    body = case.body if isinstance(case.body, dict) else {}
    parameters = body.get("parameters")
    return (
        "x-request-timeout" in headers
        or "timeout" in body
        or (isinstance(parameters, dict) and "timeout" in parameters)
    )


def _check(case: Case, response: schemathesis.Response, *, negative: bool) -> None:
    checks = [*CHECKS, negative_data_rejection] if negative else CHECKS
    if response.status_code == 504:
        # A deadline that passed is the answer the document promises, not a server error.
        assert _set_a_timeout(case), case.as_curl_command()
        assert response.json()["type"] == "deadline_exceeded"
        checks = [check for check in checks if check is not not_a_server_error]
    case.validate_response(response, checks=checks)


def _run(operation: Any, mode: schemathesis.GenerationMode, session: requests.Session) -> bool:
    """Sends the operation's generated requests; False if it has no invalid requests."""
    negative = mode is schemathesis.GenerationMode.NEGATIVE
    if "{version}" in operation.path:
        examples = VERSIONED_EXAMPLES
    else:
        examples = BODY_EXAMPLES if operation.method.upper() == "POST" else EXAMPLES

    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Case) -> None:
        _check(case, case.call(session=session), negative=negative)

    try:
        run()
    except Unsatisfiable:
        # No invalid request exists for an operation without parameters or body.
        assert negative
        return False
    return True


def fuzz(url: str) -> list[str]:
    """Runs every operation of the live server's document; returns the operations tested."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    tested = []
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()  # type: ignore[union-attr]  # a valid document
            for mode in schemathesis.GenerationMode:
                if _run(operation, mode, session):
                    tested.append(f"{operation.label} ({mode.value})")
    return tested


async def test_every_operation_answers_as_its_openapi_document_says() -> None:
    async with started([asyncml.load(echo)], max_items_per_request=64) as running:
        tested = await asyncio.to_thread(fuzz, running.server.url)
        document = (await running.get("/openapi.json"))[1]
    operations = {
        f"{method.upper()} {path}" for path, item in document["paths"].items() for method in item
    }
    # schemathesis leaves out the document's own operation
    assert {label.rsplit(" (", 1)[0] for label in tested} == operations - {"GET /openapi.json"}
    assert any("infer (negative)" in label for label in tested)
