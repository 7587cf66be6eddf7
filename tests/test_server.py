"""The HTTP server: a real uvicorn on 127.0.0.1 (an ephemeral port), in the test's loop.

Timing comes from gates (tests.helpers.GatedModel holds batches until the test opens it),
never from sleeps; the only real-clock waits are deadlines meant to pass.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import aiohttp
import pytest
from starlette.applications import Starlette
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

import asyncml
import asyncml.server
from tests.helpers import GatedModel, until


@dataclass
class Running:
    app: asyncml.server.ServingApp
    server: asyncml.server.RunningServer
    http: aiohttp.ClientSession

    async def post(self, path: str, **kwargs: Any) -> tuple[int, Any, aiohttp.ClientResponse]:
        async with self.http.post(path, **kwargs) as response:
            return response.status, await response.json(), response

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.http.get(path) as response:
            if response.content_type == "application/json":
                return response.status, await response.json()
            return response.status, await response.text()

    def status_count(self, model: str, endpoint: str, status: int) -> int:
        return self.app.request_metrics.counts.get((model, endpoint, status), 0)


@asynccontextmanager
async def started(
    models: Any, *, wait_ready: bool = True, **options: Any
) -> AsyncIterator[Running]:
    """Serves ``models`` on an ephemeral port with a client session pointed at it."""
    app = asyncml.server.create_app(models, **options)
    async with (
        asyncml.server.serving(app, port=0, shutdown_timeout=5) as server,
        aiohttp.ClientSession(server.url) as http,
    ):
        if wait_ready:
            await app.wait_ready()
        yield Running(app, server, http)


async def raw_exchange(port: int, request: bytes) -> bytes:
    """Sends raw bytes and returns all the server answers until it closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()


def double(batch: list[Any]) -> list[Any]:
    for x in batch:
        if x == 13:
            raise ValueError("13 is unlucky")
    return [2 * x for x in batch]


PREDICT = "/v1/models/double/predict"


async def test_predict_takes_one_input_or_a_list() -> None:
    async with started([asyncml.load(double)]) as running:
        assert (await running.post(PREDICT, json={"input": 21}))[:2] == (200, {"output": 42})
        status, body, _ = await running.post(PREDICT, json={"inputs": [1, 2, 3]})
        assert (status, body) == (200, {"outputs": [2, 4, 6]})
        status, body, _ = await running.post(PREDICT, json={"input": 1, "timeout": 5})
        assert (status, body) == (200, {"output": 2})
        assert (await running.get("/v1/models"))[1] == {
            "models": [{"name": "double", "state": "ready"}]
        }


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ([1, 2], "body", "must be a JSON object"),
        ({}, "input", "required"),
        ({"inputz": [1]}, "inputz", "unknown field"),
        ({"input": 1, "inputs": [1]}, "inputs", "not both"),
        ({"inputs": 3}, "inputs", "must be a list"),
        ({"inputs": []}, "inputs", "at least one item"),
        ({"inputs": list(range(9))}, "inputs", "at most 8 per request"),
        ({"input": 1, "timeout": -1}, "timeout", "> 0"),
        ({"input": 1, "timeout": "soon"}, "timeout", "number of seconds"),
    ],
)
async def test_validation_errors_are_422_naming_the_field(
    body: Any, field: str, reason: str
) -> None:
    async with started([asyncml.load(double)], max_items_per_request=8) as running:
        status, error, _ = await running.post(PREDICT, json=body)
    assert status == 422
    assert error["type"] == "validation_error"
    assert error["field"] == field
    assert reason in error["error"]
    assert error["error"].startswith(f"{field}: ")


async def test_near_misses_of_the_inference_paths_get_404_and_other_methods_405() -> None:
    async with started([asyncml.load(double)]) as running:
        async with running.http.get(PREDICT) as response:
            assert response.status == 405
            assert (await response.json())["type"] == "method_not_allowed"
        for path in (
            "/v1/models//predict",
            "/v1/models/a/b/predict",
            "/v2/models//infer",
            "/v2/models/double/versions//infer",
            "/v2/models/double/version/1/infer",
        ):
            status, error, _ = await running.post(path, json={"input": 1})
            assert (status, error["type"]) == (404, "not_found"), path
        status, error, _ = await running.post("/v1/models/nope/predict", json={"input": 1})
        assert (status, error["type"]) == (404, "model_not_found")
        status, error, _ = await running.post(
            "/v2/models/double/versions/2/infer", json={"inputs": []}
        )
        assert (status, error["type"]) == (404, "model_not_found")
        assert running.status_count("-", "unrouted", 405) == 1
        assert running.status_count("-", "unrouted", 404) == 5


