"""The error tree: one base class, context on every error, and every error pickles."""

from __future__ import annotations

import pickle

import pytest

import asyncml


class Unpicklable(Exception):
    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("no pickling")


@pytest.mark.parametrize(
    "error",
    [
        asyncml.Overloaded("full", model="m"),
        asyncml.Closed("closed", model="m", index=3),
        asyncml.ItemTimeout("late", model="m", index=1),
        asyncml.SetupError("no weights", model="m", worker=2),
        asyncml.OutputMismatch("3 for 2", model="m"),
        asyncml.ModelError.from_exception(KeyError("k"), model="m"),
    ],
)
def test_every_error_pickles_with_its_context(error: asyncml.AsyncmlError) -> None:
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is type(error)
    assert str(clone) == str(error)
    assert (clone.model, clone.index) == (error.model, error.index)
    assert isinstance(clone, asyncml.AsyncmlError)


def test_a_model_error_carries_its_cause_when_it_can() -> None:
    error = asyncml.ModelError.from_exception(KeyError("k"), model="m")
    clone = pickle.loads(pickle.dumps(error))
    assert isinstance(clone.cause, KeyError)
    assert (clone.cause_type, clone.cause_message) == ("KeyError", "'k'")
    assert error.__cause__ is error.cause

    for cause in (Unpicklable("x"), TwoArguments("x", 3)):  # the second pickles, only
        opaque = asyncml.ModelError.from_exception(cause, model="m")
        clone = pickle.loads(pickle.dumps(opaque))
        assert clone.cause is None
        assert clone.cause_type == type(cause).__name__
        assert clone.cause_message == str(cause)


class TwoArguments(Exception):
    def __init__(self, user: str, limit: int):
        super().__init__(f"{user} is over {limit}")


def test_context_shows_in_the_message() -> None:
    assert str(asyncml.Closed("closed", index=4)) == "closed (item 4)"
    assert asyncml.SetupError("x", worker=1).worker == 1


def test_timeouts_are_builtin_timeouts_too() -> None:
    assert issubclass(asyncml.ItemTimeout, TimeoutError)
    assert issubclass(asyncml.OutputMismatch, asyncml.ModelError)
