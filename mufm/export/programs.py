"""The cascade and its parts as pure JAX functions of (weights, inputs): what the
SavedModel carries (mufm/export/saved_model.py).

`mufm.sample.cascade` runs a request window by window from Python, with numpy between the
windows. A SavedModel holds no Python, so here the same windows are traced into one
program per clip length: the window plan (`plan_windows`) is fixed by the number of frames,
so it is unrolled at trace time (`Cascade.plans`, shared with the cascade), the tracks are arrays of the whole clip, and each
window's prompt is built from traced codes (mufm/export/prompts.py) instead of
`StageLayout.encode`. The windows, their keys and their sampler are those of the cascade,
so the tokens are the cascade's own (tested exactly against `Cascade.tokens`).

One difference, chosen for serving: every row has its own seed and draws as row 0 of a
request of its own (`sample.decode.choose` with a batch of keys), so what a request gets
never depends on the requests it was batched with. `Cascade.generate([text], seconds,
seed=s)` is the reference of a row with seed `s`. Each row also has its own temperature per
stage (the cascade's configs by default; `Cascade.generate(..., configs=...)` with the
same temperatures is the reference of an override).

Weights are an argument (`Programs.weights`, a pytree of arrays), never constants: the
export keeps them as variables next to the program, as T5X's exportable module does.
"""
from __future__ import annotations

import dataclasses
import jax
import jax.numpy as jnp
from flax import nnx

from mufm.export.prompts import new_codes, stage_prompt
from mufm.lm.layouts import MISSING
from mufm.sample.cascade import STAGES, Cascade
from mufm.sample.decode import decode_steps, prefill


