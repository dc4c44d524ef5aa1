"""MuLan's conditioning tokens: an RVQ of 12 levels x 1024 codes over the 128-d embeddings.

MusicLM quantises the MuLan embedding of a clip into 12 ids (one per level), taken from
the *audio* embedding when the stage LMs train and from the *text* embedding of the
prompt when they sample. The codebooks are fitted once, after MuLan trains, on audio
embeddings of the train split (`fit`): level l runs k-means (k-means++ seeding, Lloyd's
iterations: `mufm.layers.kmeans.kmeans`, the shared quantizer's initialiser) on the
residuals the levels before it leave; `encode` is `ResidualVectorQuantizer.encode` of
mufm/layers/rvq.py over those codebooks (greedy nearest code per level).

Deterministic: fitting is a function of (embeddings, seed); encoding has no randomness.
Saved beside the run, `<MODEL_DIR>/mulan_tokens/`: `codebooks.npy` float32 [12, 1024, 128]
and `tokens.json` (sizes, what it was fitted on); `MuLanTokens.load(dir)` needs nothing else
(no model, no gin).
"""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mufm.layers.kmeans import kmeans
from mufm.layers.rvq import ResidualVectorQuantizer

FORMAT = 1


@dataclasses.dataclass
class MuLanTokens:
    codebooks: np.ndarray  # [levels, codes, dim] float32
    info: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.codebooks = np.asarray(self.codebooks, np.float32)
        n, k, d = self.codebooks.shape
        rvq = ResidualVectorQuantizer(n, k, d, rngs=nnx.Rngs(0))
        rvq.codebook[...] = jnp.asarray(self.codebooks)
        graphdef, state = nnx.split(rvq)
        self.graphdef = graphdef  # with `_state`: the quantizer as a pure function (export)
        self._encode = jax.jit(lambda s, x: nnx.merge(graphdef, s).encode(x))
        self._decode = jax.jit(lambda s, c: nnx.merge(graphdef, s).decode(c))
        self._state = state

    @property
    def num_levels(self) -> int:
        return self.codebooks.shape[0]

    @property
    def codebook_size(self) -> int:
        return self.codebooks.shape[1]

    @classmethod
    def fit(cls, embeddings: np.ndarray, *, num_levels: int = 12, codebook_size: int = 1024,
            iters: int = 20, seed: int = 0, info: dict | None = None) -> "MuLanTokens":
        """Level-by-level k-means on the residuals of `embeddings` [N, D] (N should exceed
        codebook_size; with fewer, k-means++ repeats points and some codes coincide)."""
        x = jnp.asarray(embeddings, jnp.float32)
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"fit needs [N >= 2, D] embeddings, got {tuple(x.shape)}")
        weights = jnp.ones((len(x),), jnp.float32)
        run = jax.jit(lambda key, r: kmeans(key, r, weights, codebook_size, iters)[0])
        books, residual = [], x
        for level in range(num_levels):
            c = run(jax.random.fold_in(jax.random.key(seed), level), residual)
            codes = jnp.argmin(jnp.sum((residual[:, None] - c[None]) ** 2, -1), -1)
            residual = residual - c[codes]
            books.append(np.asarray(c))
        meta = {"format": FORMAT, "num_levels": num_levels, "codebook_size": codebook_size,
                "dim": int(x.shape[1]), "fitted_on": int(len(x)), "seed": seed,
                "iters": iters, "final_residual_rms": float(jnp.sqrt(jnp.mean(residual ** 2)))}
        meta.update(info or {})
        return cls(np.stack(books), meta)

    def encode(self, embeddings: np.ndarray) -> np.ndarray:
        """[N, D] -> int32 ids [N, levels]."""
        return np.asarray(self._encode(self._state, jnp.asarray(embeddings, jnp.float32)))

    def decode(self, ids: np.ndarray) -> np.ndarray:
        """[N, q] -> the sum of the first q levels' codes [N, D]."""
        return np.asarray(self._decode(self._state, jnp.asarray(ids, jnp.int32)))

    def save(self, directory: str) -> str:
        os.makedirs(directory, exist_ok=True)
        np.save(os.path.join(directory, "codebooks.npy"), self.codebooks)
        with open(os.path.join(directory, "tokens.json"), "w") as f:
            json.dump(self.info, f, indent=1, sort_keys=True)
        return directory

    @classmethod
    def load(cls, directory: str) -> "MuLanTokens":
        path = os.path.join(directory, "codebooks.npy")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{directory}: no codebooks.npy (fit with "
                                    f"`python -m mufm.mulan fit_tokens`)")
        info = {}
        if os.path.isfile(os.path.join(directory, "tokens.json")):
            with open(os.path.join(directory, "tokens.json")) as f:
                info = json.load(f)
        return cls(np.load(path), info)
