"""Uploading a ring-only folder: one commit through huggingface_hub's `HfApi`.

The files are committed with `create_commit` (as transformers' own `push_to_hub` does), so the
only network calls are `create_repo`, `create_branch` and `create_commit` — the boundary tests
replace.
"""

from __future__ import annotations

import os
from pathlib import Path

from rpg_hf.hf.remote_code import REMOTE_CODE_FILES

# the checkpoint, its preprocessing and card, and every file trust_remote_code loading needs
UPLOADED = ("config.json", "model.safetensors", "preprocessor_config.json", "README.md", *REMOTE_CODE_FILES)


def upload_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    token: bool | str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    create_pr: bool = False,
):
    """Create the repo if needed and commit the checkpoint files of ``folder`` in one commit."""
    from huggingface_hub import CommitOperationAdd, HfApi

    folder = Path(folder)
    files = [name for name in UPLOADED if (folder / name).is_file()]
    if "model.safetensors" not in files or "config.json" not in files:
        raise FileNotFoundError(f"{folder} is not a saved RPG model (config.json and model.safetensors needed)")
    api = HfApi(token=token, library_name="rpg_hf")
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if revision is not None and not revision.startswith("refs/pr"):
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in files]
    return api.create_commit(
        repo_id=repo_id, operations=operations, revision=revision, create_pr=create_pr,
        commit_message=commit_message or "Upload ring-only RPG model", commit_description=commit_description,
    )
