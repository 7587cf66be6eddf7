"""The HTTP servers under test, one per system, each serving one workload's model.

::

    python benchmarks/http_servers.py SYSTEM WORKLOAD PORT CACHE_DIR

Runs in the foreground until SIGTERM. Every system serves the same batch function (from
``workloads.py``) with the same max batch size and batch wait, and answers a JSON body
``{"input": item}`` with ``{"output": ...}`` on the path that ``ENDPOINTS`` gives:

==============  ==========================================================================
``asyncml``     ``asyncml.server.create_app`` on uvicorn (uvloop, httptools), ``POST
                /v1/models/model/predict``
``litserve``    a ``LitAPI`` with ``max_batch_size`` and ``batch_timeout``, one worker,
                ``POST /predict``
``ray-serve``   a deployment with ``@serve.batch`` (the model runs in the batch handler),
                ``max_ongoing_requests=1024``, Ray started with ``num_cpus=2``, ``POST /``
==============  ==========================================================================
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from workloads import build_model

#: The path each system answers on, and the path that says it is ready.
ENDPOINTS = {
    "asyncml": ("/v1/models/model/predict", "/readyz"),
    "litserve": ("/predict", "/health"),
    "ray-serve": ("/", "/-/healthz"),
}
#: Batching settings shared by every system (asyncml's benchmark settings: a max batch of
#: 256, no batch wait; W1 batches of 16).
MAX_BATCH_SIZE = {"W1": 16, "W2": 256, "W3": 256}
BATCH_WAIT_S = 0.0
#: asyncml's other settings: for W1 two workers of one intra-op thread each, with
#: length-aware batching (as in ``run.py``); W2 and W3 on one worker process, so that the
#: model never holds the GIL that the server's event loop needs for HTTP.
ASYNCML_OPTIONS: dict[str, dict[str, Any]] = {
    "W1": {"workers": 2, "item_cost": len},
    "W2": {"executor": "process"},
    "W3": {"executor": "process"},
}


def one_blas_thread() -> None:
    """Peers get one BLAS/OpenMP thread, as in the in-process benchmarks (asyncml sets its
    own per-worker limit); two threads on two shared cores only oversubscribe them."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def asyncml_model(workload: str, cache: Path) -> Any:
    """The model asyncml serves (and ``http_load.py inprocess`` calls directly)."""
    import asyncml

    predict = build_model(workload, cache)
    options = ASYNCML_OPTIONS.get(workload, {})
    return asyncml.load(predict, max_batch_size=MAX_BATCH_SIZE[workload], name="model", **options)


def run_asyncml(workload: str, port: int, cache: Path) -> None:
    import uvloop

    import asyncml.server
    from asyncml.job import fewer_collections

    app = asyncml.server.create_app([asyncml_model(workload, cache)])

    async def serve() -> None:
        # As `asyncml serve` does: once the model is loaded, the collector skips what
        # start-up made and collects less often (without it, full collections stalled the
        # loop for about 100 ms under open-loop load).
        async with asyncml.server.serving(
            app, port=port, shutdown_timeout=5, handle_signals=True
        ) as server:
            await app.wait_ready()
            with fewer_collections(freeze=True):
                await server.wait_stopped()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve())


def run_litserve(workload: str, port: int, cache: Path) -> None:
    import litserve as ls
    from http_litserve import WorkloadAPI

    api = WorkloadAPI(
        workload, cache, max_batch_size=MAX_BATCH_SIZE[workload], batch_timeout=BATCH_WAIT_S
    )
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(port=port, generate_client_file=False, log_level="warning")


def run_ray_serve(workload: str, port: int, cache: Path) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve
    from starlette.requests import Request

    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    ray.init(num_cpus=2, _temp_dir=temp, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})

    @serve.deployment(max_ongoing_requests=1024)
    class Model:
        def __init__(self) -> None:
            one_blas_thread()
            self.model = build_model(workload, cache)

        @serve.batch(max_batch_size=MAX_BATCH_SIZE[workload], batch_wait_timeout_s=BATCH_WAIT_S)
        async def handle(self, items: list[Any]) -> list[Any]:
            outputs = self.model(items)
            return [o.tolist() if hasattr(o, "tolist") else o for o in outputs]

        async def __call__(self, request: Request) -> dict[str, Any]:
            body = await request.json()
            return {"output": await self.handle(body["input"])}

    serve.run(Model.bind(), route_prefix="/")  # type: ignore[attr-defined]
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    stopped.wait()
    serve.shutdown()  # type: ignore[no-untyped-call]
    ray.shutdown()


SERVERS = {"asyncml": run_asyncml, "litserve": run_litserve, "ray-serve": run_ray_serve}


if __name__ == "__main__":
    system, workload, port, cache = sys.argv[1:5]
    SERVERS[system](workload, int(port), Path(cache))
