"""What counts as a model, its options, and how outputs are split back per item."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, ClassVar

import numpy as np
import pytest

import asyncml
from asyncml._batch import BatchRun, run_batch
from asyncml._model import model_spec


def double(batch: list[int]) -> list[int]:
    return [2 * x for x in batch]


async def adouble(batch: list[int]) -> list[int]:
    return [2 * x for x in batch]


class Scaler(asyncml.Model[np.ndarray, np.ndarray]):
    max_batch_size = 16
    collate = "stack"

    def __init__(self, factor: float = 2.0) -> None:
        self.factor = factor
        self.ready = False

    def setup(self) -> None:
        self.ready = True

    def predict(self, batch: np.ndarray) -> np.ndarray:
        assert self.ready
        return batch * self.factor


def test_a_plain_function_is_a_model_named_after_it() -> None:
    spec = model_spec(double)
    assert spec.name == "double"
    assert not spec.is_async
    assert (spec.max_batch_size, spec.max_wait, spec.collate) == (64, 0.0, "list")
    assert model_spec(adouble).is_async


def test_a_class_gives_its_defaults_and_options_override_them() -> None:
    spec = model_spec(Scaler)
    assert (spec.name, spec.max_batch_size, spec.collate) == ("Scaler", 16, "stack")
    assert model_spec(Scaler, max_batch_size=4, name="s").max_batch_size == 4
    assert model_spec(Scaler, name="s").name == "s"


def test_an_instance_is_a_template_copied_per_worker() -> None:
    template = Scaler(factor=3.0)
    spec = model_spec(template)
    first, second = spec.create(), spec.create()
    assert first is not second
    assert first is not template
    assert isinstance(first, Scaler)
    assert first.factor == 3.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size must be an int >= 1, got 0"),
        ({"max_batch_size": True}, "max_batch_size must be an int >= 1, got True"),
        ({"max_wait": -1}, "max_wait must be a finite number"),
        ({"max_wait": True}, "max_wait must be a finite number"),
        ({"name": 5}, "name must be a non-empty string, got 5"),
        ({"collate": "concat"}, "collate must be one of"),
    ],
)
def test_bad_options_are_refused_by_name(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        model_spec(double, **options)


@pytest.mark.parametrize("bad", [42, "model", Exception])
def test_a_non_model_is_a_type_error(bad: object) -> None:
    with pytest.raises(TypeError, match="expected a Model subclass"):
        model_spec(bad)


def test_load_refuses_executors_that_cannot_run_the_model() -> None:
    with pytest.raises(TypeError, match="use executor='thread'"):
        asyncml.load(double, executor="inline")
    with pytest.raises(TypeError, match="use executor='inline'"):
        asyncml.load(adouble, executor="thread")
    with pytest.raises(ValueError, match="executor must be"):
        asyncml.load(double, executor="gpu")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="max_queue"):
        asyncml.load(double, max_queue=0)
    with pytest.raises(ValueError, match="workers"):
        asyncml.load(double, workers=0)


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        ([1, 2, 3], "model 'bad' returned 3 outputs for a batch of 2 inputs"),
        (None, "model 'bad' returned a NoneType, not one output per input"),
        ({"a": 1, "b": 2}, "returned a dict"),
        (np.float64(1.0), "returned a float64"),
    ],
)
def test_wrong_outputs_fail_every_item_with_a_clear_error(outputs: Any, message: str) -> None:
    spec = model_spec(lambda batch: outputs, name="bad")
    outcome = run_batch(spec.create(), spec, [10, 20])
    assert outcome.errors is not None
    assert sorted(outcome.errors) == [0, 1]
    for error in outcome.errors.values():
        assert isinstance(error, asyncml.OutputMismatch)
        assert message in str(error)
    assert outcome.errors[0] is not outcome.errors[1]


def test_array_outputs_are_split_into_rows() -> None:
    spec = model_spec(Scaler)
    model = spec.create()
    model.setup()
    outcome = run_batch(model, spec, [np.ones(3), np.zeros(3)])
    assert outcome.errors is None
    np.testing.assert_array_equal(outcome.values[0], [2, 2, 2])
    np.testing.assert_array_equal(outcome.values[1], [0, 0, 0])


def test_items_that_do_not_stack_together_run_in_smaller_batches() -> None:
    spec = model_spec(Scaler)
    model = spec.create()
    model.setup()
    items = [np.ones(3), np.ones(3), np.ones(4), np.ones(3)]
    outcome = run_batch(model, spec, items)
    assert outcome.errors is None
    assert [len(v) for v in outcome.values] == [3, 3, 4, 3]


def test_an_item_that_cannot_be_stacked_fails_alone() -> None:
    spec = model_spec(Scaler)
    model = spec.create()
    model.setup()
    outcome = run_batch(model, spec, [np.ones(2), object(), np.ones(2)])
    assert outcome.errors is not None
    assert list(outcome.errors) == [1]
    assert [len(v) for i, v in enumerate(outcome.values) if i != 1] == [2, 2]


def test_bisection_costs_a_few_calls_per_failing_item() -> None:
    calls: list[int] = []

    def picky(batch: list[int]) -> list[int]:
        calls.append(len(batch))
        if 37 in batch:
            raise RuntimeError("no 37")
        return batch

    spec = model_spec(picky)
    outcome = run_batch(spec.create(), spec, list(range(64)))
    assert outcome.errors is not None
    assert list(outcome.errors) == [37]
    assert list(outcome.values[:37]) == list(range(37))
    assert len(calls) <= 2 * 6 + 1
    assert BatchRun(spec, [1]).next_part() == (0, 1)


async def test_each_thread_worker_builds_and_sets_up_its_own_model() -> None:
    seen: list[tuple[int, str]] = []

    class Tracker(asyncml.Model[int, str]):
        instances: ClassVar[list[int]] = []
        max_batch_size = 1

        def setup(self) -> None:
            self.thread = threading.current_thread().name
            Tracker.instances.append(id(self))

        def predict(self, batch: list[int]) -> list[str]:
            seen.append((id(self), threading.current_thread().name))
            return [self.thread for _ in batch]

    async with asyncml.load(Tracker, workers=3) as m:
        assert m.name == "Tracker"
        names = await asyncio.gather(*(m(i) for i in range(30)))
    assert len(set(Tracker.instances)) == 3
    assert set(names) <= {f"asyncml-Tracker-{i}" for i in range(3)}
    # A model instance is only ever used by the thread that set it up.
    owner: dict[int, str] = {}
    for instance, thread in seen:
        assert owner.setdefault(instance, thread) == thread


async def test_a_numpy_model_in_threads_with_stacking() -> None:
    async with asyncml.load(Scaler(factor=0.5), workers=2) as m:
        rows = [np.full(4, float(i)) for i in range(100)]
        results = await m.map(rows)
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result, np.full(4, i * 0.5))


def test_an_empty_batch_whose_predict_raises_ends_with_no_outcomes() -> None:
    def refuses(batch: list[int]) -> list[int]:
        raise RuntimeError("nothing to do")

    spec = model_spec(refuses)
    outcome = run_batch(spec.create(), spec, [])
    assert (list(outcome.values), outcome.errors) == ([], None)
