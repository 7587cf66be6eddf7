"""One real Ray for the Ray tests: local, or a simulated cluster of three nodes.

Starting Ray takes seconds, so tests share it: :func:`ray_local` starts a local Ray with two
CPUs on first use, :func:`ray_cluster` replaces it with three nodes of one CPU each (run
those tests last), and Ray stops after the last test that uses it, leaving no process
behind. Ray's files go to a folder of ours under /tmp (``RAY_TMPDIR``), so that these tests
never find, nor disturb, another Ray on the machine; its workers import the test models
from the repository (``PYTHONPATH``).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

ROOT = Path(__file__).parents[1]
#: Seconds Ray's processes get to exit after a shutdown, or an actor's after a kill.
EXIT_GRACE_S = 30


class _RaySession:
    """Which Ray this process is connected to, if any, and how to stop it."""

    def __init__(self) -> None:
        self.mode: str | None = None
        self.cluster: Any = None
        self._tmp: str | None = None
        self._environ: dict[str, str | None] = {}

    def local(self) -> None:
        if self.mode == "local":
            return
        self.stop()
        import ray

        self._prepare()
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.ERROR,
            _temp_dir=os.path.join(self._tmp or "", "ray"),
        )
        self.mode = "local"

    def three_nodes(self) -> Any:
        if self.mode == "cluster":
            return self.cluster
        self.stop()
        from ray.cluster_utils import Cluster

        self._prepare()
        cluster = Cluster(
            initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
        )
        self.cluster = cluster
        self.mode = "cluster"
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        return cluster

    def stop(self) -> None:
        """Shuts down whatever runs, and checks that none of its processes is left."""
        if self.mode is None:
            return
        import ray

        ray.shutdown()
        if self.cluster is not None:
            self.cluster.shutdown()
            self.cluster = None
        self.mode = None
        _, alive = psutil.wait_procs(child_processes(), timeout=EXIT_GRACE_S)
        assert not alive, f"Ray processes outlived its shutdown: {alive}"
        for name, value in self._environ.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._environ.clear()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def _prepare(self) -> None:
        self._tmp = tempfile.mkdtemp(prefix="asyncml-ray-", dir="/tmp")  # short socket paths
        settings = {
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_TMPDIR": self._tmp,  # also where a cluster notes its address
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        for name, value in settings.items():
            self._environ.setdefault(name, os.environ.get(name))
            os.environ[name] = value


SESSION = _RaySession()


def child_processes(containing: str = "") -> list[psutil.Process]:
    """Our descendants whose command line holds ``containing`` (multiprocessing's resource
    tracker aside: it lives as long as the program that started it)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        cmdline = " ".join(_cmdline(child))
        if containing in cmdline and "resource_tracker" not in cmdline:
            found.append(child)
    return found


def actor_processes() -> list[psutil.Process]:
    """Processes running an asyncml model actor (Ray titles them ``ray::ModelActor``)."""
    return child_processes("ray::ModelActor")


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return list(process.cmdline())
    except psutil.Error:
        return []


@pytest.fixture(scope="session")
def ray_session() -> Iterator[_RaySession]:
    yield SESSION
    SESSION.stop()


@pytest.fixture
def ray_local(ray_session: _RaySession, request: pytest.FixtureRequest) -> Iterator[None]:
    """A local Ray with two CPUs; the test must leave no model actor running."""
    ray_session.local()
    yield
    _, alive = psutil.wait_procs(actor_processes(), timeout=EXIT_GRACE_S)
    assert not alive, f"actors outlived the test: {alive}"
    _stop_unless_needed(ray_session, request)


@pytest.fixture
def ray_cluster(ray_session: _RaySession, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A Ray cluster of three nodes with one CPU each, not connected to: connect with its
    ``address``."""
    import ray

    cluster = ray_session.three_nodes()
    yield cluster
    ray.shutdown()
    _, alive = psutil.wait_procs(actor_processes(), timeout=EXIT_GRACE_S)
    assert not alive, f"actors outlived the test: {alive}"
    _stop_unless_needed(ray_session, request)


def _stop_unless_needed(session: _RaySession, request: pytest.FixtureRequest) -> None:
    """Stops Ray after the last test that uses it: other tests count our child processes
    (keep the Ray tests together, in the files named test_ray*)."""
    items = request.session.items
    later = items[items.index(request.node) + 1 :] if request.node in items else []
    if not any(_uses_ray(item) for item in later):
        session.stop()


def _uses_ray(item: pytest.Item) -> bool:
    names = set(getattr(item, "fixturenames", ()))
    callspec = getattr(item, "callspec", None)
    by_param = callspec is not None and callspec.params.get("kind") == "ray"
    return by_param or bool(names & {"ray_local", "ray_cluster", "local_ray_unless_a_cluster"})
