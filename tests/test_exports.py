"""The public API is exactly ``__all__``, and every public callable says what it does."""

from __future__ import annotations

import inspect

import asyncml
import asyncml.executors
import asyncml.pipeline


def test_all_lists_exactly_the_public_names() -> None:
    for module in (asyncml, asyncml.executors, asyncml.pipeline):
        public = {name for name in dir(module) if not name.startswith("_")}
        public -= {name for name in public if inspect.ismodule(getattr(module, name))}
        assert public == set(module.__all__)


def test_every_public_object_has_a_docstring() -> None:
    for module in (asyncml, asyncml.executors, asyncml.pipeline):
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                assert inspect.getdoc(obj), f"{module.__name__}.{name} has no docstring"


def test_importing_asyncml_loads_no_heavy_optional_dependency() -> None:
    import subprocess
    import sys

    heavy = "('threadpoolctl', 'sklearn', 'torch', 'ray', 'aiohttp', 'rich', 'pyarrow')"
    code = f"import asyncml, sys; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
