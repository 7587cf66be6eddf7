"""Where model code runs: the executor interface and the built-in executors."""

from ._base import BatchDone, Executor
from ._inline import InlineExecutor
from ._thread import ThreadExecutor

__all__ = ["BatchDone", "Executor", "InlineExecutor", "ThreadExecutor"]
