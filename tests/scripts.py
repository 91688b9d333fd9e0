"""The repository's scripts (``bench/``, ``infra/``) loaded as modules, for their tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_script(path: str | Path, name: str | None = None, register: bool = False
                ) -> ModuleType:
    """Execute a script file (relative to the repository root) and return it as a module.

    Args:
        path: E.g. ``"bench/quality.py"``.
        name: The module's name (default: the file's stem).
        register: Put it in ``sys.modules`` (needed where pickling or dataclasses look the
            module up by name).
    """
    file = REPO / path
    name = name or file.stem
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec is not None and spec.loader is not None, file
    module = importlib.util.module_from_spec(spec)
    if register:
        sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
