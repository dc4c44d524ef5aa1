"""seqio tasks: crop length at 24 kHz, same seed -> same batches, sharding, the folder task."""
import json
import os

import numpy as np
import pytest
import soundfile as sf

tf = pytest.importorskip("tensorflow")
seqio = pytest.importorskip("seqio")

from mufm.data import tasks  # noqa: E402

SR = 24000


@pytest.fixture(scope="module")
def corpus_task(tiny_tfds, tiny_corpus):
    return tasks.register_corpus_task(name="test_corpus_audio", data_dir=tiny_tfds,
                                      corpus_dir=tiny_corpus,
                                      crop_seconds=3.0)


def _batches(task, n, seed, split="train", batch=4, **kw):
    ds = task.get_dataset(split=split, shuffle=split == "train", seed=seed, num_epochs=None, **kw)
    it = ds.batch(batch, drop_remainder=True).take(n).as_numpy_iterator()
    return list(it)


def test_task_yields_requested_crop_length_at_24khz(corpus_task, tiny_corpus):
    ex = next(corpus_task.get_dataset(split="train", seed=1, num_epochs=None).as_numpy_iterator())
    assert ex["waveform"].shape == (3 * SR,) and ex["waveform"].dtype == np.float32  # crop_seconds
    assert ex["waveform_length"] == 3 * SR and np.abs(ex["waveform"]).max() > 0.01
    ds = corpus_task.get_dataset(sequence_length={"waveform": 2 * SR}, split="validation",
                                 shuffle=False, seed=1)
    manifest = {json.loads(l)["clip_id"]: json.loads(l)
                for l in open(os.path.join(tiny_corpus, "manifest.jsonl"))}
    n = 0
    for ex in ds.as_numpy_iterator():
        n += 1
        assert ex["waveform"].shape == (2 * SR,)
        rec = manifest[ex["clip_id"].decode()]
        assert rec["split"] == "validation"
        assert ex["caption"].decode() == rec["caption"] and ex["bpm"] == rec["attributes"]["bpm"]
        assert ex["key"].decode() == rec["attributes"]["key"]
        # eval crops are the centre 2 s of the stored 24 kHz FLAC, sample for sample
        audio, sr = sf.read(os.path.join(tiny_corpus, rec["audio"]), dtype="int16")
        assert sr == SR
        start = (len(audio) - 2 * SR) // 2
        # int16 / 32768 is exact in fp32 (a 16-bit integer over a power of two): equal.
        np.testing.assert_array_equal(ex["waveform"], audio[start:start + 2 * SR] / 32768.0)
    assert n >= 1


def test_same_seed_same_batches_and_resume_by_skipping(corpus_task):
    a = _batches(corpus_task, 5, seed=7)
    b = _batches(corpus_task, 5, seed=7)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["waveform"], y["waveform"])
        np.testing.assert_array_equal(x["clip_id"], y["clip_id"])
    # the trainer's resume rule: rebuild with the seed, skip the batches already seen
    ds = corpus_task.get_dataset(split="train", shuffle=True, seed=7, num_epochs=None)
    resumed = list(ds.batch(4, drop_remainder=True).skip(3).take(2).as_numpy_iterator())
    for x, y in zip(resumed, a[3:]):
        np.testing.assert_array_equal(x["waveform"], y["waveform"])
    c = _batches(corpus_task, 5, seed=8)
    assert any(not np.array_equal(x["waveform"], y["waveform"]) for x, y in zip(a, c))


def test_train_crops_are_random_eval_crops_fixed(corpus_task):
    def crops(split, seed):
        ds = corpus_task.get_dataset(split=split, shuffle=False, seed=seed, num_epochs=1)
        return {ex["clip_id"]: ex["waveform"] for ex in ds.as_numpy_iterator()}
    t1, t2 = crops("train", 1), crops("train", 2)
    assert sum(not np.array_equal(t1[k], t2[k]) for k in t1) >= len(t1) // 2
    v1, v2 = crops("validation", 1), crops("validation", 2)
    assert all(np.array_equal(v1[k], v2[k]) for k in v1)


def test_per_host_sharding_is_a_partition(corpus_task):
    def ids(shard):
        ds = corpus_task.get_dataset(split="train", shuffle=False, seed=0, num_epochs=1,
                                     shard_info=shard)
        return [ex["clip_id"] for ex in ds.as_numpy_iterator()]
    everything = ids(None)
    s0, s1 = ids(seqio.ShardInfo(0, 2)), ids(seqio.ShardInfo(1, 2))
    assert not set(s0) & set(s1) and sorted(s0 + s1) == sorted(everything) and s0 and s1