@dataclasses.dataclass
class Programs:
    """The functions of one loaded `Cascade`. Each takes `weights` (the pytree in
    `self.weights`) first."""
    cascade: Cascade

    def __post_init__(self):
        c = self.cascade
        self._graphdefs, weights = {}, {}
        for name in STAGES:
            self._graphdefs[name], weights[name] = nnx.split(c._modules[name])
        self._graphdefs["mulan"], weights["mulan"] = nnx.split(c.mulan.model)
        if c.mulan.tokens is None:
            raise ValueError("the MuLan run has no fitted tokens: the cascade cannot quantise "
                             "a caption's embedding")
        self._graphdefs["mulan_tokens"], weights["mulan_tokens"] = (c.mulan.tokens.graphdef,
                                                                    c.mulan.tokens._state)
        graphdef, params, codebooks = c.codec.parts
        self._graphdefs["codec"], weights["codec"] = graphdef, (params, codebooks)
        if c.semantic_tokenizer is not None:
            t = c.semantic_tokenizer
            self._graphdefs["semantic_tokenizer"] = t.model.graphdef
            weights["semantic_tokenizer"] = (t.model.params, t.model.model_state, t.state)
        self.weights = weights
        self.layouts = {name: c.stages[name][1] for name in STAGES}

    # -- the parts -------------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        return self.cascade.sample_rate

    @property
    def hop(self) -> int:
        return int(self.cascade.codec.configs["codec"].hop)

    def embed_text(self, weights, ids: jax.Array, mask: jax.Array) -> jax.Array:
        """Word-piece ids/mask [b, L] -> unit MuLan text embeddings [b, D]."""
        return nnx.merge(self._graphdefs["mulan"], weights["mulan"]).embed_text(ids, mask)

    def text_tokens(self, weights, ids: jax.Array, mask: jax.Array) -> jax.Array:
        """[b, L] -> the MuLan conditioning tokens [b, levels] of the captions."""
        rvq = nnx.merge(self._graphdefs["mulan_tokens"], weights["mulan_tokens"])
        return rvq.encode(self.embed_text(weights, ids, mask))

    def embed_audio(self, weights, waveform: jax.Array, lengths: jax.Array) -> jax.Array:
        """One MuLan window per row, [b, window samples] with valid `lengths` [b] -> [b, D]."""
        return nnx.merge(self._graphdefs["mulan"], weights["mulan"]).embed_audio(waveform, lengths)

    def _codec(self, weights):
        params, codebooks = weights["codec"]
        return nnx.merge(self._graphdefs["codec"], params, codebooks)

    def encode_audio(self, weights, waveform: jax.Array, block_frames=None) -> jax.Array:
        """[b, n] at the codec's rate -> codes [b, ceil(n / hop), levels] int32. In one
        pass by default: blocks need a length known when traced."""
        from mufm.codec.tokenizer import block_frames_for

        return self._codec(weights).encode(waveform, None,
                                           block_frames=block_frames_for(block_frames, 1))

    def decode_codes(self, weights, codes: jax.Array, block_frames=None) -> jax.Array:
        """codes [b, t, q'] -> waveform [b, t x hop] fp32 (the cascade decodes the same
        codes chunk by chunk: equal up to summation order)."""
        from mufm.codec.tokenizer import block_frames_for

        return self._codec(weights).decode(codes.astype(jnp.int32),
                                           block_frames=block_frames_for(block_frames, 1))

    def semantic_tokens(self, weights, waveform: jax.Array, lengths: jax.Array) -> jax.Array:
        """[b, n] at 24 kHz with valid `lengths` -> semantic ids [b, n // 960] (PAD past
        the lengths)."""
        from mufm.semantic.tokens import encode

        if "semantic_tokenizer" not in weights:
            raise ValueError("the cascade was loaded without its semantic tokenizer")
        t = self.cascade.semantic_tokenizer
        params, rest, state = weights["semantic_tokenizer"]
        ids, _ = encode(self._graphdefs["semantic_tokenizer"], params, rest, state, waveform,
                        lengths, t.layer)
        return ids

    # -- the cascade -------------------------------------------------------------------------

    def _window(self, weights, name: str, segments: list, prefix: jax.Array, frames: int,
                keys: jax.Array, temperature: jax.Array, i: int) -> jax.Array:
        """One window of stage `name`: codes [b, frames, levels] (prefix included), as
        `generate_stage` samples them, each row at its own temperature [b]."""
        layout, config = self.layouts[name], self.cascade.configs[name]
        model = nnx.merge(self._graphdefs[name], weights[name])
        prompts = stage_prompt(layout, segments, prefix, config)
        prefix_frames = prefix.shape[1]
        num_tokens = layout.target.num_tokens(frames) - layout.target.num_tokens(prefix_frames)
        lo, hi = (jnp.asarray(x, jnp.int32) for x in layout.allowed_ranges(target_frames=frames))
        window_keys = jax.vmap(lambda k: jax.random.fold_in(k, i))(keys)
        p = prompts.shape[1]
        logits, cache = prefill(model, prompts, p + num_tokens)
        ids = decode_steps(model, cache, logits, jnp.int32(p), num_tokens, lo, hi, window_keys,
                           config, temperature)
        return jnp.concatenate([prefix, new_codes(layout, ids)], axis=1)

    def default_temperatures(self) -> tuple[float, ...]:
        """The cascade's temperature of each stage, in `STAGES` order."""
        return tuple(float(self.cascade.configs[name].temperature) for name in STAGES)

    def acoustic_codes(self, weights, mulan: jax.Array, seeds: jax.Array,
                       temperatures: jax.Array, frames: int) -> tuple[jax.Array, jax.Array]:
        """MuLan tokens [b, levels], seeds [b] and temperatures [b, stages] (`STAGES`
        order; 0: greedy) -> (semantic ids [b, frames], acoustic codes [b, 2 frames, codec
        levels]) of a clip of `frames` semantic frames."""
        plans = self.cascade.plans(frames)
        temps = {name: temperatures[:, j].astype(jnp.float32) for j, name in enumerate(STAGES)}
        base = jax.vmap(jax.random.key)(seeds.astype(jnp.uint32))
        keys = {name: jax.vmap(lambda k, j=j: jax.random.fold_in(k, j + 1))(base)
                for j, name in enumerate(STAGES)}
        b = mulan.shape[0]
        cond = mulan[:, None, :]  # the MuLan segment is one frame of levels
        semantic = jnp.full((b, frames, 1), MISSING, jnp.int32)
        for i, w in enumerate(plans["semantic"]):
            codes = self._window(weights, "semantic", [cond], semantic[:, w.start:w.first_new],
                                 w.frames, keys["semantic"], temps["semantic"], i)
            semantic = semantic.at[:, w.start:w.end].set(codes)
        n_coarse = self.layouts["coarse"].target.num_levels
        coarse = jnp.full((b, 2 * frames, n_coarse), MISSING, jnp.int32)
        for i, w in enumerate(plans["coarse"]):  # in semantic frames
            codes = self._window(weights, "coarse", [cond, semantic[:, w.start:w.end]],
                                 coarse[:, 2 * w.start:2 * w.first_new], 2 * w.frames,
                                 keys["coarse"], temps["coarse"], i)
            coarse = coarse.at[:, 2 * w.start:2 * w.end].set(codes)
        fine = jnp.full((b, 2 * frames, self.layouts["fine"].target.num_levels), MISSING,
                        jnp.int32)
        for i, w in enumerate(plans["fine"]):
            codes = self._window(weights, "fine", [coarse[:, w.start:w.end]],
                                 fine[:, w.start:w.first_new], w.frames, keys["fine"],
                                 temps["fine"], i)
            fine = fine.at[:, w.start:w.end].set(codes)
        return semantic[..., 0], jnp.concatenate([coarse, fine], axis=-1)

    def generate(self, weights, ids: jax.Array, mask: jax.Array, seeds: jax.Array,
                 temperatures: jax.Array, frames: int) -> tuple[jax.Array, jax.Array]:
        """Captions as word pieces [b, L], seeds [b] and temperatures [b, stages] ->
        (waveform [b, frames x 960] at 24 kHz, acoustic codes [b, 2 frames, levels]): the
        whole cascade of one clip length."""
        mulan = self.text_tokens(weights, ids, mask)
        _, codes = self.acoustic_codes(weights, mulan, seeds, temperatures, frames)
        return self.decode_codes(weights, codes, "auto"), codes