async def test_a_bad_timeout_header_is_422_naming_the_header() -> None:
    async with started([asyncml.load(double)]) as running:
        headers = {"X-Request-Timeout": "soon"}
        status, error, _ = await running.post(PREDICT, json={"input": 1}, headers=headers)
    assert (status, error["field"]) == (422, "X-Request-Timeout")


async def test_a_model_error_is_a_json_error_with_its_message_and_no_traceback() -> None:
    async with started([asyncml.load(double)]) as running:
        status, error, _ = await running.post(PREDICT, json={"input": 13})
        assert status == 500
        assert error == {
            "error": "model 'double' failed: ValueError: 13 is unlucky",
            "type": "model_error",
        }
        status, error, _ = await running.post(PREDICT, json={"inputs": [1, 13, 3]})
        assert (status, error["type"]) == (500, "model_error")
        assert error["error"].endswith("13 is unlucky (item 1)")
        assert "Traceback" not in str(error)
        # The server goes on serving.
        assert (await running.post(PREDICT, json={"input": 4}))[:2] == (200, {"output": 8})


async def test_a_body_over_the_limit_is_refused_with_413_before_it_is_read() -> None:
    async with started([asyncml.load(double)], max_body_size=1024) as running:
        port = running.server.port
        # Declared too large: answered at once, though not one byte of the body was sent.
        head = f"POST {PREDICT} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        answer = await raw_exchange(port, f"{head}Content-Length: 1000000000\r\n\r\n".encode())
        assert answer.startswith(b"HTTP/1.1 413 ")
        assert b"exceeds the limit of 1,024 bytes" in answer
        # Chunked, with no length: refused once the limit is passed, the rest never read.
        chunk = b"x" * 2048
        request = (
            f"{head}Transfer-Encoding: chunked\r\n\r\n".encode() + b"800\r\n" + chunk + b"\r\n"
        )
        assert (await raw_exchange(port, request)).startswith(b"HTTP/1.1 413 ")
        assert (await running.post(PREDICT, json={"input": 1}))[0] == 200


@pytest.mark.parametrize(
    ("data", "content_type", "status", "kind"),
    [
        (b"{not json", "application/json", 400, "invalid_json"),
        (b"", "application/json", 400, "invalid_json"),
        (b"\xff\xfe\x00", "application/json", 400, "invalid_json"),
        (b'{"input": 1}', "text/plain", 415, "unsupported_media_type"),
        (b"\x00" * 100, "application/octet-stream", 415, "unsupported_media_type"),
    ],
)
async def test_malformed_json_empty_bodies_and_other_content_types_are_refused(
    data: bytes, content_type: str, status: int, kind: str
) -> None:
    async with started([asyncml.load(double)]) as running:
        headers = {"Content-Type": content_type}
        answer = await running.post(PREDICT, data=data, headers=headers)
        assert (answer[0], answer[1]["type"]) == (status, kind)
        assert (await running.post(PREDICT, json={"input": 1}))[0] == 200


async def test_garbage_never_crashes_the_server() -> None:
    async with started([asyncml.load(double)]) as running:
        port = running.server.port
        for garbage in (
            b"\x00\x01\x02 garbage\r\n\r\n",
            b"POST /v1/models/double/predict HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
            b"POST /v1/models/%ff%fe/predict HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
            b"Content-Length: 2\r\n\r\n{}",
            b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n",
        ):
            answer = await raw_exchange(port, garbage)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer[:100]
        deep = b"[" * 100_000 + b"]" * 100_000
        status, error, _ = await running.post(
            PREDICT, data=deep, headers={"Content-Type": "application/json"}
        )
        assert (status, error["type"]) == (400, "invalid_json")
        assert (await running.post(PREDICT, json={"input": 1}))[:2] == (200, {"output": 2})


async def test_an_item_whose_deadline_passes_in_the_queue_gets_504_and_is_never_computed() -> None:
    gated = GatedModel()
    gated.gate.clear()
    model = asyncml.load(gated, max_batch_size=1, name="gated")
    async with started([model]) as running, asyncio.TaskGroup() as group:
        path = "/v1/models/gated/predict"
        first = group.create_task(running.post(path, json={"input": "first"}))
        await gated.started.wait()  # "first" holds the only worker
        status, error, _ = await running.post(
            path, json={"input": "late"}, headers={"X-Request-Timeout": "0.05"}
        )
        assert (status, error["type"]) == (504, "deadline_exceeded")
        status, error, _ = await running.post(path, json={"input": "later", "timeout": 0.05})
        assert status == 504
        gated.gate.set()
        assert (await first)[:2] == (200, {"output": ["out", "first"]})
        assert (await running.post(path, json={"input": "next"}))[0] == 200
        assert gated.seen == ["first", "next"]
        assert model.statistics().timed_out == 2