def test_audio_folder_task_and_mixture(tmp_path, corpus_task):
    root = tmp_path / "music"
    root.mkdir()
    t = np.arange(7 * SR) / SR
    for i in range(6):
        sf.write(str(root / f"song{i}.wav"),
                 (0.2 * np.sin(2 * np.pi * (200 + 50 * i) * t)).astype(np.float32), SR)
    open(root / "broken.wav", "wb").write(b"RIFF....WAVEjunk")
    with open(root / "captions.csv", "w") as f:
        f.write("file,caption,split,key\n")
        for i in range(6):
            f.write(f"song{i}.wav,a sine tone number {i},{'validation' if i == 5 else 'train'},C major\n")
    data_dir = str(tmp_path / "tfds")
    task = tasks.audio_folder_task("test_folder_audio", str(root), str(root / "captions.csv"),
                                   crop_seconds=3.0, data_dir=data_dir, segment_seconds=5.0)
    ex = next(task.get_dataset(split="train", seed=0, num_epochs=None).as_numpy_iterator())
    assert ex["waveform"].shape == (3 * SR,) and ex["caption"].startswith(b"a sine tone")
    assert ex["key"] == b"C major"
    report_paths = [os.path.join(dp,
                                 f) for dp, _,
                    fs in os.walk(data_dir) for f in fs if f == "skip_report.json"]
    assert report_paths
    report = json.load(open(report_paths[0]))
    assert report["skipped_by_reason"] == {"not_audio_or_corrupt": 1}
    mix = tasks.register_mixture("test_mix",
                                 [("test_corpus_audio", 1.0), ("test_folder_audio", 1.0)])
    got = list(mix.get_dataset(sequence_length={"waveform": SR}, split="train", seed=0,
                               num_epochs=None)
               .take(20).as_numpy_iterator())
    assert all(e["waveform"].shape == (SR,) for e in got)
    assert {e["clip_id"].startswith(b"song") for e in got} == {True, False}


# The feature spec each TFDS version of mufm_corpus was released with. Changing the
# features without a new VERSION would let a dataset prepared with the old spec pass for
# the new one: add the new version here when the spec changes.
CORPUS_SPECS = {
    "1.1.0": {"attributes", "attributes_json", "beats", "caption", "clip_id", "downbeats",
              "notes", "sample_rate", "variant_id", "waveform", "work_id"},
}


def test_tfds_corpus_carries_the_labels_under_a_new_version(tiny_tfds, tiny_corpus, corpus_task,
                                                            tmp_path):
    import shutil

    import tensorflow_datasets as tfds

    from mufm.data.corpus import labels
    from mufm.data.tfds_builders import MufmCorpus

    version = str(MufmCorpus.VERSION)
    builder = tfds.builder("mufm_corpus/quick", data_dir=tiny_tfds, corpus_dir=tiny_corpus)
    assert set(builder.info.features) == CORPUS_SPECS[version]
    assert builder.info.features["notes"].shape == (None, 5)
    assert corpus_task.source.tfds_dataset.name == f"mufm_corpus/quick:{version}"
    n = 0
    for ex in builder.as_dataset(split="validation").as_numpy_iterator():
        lab = labels.read_labels(tiny_corpus, ex["clip_id"].decode())
        for k in ("notes", "beats", "downbeats"):
            assert ex[k].dtype == np.float32
            np.testing.assert_array_equal(ex[k], lab[k])
        n += 1
    assert n >= 1
    # the same data dir holding only an older version's preparation: not taken for this one
    old = tmp_path / "tfds"
    shutil.copytree(os.path.join(tiny_tfds, "mufm_corpus"), old / "mufm_corpus")
    os.rename(old / "mufm_corpus" / "quick" / version, old / "mufm_corpus" / "quick" / "1.0.0")
    assert not tfds.builder("mufm_corpus/quick", data_dir=str(old),
                            corpus_dir=tiny_corpus).is_prepared()


def test_crop_start_places_each_crop_in_its_clip(corpus_task, tiny_corpus):
    """What an evaluation needs to take a crop's notes from the clip's labels."""
    from mufm.data.corpus import labels
    manifest = {r["clip_id"]: r for r in map(json.loads, open(os.path.join(tiny_corpus,
                                                                           "manifest.jsonl")))}
    n = 2 * SR
    for split in ("train", "validation"):
        ds = corpus_task.get_dataset(sequence_length={"waveform": n}, split=split, shuffle=False,
                                     seed=3, num_epochs=1)
        starts = []
        for ex in ds.as_numpy_iterator():
            rec = manifest[ex["clip_id"].decode()]
            audio, _ = sf.read(os.path.join(tiny_corpus, rec["audio"]), dtype="int16")
            start = int(ex["crop_start"])
            starts.append(start)
            if split != "train":
                assert start == (len(audio) - n) // 2  # the centre crop
            np.testing.assert_allclose(ex["waveform"], audio[start:start + n] / 32768.0, atol=1e-6)
            w = labels.window(labels.read_labels(tiny_corpus, rec["clip_id"]), start / SR, n / SR)
            assert len(w["notes"]) > 0 and w["notes"][:, 0].min() >= 0
            assert w["notes"][:, 1].max() <= n / SR + 1e-6
        assert len(set(starts)) > 1


def test_finite_pass_over_uneven_shards_keeps_every_example():
    """A host reading two input shards of a finite split gets every clip once, also when
    one shard runs out first (9 clips: shard 0 holds 5, shard 1 holds 4)."""
    from mufm.data import synthetic_audio  # noqa: F401  (registers the task)
    from mufm.data.pipeline import DataConfig, host_audio_batches

    cfg = DataConfig(mixture_or_task_name="mufm_synthetic_audio", sequence_length=480,
                     batch_size=4, input_shards=2)
    batches = list(host_audio_batches(cfg, split="validation_odd", shuffle=False, num_epochs=1,
                                      drop_remainder=False, features=("waveform", "waveform_length",
                                                                      "clip_id")))
    assert [len(b["clip_id"]) for b in batches] == [4, 4, 1]
    ids = [int(c) for b in batches for c in b["clip_id"]]
    assert sorted(ids) == list(range(9))
    # Each batch: shard 0's rows, then shard 1's (shard i holds the clips i, i + 2, ...).
    assert ids[:4] == [0, 2, 1, 3] and ids[-1] == 8
    # Training passes (repeating, whole batches only) are untouched: shard batches zipped.
    train = host_audio_batches(cfg, split="train", shuffle=False)
    assert len(next(train)["waveform"]) == 4
