"""One-item functions as batch models: each item runs on its own and fails on its own."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._errors import ModelError


@dataclass(frozen=True, slots=True)
class Failed:
    """``fn`` raised for this item; carried back as a value so its batch is not re-run."""

    error: ModelError


@dataclass(frozen=True, slots=True)
class PerItem:
    """A batch function that applies ``fn`` to each item on its own (it pickles)."""

    fn: Callable[[Any], Any]
    name: str

    def __call__(self, batch: list[Any]) -> list[Any]:
        results: list[Any] = []
        for item in batch:
            try:
                results.append(self.fn(item))
            except Exception as exc:
                results.append(Failed(ModelError.from_exception(exc, model=self.name)))
        return results


def unwrap_failure(result: Any) -> Any:
    """A per-item result as it was: its value, or the error its item raised."""
    return result.error if isinstance(result, Failed) else result
