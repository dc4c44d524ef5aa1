"""Semantic tokens: the k-means fit end to end on the tiny run, the saved centroids read
back on their own, 25 Hz ids for several lengths, the chunked encoder against its per-window
reference, and clear errors for audio the tokenizer cannot take."""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf

from mufm.layers import kmeans
from mufm.semantic import tokens
from mufm.semantic.model import SemanticConfig
from mufm.semantic.tokens import PAD_ID, BadAudioError, SemanticTokenizer

HOP = 960


@pytest.fixture(scope="module")
def tok(fitted, semantic_run):
    return SemanticTokenizer.load(semantic_run)


def corpus_audio(corpus_dir, seconds, start=5.0):
    from mufm.data.corpus.manifest import read_manifest

    rec = next(r for r in read_manifest(corpus_dir) if r["split"] == "test")
    return tokens.read_crop(os.path.join(corpus_dir, rec["audio"]), start, seconds)


def test_default_layer_is_musiclm_depth():
    # MusicLM: the 7th of 12 MLM layers after 12 contrastive ones -> embed layer 19.
    assert tokens.default_layer(SemanticConfig(contrastive_layers=12, mlm_layers=12)) == 19
    assert tokens.default_layer(SemanticConfig(contrastive_layers=4, mlm_layers=4)) == 6  # base
    assert tokens.default_layer(SemanticConfig(contrastive_layers=1, mlm_layers=1)) == 2  # tiny
    assert tokens.default_layer(SemanticConfig(contrastive_layers=3, mlm_layers=0)) == 3


@pytest.mark.parametrize("window,context", [(30, 7), (10, 0), (5, 2), (100, 25)])
def test_windows_keep_every_frame_once_with_context(window, context):
    for total in (1, window - 1, window, window + 1, 3 * window + 7, 257):
        plan = tokens.windows(total, window, context)
        kept = np.concatenate([np.arange(w.keep_lo, w.keep_hi) for w in plan])
        np.testing.assert_array_equal(kept, np.arange(total))
        for i, w in enumerate(plan):
            assert w.start <= w.keep_lo < w.keep_hi <= w.start + window
            if i > 0:
                assert w.keep_lo - w.start >= context  # left context inside the window
            if w.keep_hi < total:
                assert w.start + window - w.keep_hi >= context  # right context


def test_fit_saves_a_loadable_kmeans(fitted, semantic_run, tiny_corpus, tok):
    from tests.semantic.conftest import FIT

    fit, out = fitted
    assert out == os.path.join(semantic_run, "semantic_tokens")
    meta = json.load(open(os.path.join(out, "tokens.json")))
    assert meta["layer"] == tokens.default_layer(tok.cfg) == tok.layer == 2
    assert meta["num_clusters"] == FIT["num_clusters"] == tok.num_clusters
    assert meta["step"] == 0 and meta["frames"] == FIT["max_frames"]
    assert [c["epoch"] for c in meta["inertia_curve"]] == [1, 2]
    assert all(np.isfinite(c["inertia"]) for c in meta["inertia_curve"])
    assert np.isfinite(meta["inertia"]) and meta["inertia"] > 0
    # The reloaded state is the fitted one, and gives the same ids as it.
    np.testing.assert_array_equal(np.asarray(tok.state.centroids), np.asarray(fit.state.centroids))
    np.testing.assert_array_equal(np.asarray(tok.state.std), np.asarray(fit.state.std))
    assert meta["corpus_dir"] == os.path.abspath(tiny_corpus)
    wave = np.stack([corpus_audio(tiny_corpus, 2.0, s) for s in (1.0, 7.0)])
    emb = tok.embed(wave)
    want = np.asarray(kmeans.assign(fit.state, jnp.asarray(emb.reshape(-1, emb.shape[-1])))[0])
    np.testing.assert_array_equal(tok.encode(wave).ravel(), want)
    assert len(np.unique(want)) > 1


