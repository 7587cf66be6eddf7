"""A job's fingerprint: what must not change between a run and its resumption.

The model (its REF and a hash of the code that defines it), the input (path, size and
modification time), the output and the options that shape its rows. Options that only
change how fast the job runs (workers, batch size, executor) are left out, so a resumed
job may use other ones.
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import Any

from ..pipeline import Pipeline

#: Bumped when the journal's meaning changes, so old journals are refused.
VERSION = 1


def fingerprint(
    *,
    model_ref: str,
    code_hash: str,
    input_path: Path,
    output_path: Path,
    field: str | None,
    id_field: str | None,
) -> dict[str, Any]:
    """The fingerprint of a job over a file input."""
    stat = input_path.stat()
    return {
        "version": VERSION,
        "model": model_ref,
        "code": code_hash,
        "input": str(input_path),
        "input_size": stat.st_size,
        "input_mtime_ns": stat.st_mtime_ns,
        "output": str(output_path),
        "field": field,
        "id_field": id_field,
    }


def differences(recorded: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """The names of the facts that differ (every name, when nothing was recorded)."""
    if recorded is None:
        return list(current)
    keys = list(current) + [key for key in recorded if key not in current]
    return [key for key in keys if recorded.get(key) != current.get(key)]


def describe_model(model: object) -> tuple[str, str]:
    """A REF-like name of a model object and the hash of the file that defines it; for a
    pipeline, its stages' names and one hash over their files."""
    if isinstance(model, Pipeline):
        described = [describe_model(stage.fn) for stage in model.stages]
        names = ", ".join(name for name, _ in described)
        hashes = "".join(hashed for _, hashed in described).encode()
        return f"Pipeline({names})", hashlib.sha256(hashes).hexdigest()
    target = model if inspect.isclass(model) or inspect.isfunction(model) else type(model)
    name = f"{getattr(target, '__module__', '?')}:{getattr(target, '__qualname__', '?')}"
    try:
        source = inspect.getsourcefile(target)
    except TypeError:
        source = None
    if source is None or not Path(source).is_file():
        return name, ""
    return name, hashlib.sha256(Path(source).read_bytes()).hexdigest()