async def test_a_client_that_disconnects_has_its_queued_item_removed() -> None:
    gated = GatedModel()
    gated.gate.clear()
    model = asyncml.load(gated, max_batch_size=1, name="gated")
    path = "/v1/models/gated/predict"
    async with started([model]) as running, asyncio.TaskGroup() as group:
        first = group.create_task(running.post(path, json={"input": "first"}))
        await gated.started.wait()
        body = b'{"input": "abandoned"}'
        _, writer = await asyncio.open_connection("127.0.0.1", running.server.port)
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        await until(lambda: model.statistics().submitted == 2)
        writer.close()
        await writer.wait_closed()
        await until(lambda: running.status_count("gated", "v1_predict", 499) == 1, limit=100_000)
        gated.gate.set()
        assert (await first)[0] == 200
        assert (await running.post(path, json={"input": "next"}))[0] == 200
        assert gated.seen == ["first", "next"]
        stats = model.statistics()
        assert (stats.completed, stats.cancelled) == (2, 1)


async def test_overload_is_refused_at_once_with_503_and_service_resumes_when_load_drops() -> None:
    gated = GatedModel()
    gated.gate.clear()
    model = asyncml.load(gated, max_batch_size=1, max_queue=2, name="gated")
    path = "/v1/models/gated/predict"
    async with started([model], retry_after=2) as running, asyncio.TaskGroup() as group:
        held = [group.create_task(running.post(path, json={"input": "first"}))]
        await gated.started.wait()
        held += [group.create_task(running.post(path, json={"input": i})) for i in (1, 2)]
        await until(lambda: model.statistics().queued == 2)
        status, error, response = await running.post(path, json={"input": "refused"})
        assert (status, error["type"]) == (503, "overloaded")
        assert response.headers["Retry-After"] == "2"
        status, error, _ = await running.post(path, json={"inputs": [3, 4]})
        assert status == 503
        assert model.statistics().queued == 2  # nothing of the refused requests stayed queued
        gated.gate.set()
        assert [(await task)[0] for task in held] == [200, 200, 200]
        assert (await running.post(path, json={"inputs": [5, 6]}))[:2] == (
            200,
            {"outputs": [["out", 5], ["out", 6]]},
        )
        assert "refused" not in gated.seen


class SlowStart(asyncml.Model[Any, Any]):
    """An async model whose setup waits for the test's signal."""

    gate: ClassVar[asyncio.Event]

    async def setup(self) -> None:
        await SlowStart.gate.wait()

    async def predict(self, batch: list[Any]) -> list[Any]:
        return batch


async def test_readyz_turns_ready_only_once_every_worker_finished_setup() -> None:
    SlowStart.gate = asyncio.Event()
    model = asyncml.load(SlowStart, workers=2, name="slow")
    async with started([model], wait_ready=False) as running:
        assert (await running.get("/healthz"))[0] == 200
        status, body = await running.get("/readyz")
        assert (status, body["models"]) == (503, [{"name": "slow", "state": "loading"}])
        assert (await running.get("/v2/health/ready"))[0] == 503
        assert (await running.get("/v2/models/slow/ready"))[0] == 503
        status, error, response = await running.post("/v1/models/slow/predict", json={"input": 1})
        assert (status, error["error"]) == (503, "model 'slow' is loading")
        assert response.headers["Retry-After"] == "1"
        SlowStart.gate.set()
        await running.app.wait_ready()
        assert (await running.get("/readyz"))[0] == 200
        assert (await running.get("/v2/health/ready"))[0] == 200
        assert (await running.post("/v1/models/slow/predict", json={"input": 1}))[0] == 200


class BrokenSetup(asyncml.Model[Any, Any]):
    def setup(self) -> None:
        raise OSError("weights not found")

    def predict(self, batch: list[Any]) -> list[Any]:
        return batch


async def test_a_model_that_fails_to_start_is_reported_and_never_ready() -> None:
    async with started(
        [asyncml.load(BrokenSetup), asyncml.load(double)], wait_ready=False
    ) as running:
        with pytest.raises(asyncml.SetupError, match="weights not found"):
            await running.app.wait_ready()
        status, body = await running.get("/readyz")
        assert status == 503
        broken = body["models"][0]
        assert (broken["name"], broken["state"]) == ("BrokenSetup", "failed")
        assert "weights not found" in broken["error"]
        status, error, _ = await running.post("/v1/models/BrokenSetup/predict", json={"input": 1})
        assert status == 503
        assert "failed" in error["error"]
        await running.app.models.get("double").wait_ready()  # its setup runs on, in parallel
        assert (await running.post(PREDICT, json={"input": 1}))[0] == 200
        status, metrics = await running.get("/metrics")
    assert status == 200
    assert 'asyncml_model_ready{model="BrokenSetup"} 0.0' in metrics
    assert 'asyncml_model_ready{model="double"} 1.0' in metrics


