"""Keep the RPG model card when ``transformers.Trainer`` pushes to the Hub.

``Trainer.push_to_hub()`` saves the model (our ``save_pretrained`` writes the RPG card), then
``Trainer.create_model_card`` overwrites README.md with its training summary and uploads the
folder; no callback event falls between the two, and Trainer's special case for a model's own card
is reserved for PEFT.  So the route here, for an unmodified Trainer, is one call after building it::

    trainer = Trainer(model=rpg_model, args=TrainingArguments(push_to_hub=True, hub_model_id=...), ...)
    rpg_hf.hf.trainer_card.keep_rpg_card(trainer)
    trainer.train()
    trainer.push_to_hub()   # README.md: the RPG card + Trainer's summary, one valid metadata block

:func:`keep_rpg_card` wraps ``create_model_card`` *on that instance* (the class is untouched) so
that Trainer's card is merged into ours (:func:`merge_trainer_card`): our metadata (library, tags,
``model-index``) with Trainer's tags, datasets and results added, our body, then Trainer's summary
(hyperparameters, results table, framework versions) under its own heading, between markers that a
later push replaces.  It also adds :class:`RPGCardCallback`, so the pushes Trainer makes during
training (``hub_strategy``) upload a complete RPG folder: the card and the remote-code files of the
checkpoint being pushed, which Trainer's own copy step leaves behind.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard
from transformers import TrainerCallback

from rpg_hf.hf.card_results import merge_results
from rpg_hf.hf.remote_code import REMOTE_CODE_FILES

__all__ = ["RPGCardCallback", "keep_rpg_card", "merge_trainer_card"]

TRAINER_START = "<!-- rpg-hf:trainer:start -->"
TRAINER_END = "<!-- rpg-hf:trainer:end -->"
TRAINER_HEADING = "## Training run (🤗 Trainer)"
# the files of a checkpoint that make the repository root a loadable RPG folder; Trainer copies
# only config.json and the weights from a checkpoint before a push
_ROOT_FILES = ("README.md", "preprocessor_config.json", *REMOTE_CODE_FILES)
_PLACEHOLDER = "More information needed"


def _trainer_body(text: str) -> str:
    """Trainer's card body without its title and empty placeholder sections, headings one level down."""
    # Trainer takes an empty config._name_or_path (a model built in code) for a base model's name
    text = text.replace("This model is a fine-tuned version of [](https://huggingface.co/) on ",
                        "This model was trained from scratch on ")
    lines = text.strip("\n").splitlines()
    lines = [line for line in lines if not re.match(r"#\s", line)]  # its "# model_name" title
    sections: list[list[str]] = [[]]
    for line in lines:
        if re.match(r"##\s", line):
            sections.append([])
        sections[-1].append(line)
    kept = [s for s in sections if any(line.strip() and not line.startswith("#") and line.strip() != _PLACEHOLDER
                                       for line in s)]
    out = []
    for line in (line for s in kept for line in s):
        out.append("#" + line if re.match(r"#{2,5}\s", line) else line)
    return "\n".join(out).strip("\n")


def merge_trainer_card(rpg_card: ModelCard, trainer_card: ModelCard) -> ModelCard:
    """One card: ``rpg_card``'s metadata and body, plus ``trainer_card``'s tags, datasets, language,
    base model (when ours has none) and results (ours win on the same dataset/split/metric), and its
    body as a section between markers (replaced if ``rpg_card`` already has one)."""
    data, theirs = rpg_card.data, trainer_card.data
    data.tags = list(dict.fromkeys([*(data.tags or []), *(theirs.tags or [])])) or None
    data.datasets = list(dict.fromkeys([*(data.datasets or []), *(theirs.datasets or [])])) or None
    data.language = data.language or theirs.language
    data.base_model = data.base_model or theirs.base_model
    merged = merge_results(theirs.eval_results or [], data.eval_results or [])
    if merged:
        data.eval_results = merged
        data.metrics = sorted({*(data.metrics or []), *(r.metric_type for r in merged)})
    text = rpg_card.text
    start, end = text.find(TRAINER_START), text.find(TRAINER_END)
    if 0 <= start < end:
        text = text[:start].rstrip("\n") + "\n" + text[end + len(TRAINER_END):].lstrip("\n")
    section = f"{TRAINER_START}\n{TRAINER_HEADING}\n\n{_trainer_body(trainer_card.text)}\n{TRAINER_END}\n"
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{text.rstrip()}\n\n{section}")


class RPGCardCallback(TrainerCallback):
    """Before each push Trainer makes during training, put the pushed checkpoint's card and
    remote-code files in ``output_dir`` beside the config and weights Trainer copies there itself."""

    def on_push_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not checkpoint.is_dir():  # the final push_to_hub: save_model writes these files itself
            return
        for name in _ROOT_FILES:
            if (checkpoint / name).is_file():
                shutil.copy(checkpoint / name, Path(args.output_dir) / name)


def keep_rpg_card(trainer: Any, **card_overrides: Any) -> Any:
    """Make ``trainer.push_to_hub()`` upload the RPG card merged with Trainer's summary; returns ``trainer``.

    ``card_overrides`` are :class:`~rpg_hf.hf.cards.CardInfo` fields for our card (``datasets``,
    ``recipe_command`` ...); the card's ``model_id`` defaults to ``args.hub_model_id``.  Calling it
    twice on one trainer is harmless.
    """
    if getattr(trainer, "_rpg_card_kept", False):
        return trainer
    original = trainer.create_model_card

    def create_model_card(*args: Any, **kwargs: Any) -> None:
        from rpg_hf.hf.cards import write_model_card

        if not trainer.is_world_process_zero():
            return original(*args, **kwargs)
        out = Path(trainer.args.output_dir)
        model = trainer.accelerator.unwrap_model(trainer.model)
        overrides = {"model_id": trainer.args.hub_model_id or out.name, **card_overrides}
        ours = write_model_card(model, out, **overrides)  # keeps the results an earlier card had
        original(*args, **kwargs)  # Trainer's card, written over README.md
        merge_trainer_card(ours, ModelCard.load(out / "README.md")).save(out / "README.md")

    trainer.create_model_card = create_model_card
    trainer.add_callback(RPGCardCallback())
    trainer._rpg_card_kept = True
    return trainer
