"""Build hook, nothing else: the package is configured in pyproject.toml.

The model-card template lives at the top of the repository, ``model_cards/template.md``, beside the
cards rendered from it, so that it can be read and edited as a card.  A wheel must carry it
inside the package: ``build_py`` copies it to ``rpg_hf/model_cards/template.md``, where
``rpg_hf.hf.cards.template_path`` finds it.  Editable installs and source checkouts read the file in
place, so there is one copy of the template in the repository and one in a built wheel.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

TEMPLATE = Path(__file__).resolve().parent / "model_cards" / "template.md"


class BuildPyWithCardTemplate(build_py):
    def run(self) -> None:
        super().run()
        if not getattr(self, "editable_mode", False):
            target = Path(self.build_lib) / "rpg_hf" / "model_cards" / "template.md"
            self.mkpath(str(target.parent))
            self.copy_file(str(TEMPLATE), str(target))


setup(cmdclass={"build_py": BuildPyWithCardTemplate})
