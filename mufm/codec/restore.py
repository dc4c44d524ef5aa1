"""A trained codec back from its run directory: the generic loader (`mufm.train.restore`)
rebuilds the generator from the run's model_config.json and restores its parameters and
codebooks alone (the discriminators and both optimizer states stay on disk), onto this
host's default device whatever mesh the run trained on. No gin state is read or changed.
"""
from __future__ import annotations

import numpy as np

from mufm.train.restore import CheckpointNotFoundError, LoadedModel, WrongFamilyError, load

__all__ = ["CheckpointNotFoundError", "load_codec"]


def load_codec(checkpoint_dir: str, step: int | None = None) -> LoadedModel:
    """A `LoadedModel` whose `.parts` (graphdef, params, codebooks) feed
    `mufm.codec.tokenizer` and whose `.configs["codec"]` is the run's CodecConfig."""
    try:
        codec = load(checkpoint_dir, step, family="codec")
    except WrongFamilyError as e:
        raise CheckpointNotFoundError(str(e)) from None
    if not int(np.min(np.asarray(codec.model_state["quantizer"]["initialized"][...]))):
        raise CheckpointNotFoundError(f"{codec.model_dir} step {codec.step}: the codebooks were "
                                      f"never initialised (a checkpoint before the first train step?)")
    return codec
