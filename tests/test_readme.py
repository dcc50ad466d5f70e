"""The README shows the science results exactly as the sweep script generated them."""

from __future__ import annotations

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
