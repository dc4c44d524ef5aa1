"""seqio Tasks over the audio datasets: fixed-length mono float32 24 kHz crops + captions.

- ``mufm_corpus_audio`` (registered on import; `register_corpus_task` makes variants)
- `audio_folder_task(...)`: the same for a user's folder (TFDS ``audio_folder``)
- `register_mixture(...)`: a seqio Mixture of such tasks (they share output features)

Crop length: ``sequence_length["waveform"]`` (samples) when the caller gives one, else the
task's ``crop_seconds`` (a gin-configurable factory argument). The ``train`` split takes a
random crop per example, every other split the centre crop. Clips shorter than a crop are
zero-padded (``waveform_length`` says how many samples are real) or, with
``pad_short=False``, dropped. ``crop_start`` is the crop's first sample in its clip.

Note and beat labels do not go through the tasks (variable-length, they would break
batching and mixing with unlabelled folders): an evaluation takes them by ``clip_id``
from the corpus (``mufm.data.corpus.labels.read_labels``, then ``labels.window`` with
``crop_start``) or from the TFDS examples of ``mufm_corpus`` (``notes``, ``beats``).

Determinism (the trainer resumes by skipping batches of a rebuilt dataset): give
``get_dataset`` a ``seed``. File order, shuffles and crop offsets then all derive from it
(seqio's per-preprocessor stateless seeds; tf.data ``deterministic=True``), so two
pipelines built with one seed yield identical batches. Per-host sharding is seqio's
``ShardInfo``: TFDS file shards when there are enough, otherwise every n-th example.
"""
from __future__ import annotations

import hashlib
import os

import gin
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from mufm.audio import SAMPLE_RATE
from mufm.data import tfds_builders  # importing it registers the TFDS builders
from mufm.data.tfds_builders import features as F

CORPUS_TASK = "mufm_corpus_audio"
_SPLIT_KEY = "_mufm_split"
_TEXT = ("caption", "clip_id", "key", "mode", "time_signature", "instruments", "composer",
         "attributes_json")


def _feature(dtype, rank, required=False):
    return seqio.Feature(seqio.PassThroughVocabulary(1), add_eos=False, required=required,
                         dtype=dtype, rank=rank)


def audio_output_features() -> dict:
    """Output features shared by every audio task (so tasks can be mixed)."""
    feats = {"waveform": _feature(tf.float32, 1, required=True),
             "waveform_length": _feature(tf.int32, 0, required=True),
             "crop_start": _feature(tf.int32, 0),
             "bpm": _feature(tf.int32, 0)}
    feats.update({k: _feature(tf.string, 0) for k in _TEXT})
    return feats


