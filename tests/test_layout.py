"""The package's shape, as the README's Layout section states it: layers, no import cycle, small files.

Imports are read with ``ast`` from the source (module-level and function-level alike), so a lazy
import inside a function counts: it still is a dependency a reader has to follow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "rpg_hf"
MAX_LINES = 400


def _module(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(every rpg_hf module ``path`` imports, the ones imported at module level)."""
    mod = _module(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    every, top = set(), set()
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] + [f"{target}.{a.name}" for a in node.names]
        for name in names:
            if name.split(".")[0] == "rpg_hf":
                every.add(name)
                if id(node) in top_level:
                    top.add(name)
    return every, top


MODULES = {_module(p): p for p in SRC.rglob("*.py")}


def _resolve(name: str) -> str | None:
    """The module an imported name lives in (``rpg_hf.reparam.get_generator`` -> ``rpg_hf.reparam``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _deps(top_only: bool) -> dict[str, set[str]]:
    out = {}
    for mod, path in MODULES.items():
        every, top = _imports(path)
        out[mod] = {d for d in map(_resolve, top if top_only else every) if d and d != mod}
    return out


@pytest.mark.parametrize("layer, allowed", [
    ("rpg_hf.core", ("rpg_hf.core",)),
    ("rpg_hf.ops", ("rpg_hf.core", "rpg_hf.ops")),
    ("rpg_hf.hf.remote_code", ("rpg_hf.hf.remote_code",)),
])
def test_lower_layers_import_only_what_is_below_them(layer, allowed):
    for mod, deps in _deps(top_only=False).items():
        if layer.endswith("remote_code") and MODULES[mod].name == "__init__.py":
            continue  # never shipped: it aliases the shipped core modules inside the package
        if mod == layer or mod.startswith(layer + "."):
            bad = {d for d in deps if not any(d == a or d.startswith(a + ".") for a in allowed)}
            assert not bad, f"{mod} imports {sorted(bad)}"


def test_the_library_never_imports_the_training_support():
    for mod, deps in _deps(top_only=False).items():
        if mod.startswith("rpg_hf.train") or mod == "rpg_hf.cli":  # the CLI's demo/scaling commands use train/
            continue
        assert not {d for d in deps if d.startswith("rpg_hf.train")}, mod


def test_no_import_cycle_at_module_level():
    deps = _deps(top_only=True)
    done, active = set(), []

    def visit(mod: str) -> None:
        if mod in active:
            cycle = active[active.index(mod):] + [mod]
            if not all(m == "rpg_hf" or MODULES[m].name == "__init__.py" for m in cycle[:-1]):
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            return
        if mod in done:
            return
        active.append(mod)
        for d in sorted(deps[mod]):
            if not (MODULES[d].name == "__init__.py" and mod.startswith(d + ".")):  # a package's own __init__
                visit(d)
        active.pop()
        done.add(mod)

    for mod in sorted(deps):
        visit(mod)


def _find_cycle(deps: dict[str, set[str]], skip_init) -> list[str] | None:
    """The first import cycle through modules that are not package ``__init__`` files (None: none)."""
    done, active = set(), []

    def visit(mod: str) -> list[str] | None:
        if mod in active:
            return active[active.index(mod):] + [mod]
        if mod in done or skip_init(mod):
            return None
        active.append(mod)
        for d in sorted(deps.get(mod, ())):
            found = visit(d)
            if found:
                return found
        active.pop()
        done.add(mod)
        return None

    for mod in sorted(deps):
        found = visit(mod)
        if found:
            return found
    return None


def test_no_import_cycle_at_function_level():
    """Imports inside functions count too: a reader still has to follow them both ways."""
    deps = _deps(top_only=False)
    cycle = _find_cycle(deps, lambda m: MODULES[m].name == "__init__.py")
    assert cycle is None, "import cycle (function level included): " + " -> ".join(cycle)


RECIPES = SRC.parents[1] / "recipes"


def test_no_import_cycle_among_the_recipes():
    """recipes/ scripts import their siblings relatively (as a package) or by bare name (as scripts)."""
    files = {p.with_suffix("").relative_to(RECIPES.parent).as_posix().replace("/", "."): p
             for p in RECIPES.rglob("*.py") if p.name != "__init__.py"}
    deps: dict[str, set[str]] = {}
    for mod, path in files.items():
        package = mod.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom):
                base = package if node.level else ""
                if node.module:
                    names.append(f"{base}.{node.module}" if base else node.module)
                names += [f"{base}.{a.name}" for a in node.names] if node.level and not node.module else []
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                for cand in (name, f"{package}.{name}"):
                    if cand in files and cand != mod:
                        found.add(cand)
        deps[mod] = found
    cycle = _find_cycle(deps, lambda m: False)
    assert cycle is None, "import cycle among the recipes: " + " -> ".join(cycle)


def test_no_source_file_over_the_limit():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, long
