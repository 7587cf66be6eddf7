"""Starting, stopping and interrupting: no worker outlives its ``async with`` block."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, ClassVar

import pytest
from threadpoolctl import threadpool_info

import asyncml
from tests.helpers import GatedModel, until
from tests.process_models import FailsSetup

SCRIPTS = Path(__file__).parent / "scripts"
REPO = Path(__file__).parents[1]


class BrokenSetup(asyncml.Model[Any, Any]):
    def setup(self) -> None:
        raise OSError("weights not found: /nowhere/model.bin")

    def predict(self, batch: list[Any]) -> list[Any]:
        return batch


class AsyncBrokenSetup(asyncml.Model[Any, Any]):
    async def setup(self) -> None:
        raise OSError("cannot reach the service")

    async def predict(self, batch: list[Any]) -> list[Any]:
        return batch


@pytest.mark.parametrize("model", [BrokenSetup, AsyncBrokenSetup])
async def test_a_failing_setup_is_a_clear_start_up_error(
    model: type[asyncml.Model[Any, Any]],
) -> None:
    with pytest.raises(asyncml.SetupError) as caught:
        async with asyncml.load(model, workers=2):
            pytest.fail("must not start")
    error = caught.value
    assert error.model == model.__name__
    assert error.worker in (0, 1)
    assert "OSError" in str(error)
    assert isinstance(error.__cause__, OSError)


class Gate(asyncml.Model[int, int]):
    """A thread model whose batches wait for the test's go."""

    started = threading.Event()
    go = threading.Event()
    closed: ClassVar[list[str]] = []

    def predict(self, batch: list[int]) -> list[int]:
        Gate.started.set()
        if not Gate.go.wait(timeout=10):
            raise RuntimeError("the test never let the batch go")
        return batch

    def close(self) -> None:
        Gate.closed.append(threading.current_thread().name)


@pytest.fixture
def gate() -> type[Gate]:
    Gate.started.clear()
    Gate.go.clear()
    Gate.closed.clear()
    return Gate


async def wait_event(event: threading.Event) -> None:
    # The loop must never block on a thread event: poll it between loop iterations.
    await until(event.is_set, limit=10**7)


async def test_leaving_normally_finishes_queued_items(gate: type[Gate]) -> None:
    async with asyncml.load(gate, workers=2, max_batch_size=2) as m:
        calls = [asyncio.ensure_future(m(i)) for i in range(10)]
        await wait_event(gate.started)
        gate.go.set()
    assert [c.result() for c in calls] == list(range(10))
    assert sorted(gate.closed) == ["asyncml-Gate-0", "asyncml-Gate-1"]
    with pytest.raises(asyncml.Closed):
        await m(1)


async def test_leaving_on_an_error_fails_queued_items_and_finishes_running_ones(
    gate: type[Gate],
) -> None:
    with pytest.raises(KeyError):
        async with asyncml.load(gate, max_batch_size=1) as m:
            running = asyncio.ensure_future(m(0))
            await wait_event(gate.started)
            queued = [asyncio.ensure_future(m(i)) for i in range(1, 4)]
            await until(lambda: m.statistics().queued == 3)
            asyncio.get_running_loop().call_soon(gate.go.set)
            raise KeyError("user code failed")
    assert running.result() == 0
    for call in queued:
        assert isinstance(call.exception(), asyncml.Closed)
    assert m.statistics().cancelled == 3


async def test_cancellation_of_the_owner_stops_everything(gate: type[Gate]) -> None:
    async def owner() -> None:
        async with asyncml.load(gate, workers=2) as m:
            await asyncio.gather(*(m(i) for i in range(100)))

    task = asyncio.ensure_future(owner())
    await wait_event(gate.started)
    task.cancel()
    asyncio.get_running_loop().call_later(0.01, gate.go.set)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not [t for t in threading.enumerate() if t.name.startswith("asyncml-")]


async def test_closing_cancels_running_inline_batches() -> None:
    model = GatedModel()
    model.gate.clear()
    with pytest.raises(RuntimeError):
        async with asyncml.load(model) as m:
            running = asyncio.ensure_future(m(0))
            await model.started.wait()
            raise RuntimeError("stop")
    assert isinstance(running.exception(), asyncml.Closed)


async def test_a_model_runs_once() -> None:
    loaded = asyncml.load(GatedModel())
    async with loaded:
        with pytest.raises(RuntimeError, match="already running"):
            await loaded.__aenter__()
    with pytest.raises(RuntimeError, match=r"has already run: call asyncml\.load"):
        await loaded.__aenter__()
    with pytest.raises(RuntimeError, match="not running"):
        await asyncml.load(GatedModel())(1)