def test_fit_keeps_only_valid_frames(semantic_run, tmp_path):
    """A clip shorter than the crop: each crop stores its valid frames and no padded one."""
    from mufm.train.restore import load

    model = load(semantic_run, family="semantic")
    n = 12 * HOP + 500  # 12 frames and a partial one
    t = np.arange(n) / 24_000
    sf.write(str(tmp_path / "short.wav"), 0.3 * np.sin(2 * np.pi * 330 * t), 24_000, subtype="FLOAT")
    clips = tokens.train_clips(str(tmp_path))  # a plain folder: every file is train material
    assert len(clips) == 1
    cfg = tokens.FitConfig(max_frames=24, batch_crops=2, seed=1)
    got = tokens.collect_embeddings(model, clips, 2, cfg, progress=False)
    wave, lengths = next(tokens.random_crops(clips, model.configs["data"].sequence_length, 2, 1))
    assert list(lengths) == [n, n]  # the whole clip, zero-padded to the 30-frame crop
    ref = np.asarray(tokens.embed(*model.parts, jnp.asarray(wave), jnp.asarray(lengths), 2))
    np.testing.assert_array_equal(got, np.concatenate([ref[0, :12], ref[1, :12]]))


def test_encode_gives_25_ids_per_second(tok):
    for n in (960, 961, 1919, 24_000, 24_959, 3 * 24_000 + 500):
        wave = 0.1 * np.sin(np.arange(n) * 2 * np.pi * 440 / 24_000)[None].astype(np.float32)
        ids = tok.encode(np.repeat(wave, 2, 0))
        assert ids.shape == (2, n // HOP) and ids.dtype == np.int32
        assert np.all((ids >= 0) & (ids < tok.num_clusters))
        assert tok.encode_chunked(wave[0]).shape == (n // HOP,)
    # Padded frames (j >= length // 960) are PAD_ID; the others real ids.
    wave = np.zeros((2, 10 * HOP), np.float32)
    ids = tok.encode(wave, lengths=[10 * HOP, 4 * HOP + 959])
    assert np.all(ids[0] >= 0) and np.all(ids[1, :4] >= 0) and np.all(ids[1, 4:] == PAD_ID)


def check_per_window(tok, wave, batch_windows):
    """Every chunked id and embedding equals, bitwise, the one `encode` gives its window
    alone in a batch of `batch_windows` rows, zero-padded, with its length."""
    ids, emb = tok.encode_chunked(wave, batch_windows=batch_windows, with_embeddings=True)
    w = tok.window_frames
    plan = tokens.windows(len(wave) // HOP, w, w // 4)
    for win in plan:
        rows = np.zeros((batch_windows, w * HOP), np.float32)
        lengths = np.zeros(batch_windows, np.int32)
        piece = wave[win.start * HOP:(win.start + w) * HOP]
        rows[0, :len(piece)], lengths[0] = piece, len(piece)
        ref_ids, ref_emb = tokens.encode(*tok.model.parts, tok.state, jnp.asarray(rows),
                                         jnp.asarray(lengths), tok.layer)
        sl = slice(win.keep_lo - win.start, win.keep_hi - win.start)
        np.testing.assert_array_equal(ids[win.keep_lo:win.keep_hi], np.asarray(ref_ids)[0, sl])
        np.testing.assert_array_equal(emb[win.keep_lo:win.keep_hi], np.asarray(ref_emb)[0, sl])
    return plan


def test_chunked_equals_its_per_window_reference(tok, tiny_corpus):
    long = corpus_audio(tiny_corpus, 10.0)[:-333]  # 249 frames and a partial one
    plan = check_per_window(tok, long, batch_windows=4)
    assert len(plan) > 4  # several batches of windows, the last one part-filled
    short = corpus_audio(tiny_corpus, 0.9)  # within one window: encode of the padded file
    assert check_per_window(tok, short, batch_windows=4) == [tokens.Window(0, 0, len(short) // HOP)]


@pytest.mark.parametrize("wave,reason", [
    (np.full(4800, np.nan, np.float32), "nan_or_inf"),
    (np.concatenate([np.zeros(4000), [np.inf]]).astype(np.float32), "nan_or_inf"),
    (np.zeros(0, np.float32), "no_frames"),
    (np.zeros(959, np.float32), "too_short"),
    (np.zeros((2, 4800), np.float32), "wrong_shape"),
    (np.zeros(4800, np.int16), "integer_pcm"),
])
def test_bad_audio_is_refused_with_its_reason(tok, wave, reason):
    with pytest.raises(BadAudioError, match=reason):
        tok.encode_chunked(wave)
    if wave.ndim == 1:
        with pytest.raises(BadAudioError, match=reason):
            tok.encode(wave[None])


def test_missing_kmeans_is_a_clear_error(semantic_run, tmp_path):
    with pytest.raises(tokens.TokensNotFoundError, match="fit_kmeans"):
        SemanticTokenizer.load(semantic_run, str(tmp_path))
