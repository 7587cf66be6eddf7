"""Intra-op thread limits, so that workers x threads does not oversubscribe the cores.

BLAS and OpenMP pools default to one thread per core. With several workers each running a
model, that is workers x cores threads fighting over the cores: scikit-learn's MLP ran 60x
slower at batch 128 on two cores that way. Each worker therefore limits the pools after
``setup()`` (the libraries are mostly loaded by then), again after any batch that imported
modules (torch imported by the first ``predict()``), and releases the limit once it stops.
A worker process also sets the pools' environment variables before it loads the model, so
that what it loads later starts limited: torch with two OpenMP threads in each of two
worker processes ran W1 at half the speed on two cores.

BLAS pools and torch's intra-op pool are process-wide, while OpenMP's setting belongs to the
calling thread, so workers share one process-wide record of the original sizes: the first
worker to meet a library notes its size, and the last worker to leave puts every library
back. (With two models in one process, the most recent limit applies to both.)
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, Literal

IntraOpThreads = int | Literal["auto"] | None


def resolve_intra_op_threads(setting: IntraOpThreads, workers: int) -> int | None:
    """The number of threads each worker's pools may use, or ``None`` to leave them alone.

    Raises:
        ValueError: ``setting`` is not ``"auto"``, ``None`` or an int >= 1.
    """
    if setting is None:
        return None
    if setting == "auto":
        return max(1, (os.cpu_count() or 1) // max(1, workers))
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise ValueError(f"intra_op_threads must be 'auto', None or an int >= 1, got {setting!r}")
    return setting


class _ProcessLimits:
    """Reference-counted limits on the process's thread pools."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        # library path -> (its controller, its size before any limit); the controllers are
        # kept so that restoring is a plain call, with no file reads.
        self._originals: dict[str, tuple[Any, int]] = {}
        self._torch_original: int | None = None

    def acquire(self, threads: int) -> None:
        with self._lock:
            self._holders += 1
            self._limit_loaded(threads)

    def extend(self, threads: int) -> None:
        """Limits the libraries loaded since ``acquire()`` too."""
        with self._lock:
            if self._holders:
                self._limit_loaded(threads)

    def _limit_loaded(self, threads: int) -> None:
        from threadpoolctl import ThreadpoolController

        for library in ThreadpoolController().lib_controllers:
            self._originals.setdefault(library.filepath, (library, library.num_threads))
            _set_threads(library, threads)
        torch: Any = sys.modules.get("torch")
        if torch is not None:
            if self._torch_original is None:
                self._torch_original = torch.get_num_threads()
            torch.set_num_threads(threads)

    def release(self) -> None:
        with self._lock:
            self._holders -= 1
            if self._holders:
                return
            for library, original in self._originals.values():
                _set_threads(library, original)
            self._originals.clear()
            torch: Any = sys.modules.get("torch")
            if torch is not None and self._torch_original is not None:
                torch.set_num_threads(self._torch_original)
            self._torch_original = None


def _set_threads(library: Any, threads: int) -> None:
    # threadpoolctl lets only one "controlling" thread change OpenBLAS's process-wide pool
    # and ignores the others while it lives; our lock already serialises every change, so
    # take control for this one call and hand it back.
    release_control = getattr(library, "clear_controlling_thread", None)
    if release_control is not None:
        release_control(force=True)
    library.set_num_threads(threads)
    if release_control is not None:
        release_control(force=True)


_limits = _ProcessLimits()

#: What sizes the pools of libraries that load after it is set (OpenMP, and with it torch's
#: intra-op pool; MKL, OpenBLAS, BLIS, Accelerate, numexpr; rayon, e.g. for tokenizers).
_POOL_SIZE_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "RAYON_NUM_THREADS",
)


def limit_pools_loaded_later(threads: int | None) -> None:
    """Sizes the pools of libraries this process has not loaded yet, through the variables
    they read as they load: a model that imports torch in ``predict()`` is limited too,
    where :class:`IntraOpLimit` only reaches the libraries loaded by the time it applies.

    It changes the environment, so only a process that is all one worker's (a worker
    process, before it unpickles its model) may call it.
    """
    if threads is None:
        return
    for name in _POOL_SIZE_VARIABLES:
        os.environ[name] = str(threads)


class IntraOpLimit:
    """One worker's hold on the thread-pool limits: ``apply()`` in the worker after setup,
    ``release()`` once the worker has stopped (safe to call when nothing was applied)."""

    def __init__(self, threads: int | None):
        self._threads = threads
        self._held = False
        self._modules = 0  # how many modules were loaded when the limit last looked

    def apply(self) -> None:
        if self._threads is None or self._held:
            return
        _limits.acquire(self._threads)
        self._held = True
        self._modules = len(sys.modules)

    def cover_new_libraries(self) -> None:
        """Extends the limit to the libraries loaded since it last looked, such as torch
        imported by the first ``predict()``. Free unless new modules were imported (then
        a scan of the loaded libraries, about 2 ms): call it after every batch."""
        if self._held and self._threads is not None and len(sys.modules) != self._modules:
            self._modules = len(sys.modules)
            _limits.extend(self._threads)

    def release(self) -> None:
        if self._held:
            self._held = False
            _limits.release()
