"""Probes and listings: ``/healthz``, ``/readyz``, ``/v1/models`` and ``/metrics``."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from ._http import Receive, Reply, Scope, json_reply
from ._metrics import exposition
from ._models import Models, State


def _describe(models: Models) -> list[dict[str, str]]:
    listing = []
    for served in models:
        state = served.state
        entry = {"name": served.name, "state": state.value}
        if state is State.FAILED and served.error is not None:
            entry["error"] = str(served.error)
        listing.append(entry)
    return listing


class Live:
    """``GET /healthz``: 200 while the server runs (also while models load)."""

    async def __call__(self, scope: Scope, receive: Receive) -> Reply:
        return json_reply({"status": "live"})


class Ready:
    """``GET /readyz``: 200 once every model's workers have all run ``setup()``; 503 before,
    when a model failed, and while shutting down."""

    def __init__(self, models: Models):
        self._models = models

    async def __call__(self, scope: Scope, receive: Receive) -> Reply:
        ready = self._models.ready
        status = "ready" if ready else "not ready"
        return json_reply(
            {"status": status, "models": _describe(self._models)}, 200 if ready else 503
        )


class ListModels:
    """``GET /v1/models``: every model with its state."""

    def __init__(self, models: Models):
        self._models = models

    async def __call__(self, scope: Scope, receive: Receive) -> Reply:
        return json_reply({"models": _describe(self._models)})


class Metrics:
    """``GET /metrics``: Prometheus' text format."""

    def __init__(self, registry: CollectorRegistry):
        self._registry = registry

    async def __call__(self, scope: Scope, receive: Receive) -> Reply:
        return Reply(200, exposition(self._registry), CONTENT_TYPE_LATEST.encode())
