"""Pipelines served over HTTP: a real uvicorn on 127.0.0.1 (an ephemeral port), in the test's
loop, and ``asyncml serve file.py:pipeline`` as a subprocess.

The pipeline looks a digit up (an async stage, which the test can hold with a gate), scales
it on a thread and classifies it with a model stage. Timing comes from that gate and from
statistics, never from sleeps; the only real-clock waits are deadlines meant to pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from click.testing import CliRunner
from sklearn.datasets import load_digits
from sklearn.neighbors import KNeighborsClassifier

import asyncml
import asyncml.server
from asyncml.cli import main
from asyncml.pipeline import Pipeline, PipelineService, stage
from asyncml.pipeline._runners import StageRun
from tests.helpers import until
from tests.scripts import server_workers
from tests.test_server import Running, SlowStart, started
from tests.test_server_cli import assert_sigterm_drains
from tests.test_server_workers import eventually, worker_processes

PIXELS, LABELS = load_digits(return_X_y=True)
PREDICT = "/v1/models/digits/predict"


class Store:
    """The first stage: looks digit ``i`` up, as a fetch from a remote store would. It
    records every index it is asked for and holds each item while ``gate`` is clear."""

    def __init__(self) -> None:
        self.asked: list[int] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.holding = asyncio.Event()

    async def __call__(self, i: int) -> npt.NDArray[np.float64]:
        self.asked.append(int(i))
        self.holding.set()
        await self.gate.wait()
        if not 0 <= i < len(PIXELS):
            raise ValueError(f"no digit {i}")
        return PIXELS[i]  # type: ignore[no-any-return]


def scale(pixels: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return pixels / 16.0


class Digits(asyncml.Model[npt.NDArray[np.float64], int]):
    """One nearest neighbour over every digit: each digit's answer is its own label."""

    max_batch_size = 32

    def setup(self) -> None:
        self.classifier = KNeighborsClassifier(n_neighbors=1).fit(PIXELS / 16.0, LABELS)

    def predict(self, rows: list[npt.NDArray[np.float64]]) -> list[int]:
        labels: list[int] = self.classifier.predict(np.stack(rows)).tolist()
        return labels


def digits(store: Store, *, concurrency: int = 16) -> Pipeline:
    return Pipeline(
        stage(store, name="fetch", concurrency=concurrency),
        stage(scale, executor="thread"),
        stage(Digits),
    )


def service(running: Running, name: str = "digits") -> PipelineService:
    served = running.app.models.get(name).model
    assert isinstance(served, PipelineService)
    return served


async def test_each_item_goes_through_every_stage_and_concurrent_requests_batch() -> None:
    async with started({"digits": digits(Store())}) as running:
        status, body, _ = await running.post(PREDICT, json={"input": 5})
        assert (status, body) == (200, {"output": int(LABELS[5])})
        status, body, _ = await running.post(PREDICT, json={"inputs": [1, 2, 3]})
        assert (status, body) == (200, {"outputs": LABELS[1:4].tolist()})
        answers = await asyncio.gather(
            *(running.post(PREDICT, json={"input": i}) for i in range(100, 164))
        )
        assert [body["output"] for _, body, _ in answers] == LABELS[100:164].tolist()
        assert (await running.get("/v1/models"))[1] == {
            "models": [{"name": "digits", "state": "ready"}]
        }
        stats = service(running).statistics()
    assert [s.name for s in stats.stages] == ["fetch", "scale", "Digits"]
    assert stats.finished == 68


async def test_a_stage_error_is_a_json_error_naming_the_stage_and_no_traceback() -> None:
    async with started({"digits": digits(Store())}) as running:
        status, error, _ = await running.post(PREDICT, json={"input": 5000})
        assert status == 500
        assert error == {
            "error": "stage 'fetch' failed after 1 attempt(s): ValueError: no digit 5000",
            "type": "stage_error",
            "stage": "fetch",
        }
        status, error, _ = await running.post(PREDICT, json={"inputs": [1, 5000, 3]})
        assert (status, error["stage"]) == (500, "fetch")
        assert error["error"].endswith("no digit 5000 (item 1)")
        status, error, _ = await running.post(PREDICT, json={"input": "seven"})
        assert (status, error["stage"]) == (500, "fetch")
        assert "Traceback" not in str(error)
        assert (await running.post(PREDICT, json={"input": 4}))[:2] == (
            200,
            {"output": int(LABELS[4])},
        )


