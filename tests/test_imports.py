"""The package's modules form no import circle, and each imports on its own."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import lsst.ctrl.bps.parsl

PACKAGE = "lsst.ctrl.bps.parsl"
ROOT = Path(lsst.ctrl.bps.parsl.__file__).parent


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join([PACKAGE, *parts])] = path
    return found


def _import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere (in functions too)."""
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, if any (iterative depth-first search)."""
    colour = dict.fromkeys(graph, 0)  # 0 new, 1 on the stack, 2 done
    for root in graph:
        if colour[root]:
            continue
        stack = [(root, iter(sorted(graph[root])))]
        colour[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
            elif colour[child] == 1:
                path = [n for n, _ in stack]
                return path[path.index(child) :] + [child]
            elif colour[child] == 0:
                colour[child] = 1
                stack.append((child, iter(sorted(graph[child]))))
    return None


def test_no_import_circle():
    """No module imports, even lazily inside a function, a module that
    imports it back through any chain.
    """
    cycle = _cycle(_import_graph(_modules()))
    assert cycle is None, " -> ".join(cycle or [])


def test_each_module_imports_on_its_own():
    """Each module imports first in a process where none of the package's
    modules was imported yet (the package's modules are dropped between
    imports).
    """
    names = list(_modules())
    script = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        f"    for loaded in [m for m in sys.modules if m == {PACKAGE!r} or m.startswith({PACKAGE + '.'!r})]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


# The layers of the package, lowest first: a unit may import (at module level
# or inside a function) only units of lower layers and its own. A top-level
# module is a unit of its own; ``site.py`` and ``sites/`` are one unit (the
# site base class and the sites built on it).
LAYERS: list[set[str]] = [
    {"records", "oneline", "parslcompat", "version"},
    {"store", "localpool"},
    {"configuration"},
    {"job"},
    {"prepare"},
    {"environment", "site"},
    {"control"},
    {"report"},
    {"run"},
    {"workflow"},
    {"service", ""},
]


def _unit(module: str) -> str:
    parts = module.split(".")[4:]
    if not parts:
        return ""
    return "site" if parts[0] == "sites" else parts[0]


def test_imports_go_down_the_layers():
    """No import, even lazily inside a function, goes up a layer: what a
    lower layer needs from a higher one is passed down as a value.
    """
    rank = {unit: level for level, units in enumerate(LAYERS) for unit in units}
    modules = _modules()
    units = {_unit(name) for name in modules}
    assert units <= set(rank), f"units missing from LAYERS: {sorted(units - set(rank))}"
    upward = [
        f"{name} -> {target}"
        for name, targets in _import_graph(modules).items()
        for target in targets
        if rank[_unit(target)] > rank[_unit(name)]
        or (rank[_unit(target)] == rank[_unit(name)] and _unit(target) != _unit(name))
    ]
    assert not upward, "imports going up a layer:\n" + "\n".join(sorted(upward))


def test_top_level_stays_small():
    """The package's folders tell its parts: at most 12 modules sit directly
    in ``lsst/ctrl/bps/parsl/`` (the drop-in import paths and the shared leaves).
    """
    top = sorted(path.name for path in ROOT.glob("*.py"))
    assert len(top) <= 12, top


def test_the_worker_package_needs_nothing_of_the_plugin():
    """The worker-side package runs where the plugin may not be importable
    (the spawner runs without site-packages): it never imports the plugin
    (the warm process imports the LSST stack it preloads, nothing else).
    """
    worker = Path(__import__("lsst_ctrl_bps_parsl_worker").__file__).parent
    offenders = []
    for path in sorted(worker.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            offenders += [f"{path.name}: {n}" for n in names if n.startswith(("lsst.ctrl.bps", "lsst.utils"))]
    assert not offenders, offenders


def test_design_doc_names_every_module():
    """doc/design.md's module table has a row for every module (``sites/*.py``
    stands for the site classes).
    """
    text = (Path(__file__).parents[1] / "doc" / "design.md").read_text()
    worker = Path(__import__("lsst_ctrl_bps_parsl_worker").__file__).parent
    paths = [p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*.py")]
    paths += [f"lsst_ctrl_bps_parsl_worker/{p.name}" for p in worker.glob("*.py")]
    missing = [
        path
        for path in sorted(paths)
        if f"`{path}`" not in text
        and not path.endswith("__init__.py")
        and not (path.startswith("sites/") and "`sites/*.py`" in text)
    ]
    assert not missing, f"doc/design.md's module table lacks: {missing}"


def _imported_package(path: Path, node: ast.ImportFrom, python_root: Path) -> Path:
    """The package directory an ``from X import ...`` in ``path`` imports from."""
    base = path.parent
    for _ in range(node.level - 1):
        base = base.parent
    candidate = (base if node.level else python_root).joinpath(*(node.module or "").split("."))
    return candidate if candidate.is_dir() else candidate.parent


def test_private_names_stay_in_their_package():
    """A leading underscore marks a name private to its package (design.md):
    its sibling modules may import it, modules of other packages may not."""
    python_root = ROOT.parents[3]
    paths = [*ROOT.rglob("*.py"), *(python_root / "lsst_ctrl_bps_parsl_worker").glob("*.py")]
    crossing = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                private = [
                    a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")
                ]
                if private and _imported_package(path, node, python_root) != path.parent:
                    crossing.append(f"{path.relative_to(python_root)}: {node.module} {private}")
    assert not crossing, crossing
    # The check sees a crossing: ``from ..oneline import _x`` in ``run/`` imports from the parent package.
    probe = ast.parse("from ..oneline import _x").body[0]
    assert isinstance(probe, ast.ImportFrom)
    assert _imported_package(ROOT / "run" / "driver.py", probe, python_root) == ROOT
