"""Test harness: async tests, a loop that fails on blocking calls, and leak checks.

``async def`` tests run on a fresh event loop with blockbuster active: any blocking call made
on the loop's thread (a sleep, file or socket I/O, a contended lock) fails the test, which
enforces "the event loop never runs model code". Every test also fails if it leaves an
asyncml worker thread behind.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from blockbuster import BlockBuster, blockbuster_ctx

from tests.fakeclock import FakeClockLoop


@pytest.fixture
def blockbuster() -> Iterator[BlockBuster]:
    with blockbuster_ctx() as bb:
        # Joining a worker thread that has already signalled its end returns at once.
        for name in ("threading.Lock.acquire", "threading.Lock.acquire_lock"):
            bb.functions[name].can_block_in("asyncml/executors/_base.py", "join_workers")
        # Worker start-up waits on the new thread's "started" event, by design of threading.
        bb.functions["threading.Lock.acquire"].can_block_in("threading.py", "start")
        # hypothesis and pytest write their own files, outside the code under test.
        for name in ("io.BufferedWriter.write", "io.TextIOWrapper.write", "os.stat"):
            if name in bb.functions:
                bb.functions[name].can_block_in("_pytest/", "write")
        yield bb


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    yield
    leaked = [t.name for t in threading.enumerate() if t.name.startswith("asyncml-")]
    assert not leaked, f"worker threads outlived the test: {leaked}"


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Runs ``async def`` tests: on a fake clock if they take ``clock``, else on asyncio's."""
    function = pyfuncitem.obj
    if not inspect.iscoroutinefunction(function):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs: dict[str, Any] = {name: pyfuncitem.funcargs[name] for name in names}
    loop: asyncio.AbstractEventLoop = kwargs.get("clock") or asyncio.new_event_loop()
    bb = pyfuncitem.funcargs.get("blockbuster")
    assert bb is not None, "async tests run under the blockbuster fixture"
    try:
        with asyncio.Runner(loop_factory=lambda: loop) as runner:
            runner.run(function(**kwargs))
    finally:
        loop.close()
    return True


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj):
            item.fixturenames.insert(0, "blockbuster")


@pytest.fixture
def clock() -> FakeClockLoop:
    """An event loop whose clock jumps to the next timer whenever the loop would wait."""
    return FakeClockLoop()
