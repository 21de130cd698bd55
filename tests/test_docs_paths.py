"""Every source file and module the README and docs/ name exists, so a move or a rename cannot leave a
doc pointing at nothing (docs/DEVELOPING.md once named ``fedcogen/cli.py`` long after it became a package).

What is checked, in README.md and every markdown file under docs/ (docs/results/ included):

* ``path/to/file.py`` (and ``.proto``): the file exists under the repository root; a bare ``name.py``
  exists somewhere in the source tree;
* ``fedcogen.x.y[.name]``: the dotted module exists (``fedcogen.client`` is the ``client/`` folder, as
  pyproject's package-dir maps it), and a trailing name after the module is defined at its top level;
* ``from fedcogen.x import a, b``: each imported name is defined at the module's top level;
* a relative markdown link ``[text](path)`` resolves from the doc's own folder, and a path under
  ``docs/`` named in the text (``docs/results/dp_scale.json``) exists: a figure must cite a result file
  that is committed, and a doc that moves must take its links along.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
PACKAGE_DIRS = {"client": "client", "server": "server", "protocols": "protocols", "simulations": "simulations"}
SKIP_DIRS = {".venv", ".git", "runs", "node_modules", "__pycache__"}

FILE_RE = re.compile(r"(?<![\w./-])((?:[\w.-]+/)*[\w-]+\.(?:py|proto))\b")
DOTTED_RE = re.compile(r"\bfedcogen(?:\.[A-Za-z_]\w*)+")
LINK_RE = re.compile(r"\]\(([^)\s]+)\)")
DOCS_PATH_RE = re.compile(r"(?<![\w./-])(docs/[\w./-]*\w)(?![\w./{-])")  # not a shell pattern (`x-{a,b}.json`)
FROM_RE = re.compile(r"^[ \t]*from[ \t]+(fedcogen(?:\.\w+)*)[ \t]+import[ \t]+(?:\(([^)]*)\)|([\w \t,]+))", re.M)


@cache
def _source_files() -> frozenset[str]:
    """Base names of every source file in the tree (what a bare ``name.py`` may refer to)."""
    names = set()
    for p in ROOT.rglob("*"):
        if p.suffix in (".py", ".proto") and not SKIP_DIRS & set(p.relative_to(ROOT).parts):
            names.add(p.name)
    return frozenset(names)


@cache
def _top_level_names(path: Path) -> frozenset[str]:
    """Names a module defines or imports at its top level (what ``module.name`` can refer to)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return frozenset(names)


def _resolve(dotted: str) -> tuple[Path | None, list[str]]:
    """(module file or package ``__init__``, components left after it); None if no module matches."""
    parts = dotted.split(".")[1:]
    if not parts:
        return ROOT / "fedcogen" / "__init__.py", []
    here = ROOT / PACKAGE_DIRS[parts[0]] if parts[0] in PACKAGE_DIRS else ROOT / "fedcogen" / parts[0]
    if parts[0] not in PACKAGE_DIRS and not here.is_dir():
        mod = ROOT / "fedcogen" / f"{parts[0]}.py"
        return (mod, parts[1:]) if mod.is_file() else (None, parts)
    i = 1
    while i < len(parts) and (here / parts[i] / "__init__.py").is_file():
        here, i = here / parts[i], i + 1
    if i < len(parts) and (here / f"{parts[i]}.py").is_file():
        return here / f"{parts[i]}.py", parts[i + 1:]
    return here / "__init__.py", parts[i:]


def stale_references(text: str, folder: Path = ROOT) -> list[str]:
    """What ``text`` (a doc in ``folder``) names that does not exist."""
    stale = []
    for target in sorted(set(LINK_RE.findall(text))):
        path = target.split("#", 1)[0]
        if path and "://" not in path and not path.startswith("mailto:") and not (folder / path).exists():
            stale.append(f"link {target}")
    for path in sorted(set(DOCS_PATH_RE.findall(text))):
        if not (ROOT / path).exists():
            stale.append(f"file {path}")
    for path in sorted(set(FILE_RE.findall(text))):
        if "/" in path:
            if not (ROOT / path).is_file():
                stale.append(f"file {path}")
        elif path not in _source_files():
            stale.append(f"file {path}")
    for dotted in sorted(set(DOTTED_RE.findall(text))):
        module, rest = _resolve(dotted)
        if module is None or not module.is_file():
            stale.append(f"module {dotted}")
        elif rest and rest[0] not in _top_level_names(module):
            if module.name == "__init__.py":  # no such submodule, nor a name the package defines
                stale.append(f"module {dotted}")
            else:
                stale.append(f"name {dotted} ({rest[0]!r} is not defined in {module.relative_to(ROOT)})")
    for dotted, wrapped, names in FROM_RE.findall(text):
        module, rest = _resolve(dotted)
        if module is None or rest or not module.is_file():
            continue  # the module itself is reported above
        for name in (n.strip().split(" as ")[0].strip() for n in (wrapped or names).split(",")):
            if name and name not in _top_level_names(module):
                stale.append(f"name {name} imported from {dotted}")
    return stale


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_file_and_module_a_doc_names_exists(doc: Path) -> None:
    assert stale_references(doc.read_text(encoding="utf-8"), doc.parent) == []


def test_the_checker_catches_moved_files_modules_and_names() -> None:
    text = ("see `fedcogen/cli.py`, `client/gone.py`, `nowhere.py`, `fedcogen.simulations.data`, "
            "`fedcogen.models.no_such_loader`\n```python\nfrom fedcogen.models import load_model, vanished\n```\n"
            "fine: `client/fl/fl_clientapp.py`, `fl_serverapp.py`, `fedcogen.server`, `fedcogen.models.load_model`, "
            "`fedcogen.run_config.FLSettings`, `protocols/cogen.proto`")
    assert stale_references(text) == [
        "file client/gone.py", "file fedcogen/cli.py", "file nowhere.py",
        "name fedcogen.models.no_such_loader ('no_such_loader' is not defined in fedcogen/models.py)",
        "module fedcogen.simulations.data",
        "name vanished imported from fedcogen.models",
    ]


def test_the_checker_catches_broken_links_and_uncommitted_result_files() -> None:
    docs = ROOT / "docs"
    text = ("[ok](results/dp_scale.json), [anchor](scale-and-dp.md#dp-at-cross-device-scale), "
            "[web](https://flower.ai), `docs/results/dp_scale.json`; broken: [moved](docs/gpu.md), "
            "[gone](results/bench_comm.json), `docs/results/never-committed.json`")
    assert stale_references(text, docs) == ["link docs/gpu.md", "link results/bench_comm.json",
                                            "file docs/results/never-committed.json"]