@pytest.mark.parametrize(
    ("model", "executor"),
    [(AsyncBrokenSetup, "inline"), (BrokenSetup, "thread"), (FailsSetup, "process")],
)
async def test_a_model_whose_setup_failed_cannot_be_entered_again(
    model: type[asyncml.Model[Any, Any]], executor: str
) -> None:
    loaded = asyncml.load(model, executor=executor)  # type: ignore[call-overload]
    with pytest.raises(asyncml.SetupError):
        async with loaded:
            pass
    with pytest.raises(RuntimeError, match="has already run"):
        async with loaded:
            pass


async def test_a_failing_close_reaches_the_owner() -> None:
    class BadClose(asyncml.Model[int, int]):
        def predict(self, batch: list[int]) -> list[int]:
            return batch

        def close(self) -> None:
            raise ValueError("flush failed")

    with pytest.raises(asyncml.AsyncmlError, match="flush failed"):
        async with asyncml.load(BadClose) as m:
            assert await m(1) == 1


async def test_workers_limit_their_blas_threads() -> None:
    class Probe(asyncml.Model[int, int]):
        def setup(self) -> None:
            import numpy  # noqa: F401 - loads the BLAS library the limits apply to

        def predict(self, batch: list[int]) -> list[int]:
            return [max(p["num_threads"] for p in threadpool_info()) for _ in batch]

    async with asyncml.load(Probe, workers=2, intra_op_threads=1) as m:
        assert await m(0) == 1


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: every pool has one thread")
def test_libraries_a_model_loads_late_get_the_limit_from_the_next_batch() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "late_blas.py")],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **{k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")},
            # src for asyncml, the checkout for tests.process_models
            "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]),
        },
        check=True,
    )
    # The batch that loaded scipy ran with its pool's default size; the next, limited.
    first, second = done.stdout.split()
    assert int(first) > 1
    assert second == "1"


def test_ctrl_c_stops_the_workers() -> None:
    process = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "interrupted.py")],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")},
    )
    assert process.stdout is not None
    assert "computing" in process.stdout.readline()
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 130
    summary = output.strip().splitlines()[-1]
    assert summary.startswith("interrupted")
    assert "alive=[]" in summary


async def test_cancelling_during_setup_stops_the_started_workers() -> None:
    setup_started = threading.Event()
    release = threading.Event()
    closed: list[int] = []

    class SlowSetup(asyncml.Model[int, int]):
        def setup(self) -> None:
            setup_started.set()
            release.wait(timeout=10)

        def predict(self, batch: list[int]) -> list[int]:
            return batch

        def close(self) -> None:
            closed.append(1)

    async def owner() -> None:
        async with asyncml.load(SlowSetup, workers=2):
            pytest.fail("must not start")

    task = asyncio.ensure_future(owner())
    await wait_event(setup_started)
    task.cancel()
    asyncio.get_running_loop().call_later(0.01, release.set)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed == [1, 1]


async def test_a_failing_warmup_still_closes_what_setup_opened() -> None:
    closed: list[str] = []

    class ColdStart(asyncml.Model[int, int]):
        def warmup(self) -> None:
            raise RuntimeError("dummy batch failed")

        def predict(self, batch: list[int]) -> list[int]:
            return batch

        def close(self) -> None:
            closed.append("closed")

    with pytest.raises(asyncml.SetupError, match="dummy batch failed"):
        async with asyncml.load(ColdStart):
            pass
    assert closed == ["closed"]


async def test_blas_limits_are_restored_after_the_block() -> None:
    import numpy  # noqa: F401 - loads the BLAS library whose pool is limited

    def blas_threads() -> list[int]:
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    before = await asyncio.to_thread(blas_threads)  # reads /proc: not on the loop

    def identity(batch: list[int]) -> list[int]:
        return batch

    for _ in range(5):
        async with asyncml.load(identity, workers=2, intra_op_threads=1) as m:
            await m.map(range(10))
        assert await asyncio.to_thread(blas_threads) == before


async def test_a_close_failure_does_not_hide_the_blocks_own_error() -> None:
    class BadClose(asyncml.Model[int, int]):
        def predict(self, batch: list[int]) -> list[int]:
            return batch

        def close(self) -> None:
            raise ValueError("flush failed")

    with pytest.raises(KeyError) as caught:
        async with asyncml.load(BadClose):
            raise KeyError("the real problem")
    assert any("flush failed" in note for note in caught.value.__notes__)


def test_thread_workers_refuse_async_lifecycle_methods() -> None:
    class AsyncSetup(asyncml.Model[int, int]):
        async def setup(self) -> None:
            pass

        def predict(self, batch: list[int]) -> list[int]:
            return batch

    with pytest.raises(TypeError, match="async setup"):
        asyncml.load(AsyncSetup, executor="thread")
