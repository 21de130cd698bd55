"""The package layers hold: no import runs backwards, and project imports sit at the top of files.

Layers, lowest first: ``protocols`` <- core ``fedcogen/`` <- ``client``, ``server`` (never each
other) <- ``simulations`` <- CLI modules (anything under ``fedcogen/cli/``, ``fedcogen/cli.py`` or
named ``*_cli.py``), which may import anything. Imports inside function bodies used to hide cycles,
so a project import inside a function is an error too (heavy third-party libraries stay lazy).

Concerns: ``client/`` and ``server/`` each hold two products, federated learning (``fl/``) and CoGenesis
(``cogen/``); a module under an ``fl`` folder never imports one under a ``cogen`` folder, nor the other
way round (what both need lives below them: ``fedcogen`` core or ``protocols``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RANK = {"protocols": 0, "fedcogen": 1, "client": 2, "server": 2, "simulations": 3}

def _is_cli(path: Path) -> bool:
    rel = path.relative_to(ROOT)
    return "cli" in rel.parts[:-1] or rel.name.endswith("_cli.py") or rel.name == "cli.py"


def _modules(top: str) -> list[Path]:
    return sorted(p for p in (ROOT / top).rglob("*.py") if "_pb2" not in p.name)


def _imported(node: ast.AST) -> list[str]:
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return [node.module]
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    return []


def _target(module: str) -> str | None:
    """Layer a ``fedcogen...`` module belongs to (``"cli"`` for CLI modules), None if not ours."""
    parts = module.split(".")
    if parts[0] != "fedcogen":
        return None
    if len(parts) > 1 and (parts[1] == "cli" or parts[-1].endswith("_cli")):
        return "cli"
    return parts[1] if len(parts) > 1 and parts[1] in RANK else "fedcogen"


def backward_imports() -> list[tuple[str, str]]:
    """(kind, "file:line top -> module") for every import that runs against the layers."""
    found = []
    for top, rank in RANK.items():
        for path in _modules(top):
            if _is_cli(path):
                continue
            rel = path.relative_to(ROOT).as_posix()
            for node in ast.walk(ast.parse(path.read_text())):
                for module in _imported(node):
                    tgt = _target(module)
                    if tgt is None:
                        continue
                    if tgt == "cli":
                        kind = "simulations -> CLI" if top == "simulations" else "CLI"
                        found.append((kind, f"{rel}:{node.lineno} imports the CLI module {module}"))
                    elif RANK[tgt] > rank or (RANK[tgt] == rank == 2 and tgt != top):
                        found.append((f"{rel} -> fedcogen.{tgt}", f"{rel}:{node.lineno} {top} -> {module}"))
    return found


def test_no_import_runs_against_the_layers():
    bad = [line for _, line in backward_imports()]
    assert bad == [], "imports against the layers:\n" + "\n".join(bad)


CONCERNS = ("fl", "cogen")


def _concern(parts: tuple[str, ...] | list[str]) -> str | None:
    """``"fl"`` or ``"cogen"`` when a folder of that name is on the path, else None."""
    return next((p for p in parts if p in CONCERNS), None)


def concern_crossings() -> list[str]:
    """``"file:line fl -> module"`` for every import from an ``fl`` folder into a ``cogen`` one, or back."""
    found = []
    for top in RANK:
        for path in _modules(top):
            mine = _concern(path.relative_to(ROOT).parts[:-1])
            if mine is None:
                continue
            rel = path.relative_to(ROOT).as_posix()
            for node in ast.walk(ast.parse(path.read_text())):
                for module in _imported(node):
                    if _target(module) is None:
                        continue
                    names = [module] + ([f"{module}.{a.name}" for a in node.names]
                                        if isinstance(node, ast.ImportFrom) else [])
                    theirs = {_concern(n.split(".")[2:]) for n in names} - {None, mine}
                    if theirs:
                        found.append(f"{rel}:{node.lineno} {mine} -> {module} ({', '.join(sorted(theirs))})")
    return found


def test_federated_learning_and_cogenesis_never_import_each_other():
    bad = concern_crossings()
    assert bad == [], "imports across concerns (fl <-> cogen):\n" + "\n".join(bad)


def test_client_and_server_are_split_by_concern():
    """Every module of ``client/`` and ``server/`` sits in ``fl/`` or ``cogen/`` (the check above sees it)."""
    loose = [p.relative_to(ROOT).as_posix() for top in ("client", "server") for p in _modules(top)
             if p.name != "__init__.py" and _concern(p.relative_to(ROOT).parts[:-1]) is None]
    assert loose == [], "modules outside fl/ and cogen/:\n" + "\n".join(loose)


def test_the_concern_check_reads_the_folders():
    assert _concern(("client", "fl")) == "fl"
    assert _concern(("server", "cogen")) == "cogen"
    assert _concern(("simulations", "federation")) is None
    assert _concern("fedcogen.client.cogen.fusion".split(".")[2:]) == "cogen"


def _function_imports(path: Path) -> list[str]:
    """Project imports inside function bodies (module and class level are fine)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                if any(_target(m) is not None for m in _imported(inner)):
                    out.append(f"{path.relative_to(ROOT).as_posix()}:{inner.lineno}")
    return out


@pytest.mark.parametrize("top", ["protocols", "fedcogen", "client", "server", "simulations"])
def test_project_imports_are_at_the_top_of_files(top):
    lazy = [hit for path in _modules(top) if not _is_cli(path) for hit in _function_imports(path)]
    assert lazy == [], "project imports inside functions:\n" + "\n".join(lazy)


def test_argparse_lives_only_in_the_cli_package():
    """One CLI package: library modules have no ``main`` and never build a parser."""
    offenders = []
    for top in RANK:
        for path in _modules(top):
            if _is_cli(path):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if "argparse" in _imported(node):
                    offenders.append(f"{path.relative_to(ROOT).as_posix()}:{node.lineno} imports argparse")
                if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
                    offenders.append(f"{path.relative_to(ROOT).as_posix()}:{node.lineno} has a __main__ block")
    assert offenders == [], "\n".join(offenders)
