"""Tokenizer API: jitted encode/decode for any number of levels, chunked == unchunked."""
import numpy as np
import jax.numpy as jnp

from mufm.models.codec_tokenizer import decode, decode_chunked, encode, encode_chunked


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
    wave = _signal(4.3)  # 215 frames: windows of 40 leave a ragged tail
    full_codes = np.asarray(encode(g, p, s, jnp.asarray(wave)))
    chunked_codes = encode_chunked(g, p, s, wave, chunk_frames=40)
    assert chunked_codes.shape == full_codes.shape
    # Codes may only differ where two codes tie within float rounding: here, nowhere.
    assert np.mean(chunked_codes == full_codes) > 0.995

    full_wave = np.asarray(decode(g, p, s, jnp.asarray(full_codes)))
    seen = []
    chunked_wave = decode_chunked(g, p, s, full_codes, chunk_frames=40,
                                  progress=lambda done, total: seen.append((done, total)))
    assert chunked_wave.shape == full_wave.shape and seen[-1] == (215, 215)
    scale = np.abs(full_wave).max()
    np.testing.assert_allclose(chunked_wave, full_wave, atol=1e-5 * scale)

    # Without the look-back context the frames right after each border are wrong: the
    # context is what makes the borders exact.
    no_context = decode_chunked(g, p, s, full_codes, chunk_frames=40, context_frames=0)
    assert np.abs(no_context - full_wave).max() > 1e-3 * scale
