"""The ASGI app: models (and pipelines), routes and the lifespan that loads and closes them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .._looplag import LoopLagMonitor
from . import _health, _v1, _v2
from ._endpoint import NO_MODEL, Endpoint, Handler
from ._http import Receive, Scope, Send
from ._metrics import RequestMetrics, ServerCollector, new_registry
from ._models import Models
from ._openapi import OpenAPI
from ._options import DEFAULT_MAX_BODY_SIZE, ServingOptions
from ._problems import Problem
from ._servable import Serves


class ServingApp(Starlette):
    """A Starlette app serving asyncml models and pipelines over HTTP; make one with
    :func:`create_app`.

    Its lifespan loads the models (see :meth:`running`): run it with uvicorn (or
    :func:`asyncml.server.serve`), or mount it in another app and enter :meth:`running` in
    that app's lifespan.
    """

    def __init__(self, models: Models, options: ServingOptions):
        self.models = models
        self.options = options
        self.request_metrics = RequestMetrics()
        self._lag: LoopLagMonitor | None = None
        self._running = self._ran = False
        self.metrics_registry = new_registry(
            ServerCollector(self.request_metrics, models, lambda: self._lag)
        )
        super().__init__(
            routes=self._routes(),
            lifespan=_lifespan,
            exception_handlers={HTTPException: _http_exception},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The inference endpoints skip Starlette's middleware and router: on a cheap model
        # they cost more per request than the rest of the server. They handle their own
        # errors, as the middleware would.
        # With middleware of the user's (authentication, CORS), every request goes through it.
        if scope["type"] == "http" and scope["method"] == "POST" and not self.user_middleware:
            endpoint = self._inference_endpoint(scope)
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    def _inference_endpoint(self, scope: Scope) -> Endpoint | None:
        """The endpoint of ``POST /v1/models/{name}/predict`` and of the v2 ``infer`` paths,
        with ``path_params`` set in ``scope``; ``None`` for other paths."""
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        if root and path.startswith(root) and path[len(root) : len(root) + 1] == "/":
            path = path[len(root) :]  # mounted: as Starlette's routing sees the path
        if path.startswith("/v1/models/") and path.endswith("/predict"):
            name = path[11:-8]
            if name and "/" not in name:
                scope["path_params"] = {"name": name}
                return self._predict
        elif path.startswith("/v2/models/") and path.endswith("/infer"):
            parts = path[11:-6].split("/")
            if len(parts) == 1 and parts[0]:
                scope["path_params"] = {"name": parts[0]}
                return self._infer
            if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2]:
                scope["path_params"] = {"name": parts[0], "version": parts[2]}
                return self._infer_version
        return None

    def _routes(self) -> list[BaseRoute]:
        models, options = self.models, self.options

        def endpoint(name: str, handler: Handler) -> Endpoint:
            return Endpoint(name, handler, models, self.request_metrics, options.retry_after)

        def route(path: str, name: str, handler: Handler | Endpoint, method: str = "GET") -> Route:
            if not isinstance(handler, Endpoint):
                handler = endpoint(name, handler)
            return Route(path, handler, methods=[method], name=name)

        infer = _v2.Infer(models, options)
        self._predict = endpoint("v1_predict", _v1.Predict(models, options))
        self._infer = endpoint("v2_infer", infer)
        self._infer_version = endpoint("v2_infer_version", infer)
        metadata = _v2.ModelMetadata(models)
        ready = _v2.ModelReady(models)
        model = "/v2/models/{name}"
        versioned = "/v2/models/{name}/versions/{version}"
        names = [served.name for served in models]
        return [
            # Requests reach these three through __call__; the routes answer other methods.
            route("/v1/models/{name}/predict", "v1_predict", self._predict, "POST"),
            route(f"{model}/infer", "v2_infer", self._infer, "POST"),
            route(f"{versioned}/infer", "v2_infer_version", self._infer_version, "POST"),
            route(model, "v2_model_metadata", metadata),
            route(versioned, "v2_model_version_metadata", metadata),
            route(f"{model}/ready", "v2_model_ready", ready),
            route(f"{versioned}/ready", "v2_model_version_ready", ready),
            route("/v2/health/live", "v2_live", _v2.ServerLive()),
            route("/v2/health/ready", "v2_ready", _v2.ServerReady(models)),
            route("/v2", "v2_metadata", _v2.ServerMetadata()),
            route("/v1/models", "v1_models", _health.ListModels(models)),
            route("/healthz", "healthz", _health.Live()),
            route("/readyz", "readyz", _health.Ready(models)),
            route("/metrics", "metrics", _health.Metrics(self.metrics_registry)),
            route("/openapi.json", "openapi", OpenAPI(names, options)),
        ]

    @asynccontextmanager
    async def running(self) -> AsyncIterator[ServingApp]:
        """Loads the models in the background and serves them while the block runs.

        The block is entered at once; ``/readyz`` turns 200 once every model has loaded
        (see :meth:`wait_ready`). Leaving the block normally lets queued and running items
        finish, then closes the models; leaving it on an exception or a cancellation fails
        queued items instead.

        Raises:
            RuntimeError: the app is running, or has run (its models cannot start again:
                make a new app).
        """
        if self._running:
            raise RuntimeError("this app is already running")
        if self._ran:
            raise RuntimeError("this app has already run and stopped: make a new one")
        self._running = self._ran = True
        stop = asyncio.Event()
        try:
            async with LoopLagMonitor(self.options.loop_lag_interval) as lag:
                self._lag = lag
                async with asyncio.TaskGroup() as group:
                    group.create_task(self.models.run(stop))
                    yield self
                    stop.set()
        finally:
            self._lag = None
            self._running = False

    def note_server_stopping(self) -> None:
        """Tells the app that its server is stopping: a request the server cancels from
        now on (its shutdown timeout ran out) is answered 503, rather than with the
        server's bare 500 and a logged traceback. :func:`serving` calls it."""
        self.models.stopping = True

    async def wait_ready(self) -> None:
        """Returns once every model is ready to serve.

        Raises:
            SetupError: a model failed to start (its workers' ``setup()`` raised).
            Closed: the app stopped before every model was ready.
        """
        await self.models.wait_ready()


@asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    assert isinstance(app, ServingApp)
    async with app.running():
        yield


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 and 405, in the same JSON shape as every other error, and
    counted (with no duration: the router answered at once) as ``endpoint="unrouted"``."""
    assert isinstance(exc, HTTPException)
    kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    problem = Problem(exc.status_code, kind, str(exc.detail))
    if isinstance(request.app, ServingApp):
        request.app.request_metrics.record(NO_MODEL, "unrouted", exc.status_code, 0.0)
    return Response(problem.body(), exc.status_code, exc.headers, "application/json")


def create_app(
    models: Mapping[str, Serves] | Iterable[Serves],
    *,
    max_body_size: int = DEFAULT_MAX_BODY_SIZE,
    max_items_per_request: int = 1024,
    retry_after: float = 1.0,
) -> ServingApp:
    """An ASGI app serving ``models`` (from :func:`asyncml.load`, not yet entered) and
    pipelines.

    The app's lifespan enters the models: don't enter them yourself. Their batching, queue
    bound (``max_queue``: requests beyond it get 503 at once) and default ``timeout`` are
    the ones given to :func:`asyncml.load`. A :class:`~asyncml.Pipeline` is served as
    ``pipeline.open()`` would run it (each request's items go through every stage); pass
    ``pipeline.open(max_queue=..., timeout=...)``, not yet entered, to choose its queue
    bound and default deadline.

    Args:
        models: ``{name: model or pipeline}``, or models served under their own ``name``
            (a pipeline under the name given to ``open()``, else its stages' names joined
            by ``+``).
        max_body_size: bytes a request body may have; larger ones get 413.
        max_items_per_request: items (or v2 rows) one request may carry; more get 422.
        retry_after: seconds that 503 answers ask clients to wait (``Retry-After``).

    Raises:
        TypeError: a model is neither a :class:`~asyncml.LoadedModel` nor a pipeline.
        ValueError: no models, two with one name, or an option out of range.
    """
    options = ServingOptions(
        max_body_size=max_body_size,
        max_items_per_request=max_items_per_request,
        retry_after=retry_after,
    )
    return ServingApp(Models(models), options)
