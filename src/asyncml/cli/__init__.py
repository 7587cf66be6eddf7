"""The ``asyncml`` command: thin wrappers that parse options and call the library."""

from ._app import main

__all__ = ["main"]
