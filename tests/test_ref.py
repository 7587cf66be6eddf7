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


def test_a_module_ref_finds_packages_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "ref_package_b"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text("def double(batch):\n    return [2 * x for x in batch]\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    try:
        ref = resolve("ref_package_b.models:double")
    finally:
        sys.modules.pop("ref_package_b.models", None)
        sys.modules.pop("ref_package_b", None)
    assert ref.obj([1]) == [2]  # type: ignore[operator]
    assert ref.source == (package / "models.py").resolve()


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