async def test_metrics_report_requests_latency_batches_queue_and_loop_lag() -> None:
    async with started([asyncml.load(double)]) as running:
        await running.post(PREDICT, json={"inputs": [1, 2, 3]})
        await running.post(PREDICT, json={"input": 13})
        status, text = await running.get("/metrics")
    assert status == 200
    for line in (
        'asyncml_http_requests_total{endpoint="v1_predict",model="double",status="200"} 1.0',
        'asyncml_http_requests_total{endpoint="v1_predict",model="double",status="500"} 1.0',
        'asyncml_http_request_duration_seconds_count{endpoint="v1_predict",model="double"} 2.0',
        'asyncml_model_batch_size_bucket{le="4",model="double"} 2.0',
        'asyncml_model_batch_size_sum{model="double"} 4.0',
        'asyncml_model_queue_depth{model="double"} 0.0',
        'asyncml_model_items_total{model="double",outcome="completed"} 3.0',
        'asyncml_model_items_total{model="double",outcome="failed"} 1.0',
        'asyncml_model_ready{model="double"} 1.0',
        'asyncml_worker_restarts_total{model="double"} 0.0',
    ):
        assert line in text, line
    for name in ("asyncml_event_loop_lag_seconds{", "asyncml_model_latency_seconds{"):
        assert name in text


async def test_the_openapi_document_lists_the_endpoints_and_models() -> None:
    async with started([asyncml.load(double)]) as running:
        status, document = await running.get("/openapi.json")
    assert status == 200
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    assert {"/v1/models/{name}/predict", "/v2/models/{name}/infer", "/readyz", "/metrics"} <= set(
        paths
    )
    parameters = paths["/v1/models/{name}/predict"]["post"]["parameters"]
    assert parameters[0]["schema"] == {"enum": ["double"]}


async def test_the_app_mounts_in_a_starlette_app_that_shares_its_lifespan() -> None:
    serving = asyncml.server.create_app({"twice": asyncml.load(double)})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with serving.running():
            yield

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    outer = Starlette(routes=[Route("/hello", hello), Mount("/ml", serving)], lifespan=lifespan)
    async with (
        asyncml.server.serving(outer, port=0) as server,
        aiohttp.ClientSession(server.url) as http,
    ):
        await serving.wait_ready()
        async with http.post("/ml/v1/models/twice/predict", json={"input": 4}) as response:
            assert (response.status, await response.json()) == (200, {"output": 8})
        async with http.get("/hello") as response:
            assert await response.text() == "hello"
        async with http.get("/ml/readyz") as response:
            assert response.status == 200


def test_create_app_refuses_what_it_cannot_serve() -> None:
    with pytest.raises(ValueError, match="no models"):
        asyncml.server.create_app([])
    with pytest.raises(ValueError, match="two models are named 'double'"):
        asyncml.server.create_app([asyncml.load(double), asyncml.load(double)])
    with pytest.raises(TypeError, match=r"asyncml\.load"):
        asyncml.server.create_app({"f": double})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_body_size"):
        asyncml.server.create_app([asyncml.load(double)], max_body_size=0)


def test_importing_asyncml_does_not_import_the_server() -> None:
    import subprocess
    import sys

    code = "import asyncml, sys; print([m for m in ('starlette', 'uvicorn') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


async def test_the_operators_timeout_caps_what_a_request_asks_for() -> None:
    gated = GatedModel()
    gated.gate.clear()
    model = asyncml.load(gated, max_batch_size=1, timeout=0.05, name="gated")
    path = "/v1/models/gated/predict"
    async with started([model]) as running, asyncio.TaskGroup() as group:
        first = group.create_task(running.post(path, json={"input": "first"}))
        await gated.started.wait()  # "first" holds the only worker
        for asked in ({"headers": {"X-Request-Timeout": "60"}}, {}):
            status, error, _ = await running.post(path, json={"input": "late", "timeout": 60})
            assert (status, error["type"]) == (504, "deadline_exceeded")
            status, error, _ = await running.post(path, json={"input": "late"}, **asked)
            assert (status, error["type"]) == (504, "deadline_exceeded")
        gated.gate.set()
        assert (await first)[0] == 504  # it ran past the cap too, though it was computed
        assert gated.seen == ["first"]


