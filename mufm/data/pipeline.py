"""Batches for the trainers from any registered seqio Task or Mixture.

Token tasks (the stage LMs) go through `StageLMFeatureConverter` (`host_batches`); audio
tasks (the codec) give fixed-length waveform crops (`host_audio_batches`), with
`sequence_length` read as the crop length in samples; `host_captioned_audio_batches` gives
the same crops with each clip's caption, attributes and id (MuLan).

The data is split into `DataConfig.input_shards` seqio shards (default one per host); each
host reads its own shards and batches `global_batch / process_count` examples (its shards'
batches concatenated in shard order); `mufm.parallel.multihost` assembles the host-local
batches into global arrays. The pipeline is deterministic for a seed, so resuming at
`start_batch` (skip) yields exactly the batches an uninterrupted run would see.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Iterator, Sequence

import gin
import jax
import numpy as np


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DataConfig:
    mixture_or_task_name: str = "mufm_synthetic_copy"
    sequence_length: int = 128
    batch_size: int = 8  # global, across all hosts
    pack: bool = True
    shuffle: bool = True
    seed: int = 0
    train_split: str = "train"
    eval_split: str = "validation"
    # Input shards the data is split into (seqio ShardInfo); each host reads
    # input_shards / process_count of them and concatenates their batches in shard order.
    # None: one per host. Fixing it makes the global batches independent of the number of
    # processes (a 1-process rehearsal of a 2-host run reads exactly the 2-host batches).
    input_shards: int | None = None
    # Modules whose import registers the Task/Mixture (seqio registries are import-time).
    task_modules: Sequence[str] = ("mufm.data.synthetic",)
    # Names of the stream ids a task marks in `targets_streams`, for per-stream metrics
    # (empty: taken from a registration that has them, the token tasks' layout).
    stream_names: Sequence[str] = ()
    # Tasks to register when this config is built, e.g. `[@CorpusTaskRegistration()]`:
    # objects with a `register()` method, called in __post_init__, i.e. after every gin file
    # and --gin binding is parsed (so `CorpusTaskRegistration.corpus_dir = ...` takes effect)
    # and again when a run's stored config is rebuilt without gin (mufm.train.restore).
    registrations: Sequence[Any] = ()

    def __post_init__(self):
        object.__setattr__(self, "task_modules", tuple(self.task_modules))
        object.__setattr__(self, "stream_names", tuple(self.stream_names))
        object.__setattr__(self, "registrations", tuple(self.registrations))
        if not self.stream_names:  # a token task's layout names its streams
            named = [r.stream_names for r in self.registrations if getattr(r, "stream_names", None)]
            if named:
                object.__setattr__(self, "stream_names", tuple(named[0]))
        for registration in self.registrations:
            registration.register()


@gin.configurable
@dataclasses.dataclass(frozen=True)
class CorpusTaskRegistration:
    """Registers the embedded-corpus audio task (`mufm.data.tasks.register_corpus_task`)
    when the DataConfig that holds it is built; a plain dataclass, so the run's stored
    config can rebuild it."""
    name: str = "mufm_corpus_audio"
    config: str = "quick"
    crop_seconds: float = 10.0
    pad_short: bool = True
    data_dir: str | None = None  # TFDS data dir; None: $MUFM_TFDS_DIR, else TFDS's default
    corpus_dir: str | None = None  # a rendered corpus to prepare from
    shuffle_buffer_size: int = 512

    def register(self) -> None:
        from mufm.data import tasks  # TensorFlow and seqio: only when a task is registered

        tasks.register_corpus_task(**dataclasses.asdict(self))


def batch_feature_names(cfg: DataConfig) -> tuple[str, ...]:
    """The int32 [batch, length] features a batch of `cfg` carries, without reading data.

    Mirrors seqio's decoder-only converter (segment ids and positions only when packing)
    plus StageLMFeatureConverter's stream ids; a test checks it against a real batch.
    """
    names = ["decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights"]
    if cfg.pack:
        names += ["decoder_segment_ids", "decoder_positions"]
    if cfg.stream_names:
        names.append("decoder_stream_ids")
    return tuple(names)


def _task(cfg: DataConfig):
    import seqio  # heavy (TensorFlow): only where data is actually read

    for module in cfg.task_modules:
        importlib.import_module(module)
    try:
        return seqio.get_mixture_or_task(cfg.mixture_or_task_name)
    except ValueError as e:
        raise ValueError(f"DataConfig.mixture_or_task_name={cfg.mixture_or_task_name!r} is not "
                         f"registered (after importing {list(cfg.task_modules)}): {e}") from None


def feature_converter(cfg: DataConfig):
    from mufm.data.feature_converters import SIDE_FEATURES, StageLMFeatureConverter

    task = _task(cfg)
    side = [f for f in SIDE_FEATURES if f in task.output_features]
    return StageLMFeatureConverter(side_features=side, pack=cfg.pack)


def host_batch_size(global_batch: int) -> int:
    n = jax.process_count()
    if global_batch % n:
        raise ValueError(f"DataConfig.batch_size={global_batch} is not divisible by the "
                         f"{n} hosts")
    return global_batch // n


def host_shards(cfg: DataConfig) -> tuple[list[int], int]:
    """(the input shards this host reads, the number of shards)."""
    hosts, host = jax.process_count(), jax.process_index()
    n = cfg.input_shards or hosts
    if n % hosts:
        raise ValueError(f"DataConfig.input_shards={n} is not divisible by the {hosts} hosts")
    if cfg.batch_size % n:
        raise ValueError(f"DataConfig.batch_size={cfg.batch_size} is not divisible by the {n} "
                         f"input shards")
    per_host = n // hosts
    return [host * per_host + k for k in range(per_host)], n


def make_dataset(cfg: DataConfig, *, split: str, shuffle: bool, start_batch: int = 0,
                 num_epochs: int | None = None, drop_remainder: bool = True):
    """The host-local tf.data pipeline of batched model features, positioned at start_batch
    (with `drop_remainder=False`, a finite pass keeps its last, smaller batch)."""
    import seqio

    converter = feature_converter(cfg)

    def shard_dataset(shard):
        return seqio.get_dataset(
            cfg.mixture_or_task_name,
            task_feature_lengths=converter.task_feature_lengths(cfg.sequence_length),
            dataset_split=split,
            shuffle=shuffle,
            num_epochs=num_epochs,
            feature_converter=converter,
            shard_info=shard,
            seed=cfg.seed,
            use_cached=False,
        )

    return _batched(shard_dataset, cfg, start_batch, drop_remainder)


def _batched(shard_dataset, cfg: DataConfig, start_batch: int, drop_remainder: bool = True):
    """Host batches from this host's input shards (`shard_dataset(ShardInfo)` gives one
    shard's examples): each shard batched by batch_size / input_shards and the shards'
    batches concatenated in shard order; deterministic, positioned at `start_batch` (a
    resumed run skips exactly the batches it consumed), prefetched."""
    import seqio
    import tensorflow as tf

    shards, n = host_shards(cfg)
    per_shard = cfg.batch_size // n
    parts = [shard_dataset(seqio.ShardInfo(index=i, num_shards=n)).batch(
        per_shard, drop_remainder=drop_remainder) for i in shards]
    if len(parts) == 1:
        ds = parts[0]
    else:
        if drop_remainder:
            zipped = tf.data.Dataset.zip(tuple(parts))
        else:
            # A finite pass: zip stops at the shortest shard, which would drop the other
            # shards' last batches (and make the clips a host evaluates depend on how many
            # shards it reads). Each shard goes on with empty batches until all are done.
            def padded(part):
                empty = {k: tf.zeros([0] + [d or 0 for d in spec.shape[1:].as_list()], spec.dtype)
                         for k, spec in part.element_spec.items()}
                return part.concatenate(tf.data.Dataset.from_tensors(empty).repeat())

            first = next(iter(parts[0].element_spec))
            zipped = tf.data.Dataset.zip(tuple(padded(p) for p in parts)).take_while(
                lambda *batches: tf.reduce_any([tf.shape(b[first])[0] > 0 for b in batches]))
        ds = zipped.map(
            lambda *batches: {k: tf.concat([b[k] for b in batches], 0) for k in batches[0]},
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if start_batch:
        ds = ds.skip(start_batch)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).prefetch(2)


def host_batches(cfg: DataConfig, *, split: str, shuffle: bool, start_batch: int = 0,
                 num_epochs: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    ds = make_dataset(cfg, split=split, shuffle=shuffle, start_batch=start_batch,
                      num_epochs=num_epochs)
    return iter(ds.as_numpy_iterator())


AUDIO_FEATURES = ("waveform", "waveform_length")
CAPTION_FEATURES = ("caption", "attributes_json", "clip_id")


def make_audio_dataset(cfg: DataConfig, *, split: str, shuffle: bool, start_batch: int = 0,
                       num_epochs: int | None = None, drop_remainder: bool = True,
                       features: tuple[str, ...] = AUDIO_FEATURES):
    """Host-local batches of {waveform: float32 [b, crop], waveform_length: int32 [b]} from an
    audio task (`mufm.data.tasks`), crops of `cfg.sequence_length` samples, positioned at
    `start_batch` (deterministic for `cfg.seed`, like `make_dataset`). With
    `drop_remainder=False` (a finite evaluation pass) the last batch may be smaller.
    `features` names the task features each batch keeps (`AUDIO_FEATURES +
    CAPTION_FEATURES` adds each crop's caption, attributes and clip id as byte strings [b];
    the crops and their order do not depend on it)."""
    import tensorflow as tf

    task = _task(cfg)
    missing = [f for f in features if f not in task.output_features]
    if missing:
        kind = "an audio" if set(missing) & set(AUDIO_FEATURES) else "a captioned audio"
        raise ValueError(f"{cfg.mixture_or_task_name!r} is not {kind} task: it has no {missing} "
                         f"(its features: {sorted(task.output_features)})")

    def shard_dataset(shard):
        ds = task.get_dataset({"waveform": cfg.sequence_length}, split=split, shuffle=shuffle,
                              num_epochs=num_epochs, shard_info=shard, seed=cfg.seed,
                              use_cached=False)
        return ds.map(lambda ex: {k: ex[k] for k in features},
                      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    return _batched(shard_dataset, cfg, start_batch, drop_remainder)


def host_audio_batches(cfg: DataConfig, *, split: str, shuffle: bool, start_batch: int = 0,
                       num_epochs: int | None = None, drop_remainder: bool = True,
                       features: tuple[str, ...] = AUDIO_FEATURES
                       ) -> Iterator[dict[str, np.ndarray]]:
    ds = make_audio_dataset(cfg, split=split, shuffle=shuffle, start_batch=start_batch,
                            num_epochs=num_epochs, drop_remainder=drop_remainder,
                            features=features)
    return iter(ds.as_numpy_iterator())


def host_captioned_audio_batches(cfg: DataConfig, **kwargs) -> Iterator[dict[str, np.ndarray]]:
    """`host_audio_batches` with each crop's caption, attributes and clip id (MuLan)."""
    return host_audio_batches(cfg, features=AUDIO_FEATURES + CAPTION_FEATURES, **kwargs)
