"""Making a model smaller or a ring from a trained one: int8 ring storage (:mod:`.quantization`),
channel pruning (:mod:`.pruning`) and least-squares folding of trained weights (:mod:`.fold`)."""
