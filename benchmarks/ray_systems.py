"""The systems that run on Ray: asyncml's Ray executor and two Ray peers.

=====================  =====================================================================
``asyncml-ray``        ``await model(x)`` on ``asyncml.load(predict, executor="ray")``: the
                       batcher in this process, the model in Ray actors
``ray-serve-handle``   a Ray Serve deployment whose ``@serve.batch`` handler runs the model,
                       called per item through its ``DeploymentHandle``
``ray-tasks``          a ``ray.remote`` function called per item: no batching
=====================  =====================================================================

Each measurement starts its own local Ray with two CPUs (its temp folder under /tmp, usage
statistics off, workers at the same niceness as every other system's), untimed, and shuts
it down after. Every Ray system uses two workers with
one CPU and one intra-op thread each: two actors, two Serve replicas, or tasks of one CPU.
Serve gets ``max_ongoing_requests=1024`` (the default, 5, would cap every batch at 5),
asyncml's max batch size, no batch wait, and no HTTP proxy.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from loadgen import Measurement
from systems import Job, asyncml_model, timed_closed_loop, warm_up
from workloads import BatchFn, build_model

#: Workers (actors, replicas, CPUs for tasks) of every Ray system.
RAY_WORKERS = 2


@contextmanager
def local_ray() -> Iterator[Any]:
    """A local Ray with two CPUs for one measurement; shut down and removed after."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    # Ray runs its workers at niceness 15: on a machine shared with other work they would
    # get a fraction of the CPU that the other systems' processes get.
    os.environ["RAY_worker_niceness"] = "0"  # noqa: SIM112  # Ray spells it so
    here = str(Path(__file__).resolve().parent)  # workers import workloads.py from here
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    import ray

    ray.init(
        num_cpus=RAY_WORKERS,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
        _temp_dir=temp,
    )
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def one_thread() -> None:
    """One BLAS/OpenMP and torch thread in this worker: two workers share two cores."""
    import sys

    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    torch: Any = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def asyncml_ray(job: Job) -> Measurement:
    """Closed-loop callers doing ``await model(x)``, the model in Ray actors."""
    with local_ray():
        return asyncio.run(asyncml_model(job))


def ray_serve_handle(job: Job) -> Measurement:
    """Closed-loop callers doing ``await handle.remote(x)`` on a Serve deployment."""
    with local_ray():
        from ray import serve

        serve.start(proxy_location="Disabled")

        @serve.deployment(
            num_replicas=RAY_WORKERS,
            max_ongoing_requests=1024,
            ray_actor_options={"num_cpus": 1},
        )
        class Model:
            def __init__(self, workload: str, cache_dir: Path | None) -> None:
                self.model = build_model(workload, cache_dir)
                one_thread()

            @serve.batch(max_batch_size=job.config.max_batch_size, batch_wait_timeout_s=0.0)
            async def __call__(self, items: list[Any]) -> list[Any]:
                return self.model(items)  # in the handler, as Ray's own examples do

        handle = serve.run(Model.bind(job.workload, job.cache_dir), name="bench")  # type: ignore[attr-defined]
        try:
            return asyncio.run(_closed_loop(handle.remote, job))
        finally:
            serve.shutdown()  # type: ignore[no-untyped-call]


def ray_tasks(job: Job) -> Measurement:
    """Closed-loop callers each doing ``await predict_one.remote(x)``: a task per item."""
    with local_ray() as ray:
        remote = ray.remote(num_cpus=1)(predict_one)
        workload, cache = job.workload, job.cache_dir

        def call(item: Any) -> Any:
            return remote.remote(workload, cache, item)

        return asyncio.run(_closed_loop(call, job))


async def _closed_loop(call: Any, job: Job) -> Measurement:
    await warm_up(call, job)
    return await timed_closed_loop(call, job)


@functools.cache
def _worker_model(workload: str, cache_dir: Path | None) -> BatchFn:
    model = build_model(workload, cache_dir)
    one_thread()
    return model


def predict_one(workload: str, cache_dir: Path | None, item: Any) -> Any:
    """A Ray task: the model (built once per worker process) on one item."""
    return _worker_model(workload, cache_dir)([item])[0]


RAY_SYSTEMS = {
    "asyncml-ray": asyncml_ray,
    "ray-serve-handle": ray_serve_handle,
    "ray-tasks": ray_tasks,
}
