"""Acoustic tokenizer API of the codec: jitted, batch-friendly encode/decode, and a chunked
mode for long inputs with bounded memory.

    codes = encode(graphdef, params, codebook_state, waveform[b, n], num_levels=q)  # [b, t, q]
    audio = decode(graphdef, params, codebook_state, codes[b, t, q'])              # [b, t*hop]

`graphdef` is static (hashable), so each (graphdef, shape, q) compiles once.

Chunk borders (`encode_chunked` / `decode_chunked`). The model is causal with a finite
look-back: a frame's embedding reads `Encoder.lookback_samples()` samples before its own
hop, and a frame's samples read `Decoder.lookback_frames()` code frames before it. Long
inputs are cut into windows of `context + chunk` frames whose first `context` frames are
only there to fill that look-back; each window keeps its last `chunk` frames (the first
window keeps all of its frames, since before it lies the same zero padding the unchunked
model sees). With `context` >= the look-back (the default) every kept frame sees exactly
the inputs it sees unchunked, so chunked == unchunked up to floating-point summation order
(XLA may choose different conv algorithms for different lengths): waveforms agree to ~1e-6
of their scale and codes agree except where a frame sits within rounding of a tie between
two codes. With a smaller `context`, the first (look-back - context) frames after each
border read zeros instead of the true past and differ. Every window has the same shape
(the tail is right-padded with zeros, which a causal model ignores), so one compile serves
a file of any length, and device memory is that of one window.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


@functools.partial(jax.jit, static_argnames=("graphdef", "num_levels"))
def encode(graphdef, params, codebook_state, waveform: jax.Array, num_levels: int | None = None):
    """waveform [b, n] -> codes [b, ceil(n / hop), q] int32 (q = num_levels or N)."""
    return nnx.merge(graphdef, params, codebook_state).encode(waveform, num_levels)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def decode(graphdef, params, codebook_state, codes: jax.Array):
    """codes [b, t, q'] (q' <= N, the first q' levels) -> waveform [b, t * hop] fp32."""
    return nnx.merge(graphdef, params, codebook_state).decode(codes)


class BadAudioError(ValueError):
    """A waveform or code array the codec cannot take, with the reason."""


def check_waveform(waveform, *, sample_rate: int | None = None, expected_rate: int = 24000) -> np.ndarray:
    """Host-side validation before encoding: float [batch, samples], finite, non-empty, at
    the codec's rate. The jitted `encode` cannot look at values, so entry points call this."""
    if sample_rate is not None and int(sample_rate) != expected_rate:
        raise BadAudioError(f"audio is at {sample_rate} Hz but the codec takes {expected_rate} Hz: "
                            f"resample first (mufm.audio.resample)")
    arr = np.asarray(waveform)
    if arr.dtype.kind not in "fiu":
        raise BadAudioError(f"waveform must be numeric, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise BadAudioError(f"waveform must be [batch, samples] (mono; downmix first), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise BadAudioError(f"waveform is empty: shape {arr.shape}")
    if arr.dtype.kind in "iu":
        raise BadAudioError(f"waveform must be float in [-1, 1], got integer dtype {arr.dtype} "
                            f"(divide int16 PCM by 32768)")
    bad = ~np.isfinite(arr)
    if bad.any():
        rows = sorted(set(np.nonzero(bad)[0].tolist()))[:5]
        raise BadAudioError(f"waveform holds {int(bad.sum())} NaN/Inf samples (batch rows {rows})")
    return arr.astype(np.float32, copy=False)


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


def _windows(total: int, chunk: int, context: int):
    """Yields (window_start, keep_from, keep_to) in frames; every window spans
    context + chunk frames (the first starts at 0 and keeps everything it covers)."""
    width = context + chunk
    yield 0, 0, min(width, total)
    start = width
    while start < total:
        yield start - context, start, min(start + chunk, total)
        start += chunk


def _shape_of(graphdef, params, codebook_state):
    model = nnx.merge(graphdef, params, codebook_state)
    return model.cfg, model.encoder.lookback_samples(), model.decoder.lookback_frames()


def encode_chunked(graphdef, params, codebook_state, waveform, *, num_levels: int | None = None,
                   chunk_frames: int = 1500, context_frames: int | None = None,
                   progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Like `encode` on a host array [b, n] of any length, one window at a time.

    `context_frames` defaults to the encoder look-back rounded up to whole frames (see the
    module docstring for what smaller values do at chunk borders). `progress(done, total)`
    is called after each window with frame counts.
    """
    cfg, lookback, _ = _shape_of(graphdef, params, codebook_state)
    context = math.ceil(lookback / cfg.hop) if context_frames is None else int(context_frames)
    waveform = check_waveform(waveform, expected_rate=cfg.sample_rate)
    b, n = waveform.shape
    total = -(-n // cfg.hop)
    width = context + chunk_frames
    q = cfg.num_levels if num_levels is None else num_levels
    out = np.zeros((b, total, q), np.int32)
    padded = np.zeros((b, (total + width) * cfg.hop), np.float32)
    padded[:, :n] = waveform
    for start, keep_from, keep_to in _windows(total, chunk_frames, context):
        window = padded[:, start * cfg.hop:(start + width) * cfg.hop]
        codes = np.asarray(encode(graphdef, params, codebook_state, jnp.asarray(window), q))
        out[:, keep_from:keep_to] = codes[:, keep_from - start:keep_to - start]
        if progress:
            progress(keep_to, total)
    return out


def decode_chunked(graphdef, params, codebook_state, codes, *, chunk_frames: int = 1500,
                   context_frames: int | None = None,
                   progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Like `decode` on host codes [b, t, q'] of any length, one window at a time;
    `context_frames` defaults to the decoder look-back."""
    cfg, _, lookback = _shape_of(graphdef, params, codebook_state)
    context = lookback if context_frames is None else int(context_frames)
    codes = check_codes(codes, num_levels=cfg.num_levels, codebook_size=cfg.codebook_size)
    b, total, q = codes.shape
    width = context + chunk_frames
    padded = np.zeros((b, total + width, q), np.int32)
    padded[:, :total] = codes
    out = np.zeros((b, total * cfg.hop), np.float32)
    for start, keep_from, keep_to in _windows(total, chunk_frames, context):
        audio = np.asarray(decode(graphdef, params, codebook_state,
                                  jnp.asarray(padded[:, start:start + width])))
        out[:, keep_from * cfg.hop:keep_to * cfg.hop] = \
            audio[:, (keep_from - start) * cfg.hop:(keep_to - start) * cfg.hop]
        if progress:
            progress(keep_to, total)
    return out
