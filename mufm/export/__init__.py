"""Exporting the cascade as a TF SavedModel (`python -m mufm.export`): the programs traced
from a loaded cascade (programs.py, prompts.py), caption tokenisation as TF ops (text.py),
the SavedModel with its signatures, version layout and warm-up requests (saved_model.py).
Served by mufm/serve/."""
