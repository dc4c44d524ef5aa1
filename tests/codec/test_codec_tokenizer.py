"""Tokenizer API: jitted encode/decode for any number of levels; chunked, blocked and
streamed == unchunked."""
import numpy as np
import jax.numpy as jnp

import pytest
from flax import nnx

from mufm.codec.tokenizer import (CPU_BLOCK_BUDGET, CPU_MIN_BLOCK, block_frames_for, decode,
                                         decode_chunked, encode, encode_chunked)
from mufm.layers.seanet import CausalConv1d, CausalConvTranspose1d


def decoder_rounding_tolerance(parts) -> float:
    """How far (relative to the waveform's scale) two decodes of the same codes can lie
    apart when they run the same convs on other lengths, so XLA may add each output's
    terms in another order: codes, the RVQ sum, ELUs and residual adds are the same ops
    on the same values; each conv output sums n = K * c_in terms, two orders within 2 n u
    of each other relative to the activations (gamma_n, Higham 3.1; at this fan-in
    initialisation the layers neither grow nor shrink activations much), and the
    decoder's convs' errors add up: 2 u sum_l n_l (3.7e-4 for the tiny codec). A border
    bug (a chunk without its carried state) is off by ~0.7 of the scale."""
    decoder = nnx.merge(*parts).decoder
    terms = sum(m.shape[0] * m.shape[1] for _, m in nnx.iter_modules(decoder)
                if isinstance(m, (CausalConv1d, CausalConvTranspose1d)))
    return 2 * terms * 2.0 ** -24


def _signal(seconds=4.0, seed=0):
    n = int(24_000 * seconds)
    t = np.arange(n) / 24_000
    noise = np.random.default_rng(seed).normal(size=n)
    return (0.3 * np.sin(2 * np.pi * 440 * t * (1 + 0.1 * t)) + 0.05 * noise)[None].astype(np.float32)


def test_jitted_encode_decode_any_level_count(tiny_codec_parts):
    g, p, s = tiny_codec_parts
    wave = jnp.asarray(np.repeat(_signal(1.0), 3, 0))
    codes = encode(g, p, s, wave)
    assert codes.shape == (3, 50, 4)
    for q in (1, 2, 4):
        sub = encode(g, p, s, wave, num_levels=q)
        np.testing.assert_array_equal(np.asarray(sub), np.asarray(codes[..., :q]))
        assert decode(g, p, s, sub).shape == (3, 24_000)


def test_chunked_matches_unchunked_at_chunk_borders(tiny_codec_parts):
    g, p, s = tiny_codec_parts
    wave = _signal(4.3)  # 215 frames: chunks of 40 leave a ragged tail
    full_codes = np.asarray(encode(g, p, s, jnp.asarray(wave), block_frames=None))
    # Chunks of 40 frames carried over in blocks of 7 (and a remainder of 5 per chunk).
    chunked_codes = encode_chunked(g, p, s, wave, chunk_frames=40, block_frames=7)
    assert chunked_codes.shape == full_codes.shape
    # Codes may only differ where two codes tie within float rounding: here, nowhere.
    np.testing.assert_array_equal(chunked_codes, full_codes)

    full_wave = np.asarray(decode(g, p, s, jnp.asarray(full_codes), block_frames=None))
    seen = []
    chunked_wave = decode_chunked(g, p, s, full_codes, chunk_frames=40, block_frames=7,
                                  progress=lambda done, total: seen.append((done, total)))
    assert chunked_wave.shape == full_wave.shape
    assert seen == [(40, 215), (80, 215), (120, 215), (160, 215), (200, 215), (215, 215)]
    scale = np.abs(full_wave).max()
    tol = decoder_rounding_tolerance((g, p, s))
    np.testing.assert_allclose(chunked_wave, full_wave, rtol=0, atol=tol * scale)
    # The samples right after each border are the ones a chunk without its carried state
    # gets wrong: the carried state is what makes the borders exact.
    restarted = np.concatenate([np.asarray(decode(g, p, s, jnp.asarray(full_codes[:, i:i + 40]),
                                                  block_frames=None))
                                for i in range(0, 215, 40)], axis=1)
    border = slice(40 * 480, 41 * 480)
    assert np.abs(restarted[:, border] - full_wave[:, border]).max() > 1e-3 * scale
    np.testing.assert_allclose(chunked_wave[:, border], full_wave[:, border], rtol=0, atol=tol * scale)


@pytest.mark.parametrize("block", [1, 6, 50])
def test_blocked_encode_decode_match_one_pass(tiny_codec_parts, block):
    g, p, s = tiny_codec_parts
    wave = jnp.asarray(np.repeat(_signal(0.5, seed=1), 2, 0))  # 25 frames
    codes = encode(g, p, s, wave, block_frames=None)
    np.testing.assert_array_equal(np.asarray(encode(g, p, s, wave, block_frames=block)),
                                  np.asarray(codes))
    ref = np.asarray(decode(g, p, s, codes, block_frames=None))
    out = np.asarray(decode(g, p, s, codes, block_frames=block))
    tol = decoder_rounding_tolerance((g, p, s))  # blocks are other lengths, like chunks
    np.testing.assert_allclose(out, ref, rtol=0, atol=tol * np.abs(ref).max())


def test_block_frames_values():
    # The tests run on CPU: blocks shrink with the batch, down to the minimum.
    assert block_frames_for("auto", 1) == CPU_BLOCK_BUDGET
    assert block_frames_for("auto", 1000) == CPU_MIN_BLOCK
    assert block_frames_for(None) is None and block_frames_for(3) == 3
    for bad in (0, -2, "fast", 1.5):
        with pytest.raises(ValueError, match="block_frames"):
            block_frames_for(bad)