async def test_more_items_than_the_queue_can_ever_hold_is_422_not_503() -> None:
    async with started([asyncml.load(double, max_queue=4)]) as running:
        status, error, response = await running.post(PREDICT, json={"inputs": [1, 2, 3, 4, 5]})
        assert (status, error["field"]) == (422, "inputs")
        assert "model 'double' holds at most 4 at once" in error["error"]
        assert "Retry-After" not in response.headers
        status, body, _ = await running.post(PREDICT, json={"inputs": [1, 2, 3, 4]})
        assert (status, body) == (200, {"outputs": [2, 4, 6, 8]})


async def test_middleware_of_the_users_sees_the_inference_requests_too() -> None:
    class RequireToken(BaseHTTPMiddleware):
        async def dispatch(self, request: Request, call_next: Any) -> Any:
            if request.headers.get("authorization") != "Bearer secret":
                return PlainTextResponse("unauthorized", 401)
            return await call_next(request)

    app = asyncml.server.create_app([asyncml.load(double)])
    app.add_middleware(RequireToken)
    async with (
        asyncml.server.serving(app, port=0) as server,
        aiohttp.ClientSession(server.url) as http,
    ):
        await app.wait_ready()
        for path, body in ((PREDICT, {"input": 2}), ("/v2/models/double/infer", {})):
            async with http.post(path, json=body) as response:
                assert response.status == 401, path
        headers = {"Authorization": "Bearer secret"}
        async with http.post(PREDICT, json={"input": 2}, headers=headers) as response:
            assert (response.status, await response.json()) == (200, {"output": 4})


async def test_requests_still_running_when_the_shutdown_timeout_ends_get_503(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gated = GatedModel()
    gated.gate.clear()
    app = asyncml.server.create_app([asyncml.load(gated, name="gated")])
    async with (
        aiohttp.ClientSession() as http,
        asyncml.server.serving(app, port=0, shutdown_timeout=0.05) as server,
    ):
        await app.wait_ready()
        url = f"{server.url}/v1/models/gated/predict"
        request = asyncio.ensure_future(http.post(url, json={"input": "held"}))
        try:
            await gated.started.wait()
            server.stop()
            async with await request as response:
                status, error = response.status, await response.json()
                retry = response.headers["Retry-After"]
            # The batch nobody awaits any more is not drained: the server stops now,
            # though the gate never opens.
            async with asyncio.timeout(10):
                await server.wait_stopped()
        finally:
            request.cancel()
    assert (status, error["type"], retry) == (503, "unavailable", "1")
    assert "stopped before this request finished" in error["error"]
    assert "Exception in ASGI application" not in caplog.text
    assert gated.batches == [["held"]]


async def test_max_connections_counts_open_connections() -> None:
    app = asyncml.server.create_app([asyncml.load(double)])
    async with asyncml.server.serving(app, port=0, max_connections=1) as server:
        await app.wait_ready()
        request = (
            f"POST {PREDICT} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            'Content-Length: 12\r\nConnection: close\r\n\r\n{"input": 1}'
        ).encode()
        assert b" 200 OK" in await raw_exchange(server.port, request)
        _, idle = await asyncio.open_connection("127.0.0.1", server.port)  # keeps one open
        try:
            await until(lambda: len(server._server.server_state.connections) == 1)
            assert b" 503 " in await raw_exchange(server.port, request)
        finally:
            idle.close()
            await idle.wait_closed()
        await until(lambda: not server._server.server_state.connections)
        assert b" 200 OK" in await raw_exchange(server.port, request)


async def test_a_mounted_apps_openapi_document_names_where_it_is_mounted() -> None:
    serving = asyncml.server.create_app({"twice": asyncml.load(double)})
    outer = Starlette(routes=[Mount("/ml", serving)])
    async with (
        asyncml.server.serving(outer, port=0) as server,
        aiohttp.ClientSession(server.url) as http,
        serving.running(),
        http.get("/ml/openapi.json") as response,
    ):
        document = await response.json()
    assert document["servers"] == [{"url": "/ml"}]
    assert "/v1/models/{name}/predict" in document["paths"]


async def test_an_app_that_has_run_cannot_run_again() -> None:
    app = asyncml.server.create_app([asyncml.load(double)])
    async with app.running():
        with pytest.raises(RuntimeError, match="already running"):
            async with app.running():
                pass
    with pytest.raises(RuntimeError, match="already run and stopped: make a new one"):
        async with app.running():
            pass
