"""``asyncml serve``: one-line usage errors, and a graceful stop on SIGTERM."""

from __future__ import annotations

import contextlib
import gc
import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import asyncml
import asyncml.server
from asyncml._gc import GC_THRESHOLD, fewer_collections
from asyncml.cli import main

SCRIPTS = Path(__file__).parent / "scripts"
HELD = f"{SCRIPTS / 'serve_held.py'}:held"


class BrokenSetup(asyncml.Model[Any, Any]):
    def setup(self) -> None:
        raise OSError("weights not found")

    def predict(self, batch: list[Any]) -> list[Any]:
        return batch


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.py:model"], "no such file 'missing.py'"),
        (["no_such_module_xyz:model"], "no module named 'no_such_module_xyz'"),
        ([f"{SCRIPTS / 'serve_held.py'}:nothing"], "has no attribute 'nothing'"),
        ([f"{SCRIPTS / 'serve_held.py'}:NOT_A_MODEL"], "expected a Model subclass"),
        ([HELD, "--workers", "0"], "Invalid value for '--workers'"),
        ([HELD, "--port", "http"], "Invalid value for '--port'"),
        ([HELD, "--max-body-mib", "inf"], "'inf' is not a finite number"),
        ([HELD, "--shutdown-timeout", "nan"], "'nan' is not a finite number"),
        ([HELD, "--workers", "9" * 20], "is not in the range 1<=x<=1024"),
        ([HELD, "--bogus"], "No such option '--bogus'"),
        ([], "Missing argument"),
        ([HELD, HELD], "two models are named 'held'"),
    ],
)
def test_bad_refs_and_options_give_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["serve", *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("asyncml serve: error: ")
    assert message in lines[0]
    assert "Traceback" not in result.output


def test_a_model_that_fails_to_start_stops_the_server_with_exit_1() -> None:
    ref = f"{Path(__file__)}:BrokenSetup"
    result = CliRunner().invoke(main, ["serve", ref, "--port", "0"])
    assert result.exit_code == 1, result.output
    last = result.stderr.splitlines()[-1]
    assert last.startswith("asyncml serve: error: model 'BrokenSetup' failed to start")
    assert "weights not found" in last


class SlowSetup(asyncml.Model[Any, Any]):
    def setup(self) -> None:
        time.sleep(0.2)

    def predict(self, batch: list[Any]) -> list[Any]:
        return batch


def test_fewer_collections_can_freeze_what_exists_and_restores_the_collector() -> None:
    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    assert frozen == 0
    with fewer_collections(freeze=True):
        assert gc.get_threshold() == (GC_THRESHOLD, *threshold[1:])
        assert gc.get_freeze_count() > 0  # never scanned again, while the block runs
    assert gc.get_threshold() == threshold
    assert gc.get_freeze_count() == 0
    with fewer_collections():  # as asyncml run uses it: nothing frozen
        assert gc.get_threshold()[0] == GC_THRESHOLD
        assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == threshold


def test_serve_freezes_the_collector_once_every_model_is_loaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    apps: list[asyncml.server.ServingApp] = []
    entered: list[tuple[bool, bool]] = []  # (every model ready, asked to freeze)

    def create_app(*args: Any, **kwargs: Any) -> asyncml.server.ServingApp:
        apps.append(make_app(*args, **kwargs))
        return apps[-1]

    @contextlib.contextmanager
    def recorded(*, freeze: bool = False) -> Iterator[None]:
        entered.append((apps[0].models.ready, freeze))
        # The server handles SIGTERM now (uvicorn's handler): it stops gracefully.
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)
        signal.raise_signal(signal.SIGTERM)
        yield

    make_app = asyncml.server.create_app
    monkeypatch.setattr(asyncml.server, "create_app", create_app)
    monkeypatch.setattr(sys.modules["asyncml.cli.serve"], "fewer_collections", recorded)
    result = CliRunner().invoke(main, ["serve", f"{Path(__file__)}:SlowSetup", "--port", "0"])
    assert result.exit_code == 0, result.output
    assert entered == [(True, True)]


def _post(url: str, payload: Any) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.loads(response.read())


def test_sigterm_finishes_the_requests_in_flight_and_exits_0() -> None:
    assert_sigterm_drains(HELD, "held")


@contextlib.contextmanager
def served(
    ref: str, name: str, *options: str, piped: bool = False
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``asyncml serve REF`` in a subprocess on a free port: the process and its URL once it
    is ready; killed on the way out if it still runs. With ``piped``, its stdin and stdout
    are pipes (for a model that talks to the test)."""
    command = [sys.executable, "-c", "from asyncml.cli import main; main()", "serve", ref]
    pipe = subprocess.PIPE if piped else None
    server = subprocess.Popen(
        [*command, "--port", "0", *options],
        stdin=pipe,
        stdout=pipe,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert server.stderr is not None
    try:
        first = server.stderr.readline()
        assert first.startswith(f"asyncml serve: {name} at http://127.0.0.1:"), first
        url = first.split(" at ")[1].split(": loading")[0]
        assert server.stderr.readline().startswith("asyncml serve: ready")
        yield server, url
    finally:
        server.kill()
        server.wait()
        for stream in (server.stdin, server.stdout, server.stderr):
            if stream is not None:
                stream.close()


def assert_sigterm_drains(ref: str, name: str, *options: str) -> None:
    """Serves ``ref`` as ``name`` in a subprocess, whose model prints ``computing`` and then
    waits for a line on stdin: SIGTERM with a request in flight lets that request finish
    with 200, then the server exits 0."""
    with served(ref, name, *options, piped=True) as (server, url):
        assert server.stdin is not None
        assert server.stdout is not None
        with ThreadPoolExecutor(1) as client:
            answer = client.submit(_post, f"{url}/v1/models/{name}/predict", {"input": 7})
            assert server.stdout.readline() == "computing\n"  # the request is in flight
            server.send_signal(signal.SIGTERM)
            server.stdin.write("go\n")  # lets the model finish after the signal
            server.stdin.flush()
            assert answer.result(timeout=30) == (200, {"output": "done 7"})
        assert server.wait(timeout=30) == 0


def test_serve_runs_process_workers() -> None:
    """The server's loop is uvloop's: process workers must run on it too."""
    ref = f"{Path(__file__).parent / 'process_models.py'}:triple"
    with served(ref, "triple", "--executor", "process") as (server, url):
        assert _post(f"{url}/v1/models/triple/predict", {"inputs": [1, 2]}) == (
            200,
            {"outputs": [3, 6]},
        )
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
