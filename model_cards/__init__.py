"""Rendered model cards; `python model_cards/render.py` (importable as `model_cards.render`)."""
