"""Served models on process workers, with workers killed by a real SIGKILL while requests
flow: a killed worker is replaced and no request fails; once no worker can be started any
more, the model turns unavailable (``/readyz`` 503, requests a prompt 503).

Every wait is on a condition (answers seen, a statistic reached), bounded by a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

import asyncml
from tests.scripts import server_workers
from tests.test_server import Running, started

#: Seconds any one condition may take to hold (workers spawn slowly on a busy machine).
LIMIT = 60.0


def worker_processes() -> list[psutil.Process]:
    """Our process workers: children that multiprocessing spawned, less its resource tracker
    (other children, such as a local Ray an earlier test started, are not ours)."""
    workers = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            command = " ".join(child.cmdline())
            if "spawn_main" in command and "resource_tracker" not in command:
                workers.append(child)
    return workers


@pytest.fixture(autouse=True)
def no_leaked_processes() -> object:
    yield None
    leaked = worker_processes()
    assert not leaked, f"worker processes outlived the test: {leaked}"


class Traffic:
    """Clients that each send one request after another while the block runs, and a
    prober of ``/readyz``; every answer is recorded."""

    def __init__(self, running: Running, path: str):
        self.running = running
        self.path = path
        #: (status, body) of each answer, in the order they came
        self.answers: list[tuple[int, Any]] = []
        self.readiness: list[int] = []
        self._stop = asyncio.Event()
        self._answered = asyncio.Event()

    @asynccontextmanager
    async def flowing(self, clients: int) -> AsyncIterator[Traffic]:
        async with asyncio.TaskGroup() as group:
            for client in range(clients):
                group.create_task(self._client(client))
            group.create_task(self._probe())
            try:
                yield self
            finally:
                self._stop.set()

    async def _client(self, client: int) -> None:
        item = client
        while not self._stop.is_set():
            status, body, _ = await self.running.post(self.path, json={"input": item})
            self.answers.append((status, body))
            self._answered.set()
            item += 1

    async def _probe(self) -> None:
        while not self._stop.is_set():
            self.readiness.append((await self.running.get("/readyz"))[0])

    async def until(self, condition: Callable[[], bool]) -> None:
        """Returns once ``condition()`` holds, checking it after each answer."""
        async with asyncio.timeout(LIMIT):
            while not condition():
                self._answered.clear()
                await self._answered.wait()

    def pids(self, answers: list[tuple[int, Any]] | None = None) -> set[int]:
        return {body["output"] for status, body in answers or self.answers if status == 200}


async def test_a_killed_worker_is_replaced_and_every_request_succeeds() -> None:
    model = asyncml.load(server_workers.pids, executor="process", workers=2, max_batch_size=4)
    async with started([model]) as running:
        traffic = Traffic(running, "/v1/models/pids/predict")
        async with traffic.flowing(clients=8):
            await traffic.until(lambda: len(traffic.pids()) == 2)
            before = traffic.pids()
            victim = traffic.answers[-1][1]["output"]
            os.kill(victim, signal.SIGKILL)
            # The replacement answers: a pid that was not serving before the kill.
            await traffic.until(lambda: bool(traffic.pids() - before))
            served_after = len(traffic.answers)
            await traffic.until(lambda: len(traffic.answers) >= served_after + 50)
        assert model.statistics().worker_restarts == 1
        metrics = (await running.get("/metrics"))[1]
        readiness = (await running.get("/readyz"))[0]
    assert {status for status, _ in traffic.answers} == {200}
    assert victim not in traffic.pids(traffic.answers[served_after:])
    assert set(traffic.readiness) == {200}
    assert readiness == 200
    assert 'asyncml_worker_restarts_total{model="pids"} 1.0' in metrics
    assert 'asyncml_model_ready{model="pids"} 1.0' in metrics


async def test_a_model_whose_workers_cannot_be_restarted_turns_unavailable(
    tmp_path: Path,
) -> None:
    log = tmp_path / "setups.log"
    model = asyncml.load(
        server_workers.SetsUpOnlyTwice(str(log)), executor="process", workers=2, name="fragile"
    )
    path = "/v1/models/fragile/predict"
    async with started([model]) as running:
        workers = [int(pid) for pid in (await asyncio.to_thread(log.read_text)).split()]
        traffic = Traffic(running, path)
        async with traffic.flowing(clients=4):
            await traffic.until(lambda: len(traffic.answers) >= 20)
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
            # Requests held for the dead workers are answered 503 once no worker is left.
            await traffic.until(lambda: traffic.answers[-1][0] == 503)
        status, body = await running.get("/readyz")
        assert status == 503
        (state,) = body["models"]
        assert (state["name"], state["state"]) == ("fragile", "failed")
        assert "could not be restarted" in state["error"]
        # From now on a request is refused at once.
        status, error, response = await running.post(path, json={"input": 1})
        assert (status, error["type"]) == (503, "unavailable")
        assert "failed" in error["error"]
        assert response.headers["Retry-After"] == "1"
        assert (await running.get("/v2/models/fragile/ready"))[0] == 503
        metrics = (await running.get("/metrics"))[1]
    assert 'asyncml_model_ready{model="fragile"} 0.0' in metrics
    statuses = [status for status, _ in traffic.answers]
    assert set(statuses) == {200, 503}
    # Once refused, never served again: the answers are 200s, then 503s.
    assert statuses == sorted(statuses)


async def eventually(condition: Callable[[], bool]) -> None:
    """Returns once ``condition()`` holds, checked every 20 ms, for at most ``LIMIT`` s
    (for state that changes in worker processes and threads, with no event to wait on)."""
    async with asyncio.timeout(LIMIT):
        while not condition():  # noqa: ASYNC110 - no event exists for these conditions
            await asyncio.sleep(0.02)


async def test_readiness_follows_the_workers_even_when_no_request_sees_them_go(
    tmp_path: Path,
) -> None:
    log = tmp_path / "setups.log"
    model = asyncml.load(
        server_workers.SetsUpOnlyTwice(str(log)), executor="process", workers=2, name="fragile"
    )
    path = "/v1/models/fragile/predict"
    async with started([model]) as running:
        for pid in (await asyncio.to_thread(log.read_text)).split():
            os.kill(int(pid), signal.SIGKILL)
        # One request finds the workers dead; its client leaves before the model gives up.
        body = b'{"input": 1}'
        _, writer = await asyncio.open_connection("127.0.0.1", running.server.port)
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        await eventually(lambda: model.statistics().in_flight == 1)
        writer.close()
        await writer.wait_closed()
        await eventually(lambda: running.status_count("fragile", "v1_predict", 499) == 1)
        await eventually(lambda: model.statistics().broken)
        status, body_ = await running.get("/readyz")
        assert status == 503
        (state,) = body_["models"]
        assert state["state"] == "failed"
        assert state["error"] == "model 'fragile': every worker died and none could be restarted"
        status, error, _ = await running.post(path, json={"input": 2})
        assert (status, error["type"]) == (503, "unavailable")
