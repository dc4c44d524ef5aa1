"""The evaluation's figures against hand-computed cases, frame labels against hand-made
notes, and the whole evaluation on the tiny corpus with the tiny semantic run and codec
(structure and chance-level sanity only: the tiny models are untrained)."""
import json
import math
import os

import numpy as np
import pytest

from mufm.semantic import evaluate as ev
from mufm.semantic.frames import frame_labels, mask_to_pitch_classes


def test_nmi_hand_case():
    # a: 0 0 0 1 1 1, b: 0 0 1 1 2 2 -> contingency [[2, 1, 0], [0, 1, 2]], N = 6.
    # H(a) = ln 2, H(b) = ln 3. I = sum p_ij ln(p_ij / (p_i p_j)):
    #   (0,0), (1,2): 2/6 ln((2/6) / (1/2 * 1/3)) = 1/3 ln 2 each; (0,1), (1,1): 1/6 ln 1 = 0.
    # I = 2/3 ln 2, NMI (arithmetic) = I / ((ln 2 + ln 3) / 2) = 4/3 ln 2 / ln 6.
    a, b = [0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]
    np.testing.assert_array_equal(ev.contingency(a, b), [[2, 1, 0], [0, 1, 2]])
    assert ev.mutual_information(ev.contingency(a, b)) == pytest.approx(2 / 3 * math.log(2), rel=1e-12)
    assert ev.nmi(a, b) == pytest.approx(4 / 3 * math.log(2) / math.log(6), rel=1e-12)
    assert ev.nmi(b, a) == pytest.approx(ev.nmi(a, b), rel=1e-12)
    # Renamed ids carry the same information; a constant labeling carries none.
    assert ev.nmi([5, 5, 9, 9, 7], [1, 1, 2, 2, 3]) == pytest.approx(1.0, rel=1e-12)
    assert ev.nmi([3, 3, 3, 3], [0, 1, 0, 1]) == 0.0
    assert ev.nmi([3, 3], [4, 4]) == 1.0


def test_nmi_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 7, 500), rng.integers(0, 5, 500)
    b[:250] = a[:250] % 5
    assert ev.nmi(a, b) == pytest.approx(
        metrics.normalized_mutual_info_score(b, a, average_method="arithmetic"), rel=1e-9)


def test_purity_hand_case():
    # cluster 0: labels 5 5 7 -> 2; cluster 1: 7 7 -> 2; cluster 2: 9 -> 1; purity 5 / 6.
    assert ev.purity([0, 0, 0, 1, 1, 2], [5, 5, 7, 7, 7, 9]) == pytest.approx(5 / 6)
    assert ev.purity([0, 1, 2], [4, 4, 4]) == 1.0


def test_resample_nearest_takes_the_frame_at_the_centre():
    codes = np.arange(10) * 10  # 50 Hz frames of 480 samples
    # Semantic frame i (960 samples) has its centre at 960 i + 480: codec frame 2 i + 1.
    np.testing.assert_array_equal(ev.resample_nearest(codes, 5, 480), [10, 30, 50, 70, 90])
    np.testing.assert_array_equal(ev.resample_nearest(codes[:9], 5, 480), [10, 30, 50, 70, 80])


def test_frame_labels_hand_case():
    # Frames of 40 ms, centres at 20, 60, 100, ... ms. Rows: onset, offset, pitch, program, part.
    # (No boundary sits exactly on a centre: the labels are float32 seconds.)
    notes = np.array([
        [0.00, 0.09, 60, 0, 0],    # C4: centres 0.02, 0.06
        [0.05, 0.15, 64, 40, 1],   # E4: frames 1-3
        [0.09, 0.11, 43, 40, 2],   # G2: only centre 0.10 -> frame 2
        [0.13, 0.135, 72, 0, 0],   # 5 ms, holds no centre: in no frame
        [0.20, 0.24, 67, 40, 1],   # G4 doubled by two programs in frame 5: a tie on notes and
        [0.20, 0.24, 67, 0, 0],    # on the lowest note -> the lower program number, 0
        [0.25, 10.0, 50, 1, 3],    # D3 from frame 6 on, past the last frame
    ], np.float32)
    got = frame_labels(notes, 7)
    # frame 1: C4 (program 0) and E4 (program 40), one note each: program 0 holds the lower.
    # frame 2: E4 + G2 on program 40 (2 notes); bass G (7).
    np.testing.assert_array_equal(got.pitch_classes, [1, 1 | 16, 16 | 128, 16, 0, 128, 4])
    np.testing.assert_array_equal(got.bass, [0, 0, 7, 4, -1, 7, 2])
    np.testing.assert_array_equal(got.program, [0, 0, 40, 40, -1, 0, 1])
    np.testing.assert_array_equal(got.silent, [0, 0, 0, 0, 1, 0, 0])
    assert mask_to_pitch_classes(16 | 128).nonzero()[0].tolist() == [4, 7]
    empty = frame_labels(np.zeros((0, 5), np.float32), 3)
    assert empty.silent.all() and (empty.program == -1).all()


