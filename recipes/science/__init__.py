"""The science sweep: `python recipes/science/sweep.py` (importable as `recipes.science.sweep`)."""