@contextlib.asynccontextmanager
async def item_0_holding_the_stage(*, withdrawn: int) -> AsyncIterator[Running]:
    """A served pipeline whose first stage has one worker, held by item 0 while the test
    sends items that queue behind it, then lets it go. The test's ``withdrawn`` items must
    have left the queue: 0 and then 3 are served, and the stage never fetched another."""
    store = Store()
    store.gate.clear()
    async with (
        started({"digits": digits(store, concurrency=1)}) as running,
        asyncio.TaskGroup() as group,
    ):
        first = group.create_task(running.post(PREDICT, json={"input": 0}))
        await store.holding.wait()  # 0 holds the stage's only worker; later items queue
        yield running
        store.gate.set()
        assert (await first)[:2] == (200, {"output": int(LABELS[0])})
        # The stage takes its queue in order: the test's items were dropped before 3.
        assert (await running.post(PREDICT, json={"input": 3}))[0] == 200
        assert store.asked == [0, 3]
        assert service(running).statistics().stages[0].withdrawn == withdrawn


async def test_an_item_whose_deadline_passes_gets_504_and_no_stage_computes_it() -> None:
    async with item_0_holding_the_stage(withdrawn=2) as running:
        status, error, _ = await running.post(
            PREDICT, json={"input": 1}, headers={"X-Request-Timeout": "0.05"}
        )
        assert (status, error["type"]) == (504, "deadline_exceeded")
        assert error["error"] == "pipeline 'digits': the item's deadline passed"
        status, error, _ = await running.post(PREDICT, json={"input": 2, "timeout": 0.05})
        assert status == 504


