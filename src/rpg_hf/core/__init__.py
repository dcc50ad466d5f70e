"""The ring math, with no module glue: the pinned seeded construction (:mod:`.construction`,
versioned, pure integer arithmetic) and the pure-PyTorch reference generation and gradient fold
(:mod:`.reference`) that every kernel in :mod:`rpg_hf.ops` reproduces."""