def test_probe_scores_hand_case():
    truth = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0]], bool)
    pred = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 1], [0, 0, 0]], bool)
    s = ev.probe_scores(pred, truth)
    assert s["mean_class_accuracy"] == pytest.approx(9 / 12)
    # class 0: tp 2, fn 1 -> F1 4/5; class 1: tp 0, fn 1 -> 0; class 2 never occurs: left out.
    assert s["mean_f1"] == pytest.approx((4 / 5 + 0) / 2)
    assert s["exact_set_accuracy"] == pytest.approx(1 / 4)


def test_linear_probe_learns_a_separable_case():
    rng = np.random.default_rng(0)
    y = rng.random((600, 12)) < 0.3
    x = y.astype(np.float32) * 2 - 1 + 0.1 * rng.standard_normal((600, 12)).astype(np.float32)
    s = ev.linear_probe(x[:400], y[:400], x[400:], y[400:])
    assert s["exact_set_accuracy"] == 1.0 and s["frames"] == 200


def test_evaluation_end_to_end(fitted, semantic_run, codec_run, tiny_corpus, tmp_path):
    from mufm.codec.restore import load_codec
    from mufm.data.corpus.manifest import read_manifest
    from mufm.semantic.tokens import SemanticTokenizer

    tok = SemanticTokenizer.load(semantic_run)
    out = str(tmp_path / "eval")
    res = ev.evaluate_tokens(tok, tiny_corpus, out, codec=load_codec(codec_run),
                             max_seconds_per_clip=10.0, probe_clips=4, progress=False,
                             log=lambda _: None)
    r = json.load(open(os.path.join(out, "evaluation.json")))
    assert r == json.loads(json.dumps(res.result))
    test = [x for x in read_manifest(tiny_corpus) if x["split"] == "test"]
    frames = sum(min(x["num_samples"], 240_000) // 960 for x in test)
    assert r["clips"] == len(test) and r["frames"] == frames
    assert 0 < r["sounding_frames"] <= frames and r["probe_train_clips"] == 4
    keys = [c["key"] for c in r["clustering"]]
    assert keys == ["semantic", "log_mel_kmeans", "codec_level0", "random"]
    rows = {c["key"]: c for c in r["clustering"]}
    assert rows["codec_level0"]["K"] == 64 and rows["semantic"]["K"] == 8
    n = r["sounding_frames"]
    for c in r["clustering"]:
        for lab in ev.LABELS:
            assert 0.0 <= c[f"nmi_{lab}"] <= 1.0
            # Purity is at least the share of the most common label.
            assert 1 / r["label_classes"][lab] <= c[f"purity_{lab}"] <= 1.0
    # Independent ids: 2 N I -> chi-square with (K - 1)(L - 1) degrees of freedom (the
    # G-test), so I stays under (df + 5 sqrt(2 df)) / 2N nats but with odds below 1e-5.
    for lab in ev.LABELS:
        df = (rows["random"]["used"] - 1) * (r["label_classes"][lab] - 1)
        assert rows["random"][f"mi_{lab}"] <= (df + 5 * math.sqrt(2 * df)) / (2 * n), lab
    assert [p["key"] for p in r["probe"]] == ["semantic", "log_mel", "prior"]
    for p in r["probe"]:
        assert 0.0 <= p["mean_class_accuracy"] <= 1.0 and p["frames"] == n
    assert 0.0 <= r["chunked_vs_whole"]["agreement"] <= 1.0
    md = open(os.path.join(out, "evaluation.md")).read()
    for c in r["clustering"]:
        assert f"| {c['tokens']} | {c['K']} |" in md
    for p in r["probe"]:
        assert f"| {p['features']} |" in md
    assert f"{r['frames']} frames" in md and "arithmetic-mean" in md