async def test_a_client_that_disconnects_has_its_items_withdrawn() -> None:
    async with item_0_holding_the_stage(withdrawn=2) as running:
        body = b'{"inputs": [1, 2]}'
        _, writer = await asyncio.open_connection("127.0.0.1", running.server.port)
        writer.write(
            f"POST {PREDICT} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        await until(lambda: service(running).statistics().read == 3, limit=100_000)
        writer.close()
        await writer.wait_closed()
        await until(lambda: running.status_count("digits", "v1_predict", 499) == 1, limit=100_000)


async def test_a_full_pipeline_refuses_at_once_with_503_and_serves_again_after() -> None:
    store = Store()
    store.gate.clear()
    served = digits(store, concurrency=1).open(max_queue=2, name="digits")
    async with started({"digits": served}, retry_after=2) as running, asyncio.TaskGroup() as group:
        held = [group.create_task(running.post(PREDICT, json={"input": i})) for i in (0, 1)]
        await until(lambda: served.statistics().read == 2, limit=100_000)
        status, error, response = await running.post(PREDICT, json={"input": 2})
        assert (status, error["type"]) == (503, "overloaded")
        assert error["error"] == "pipeline 'digits' holds 2 items already"
        assert response.headers["Retry-After"] == "2"
        assert (await running.post(PREDICT, json={"inputs": [3, 4]}))[0] == 503
        store.gate.set()
        assert [(await task)[:2] for task in held] == [
            (200, {"output": int(LABELS[0])}),
            (200, {"output": int(LABELS[1])}),
        ]
        assert (await running.post(PREDICT, json={"inputs": [5, 6]}))[:2] == (
            200,
            {"outputs": LABELS[5:7].tolist()},
        )
        assert 2 not in store.asked


async def test_ready_only_once_every_stage_is_set_up() -> None:
    SlowStart.gate = asyncio.Event()
    pipeline = Pipeline(stage(Store(), name="fetch"), stage(SlowStart, workers=2))
    async with started({"slow": pipeline}, wait_ready=False) as running:
        assert (await running.get("/healthz"))[0] == 200
        status, body = await running.get("/readyz")
        assert (status, body["models"]) == (503, [{"name": "slow", "state": "loading"}])
        assert (await running.get("/v2/models/slow/ready"))[0] == 503
        status, error, response = await running.post("/v1/models/slow/predict", json={"input": 1})
        assert (status, error["error"]) == (503, "pipeline 'slow' is loading")
        assert response.headers["Retry-After"] == "1"
        SlowStart.gate.set()
        await running.app.wait_ready()
        assert (await running.get("/readyz"))[0] == 200
        status, body, _ = await running.post("/v1/models/slow/predict", json={"input": 1})
        assert (status, body["output"]) == (200, PIXELS[1].tolist())


@pytest.fixture
def no_leaked_processes() -> Iterator[None]:
    yield
    assert not worker_processes(), "worker processes outlived the test"


@pytest.mark.usefixtures("no_leaked_processes")
async def test_a_pipeline_whose_process_stage_lost_every_worker_is_not_ready(
    tmp_path: Path,
) -> None:
    log = tmp_path / "setups.log"
    fragile = server_workers.SetsUpOnlyTwice(str(log))
    pipeline = Pipeline(
        stage(Store(), name="fetch"), stage(fragile, name="pid", executor="process", workers=2)
    )
    path = "/v1/models/fragile/predict"
    async with started({"fragile": pipeline}) as running:
        assert (await running.post(path, json={"input": 1}))[0] == 200
        for pid in (await asyncio.to_thread(log.read_text)).split():
            os.kill(int(pid), signal.SIGKILL)
        # The next item finds the workers dead and none can be restarted.
        status, error, _ = await running.post(path, json={"input": 2})
        assert (status, error["type"], error["stage"]) == (503, "unavailable", "pid")
        await eventually(lambda: service(running, "fragile").statistics().broken)
        status, body = await running.get("/readyz")
        assert status == 503
        (state,) = body["models"]
        assert state["state"] == "failed"
        assert state["error"] == (
            "pipeline 'fragile': every worker of a stage died and none could be restarted"
        )
        status, error, _ = await running.post(path, json={"input": 3})
        assert (status, error["type"]) == (503, "unavailable")
        metrics = (await running.get("/metrics"))[1]
    assert 'asyncml_model_ready{model="fragile"} 0.0' in metrics


#: What ``split`` answers for 13: the stage's worker fails on it (see the test below).
BREAKS_THE_RUN = object()


def split(i: int) -> Any:
    return [BREAKS_THE_RUN if i == 13 else i]


async def test_a_pipeline_whose_run_broke_fails_alone_and_the_others_serve_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Items fail alone, so only a fault of the stage's own machinery breaks a run: simulate
    # one where it hands outputs on.
    pass_on = StageRun._pass_on

    def faulty(run: StageRun, items: list[Any], results: list[Any]) -> list[Any]:
        if run.stage.name == "split" and results == [[BREAKS_THE_RUN]]:
            raise RuntimeError("a fault in the stage's worker")
        return pass_on(run, items, results)

    monkeypatch.setattr(StageRun, "_pass_on", faulty)
    models = {
        "split": Pipeline(stage(split, executor="inline", flat=True)),
        "digits": digits(Store()),
    }
    path = "/v1/models/split/predict"
    async with started(models) as running:
        assert (await running.post(path, json={"input": 1}))[:2] == (200, {"output": [1]})
        status, error, _ = await running.post(path, json={"input": 13})
        stopped = "pipeline 'split' stopped: stage 'split' broke: RuntimeError: a fault in the"
        assert (status, error["type"]) == (503, "unavailable")
        assert error["error"].startswith(stopped)
        await eventually(lambda: running.app.models.get("split").state.value == "failed")
        status, body = await running.get("/readyz")
        assert status == 503
        assert [(m["name"], m["state"]) for m in body["models"]] == [
            ("split", "failed"),
            ("digits", "ready"),
        ]
        assert body["models"][0]["error"].startswith(stopped)
        assert (await running.post(path, json={"input": 2}))[0] == 503
        status, body, _ = await running.post(PREDICT, json={"input": 5})
        assert (status, body) == (200, {"output": int(LABELS[5])})


async def test_metrics_count_requests_and_each_stage() -> None:
    async with started({"digits": digits(Store())}) as running:
        await running.post(PREDICT, json={"inputs": [1, 2, 3]})
        await running.post(PREDICT, json={"input": 5000})
        status, text = await running.get("/metrics")
    assert status == 200
    for line in (
        'asyncml_http_requests_total{endpoint="v1_predict",model="digits",status="200"} 1.0',
        'asyncml_http_requests_total{endpoint="v1_predict",model="digits",status="500"} 1.0',
        'asyncml_http_request_duration_seconds_count{endpoint="v1_predict",model="digits"} 2.0',
        'asyncml_model_ready{model="digits"} 1.0',
        'asyncml_pipeline_stage_items_total{model="digits",outcome="ok",stage="fetch"} 3.0',
        'asyncml_pipeline_stage_items_total{model="digits",outcome="failed",stage="fetch"} 1.0',
        'asyncml_pipeline_stage_items_total{model="digits",outcome="withdrawn",stage="fetch"} 0.0',
        'asyncml_pipeline_stage_items_total{model="digits",outcome="ok",stage="Digits"} 3.0',
        'asyncml_pipeline_stage_queue_depth{model="digits",stage="scale"} 0.0',
        'asyncml_pipeline_stage_in_flight_items{model="digits",stage="Digits"} 0.0',
        'asyncml_pipeline_stage_retries_total{model="digits",stage="fetch"} 0.0',
    ):
        assert line in text, line
    assert 'asyncml_model_queue_depth{model="digits"}' not in text  # models' figures only


def tensor(shape: list[int], datatype: str, data: list[Any]) -> dict[str, Any]:
    return {"name": "index", "shape": shape, "datatype": datatype, "data": data}


def repeat(i: int) -> list[int]:
    """A flat-map that is also a filter: ``i % 3`` copies of ``i``."""
    return [int(i)] * (int(i) % 3)


async def test_v2_infer_serves_a_pipeline_of_one_output_per_item_but_not_a_flat_one() -> None:
    pipelines = {
        "digits": digits(Store()),
        "repeat": Pipeline(stage(repeat, executor="inline", flat=True)),
    }
    async with started(pipelines) as running:
        body = {"inputs": [tensor([3], "INT64", [7, 8, 9])]}
        status, answer, _ = await running.post("/v2/models/digits/infer", json=body)
        assert status == 200
        (output,) = answer["outputs"]
        assert (output["shape"], output["data"]) == ([3], LABELS[7:10].tolist())
        # A flat pipeline answers a list per item, possibly empty: v1 only.
        status, answer, _ = await running.post(
            "/v1/models/repeat/predict", json={"inputs": [0, 1, 2]}
        )
        assert (status, answer) == (200, {"outputs": [[], [1], [2, 2]]})
        status, answer, _ = await running.post("/v1/models/repeat/predict", json={"input": 3})
        assert (status, answer) == (200, {"output": []})
        status, error, _ = await running.post("/v2/models/repeat/infer", json=body)
        assert (status, error["type"]) == (422, "unsupported_protocol")
        assert "POST /v1/models/repeat/predict" in error["error"]


def test_create_app_takes_pipelines_open_or_not_under_their_names() -> None:
    pipeline = digits(Store())
    app = asyncml.server.create_app([pipeline, pipeline.open(name="named"), asyncml.load(scale)])
    assert [(s.name, s.kind) for s in app.models] == [
        ("fetch+scale+Digits", "pipeline"),
        ("named", "pipeline"),
        ("scale", "model"),
    ]
    with pytest.raises(TypeError, match=r"asyncml\.load\(\) or pipelines"):
        asyncml.server.create_app({"f": scale})  # type: ignore[arg-type]


SERVED_PIPELINE = """
import sys

from asyncml import Pipeline, stage


async def tag(x):
    return f"done {x}"


def held(text):
    print("computing", flush=True)
    sys.stdin.readline()
    return text


pipeline = Pipeline(stage(tag), stage(held, executor="thread"))
"""


@pytest.fixture(scope="module")
def served_pipeline(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A REF to a pipeline whose thread stage announces each item on stdout, then waits
    for a line on stdin (one file: the CLI's tests import it into this process)."""
    script = tmp_path_factory.mktemp("served") / "served_pipeline.py"
    script.write_text(SERVED_PIPELINE)
    return f"{script}:pipeline"


@pytest.mark.parametrize(
    ("options", "flags"),
    [(["--workers", "2"], "--workers"), (["--executor", "process"], "--executor")],
)
def test_serve_refuses_model_options_for_a_pipeline(
    served_pipeline: str, options: list[str], flags: str
) -> None:
    result = CliRunner().invoke(main, ["serve", served_pipeline, *options])
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith("asyncml serve: error: ")
    assert line.endswith(
        f"is a pipeline: its stages choose their executors, workers and batching; drop {flags}"
    )


def test_sigterm_finishes_the_items_in_flight_and_exits_0(served_pipeline: str) -> None:
    assert_sigterm_drains(served_pipeline, "pipeline", "--max-queue", "8", "--timeout", "60")