class SplitTaggedTfdsSource(seqio.TfdsDataSource):
    """A TfdsDataSource whose examples carry their split name (train crops randomly, eval not),
    and that prepares its TFDS dataset on first use (seqio's file sharding reads the split
    list before it would load, so an unprepared dataset otherwise fails with empty splits).
    Hosts sharing a data_dir that find it unprepared all generate it; TFDS writes each copy
    into an `incomplete.*` directory and renames it into place, so the first one wins and
    the others' renames fail: they read the winner's copy (generation is deterministic: the
    same examples). Many hosts had better prepare once beforehand
    (`tfds.builder(...).download_and_prepare()`) than all generate it."""

    def prepare(self) -> None:
        builder = self.tfds_dataset.builder
        if builder.is_prepared():
            return
        try:
            builder.download_and_prepare()
        except FileExistsError:
            if not builder.is_prepared():  # not the race: something else is in the way
                raise

    def list_shards(self, split):
        self.prepare()
        return super().list_shards(split)

    def get_dataset(self, split=tfds.Split.TRAIN, shuffle=True, seed=None, shard_info=None,
                    **kwargs):
        self.prepare()
        ds = super().get_dataset(split=split, shuffle=shuffle, seed=seed, shard_info=shard_info,
                                 **kwargs)
        name = str(split)
        return ds.map(lambda ex: {**ex, _SPLIT_KEY: tf.constant(name)},
                      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def to_model_features(ds: tf.data.Dataset) -> tf.data.Dataset:
    """int16 waveform -> float32 in [-1, 1]; attributes flattened to top-level features."""
    opts = tf.data.Options()
    opts.deterministic = True
    ds = ds.with_options(opts)

    def fn(ex):
        a = ex["attributes"]
        return {
            "waveform": tf.cast(ex["waveform"], tf.float32) / 32768.0,
            "caption": ex["caption"], "clip_id": ex["clip_id"],
            "key": a["key"], "mode": a["mode"], "time_signature": a["time_signature"],
            "instruments": a["instruments"], "composer": a["composer"],
            "bpm": tf.cast(a["bpm"], tf.int32), "attributes_json": ex["attributes_json"],
            _SPLIT_KEY: ex[_SPLIT_KEY],
        }

    return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def crop_samples(sequence_length, crop_seconds: float, sample_rate: int = SAMPLE_RATE) -> int:
    if sequence_length and sequence_length.get("waveform"):
        return int(sequence_length["waveform"])
    return int(round(crop_seconds * sample_rate))


@gin.configurable
def crop_waveform(ds: tf.data.Dataset, sequence_length=None, *, crop_seconds: float = 10.0,
                  pad_short: bool = True) -> tf.data.Dataset:
    """Fixed-length crops: random on ``train`` (seeded by seqio), centred elsewhere."""
    n = crop_samples(sequence_length, crop_seconds)
    if not pad_short:
        ds = ds.filter(lambda ex: tf.shape(ex["waveform"])[0] >= n)

    @seqio.map_over_dataset(num_seeds=1)
    def crop(ex, seed):
        w = ex["waveform"]
        length = tf.shape(w)[0]
        max_start = tf.maximum(length - n, 0)
        random_start = tf.random.stateless_uniform([], seed=seed, minval=0, maxval=max_start + 1,
                                                   dtype=tf.int32)
        start = tf.where(tf.equal(ex[_SPLIT_KEY], "train"), random_start, max_start // 2)
        piece = w[start:start + n]
        valid = tf.shape(piece)[0]
        piece = tf.pad(piece, [[0, n - valid]])
        piece.set_shape([n])
        out = {k: v for k, v in ex.items() if k != _SPLIT_KEY}
        out.update(waveform=piece, waveform_length=valid, crop_start=start)
        return out

    return crop(ds)


def _register(name: str, source: seqio.DataSource, crop_seconds: float, pad_short: bool,
              shuffle_buffer_size: int) -> seqio.Task:
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(
        name, source=source, output_features=audio_output_features(),
        preprocessors=[to_model_features,
                       seqio.CacheDatasetPlaceholder(),
                       _partial(crop_waveform, crop_seconds=crop_seconds, pad_short=pad_short)],
        shuffle_buffer_size=shuffle_buffer_size)


def _partial(fn, **kwargs):
    """functools.partial that keeps ``sequence_length`` visible to seqio's signature check."""
    def wrapped(ds, sequence_length=None):
        return fn(ds, sequence_length, **kwargs)
    wrapped.__name__ = fn.__name__
    return wrapped


def default_data_dir() -> str | None:
    return os.environ.get("MUFM_TFDS_DIR") or None


@gin.configurable
def register_corpus_task(name: str = CORPUS_TASK, config: str = "quick", crop_seconds: float = 10.0,
                         pad_short: bool = True, data_dir: str | None = None,
                         corpus_dir: str | None = None,
                         shuffle_buffer_size: int = 512) -> seqio.Task:
    """(Re-)registers the embedded-corpus task. ``data_dir`` is the TFDS data dir
    (default ``$MUFM_TFDS_DIR`` or TFDS's); ``corpus_dir`` the rendered corpus to prepare from.

    Importing this module registers the defaults; after parsing gin files, call it again
    (e.g. from the train entry point) so gin bindings such as
    ``register_corpus_task.crop_seconds = 30.0`` take effect.
    """
    source = SplitTaggedTfdsSource(
        tfds_name=f"mufm_corpus/{config}:{tfds_builders.MufmCorpus.VERSION}",
        tfds_data_dir=data_dir or default_data_dir(),
        tfds_builder_kwargs={"corpus_dir": corpus_dir} if corpus_dir else None)
    return _register(name, source, crop_seconds, pad_short, shuffle_buffer_size)


@gin.configurable
def audio_folder_task(name: str, root_dir: str, captions: str | None = None,
                      crop_seconds: float = 10.0, pad_short: bool = True,
                      data_dir: str | None = None, shuffle_buffer_size: int = 512,
                      **folder_options) -> seqio.Task:
    """Registers a task over a user's folder (prepared into ``data_dir`` on first use).

    ``folder_options`` are `mufm.data.audio_folder.FolderOptions` fields (segment_seconds,
    max_segments_per_file, min_seconds, pad_short, split_fractions, seed, require_caption).
    """
    if data_dir is None:
        tag = hashlib.sha1(os.path.abspath(root_dir).encode()).hexdigest()[:10]
        data_dir = os.path.join(default_data_dir() or os.path.expanduser("~/tensorflow_datasets"),
                                f"audio_folder_{tag}")
    source = SplitTaggedTfdsSource(
        tfds_name="audio_folder:1.0.0", tfds_data_dir=data_dir,
        tfds_builder_kwargs={"root_dir": root_dir, "captions": captions, **folder_options})
    return _register(name, source, crop_seconds, pad_short, shuffle_buffer_size)


def register_mixture(name: str, tasks, default_rate=None) -> seqio.Mixture:
    """A seqio Mixture of audio tasks: ``tasks`` is [name, ...] or [(name, rate), ...]."""
    if name in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove(name)
    return seqio.MixtureRegistry.add(name, tasks, default_rate=default_rate)


register_corpus_task()
