"""The token tasks' TensorFlow side (mufm/data/token_tasks.py) against the numpy layouts:
the in-graph encoding must give exactly `StageLayout.encode`'s ids, stream ids and weights,
crops must keep the semantic and acoustic streams aligned, and the conditioning options
(dropout, shuffled MuLan) must do what they say."""
import numpy as np
import pytest
import tensorflow as tf

from mufm.data import token_tasks as T
from mufm.lm import layouts as L

RNG = np.random.default_rng(0)


def example(semantic_frames: int, *, mulan_levels=3, mulan_codes=16, semantic_codes=8,
            acoustic_levels=4, acoustic_codes=64, rng=RNG):
    return {"mulan": rng.integers(0, mulan_codes, mulan_levels),
            "semantic": rng.integers(0, semantic_codes, semantic_frames),
            "acoustic": rng.integers(0, acoustic_codes, (2 * semantic_frames, acoustic_levels))}


SIZES = dict(mulan_levels=3, mulan_codes=16, semantic_codes=8)
LAYOUTS = {
    "semantic": L.semantic_stage(20, **SIZES),
    "coarse": L.coarse_stage(10, 20, coarse_levels=2, acoustic_codes=64, **SIZES),
    "fine": L.fine_stage(12, 12, coarse_levels=2, acoustic_levels=4, acoustic_codes=64),
    "delay": L.delay_stage(8, acoustic_levels=4, acoustic_codes=64, mulan_levels=3, mulan_codes=16),
}


def numpy_row(layout, ex, drop):
    row = layout.encode(ex, drop_conditioning=drop)
    return (row["decoder_target_tokens"], row["decoder_stream_ids"], row["decoder_loss_weights"])


def tf_row(layout, ex, drop):
    out = T.encode_example_tf(layout, {k: tf.constant(v, tf.int64) for k, v in ex.items()}, drop)
    return tuple(out[k].numpy() for k in ("ids", "streams", "weights"))


@pytest.mark.parametrize("stage", sorted(LAYOUTS))
@pytest.mark.parametrize("frames", [0, 3, 6, 10, 40])
def test_tf_encoding_is_the_layouts_encoding(stage, frames):
    """Every stage, clips shorter than the crop (conditioning padded with EMPTY, shorter
    target, an empty one), exactly the crop, and both with the conditioning dropped."""
    layout = LAYOUTS[stage]
    ex = example(frames)
    crop = {s: min(len(ex[s]), f) for s, f in T.stream_frames(layout).items()}
    ex = {k: (v[:crop[k]] if k in crop else v) for k, v in ex.items()}
    for drop in ([False, True] if any(s.droppable for s in layout.segments) else [False]):
        want = numpy_row(layout, ex, drop)
        got = tf_row(layout, ex, drop)
        for w, g, name in zip(want, got, ("ids", "streams", "weights")):
            np.testing.assert_array_equal(g, w, err_msg=f"{stage} {name} drop={drop}")


def split_dataset(examples, split):
    return tf.data.Dataset.from_generator(
        lambda: ({**e, "split": split} for e in examples),
        output_signature={"mulan": tf.TensorSpec([None], tf.int64),
                          "semantic": tf.TensorSpec([None], tf.int64),
                          "acoustic": tf.TensorSpec([None, None], tf.int64),
                          "split": tf.TensorSpec([], tf.string)})


def test_crops_keep_the_streams_aligned_random_in_train_centred_elsewhere():
    layout = LAYOUTS["coarse"]  # 10 semantic frames and 20 acoustic frames: 0.4 s
    t = 50
    ex = {"mulan": np.arange(3), "semantic": np.arange(t),
          "acoustic": np.repeat(np.arange(2 * t)[:, None], 4, 1)}
    starts = set()
    for split in ("train", "test"):
        ds = _seeded(T.crop_streams, split_dataset([ex] * 6, split), layout)
        for out in ds.as_numpy_iterator():
            s = int(out["semantic"][0])
            assert len(out["semantic"]) == 10 and len(out["acoustic"]) == 20
            # semantic frame k <-> acoustic frames 2k, 2k + 1
            np.testing.assert_array_equal(out["acoustic"][:, 0], np.arange(2 * s, 2 * s + 20))
            assert out["crop_start_s"] == pytest.approx(s / 25)
            if split == "test":
                assert s == (t - 10) // 2
            else:
                starts.add(s)
    assert len(starts) > 1  # train crops move


def _seeded(fn, ds, *args):
    """Runs a seqio map_over_dataset(num_seeds=...) preprocessor outside a Task."""
    import seqio

    with seqio.utils.map_seed_manager(0):
        return fn(ds, *args)


def test_shuffled_mulan_comes_from_a_clip_lag_places_back():
    lag = T.SHUFFLE_LAG
    exs = [{"mulan": np.full(3, i), "semantic": np.zeros(2, np.int64),
            "acoustic": np.zeros((4, 4), np.int64)} for i in range(lag + 5)]
    out = list(T.shuffle_conditioning(split_dataset(exs, "train"), 3).as_numpy_iterator())
    assert all((o["mulan"] == L.MISSING).all() for o in out[:lag])
    assert [int(o["mulan"][0]) for o in out[lag:]] == list(range(5))


def test_conditioning_dropout_only_in_train_and_at_its_rate():
    layout = LAYOUTS["semantic"]
    exs = [example(20) for _ in range(400)]
    for split, low, high in (("train", 0.35, 0.65), ("validation", 0.0, 0.0)):
        ds = _seeded(T.encode_layout, split_dataset(exs, split), layout, 0.5)
        dropped = [int((o["targets"] == L.NULL).any()) for o in ds.as_numpy_iterator()]
        assert low <= np.mean(dropped) <= high, (split, np.mean(dropped))


def test_layout_checks_against_the_manifest():
    manifest = {"streams": {"mulan": {"levels": 3, "codebook_size": 16},
                            "semantic": {"levels": 1, "codebook_size": 8},
                            "acoustic": {"levels": 4, "codebook_size": 64}}}
    T.check_layout(LAYOUTS["coarse"], manifest, "d")
    with pytest.raises(ValueError, match="codebook_size=1024.*have 8 codes"):
        T.check_layout(L.semantic_stage(20, mulan_levels=3, mulan_codes=16), manifest, "d")
    with pytest.raises(ValueError, match="needs acoustic level 11"):
        T.check_layout(L.fine_stage(12, 12, acoustic_codes=64), manifest, "d")
    with pytest.raises(ValueError, match="same crop"):
        T.stream_frames(L.fine_stage(12, 6, coarse_levels=2, acoustic_levels=4))
