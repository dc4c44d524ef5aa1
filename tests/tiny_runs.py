"""Tiny runs for the cascade's tests (fixtures `runs` and `cascade` in tests/conftest.py):
mufm/sample/random_runs.py's TINY recipe (MuLan 3 levels x 16, the three stage LMs of
configs/experiments/stage_tiny.gin: semantic windows of 50 frames, coarse 25 semantic ->
50 x 2 levels, fine 25 x levels 2..3; the 4 x 64 codec; a semantic tokenizer with 8
k-means clusters), each written with random weights (what they weigh does not matter here,
shapes and determinism do)."""
from mufm.sample.cascade import Cascade
from mufm.sample.random_runs import TINY

STAGE_GIN = TINY.stages["semantic"][0]
SECONDS = 3.0  # 75 semantic frames: 2 semantic, 5 coarse and 11 fine windows
TEXTS = ["a calm piano piece", "fast drums"]


def load(runs, **changes):
    return Cascade.from_runs(dict(runs, **changes))
