"""Acoustic tokenizer API of the codec: jitted, batch-friendly encode/decode, and a chunked
mode for long inputs with bounded memory.

    codes = encode(graphdef, params, codebook_state, waveform[b, n], num_levels=q)  # [b, t, q]
    audio = decode(graphdef, params, codebook_state, codes[b, t, q'])              # [b, t*hop]

`graphdef` is static (hashable), so each (graphdef, shape, q, block) compiles once.

Chunk borders. The model is causal and every layer can stream (`mufm.layers.seanet`): a
chunk is encoded (decoded) after the state the previous chunk left, the last input samples
(frames) each conv needs as left context. So chunked == unchunked at every border: no
frame reads zeros in place of its true past and no overlap is recomputed. They agree up to
floating-point summation order (XLA may pick different conv algorithms for different
lengths): waveforms to ~1e-6 of their scale, codes except where a frame sits within
rounding of a tie between two codes. Two levels of chunking use this:

- `encode_chunked` / `decode_chunked` walk a host array of any length in chunks of
  `chunk_frames` (default 30 s); every chunk has the same shape (the tail is right-padded
  with zeros, which a causal model ignores), so one compile serves a file of any length,
  and device memory is that of one chunk.
- `block_frames` (every function here) runs the frames of one call through the model in
  blocks, a `lax.scan` on the device. On CPU, "auto" (the default) picks blocks of
  25-50 frames, which keep a block's activations in the caches: by `python -m
  mufm.bench.codec`, the paper codec then decodes 30 s ~20% faster (RTF 15.4 -> 18-21)
  than in one pass, whose every layer writes a 30 s activation to memory; encoding gains
  little. On accelerators it is None (one pass).
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mufm.audio import SAMPLE_RATE
from mufm.audio.decode import waveform_problem

# On CPU, "auto" runs blocks of CPU_BLOCK_BUDGET // batch frames (a block's activations
# grow with both), but no fewer than CPU_MIN_BLOCK (shorter blocks leave the deep layers
# too few rows per matmul). Measured by `python -m mufm.bench.codec --block_sweep=...`:
# at batch 1, 50-100 frames were best; at batch 8, 25.
CPU_BLOCK_BUDGET, CPU_MIN_BLOCK = 50, 25
Block = int | None | str  # frames per block, None (all at once) or "auto"


def block_frames_for(block_frames: Block, batch: int = 1) -> int | None:
    """"auto": on CPU, max(CPU_MIN_BLOCK, CPU_BLOCK_BUDGET // batch) frames (see the module
    docstring); None (one pass) elsewhere."""
    if block_frames == "auto":
        if jax.default_backend() != "cpu":
            return None
        return max(CPU_MIN_BLOCK, CPU_BLOCK_BUDGET // batch)
    if block_frames is not None and (not isinstance(block_frames, int) or block_frames < 1):
        raise ValueError(f"block_frames={block_frames!r}: use a positive int, None or 'auto'")
    return block_frames


@functools.partial(jax.jit, static_argnames=("graphdef", "num_levels", "block_frames"))
def encode(graphdef, params, codebook_state, waveform: jax.Array, num_levels: int | None = None,
           block_frames: Block = "auto"):
    """waveform [b, n] -> codes [b, ceil(n / hop), q] int32 (q = num_levels or N)."""
    return nnx.merge(graphdef, params, codebook_state).encode(
        waveform, num_levels, block_frames=block_frames_for(block_frames, waveform.shape[0]))


@functools.partial(jax.jit, static_argnames=("graphdef", "block_frames"))
def decode(graphdef, params, codebook_state, codes: jax.Array, block_frames: Block = "auto"):
    """codes [b, t, q'] (q' <= N, the first q' levels) -> waveform [b, t * hop] fp32."""
    return nnx.merge(graphdef, params, codebook_state).decode(
        codes, block_frames=block_frames_for(block_frames, codes.shape[0]))


@functools.partial(jax.jit, static_argnames=("graphdef", "num_levels", "block_frames"),
                   donate_argnames=("state",))
def encode_stream(graphdef, params, codebook_state, waveform: jax.Array, state,
                  num_levels: int | None = None, block_frames: Block = "auto"):
    """-> (codes, state): `Codec.encode_stream`, jitted."""
    return nnx.merge(graphdef, params, codebook_state).encode_stream(
        waveform, state, num_levels, block_frames=block_frames_for(block_frames, waveform.shape[0]))


@functools.partial(jax.jit, static_argnames=("graphdef", "block_frames"), donate_argnames=("state",))
def decode_stream(graphdef, params, codebook_state, codes: jax.Array, state,
                  block_frames: Block = "auto"):
    """-> (waveform, state): `Codec.decode_stream`, jitted."""
    return nnx.merge(graphdef, params, codebook_state).decode_stream(
        codes, state, block_frames=block_frames_for(block_frames, codes.shape[0]))


class BadAudioError(ValueError):
    """A waveform or code array the codec cannot take, with the reason."""


def check_waveform(waveform, *, sample_rate: int | None = None,
                   expected_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Host-side validation before encoding: float [batch, samples], finite, non-empty, at
    the codec's rate (`mufm.audio.decode.waveform_problem`; silence is fine), as float32.
    The jitted `encode` cannot look at values, so entry points call this."""
    problem = waveform_problem(waveform, sample_rate=sample_rate, expected_rate=expected_rate,
                               batched=True)
    if problem:
        raise BadAudioError(str(problem))
    return np.asarray(waveform).astype(np.float32, copy=False)


def check_codes(codes, *, num_levels: int, codebook_size: int) -> np.ndarray:
    """Host-side validation before decoding: int [batch, frames, q'] with q' <= N, 0 <= code < K."""
    arr = np.asarray(codes)
    if arr.dtype.kind not in "iu":
        raise BadAudioError(f"codes must be integers, got dtype {arr.dtype}")
    if arr.ndim != 3:
        raise BadAudioError(f"codes must be [batch, frames, levels], got shape {arr.shape}")
    if not 1 <= arr.shape[2] <= num_levels:
        raise BadAudioError(f"codes carry {arr.shape[2]} levels; the codec has 1..{num_levels}")
    if arr.size and (arr.min() < 0 or arr.max() >= codebook_size):
        raise BadAudioError(f"codes must lie in [0, {codebook_size}), got [{arr.min()}, {arr.max()}]")
    return arr.astype(np.int32, copy=False)


def encode_chunked(graphdef, params, codebook_state, waveform, *, num_levels: int | None = None,
                   chunk_frames: int = 1500, block_frames: Block = "auto",
                   progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Like `encode` on a host array [b, n] of any length, one chunk at a time, each chunk
    continuing from the state the one before left. `progress(done, total)` is called after
    each chunk with frame counts."""
    model = nnx.merge(graphdef, params, codebook_state)
    cfg = model.cfg
    waveform = check_waveform(waveform, expected_rate=cfg.sample_rate)
    b, n = waveform.shape
    total = -(-n // cfg.hop)
    q = cfg.num_levels if num_levels is None else num_levels
    block = _block(block_frames, chunk_frames, b)
    out = np.zeros((b, total, q), np.int32)
    padded = np.zeros((b, -(-total // chunk_frames) * chunk_frames * cfg.hop), np.float32)
    padded[:, :n] = waveform
    state = model.encoder.init_stream(b)
    for start in range(0, total, chunk_frames):
        window = padded[:, start * cfg.hop:(start + chunk_frames) * cfg.hop]
        codes, state = encode_stream(graphdef, params, codebook_state, jnp.asarray(window), state,
                                     q, block)
        end = min(start + chunk_frames, total)
        out[:, start:end] = np.asarray(codes)[:, :end - start]
        if progress:
            progress(end, total)
    return out


def decode_chunked(graphdef, params, codebook_state, codes, *, chunk_frames: int = 1500,
                   block_frames: Block = "auto",
                   progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Like `decode` on host codes [b, t, q'] of any length, one chunk at a time."""
    cfg = nnx.merge(graphdef, params, codebook_state).cfg
    codes = check_codes(codes, num_levels=cfg.num_levels, codebook_size=cfg.codebook_size)
    b, total, _ = codes.shape
    decoder = StreamDecoder(graphdef, params, codebook_state, b, chunk_frames=chunk_frames,
                            block_frames=block_frames, levels=codes.shape[2])
    out = np.zeros((b, total * cfg.hop), np.float32)
    done = 0
    for start in range(0, total, chunk_frames):
        piece = codes[:, start:start + chunk_frames]
        audio = decoder.push(piece) if piece.shape[1] == chunk_frames else decoder.flush(piece)
        out[:, done:done + audio.shape[1]] = audio
        done += audio.shape[1]
        if progress:
            progress(min(start + chunk_frames, total), total)
    return out


class StreamDecoder:
    """Decodes codes as they arrive: `push(codes)` returns the audio of every whole chunk of
    `chunk_frames` now complete, carrying the causal decoder's state from chunk to chunk;
    `flush()` decodes what is left (padded to a chunk, the padding's audio dropped). The
    audio is that of one `decode_chunked` over all the codes with the same chunks, so a
    player can start on it before the rest of the codes exist."""

    def __init__(self, graphdef, params, codebook_state, batch: int, *,
                 chunk_frames: int = 1500, block_frames: Block = "auto",
                 levels: int | None = None):
        model = nnx.merge(graphdef, params, codebook_state)
        self.cfg = model.cfg
        self._parts = (graphdef, params, codebook_state)
        self._block = _block(block_frames, chunk_frames, batch)
        self._state = model.decoder.init_stream(batch)
        self.chunk_frames = chunk_frames
        self._pending = np.zeros((batch, 0, levels or self.cfg.num_levels), np.int32)

    def _decode(self, chunk: np.ndarray) -> np.ndarray:
        audio, self._state = decode_stream(*self._parts, jnp.asarray(chunk), self._state,
                                           self._block)
        return np.asarray(audio)

    def push(self, codes) -> np.ndarray:
        """float32 [b, samples] of the whole chunks complete after `codes` [b, t, q']."""
        codes = check_codes(codes, num_levels=self.cfg.num_levels,
                            codebook_size=self.cfg.codebook_size)
        pending = np.concatenate([self._pending, codes], axis=1)
        whole = pending.shape[1] // self.chunk_frames * self.chunk_frames
        out = [self._decode(pending[:, s:s + self.chunk_frames])
               for s in range(0, whole, self.chunk_frames)]
        self._pending = pending[:, whole:]
        return (np.concatenate(out, axis=1) if out
                else np.zeros((pending.shape[0], 0), np.float32))

    def flush(self, codes=None) -> np.ndarray:
        """`push(codes)` and then the audio of the frames left over."""
        head = self.push(codes) if codes is not None else np.zeros((self._pending.shape[0], 0),
                                                                   np.float32)
        left = self._pending.shape[1]
        if not left:
            return head
        padded = np.zeros((self._pending.shape[0], self.chunk_frames, self._pending.shape[2]),
                          np.int32)
        padded[:, :left] = self._pending
        self._pending = self._pending[:, :0]
        tail = self._decode(padded)[:, :left * self.cfg.hop]
        return np.concatenate([head, tail], axis=1)


def _block(block_frames: Block, chunk_frames: int, batch: int) -> int | None:
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames={chunk_frames}: must be >= 1")
    block = block_frames_for(block_frames, batch)
    return None if block is None else min(block, chunk_frames)
