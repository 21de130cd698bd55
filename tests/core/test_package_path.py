"""The package finds its sibling folders (``client/``, ``server/``...) even while it is still initialising.

Flower's simulation imports the ServerApp in one thread while another validates the ClientApp; a thread
that meets ``fedcogen`` half-initialised searches ``fedcogen.client`` only in the ``__path__`` the package
has at that moment. So the source root must be on ``__path__`` before ``fedcogen/__init__.py`` makes its
first file-system call (each one lets another thread run).
"""

from __future__ import annotations

import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INIT = ROOT / "fedcogen" / "__init__.py"


def _run_init(monkeypatch: pytest.MonkeyPatch) -> tuple[types.ModuleType, list[list[str]]]:
    """Execute ``fedcogen/__init__.py`` in a fresh module, recording ``__path__`` at every ``is_file``."""
    module = types.ModuleType("fedcogen_probe")
    module.__file__ = str(INIT)
    module.__path__ = [str(INIT.parent)]
    seen: list[list[str]] = []
    real_is_file = Path.is_file

    def spy(self: Path) -> bool:
        seen.append(list(module.__path__))
        return real_is_file(self)

    monkeypatch.setattr(Path, "is_file", spy)
    exec(compile(INIT.read_text(), str(INIT), "exec"), module.__dict__)
    return module, seen


def test_the_source_root_is_on_the_search_path_before_the_first_file_system_call(monkeypatch):
    module, seen = _run_init(monkeypatch)
    assert seen, "source_root() made no is_file() call: the probe no longer watches the window"
    assert all(str(ROOT) in path for path in seen), seen
    assert module.__path__ == [str(INIT.parent), str(ROOT)]  # and afterwards exactly as before
