"""REF resolution: files and modules, and one clear error for each way it can go wrong."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from asyncml._ref import RefError, resolve


def test_a_file_ref_imports_the_file_under_its_own_name(tmp_path: Path) -> None:
    source = tmp_path / "ref_model_a.py"
    source.write_text("def double(batch):\n    return [2 * x for x in batch]\n")
    ref = resolve(f"{source}:double")
    assert callable(ref.obj)
    assert ref.obj([1, 2]) == [2, 4]
    assert ref.source == source.resolve()
    # Importable by name, so spawned worker processes find the same function.
    assert sys.modules["ref_model_a"].double is ref.obj
    assert len(ref.code_hash()) == 64


def test_a_module_ref_and_a_dotted_attribute() -> None:
    ref = resolve("os.path:join")
    import os.path

    assert ref.obj is os.path.join


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("no_colon", "is not a REF"),
        ("missing_file.py:f", "no such file"),
        ("json:nope", "has no attribute 'nope'"),
        ("no_such_module_zz:f", "no module named 'no_such_module_zz'"),
    ],
)
def test_bad_refs_say_why_in_one_line(text: str, message: str) -> None:
    with pytest.raises(RefError, match=message) as caught:
        resolve(text)
    assert "\n" not in str(caught.value)


def test_a_file_that_fails_to_import_names_the_error(tmp_path: Path) -> None:
    source = tmp_path / "ref_broken_b.py"
    source.write_text("raise ValueError('bad config')\n")
    with pytest.raises(RefError, match="ValueError: bad config"):
        resolve(f"{source}:f")


def test_a_file_shadowing_an_imported_module_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "json.py"
    source.write_text("f = 1\n")
    with pytest.raises(RefError, match="already imported from elsewhere"):
        resolve(f"{source}:f")
