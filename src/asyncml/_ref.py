"""Resolving a REF (``path/to/file.py:name`` or ``package.module:name``) to a Python object.

The CLI names models and pipelines this way. A file's folder goes on ``sys.path`` (for a
module, the working directory does) and the file is imported under its own module name
(not a private one), so that worker processes started with ``spawn`` can import the same
objects by reference.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ._errors import AsyncmlError


class RefError(AsyncmlError):
    """A REF that does not name an importable object; the message says why, in one line."""


@dataclass(frozen=True)
class Ref:
    """A resolved REF.

    Attributes:
        text: the REF as given.
        obj: the object it names.
        source: the file that defines it, when there is one.
    """

    text: str
    obj: object
    source: Path | None
    #: The REF with a file's path made absolute: one name for one object, however the
    #: path was spelled (``./models.py``, ``models.py``).
    canonical: str = ""

    def code_hash(self) -> str:
        """SHA-256 of the defining file's bytes: it changes when the code does."""
        if self.source is None:
            return ""
        return hashlib.sha256(self.source.read_bytes()).hexdigest()


def resolve(text: str) -> Ref:
    """Imports what ``text`` names.

    Raises:
        RefError: malformed REF, a missing file or module, an import that fails, or a
            missing attribute.
    """
    module_part, sep, attribute = text.rpartition(":")
    if not sep or not module_part or not attribute:
        raise RefError(f"{text!r} is not a REF: expected 'path/to/file.py:name' or 'module:name'")
    canonical = text
    if module_part.endswith(".py") or "/" in module_part or "\\" in module_part:
        module = _import_file(text, Path(module_part))
        canonical = f"{Path(module_part).resolve()}:{attribute}"
    else:
        # As with ``python -m`` and uvicorn, modules in the working directory can be named.
        working_directory = os.getcwd()
        if working_directory not in sys.path and "" not in sys.path:
            sys.path.insert(0, working_directory)
        module = _import_module(text, module_part)
    obj: object = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise RefError(f"{text!r}: {module.__name__} has no attribute {attribute!r}") from None
    source = getattr(module, "__file__", None)
    resolved = Path(source).resolve() if source else None
    return Ref(text=text, obj=obj, source=resolved, canonical=canonical)


def _import_file(text: str, path: Path) -> ModuleType:
    if not path.is_file():
        raise RefError(f"{text!r}: no such file {str(path)!r}")
    path = path.resolve()
    name = path.stem
    if not name.isidentifier():
        raise RefError(f"{text!r}: {path.name!r} cannot be imported (not a valid module name)")
    loaded = sys.modules.get(name)
    if loaded is not None:
        loaded_file = getattr(loaded, "__file__", None)
        if loaded_file is None or Path(loaded_file).resolve() != path:
            raise RefError(
                f"{text!r}: a module named {name!r} is already imported from elsewhere; "
                "rename the file"
            )
        return loaded
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return _import_module(text, name)


def _import_module(text: str, name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name is not None and (name == error.name or name.startswith(error.name + ".")):
            raise RefError(f"{text!r}: no module named {name!r}") from None
        raise RefError(f"{text!r}: importing {name!r} failed: {error}") from error
    except Exception as error:
        raise RefError(
            f"{text!r}: importing {name!r} failed: {type(error).__name__}: {error}"
        ) from error
