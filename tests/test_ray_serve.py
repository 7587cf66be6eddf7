"""``asyncml serve REF --executor ray``: a real server that starts a local Ray of its own
with two CPUs. It becomes ready, answers over v1, v2 and /metrics, replaces an actor killed
while it serves, and on SIGTERM finishes the request in flight, exits 0 and leaves no Ray
process behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.ray_session import EXIT_GRACE_S, ROOT
from tests.test_server_cli import _post

MODEL = "tripled_unless_held"
REF = f"{ROOT / 'tests' / 'ray_models.py'}:{MODEL}"
#: Seconds a state has to come about (Ray's start among them) before the test fails.
LIMIT_S = 90
LISTENING = re.compile(r"^asyncml serve: \S+ at (http://127\.0\.0\.1:\d+): loading$", re.M)


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    log: Path  # its stderr, Ray's messages included
    ray_tmp: str  # its Ray's files; its processes inherit it as RAY_TMPDIR

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def url(self) -> str | None:
        """Where it listens, once it said so (its first line)."""
        found = LISTENING.search(self.log.read_text(errors="replace"))
        return found.group(1) if found else None

    def wait_until(self, condition: Callable[[], bool], what: str) -> None:
        """Returns once ``condition()`` holds, checked every 50 ms; fails if the server
        exits first or ``LIMIT_S`` pass."""
        deadline = time.monotonic() + LIMIT_S
        while not condition():
            assert self.process.poll() is None, f"the server exited:\n{self.output()}"
            assert time.monotonic() < deadline, f"{what}: not within {LIMIT_S} s\n{self.output()}"
            time.sleep(0.05)

    def ray_processes(self) -> list[psutil.Process]:
        """Every live process of this server's Ray (and the server itself)."""
        found = []
        for process in psutil.process_iter():
            try:
                if process.environ().get("RAY_TMPDIR") == self.ray_tmp:
                    found.append(process)
            except psutil.Error:  # gone, a zombie, or not ours
                pass
        return found

    def actor_pids(self) -> set[int]:
        pids = set()
        for process in self.ray_processes():
            try:
                if "ray::ModelActor" in " ".join(process.cmdline()):
                    pids.add(process.pid)
            except psutil.Error:
                pass
        return pids


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """``asyncml serve`` on an ephemeral port, with a Ray of its own under /tmp (short
    socket paths), apart from the tests' Ray; killed with its Ray if the test fails."""
    ray_tmp = tempfile.mkdtemp(prefix="asyncml-serve-ray-", dir="/tmp")
    environ = {name: value for name, value in os.environ.items() if not name.startswith("RAY_")}
    environ |= {
        "RAY_TMPDIR": ray_tmp,
        "RAY_OVERRIDE_RESOURCES": json.dumps({"CPU": 2}),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    command = [sys.executable, "-c", "from asyncml.cli import main; main()", "serve", REF]
    command += ["--executor", "ray", "--workers", "2", "--port", "0"]
    log = tmp_path / "serve.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(command, env=environ, stdout=subprocess.DEVNULL, stderr=stderr)
    running = Server(process, log, ray_tmp)
    try:
        yield running
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        for leftover in running.ray_processes():
            leftover.kill()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def get(url: str) -> tuple[int, str]:
    """The status and body of a GET; 0 if the server does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError:
        return 0, ""


def restarts(url: str) -> float:
    status, metrics = get(f"{url}/metrics")
    assert status == 200
    found = re.search(rf'^asyncml_worker_restarts_total{{model="{MODEL}"}} (\S+)$', metrics, re.M)
    assert found is not None, metrics
    return float(found.group(1))


@pytest.mark.timeout(180)  # starts and stops a Ray of its own
def test_a_model_served_on_ray_survives_a_killed_actor_and_drains_on_sigterm(
    server: Server, tmp_path: Path
) -> None:
    server.wait_until(lambda: server.url() is not None, "the server to listen")
    url = server.url()
    assert url is not None
    predict = f"{url}/v1/models/{MODEL}/predict"
    server.wait_until(lambda: get(f"{url}/readyz")[0] == 200, "/readyz to answer 200")

    assert _post(predict, {"inputs": [1, 2, 3]}) == (200, {"outputs": [3, 6, 9]})
    assert _post(predict, {"input": 5}) == (200, {"output": 15})
    tensor = {"name": "x", "shape": [3], "datatype": "INT64", "data": [1, 2, 3]}
    status, answer = _post(f"{url}/v2/models/{MODEL}/infer", {"inputs": [tensor]})
    assert (status, answer["outputs"][0]["data"]) == (200, [3, 6, 9])
    assert restarts(url) == 0

    # An actor dies while the model serves: its batch runs again on the other actor, and a
    # new actor takes its place.
    actors = server.actor_pids()
    assert len(actors) == 2, actors
    victim = min(actors)
    os.kill(victim, signal.SIGKILL)
    deadline, sent = time.monotonic() + LIMIT_S, 0
    while restarts(url) == 0:  # the actors take the requests in turns: one finds the dead one
        assert time.monotonic() < deadline, f"no restart within {LIMIT_S} s\n{server.output()}"
        sent += 1
        answer = _post(predict, {"inputs": [sent, -sent]})
        assert answer == (200, {"outputs": [3 * sent, -3 * sent]})
        time.sleep(0.02)
    server.wait_until(
        lambda: len(actors := server.actor_pids()) == 2 and victim not in actors,
        "a new actor in place of the killed one",
    )
    assert restarts(url) == 1
    assert _post(predict, {"inputs": [7, 8]}) == (200, {"outputs": [21, 24]})

    # SIGTERM: the server stops listening, finishes the request in flight and exits 0.
    release = tmp_path / "release"
    with ThreadPoolExecutor(1) as client:
        held = client.submit(_post, predict, {"input": str(release)})
        server.wait_until(Path(f"{release}.held").exists, "the held request to run")
        processes = server.ray_processes()
        assert server.actor_pids() <= {process.pid for process in processes}
        server.process.send_signal(signal.SIGTERM)
        server.wait_until(lambda: get(f"{url}/readyz")[0] != 200, "the server to stop serving")
        release.touch()
        assert held.result(timeout=LIMIT_S) == (200, {"output": "released"})
    assert server.process.wait(timeout=LIMIT_S) == 0, server.output()
    _, alive = psutil.wait_procs(processes, timeout=EXIT_GRACE_S)
    assert not alive, f"Ray processes outlived the server: {alive}"
    assert not server.ray_processes()
