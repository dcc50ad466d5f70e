"""transformers and Hub glue: :class:`RPGConfig`, the ``RPG*`` models, ring-only checkpoints,
uploads and model cards.  :mod:`.remote_code` holds the self-contained files every checkpoint
carries for ``trust_remote_code=True`` (they import neither rpg_hf nor each other's package)."""
