"""The README shows the science results exactly as the sweep script generated them."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_science_table_matches_generated_table():
    readme = (ROOT / "README.md").read_text()
    shown = readme.split("<!-- science-table:start -->")[1].split("<!-- science-table:end -->")[0].strip()
    assert shown == (ROOT / "results" / "fashion_mnist" / "table.md").read_text().strip()


def test_readme_carries_the_two_fresh_machine_commands():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in readme  # .ci/run runs exactly the README's test command
    assert "rpg-hf demo" in readme and "apt-get install -y dataset-fashion-mnist" in readme


# the repository's own top-level folders: a path starting with one of them names a file of this repository
_REPO_PATH = re.compile(r"(?<![\w/.-])((?:src/rpg_hf|tests|recipes|benchmarks|results|model_cards|\.ci)/[\w./*-]*[\w*])")


def _named_paths(text: str) -> set[str]:
    """Paths a text names, but not templates (``tests/core/spec_v<version>.py``, ``runs/{name}``)."""
    return {m.group(1).rstrip(".") for m in _REPO_PATH.finditer(text) if text[m.end():m.end() + 1] not in ("<", "{")}


def _docs_of(path: Path) -> str:
    """Docstrings and comments of a Python file: where prose names files (code builds paths of its own)."""
    source = path.read_text(encoding="utf-8")
    parts = [tok.string for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            parts.append(ast.get_docstring(node) or "")
    return "\n".join(parts)


def test_every_repository_path_named_in_the_docs_exists():
    """README files, docstrings and comments name files that exist (globs: at least one match)."""
    texts = {p: p.read_text(encoding="utf-8") for p in [ROOT / "README.md", *ROOT.glob("*/README.md"),
                                                         *ROOT.glob("recipes/*/README.md")]}
    for pattern in ("src/**/*.py", "recipes/**/*.py", "benchmarks/*.py", "tests/**/*.py", "model_cards/*.py"):
        texts.update({p: _docs_of(p) for p in ROOT.glob(pattern)})
    missing = {str(p.relative_to(ROOT)): sorted(bad) for p, text in texts.items()
               if (bad := {n for n in _named_paths(text) if not (any(ROOT.glob(n)) if "*" in n else (ROOT / n).exists())})}
    assert not missing, missing


def test_results_store_no_machine_paths():
    """Committed result files name checkpoints relative to the repository, never a machine's absolute path."""
    absolute = re.compile(r'"(/(?:work|root|home|tmp|Users)/[^"]*)"')
    found = {str(p.relative_to(ROOT)): absolute.findall(p.read_text(encoding="utf-8"))[:3]
             for p in ROOT.glob("results/**/*.json") if absolute.search(p.read_text(encoding="utf-8"))}
    assert not found, found
