"""``--executor ray`` for the commands: which Ray cluster, and how file models reach it.

A model named by a file REF (``path/to/model.py:name``) is imported from a folder that the
cluster's nodes need not have, so its module is pickled by value: actors receive its code,
not its name. Its own imports (scikit-learn, torch, ...) must be installed on the nodes.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class RayUnavailable(Exception):
    """Ray is not installed, or the cluster at the address cannot be reached."""


@contextmanager
def ray_for(executor: str, address: str | None, model_modules: list[str]) -> Iterator[None]:
    """Prepares Ray for the command's models while the block runs.

    With ``executor == "ray"``: the modules of file REFs are pickled by value, and with an
    ``address`` this process connects to that cluster (and disconnects after); without one,
    the executor starts a local Ray when the model starts. Any other executor: nothing.

    Raises:
        RayUnavailable: with the reason, in one line.
    """
    if executor != "ray":
        yield
        return
    try:
        import ray
    except ImportError:
        raise RayUnavailable("--executor ray needs Ray: pip install ray") from None
    for name in model_modules:
        module = sys.modules.get(name)
        if module is not None:
            ray.cloudpickle.register_pickle_by_value(module)  # type: ignore[no-untyped-call]
    connect = address is not None and not ray.is_initialized()
    if connect:
        try:
            ray.init(address=address, logging_level=logging.WARNING)
        except (ConnectionError, ValueError, RuntimeError) as error:
            raise RayUnavailable(f"cannot connect to Ray at {address!r}: {error}") from None
    try:
        yield
    finally:
        if connect:
            ray.shutdown()


def file_modules(refs: list[str]) -> list[str]:
    """The module names that file REFs among ``refs`` are imported under."""
    names = []
    for ref in refs:
        module_part = ref.rpartition(":")[0]
        if module_part.endswith(".py") or "/" in module_part or "\\" in module_part:
            names.append(Path(module_part).stem)
    return names
