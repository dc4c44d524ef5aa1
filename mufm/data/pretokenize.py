"""Pre-tokenization: every clip of a source becomes its three token streams, as a Beam job.

    python -m mufm.data.pretokenize --source=corpus:medium --corpus_dir=$HOME/.cache/mufm/corpus_medium \\
        --codec=runs/codec_medium --semantic=runs/semantic_cpu \\
        --semantic_tokens=runs/semantic_cpu/tokens_layer2 --mulan=runs/mulan_cpu \\
        --out=$HOME/.cache/mufm/tokens_medium --direct_num_workers=2

Sources: `corpus:<config>` (the TFDS `mufm_corpus` builder, prepared on first use) or
`folder:<dir>` (audio files, `--captions` JSONL/CSV; decoded and split by
`mufm.data.audio_folder`, whose unusable files are counted in the report).

The job (module `run`):
1. plans shards: each split's clips in order, `--clips_per_shard` to a shard (a shard is a
   contiguous slice, so a worker reads only its own clips), and writes `plan.json`;
2. runs one Beam `ParDo` over the shards (`TokenizeShards`): each worker loads the codec (all
   its RVQ levels), the semantic tokenizer and MuLan once (`DoFn.setup`, the generic
   loader `mufm.train.restore`, jitted programs of fixed shapes), tokenizes its shards'
   clips one by one and writes `<split>-NNNNN-of-MMMMM.tfrecord` (`mufm.data.token_records`)
   plus a marker `shards/<split>-NNNNN.json` holding the shard's counts;
3. gathers the markers into `manifest.json` (the runs and steps that made the tokens, the
   streams' shapes, per split clips / seconds / shards), `report.json` (every clip that
   failed and why) and `stats.json` (per stream and level: codes used, unigram entropy, and
   the mean empirical entropy of 125-token semantic windows, the figure MusicLM reports as
   4.6 bits), so a collapsed tokenizer shows before anything trains on it.

Resumable: a shard whose marker exists is skipped (the marker is written after the
shard's file was renamed into place, so a killed worker leaves at most a `.tmp` file, which
the rerun overwrites); a rerun with another plan (other models, source or shard size) is
refused. Tokenization is a fixed function of the clip, so a rerun writes byte-identical
shards. A clip that fails (too short for MuLan, non-finite, a decode error) is counted in
the report and the job goes on.

Runners: DirectRunner here (`--direct_num_workers=N --direct_running_mode=multi_processing`
for N processes, the default when N > 1); on Dataflow pass the usual Beam flags,
`--runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp
--setup_file=./setup.py --machine_type=n2-standard-8 --max_num_workers=K`, with every
path (`--out`, the model dirs, the corpus) on gs://. Any flag this module does not define
goes to Beam's `PipelineOptions`.
"""
from __future__ import annotations

import argparse
import dataclasses
from collections import Counter
import json
import math
import os
import sys
import threading
import time
from typing import Any, Iterator, Mapping, NamedTuple, Sequence

import numpy as np

from mufm.audio import SAMPLE_RATE
from mufm.data import token_records as R

SPLITS = ("train", "validation", "test")
PLAN, MANIFEST, REPORT, STATS, MARKERS = "plan.json", "manifest.json", "report.json", "stats.json", "shards"
COUNTS = "counts.npz"  # per split and stream, code counts [levels, codebook] (unigram baselines)
ENTROPY_WINDOW = 125  # semantic tokens per window of MusicLM's empirical-entropy figure (5 s)
FORMAT = 1


class PlanMismatchError(ValueError):
    """The output directory holds shards of another plan (models, source, shard size)."""


# -- the tokenizers of one worker ----------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ModelDirs:
    codec: str
    semantic: str
    mulan: str
    semantic_tokens: str | None = None  # default <semantic>/semantic_tokens
    mulan_hop_seconds: float | None = None  # MuLan windows every ...; None: one window (no overlap)


class ClipTokenizer:
    """The three tokenizers, loaded once; `tokenize(waveform)` -> the clip's streams, and
    `seconds` the time each has spent so far (the benchmark's split)."""

    def __init__(self, dirs: ModelDirs):
        from mufm.codec.restore import load_codec
        from mufm.mulan.embed import MuLan
        from mufm.semantic.tokens import SemanticTokenizer

        self.dirs = dirs
        self.codec = load_codec(dirs.codec)
        self.semantic = SemanticTokenizer.load(dirs.semantic, dirs.semantic_tokens)
        self.mulan = MuLan.load(dirs.mulan)
        self.mulan._quantizer()  # fail here, once, when the run has no fitted tokens
        window = self.mulan.audio_cfg.window_samples
        self.mulan_hop = int(round(dirs.mulan_hop_seconds * SAMPLE_RATE)) if dirs.mulan_hop_seconds else window
        self.seconds = {"codec": 0.0, "semantic": 0.0, "mulan": 0.0}
        # The streams' shapes and the runs' records, as the manifest states them.
        self.streams, self.models = describe_models(dirs)

    def tokenize(self, waveform: np.ndarray) -> dict[str, np.ndarray]:
        from mufm.codec import tokenizer as codec_tokenizer

        t0 = time.perf_counter()
        acoustic = codec_tokenizer.encode_chunked(*self.codec.parts, waveform[None])[0]
        t1 = time.perf_counter()
        semantic = self.semantic.encode_chunked(waveform)
        t2 = time.perf_counter()
        mulan = self.mulan.tokens_audio(waveform, self.mulan_hop)
        t3 = time.perf_counter()
        for name, dt in (("codec", t1 - t0), ("semantic", t2 - t1), ("mulan", t3 - t2)):
            self.seconds[name] += dt
        return {"mulan": np.asarray(mulan, np.int64), "semantic": np.asarray(semantic, np.int64),
                "acoustic": np.asarray(acoustic, np.int64)}


# -- clip sources --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CorpusSource:
    """The embedded corpus through its TFDS builder (`mufm_corpus/<config>`)."""
    config: str = "medium"
    corpus_dir: str | None = None
    tfds_dir: str | None = None

    def _builder(self):
        import tensorflow_datasets as tfds

        from mufm.data import tfds_builders  # noqa: F401  (registers the builder)
        from mufm.data.tasks import default_data_dir

        kwargs = {"corpus_dir": self.corpus_dir} if self.corpus_dir else {}
        return tfds.builder(f"mufm_corpus/{self.config}", data_dir=self.tfds_dir or default_data_dir(),
                            **kwargs)

    def describe(self) -> dict:
        return {"kind": "corpus", **dataclasses.asdict(self)}

    def sizes(self) -> dict[str, int]:
        builder = self._builder()
        if not builder.is_prepared():
            builder.download_and_prepare()
        return {s: int(builder.info.splits[s].num_examples) for s in SPLITS if s in builder.info.splits}

    def clips(self, split: str, lo: int, hi: int, report: list) -> Iterator[dict]:
        import tensorflow as tf

        ds = self._builder().as_dataset(split=f"{split}[{lo}:{hi}]", shuffle_files=False)
        for ex in ds.as_numpy_iterator():
            yield {"clip_id": ex["clip_id"].decode(), "caption": ex["caption"].decode(),
                   "attributes_json": ex["attributes_json"].decode(),
                   "waveform": np.asarray(ex["waveform"], np.float32).reshape(-1) / 32768.0}
        del tf


@dataclasses.dataclass(frozen=True)
class FolderSource:
    """A folder of audio files (`mufm.data.audio_folder`): units are files, cut into segments."""
    root: str
    captions: str | None = None
    segment_seconds: float = 30.0
    max_segments_per_file: int | None = 8

    def _options(self):
        from mufm.data.audio_folder import FolderOptions

        return FolderOptions(segment_seconds=self.segment_seconds,
                             max_segments_per_file=self.max_segments_per_file)

    def _entries(self, split: str, report: list) -> list[dict]:
        from mufm.data.audio_folder import plan_files

        return [e for e in plan_files(self.root, self.captions, self._options(), report)
                if e["split"] == split]

    def describe(self) -> dict:
        return {"kind": "folder", **dataclasses.asdict(self)}

    def sizes(self) -> dict[str, int]:
        return {s: len(self._entries(s, [])) for s in SPLITS}

    def clips(self, split: str, lo: int, hi: int, report: list) -> Iterator[dict]:
        from mufm.data.audio_folder import iter_entry_clips

        entries = self._entries(split, [])[lo:hi]
        for c in iter_entry_clips(self.root, entries, self._options(), report):
            yield {"clip_id": c["clip_id"], "caption": c["caption"],
                   "attributes_json": json.dumps(c["attributes"], sort_keys=True),
                   "waveform": c["waveform"]}


def parse_source(spec: str, *, corpus_dir: str | None = None, tfds_dir: str | None = None,
                 captions: str | None = None):
    kind, _, value = spec.partition(":")
    if kind == "corpus" and value:
        return CorpusSource(value, corpus_dir, tfds_dir)
    if kind == "folder" and value:
        if not os.path.isdir(value):
            raise ValueError(f"--source={spec}: {value} is not a directory")
        return FolderSource(value, captions)
    raise ValueError(f"--source={spec!r}: use corpus:<config> (quick, medium, full) or folder:<dir>")


# -- the plan ------------------------------------------------------------------------------
class ShardSpec(NamedTuple):
    split: str
    index: int
    count: int
    lo: int  # units [lo, hi) of the split (clips; files for a folder)
    hi: int

    @property
    def file(self) -> str:
        return R.shard_name(self.split, self.index, self.count)

    @property
    def marker(self) -> str:
        return os.path.join(MARKERS, f"{self.split}-{self.index:05d}.json")


def plan_shards(sizes: Mapping[str, int], clips_per_shard: int) -> list[ShardSpec]:
    if clips_per_shard < 1:
        raise ValueError(f"clips_per_shard={clips_per_shard}: must be >= 1")
    out = []
    for split in SPLITS:
        n = int(sizes.get(split, 0))
        count = max(1, math.ceil(n / clips_per_shard)) if n else 0
        for i in range(count):
            out.append(ShardSpec(split, i, count, i * n // count, (i + 1) * n // count))
    return out


def _write_json(path: str, value: Any) -> None:
    import tensorflow as tf  # gfile: gs:// paths on Dataflow

    tmp = f"{path}.tmp-{os.getpid()}"
    with tf.io.gfile.GFile(tmp, "w") as f:
        json.dump(value, f, indent=1, sort_keys=True)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def _read_json(path: str) -> Any:
    import tensorflow as tf

    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


# -- the per-shard work --------------------------------------------------------------------
def empty_counts(streams: Mapping[str, dict]) -> dict[str, np.ndarray]:
    return {name: np.zeros((s["levels"], s["codebook_size"]), np.int64) for name, s in streams.items()}


def add_counts(counts: dict[str, np.ndarray], tokens: Mapping[str, np.ndarray]) -> None:
    for name, c in counts.items():
        codes = np.asarray(tokens[name])
        codes = codes.reshape(len(codes), -1) if name != "mulan" else codes.reshape(1, -1)
        codes = codes[(codes >= 0).all(axis=1)] if codes.size else codes
        for q in range(c.shape[0]):
            c[q] += np.bincount(codes[:, q], minlength=c.shape[1])[:c.shape[1]]


def window_entropies(semantic: np.ndarray, window: int = ENTROPY_WINDOW) -> np.ndarray:
    """Empirical entropy (bits) of each whole window of `window` semantic tokens."""
    semantic = np.asarray(semantic)
    semantic = semantic[semantic >= 0]
    out = []
    for start in range(0, len(semantic) - window + 1, window):
        _, n = np.unique(semantic[start:start + window], return_counts=True)
        p = n / window
        out.append(float(-(p * np.log2(p)).sum()))
    return np.asarray(out)


def tokenize_shard(spec: ShardSpec, source, tokenizer: ClipTokenizer, out_dir: str) -> dict:
    """Writes one shard and its marker; returns the marker."""
    import tensorflow as tf

    path = os.path.join(out_dir, spec.file)
    tmp = f"{path}.tmp"
    start = time.perf_counter()
    before = dict(tokenizer.seconds)
    report, failed = [], []
    counts = empty_counts(tokenizer.streams)
    entropies, clips, samples = [], 0, 0
    with tf.io.TFRecordWriter(tmp) as writer:
        for clip in source.clips(spec.split, spec.lo, spec.hi, report):
            try:
                wave = np.asarray(clip["waveform"], np.float32)
                if wave.ndim != 1 or not np.all(np.isfinite(wave)):
                    raise ValueError(f"audio must be finite mono samples, got shape {wave.shape}"
                                     + ("" if wave.ndim != 1 else " with non-finite values"))
                tokens = tokenizer.tokenize(wave)
            except Exception as err:  # a bad clip is counted, never fatal (module docstring)
                failed.append({"clip_id": clip["clip_id"], "reason": type(err).__name__,
                               "detail": str(err)[:300]})
                continue
            writer.write(R.serialize({**clip, **tokens, "split": spec.split,
                                      "num_samples": len(wave)}))
            add_counts(counts, tokens)
            entropies.extend(window_entropies(tokens["semantic"]))
            clips += 1
            samples += len(wave)
    tf.io.gfile.rename(tmp, path, overwrite=True)
    failed += [{"clip_id": r["file"], "reason": r["reason"], "detail": r["detail"]} for r in report]
    marker = {"split": spec.split, "index": spec.index, "count": spec.count, "file": spec.file,
              "clips": clips, "failed": failed, "audio_seconds": samples / SAMPLE_RATE,
              "wall_seconds": time.perf_counter() - start,
              "tokenizer_seconds": {k: tokenizer.seconds[k] - before[k] for k in before},
              "counts": {k: v.tolist() for k, v in counts.items()},
              "entropy_sum": float(np.sum(entropies)), "entropy_windows": len(entropies)}
    _write_json(os.path.join(out_dir, spec.marker), marker)  # last: the shard is done
    return marker


def _tokenize_shards_dofn():
    import apache_beam as beam

    class TokenizeShards(beam.DoFn):
        """Beam DoFn: models loaded once per worker (`setup`), one shard per element."""

        def __init__(self, source, dirs: ModelDirs, out_dir: str):
            self.source, self.dirs, self.out_dir = source, dirs, out_dir
            self.tokenizer = None

        def setup(self):
            self.tokenizer = ClipTokenizer(self.dirs)

        def process(self, spec):
            spec = ShardSpec(*spec)
            import tensorflow as tf

            # A shard finished by an earlier run is skipped (its marker exists).
            if not tf.io.gfile.exists(os.path.join(self.out_dir, spec.marker)):
                marker = tokenize_shard(spec, self.source, self.tokenizer, self.out_dir)
                yield {k: marker[k] for k in ("split", "index", "clips", "audio_seconds")}

    return TokenizeShards


def build_pipeline(pipeline, specs: Sequence[ShardSpec], source, dirs: ModelDirs, out_dir: str):
    """The job graph: shards -> (reshuffled over workers) -> TokenizeShards."""
    import apache_beam as beam

    return (pipeline
            | "Shards" >> beam.Create([tuple(s) for s in specs])
            | "Spread" >> beam.Reshuffle()
            | "Tokenize" >> beam.ParDo(_tokenize_shards_dofn()(source, dirs, out_dir)))


# -- statistics and the manifest -----------------------------------------------------------
def entropy_bits(counts: np.ndarray) -> float:
    n = counts.sum()
    if not n:
        return 0.0
    p = counts[counts > 0] / n
    return max(0.0, float(-(p * np.log2(p)).sum()))  # max: no -0.0 for a single code


def token_stats(markers: Sequence[dict]) -> dict:
    """Per split and stream: codes used and unigram entropy per level; semantic windows."""
    out = {}
    for split in SPLITS:
        ms = [m for m in markers if m["split"] == split]
        if not ms:
            continue
        split_out = {}
        for name in ms[0]["counts"]:
            total = sum(np.asarray(m["counts"][name], np.int64) for m in ms)
            levels = [{"level": q, "tokens": int(c.sum()), "codes_used": int((c > 0).sum()),
                       "codebook_size": int(len(c)), "entropy_bits": round(entropy_bits(c), 4),
                       "max_entropy_bits": round(math.log2(len(c)), 4)} for q, c in enumerate(total)]
            split_out[name] = {"levels": levels,
                               "mean_entropy_bits": round(float(np.mean([l["entropy_bits"] for l in levels])), 4)}
        windows = sum(m["entropy_windows"] for m in ms)
        split_out["semantic"]["window_entropy_bits"] = (
            round(sum(m["entropy_sum"] for m in ms) / windows, 4) if windows else None)
        split_out["semantic"]["entropy_windows"] = windows
        out[split] = split_out
    return out


def write_counts(path: str, markers: Sequence[dict]) -> None:
    """`<split>/<stream>` -> int64 [levels, codebook_size] code counts, summed over shards."""
    import tensorflow as tf

    arrays = {}
    for m in markers:
        for name, c in m["counts"].items():
            key = f"{m['split']}/{name}"
            arrays[key] = arrays.get(key, 0) + np.asarray(c, np.int64)
    import io

    buf = io.BytesIO()  # np.savez seeks, which a gs:// GFile cannot
    np.savez(buf, **arrays)
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    with tf.io.gfile.GFile(tmp, "wb") as f:
        f.write(buf.getvalue())
    tf.io.gfile.rename(tmp, path, overwrite=True)


def collapse_warnings(stats: dict, *, min_usage: float = 0.05) -> list[str]:
    """One line per stream whose train-split levels use under `min_usage` of their codebook."""
    out = []
    for name, s in stats.get("train", {}).items():
        low = [l for l in s["levels"] if l["tokens"] and l["codes_used"] < min_usage * l["codebook_size"]]
        if low:
            used = ", ".join(f"{l['level']}: {l['codes_used']}" for l in low)
            out.append(f"{name}: {len(low)} of {len(s['levels'])} levels use under {min_usage:.0%} of "
                       f"their {low[0]['codebook_size']} codes (level: codes used {used}): a "
                       f"collapsed tokenizer?")
    return out


def read_markers(out_dir: str, specs: Sequence[ShardSpec]) -> list[dict]:
    import tensorflow as tf

    return [_read_json(os.path.join(out_dir, s.marker)) for s in specs
            if tf.io.gfile.exists(os.path.join(out_dir, s.marker))]


def _progress(out_dir: str, specs: Sequence[ShardSpec], stop: threading.Event, started: float):
    """Driver-side progress bar: counts markers while the workers run."""
    from tqdm import tqdm

    done = len(read_markers(out_dir, specs))
    bar = tqdm(total=len(specs), initial=done, desc="pretokenize shards", unit="shard",
               file=sys.stderr, mininterval=1.0 if sys.stderr.isatty() else 30.0)
    while not stop.wait(2.0):
        ms = read_markers(out_dir, specs)
        if len(ms) != done:  # a line per finished shard at most (logs stay short)
            bar.set_postfix_str(f"{sum(m['audio_seconds'] for m in ms) / 60:.0f} min of audio",
                                refresh=False)
            bar.update(len(ms) - done)
            done = len(ms)
    bar.update(len(read_markers(out_dir, specs)) - done)
    bar.close()


# -- the entry point -----------------------------------------------------------------------
def run(source, dirs: ModelDirs, out_dir: str, *, clips_per_shard: int = 32,
        pipeline_args: Sequence[str] = (), progress: bool = True, log=print) -> dict:
    """Plans, runs the Beam job (skipping finished shards) and writes the manifest, report
    and statistics; returns the manifest."""
    import apache_beam as beam
    import tensorflow as tf
    from apache_beam.options.pipeline_options import PipelineOptions

    tf.io.gfile.makedirs(os.path.join(out_dir, MARKERS))
    specs = plan_shards(source.sizes(), clips_per_shard)
    plan = {"format": FORMAT, "source": source.describe(), "models": dataclasses.asdict(dirs),
            "clips_per_shard": clips_per_shard, "shards": [list(s) for s in specs]}
    plan_path = os.path.join(out_dir, PLAN)
    if tf.io.gfile.exists(plan_path):
        old = _read_json(plan_path)
        if old != json.loads(json.dumps(plan)):
            diff = sorted(k for k in plan if old.get(k) != json.loads(json.dumps(plan[k])))
            raise PlanMismatchError(f"{out_dir} holds shards of another plan (differs in {diff}); "
                                    f"use a new --out, or delete it to start over")
    else:
        _write_json(plan_path, plan)
    todo = [s for s in specs if not tf.io.gfile.exists(os.path.join(out_dir, s.marker))]
    log(f"[pretokenize] {len(specs)} shards ({', '.join(f'{k} {v}' for k, v in source.sizes().items())} "
        f"units), {len(specs) - len(todo)} finished by an earlier run, {len(todo)} to do")
    args = list(pipeline_args)
    workers = next((a.split("=", 1)[1] for a in args if a.startswith("--direct_num_workers=")), None)
    if workers and int(workers) > 1 and not any(a.startswith("--direct_running_mode") for a in args):
        args.append("--direct_running_mode=multi_processing")
    started = time.perf_counter()
    if todo:
        stop = threading.Event()
        bar = threading.Thread(target=_progress, args=(out_dir, specs, stop, started), daemon=True)
        if progress:
            bar.start()
        try:
            with beam.Pipeline(options=PipelineOptions(args)) as p:
                build_pipeline(p, todo, source, dirs, out_dir)
        finally:
            stop.set()
            if progress:
                bar.join()
    wall = time.perf_counter() - started
    markers = read_markers(out_dir, specs)
    missing = len(specs) - len(markers)
    if missing:
        raise RuntimeError(f"{missing} shards have no marker after the job: rerun to finish them")
    return finish(out_dir, source, dirs, markers, wall, done_now={(s.split, s.index) for s in todo},
                  log=log)


def finish(out_dir: str, source, dirs: ModelDirs, markers: Sequence[dict], wall: float, *,
           done_now: set, log=print) -> dict:
    import tensorflow as tf

    tokenizer_streams, models = describe_models(dirs)
    stats = token_stats(markers)
    failed = [dict(f, split=m["split"]) for m in markers for f in m["failed"]]
    report = {"clips": sum(m["clips"] for m in markers), "failed": len(failed),
              "failed_by_reason": dict(Counter(f["reason"] for f in failed)), "failures": failed}
    _write_json(os.path.join(out_dir, REPORT), report)
    _write_json(os.path.join(out_dir, STATS), stats)
    write_counts(os.path.join(out_dir, COUNTS), markers)
    now = [m for m in markers if (m["split"], m["index"]) in done_now]
    audio_now = sum(m["audio_seconds"] for m in now)
    tok = {k: sum(m["tokenizer_seconds"][k] for m in now) for k in ("codec", "semantic", "mulan")}
    splits = {}
    for split in SPLITS:
        ms = [m for m in markers if m["split"] == split]
        if ms:
            splits[split] = {"clips": sum(m["clips"] for m in ms), "shards": len(ms),
                             "failed": sum(len(m["failed"]) for m in ms),
                             "audio_seconds": round(sum(m["audio_seconds"] for m in ms), 2),
                             "pattern": R.shard_pattern(split)}
    last_run = {"shards": len(now), "audio_seconds": round(audio_now, 2), "wall_seconds": round(wall, 2),
                "audio_seconds_per_second": round(audio_now / wall, 2) if wall and now else None,
                "tokenizer_seconds": {k: round(v, 2) for k, v in tok.items()}}
    runs = []
    if tf.io.gfile.exists(os.path.join(out_dir, MANIFEST)):
        runs = _read_json(os.path.join(out_dir, MANIFEST)).get("runs", [])
    if now:  # a rerun that found everything done adds nothing
        runs.append(last_run)
    manifest = {"format": FORMAT, "source": source.describe(), "models": models,
                "streams": tokenizer_streams, "splits": splits,
                "record": "mufm.data.token_records", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "runs": runs}
    _write_json(os.path.join(out_dir, MANIFEST), manifest)
    log(f"[pretokenize] {report['clips']} clips in {len(markers)} shards, {report['failed']} failed "
        f"({report['failed_by_reason']}); see {os.path.join(out_dir, REPORT)}")
    if now:
        log(f"[pretokenize] this run: {audio_now:.0f} s of audio in {wall:.0f} s wall "
            f"({audio_now / wall:.1f} s of audio per s); tokenizer time codec {tok['codec']:.0f} s, "
            f"semantic {tok['semantic']:.0f} s, mulan {tok['mulan']:.0f} s")
    train = stats.get("train", {})
    if train:
        sem = train["semantic"]
        log(f"[pretokenize] train tokens: semantic {sem['levels'][0]['codes_used']} codes used, "
            f"{sem['levels'][0]['entropy_bits']} bits, {sem['window_entropy_bits']} bits per "
            f"{ENTROPY_WINDOW}-token window (MusicLM: 4.6); acoustic mean "
            f"{train['acoustic']['mean_entropy_bits']} bits; mulan mean {train['mulan']['mean_entropy_bits']} bits")
    for w in collapse_warnings(stats):
        log(f"[pretokenize] WARNING {w}")
    return manifest


def describe_models(dirs: ModelDirs) -> tuple[dict, dict]:
    """(the streams' levels / codebook sizes / rates, the runs and steps that make them),
    read from the runs' records without loading any weights (the driver needs them too)."""
    from mufm.mulan.tokens import MuLanTokens
    from mufm.semantic.tokens import load_centroids
    from mufm.train.restore import read_model_config, resolve

    codec_dir, codec_step = resolve(dirs.codec, family="codec")
    codec_cfg = read_model_config(codec_dir)["configs"]["codec"]
    sem_dir, _ = resolve(dirs.semantic, family="semantic")
    tokens_dir = _abs(dirs.semantic_tokens) if dirs.semantic_tokens else os.path.join(sem_dir, "semantic_tokens")
    centroids, meta = load_centroids(tokens_dir)
    mulan_dir, mulan_step = resolve(dirs.mulan, family="mulan")
    mulan_tokens = MuLanTokens.load(os.path.join(mulan_dir, "mulan_tokens"))
    streams = {"mulan": {"levels": int(mulan_tokens.num_levels),
                         "codebook_size": int(mulan_tokens.codebook_size)},
               "semantic": {"levels": 1, "codebook_size": int(centroids.centroids.shape[0]),
                            "hz": R.SEMANTIC_HZ},
               "acoustic": {"levels": int(codec_cfg["num_levels"]),
                            "codebook_size": int(codec_cfg["codebook_size"]), "hz": R.ACOUSTIC_HZ}}
    models = {"codec": {"model_dir": codec_dir, "step": int(codec_step)},
              "semantic": {"model_dir": sem_dir, "step": int(meta["step"]), "tokens_dir": tokens_dir,
                           "layer": int(meta["layer"])},
              "mulan": {"model_dir": mulan_dir, "step": int(mulan_step),
                        "mulan_hop_seconds": dirs.mulan_hop_seconds}}
    return streams, models


def _abs(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


def read_manifest(tokens_dir: str) -> dict:
    import tensorflow as tf  # gfile: the tokens may be on gs://

    path = os.path.join(tokens_dir, MANIFEST)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{tokens_dir} has no {MANIFEST}: not the output of "
                                f"`python -m mufm.data.pretokenize` (or the job has not finished)")
    return _read_json(path)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Other flags go to Beam (PipelineOptions).")
    ap.add_argument("--source", required=True, help="corpus:<config> or folder:<dir>")
    ap.add_argument("--corpus_dir", help="the rendered corpus (corpus sources)")
    ap.add_argument("--tfds_dir", help="TFDS data dir (default $MUFM_TFDS_DIR or TFDS's)")
    ap.add_argument("--captions", help="captions file of a folder source")
    ap.add_argument("--codec", required=True, help="codec run (MODEL_DIR)")
    ap.add_argument("--semantic", required=True, help="semantic run (MODEL_DIR)")
    ap.add_argument("--semantic_tokens", help="fitted k-means dir (default <semantic>/semantic_tokens)")
    ap.add_argument("--mulan", required=True, help="MuLan run with fitted mulan_tokens/")
    ap.add_argument("--mulan_hop_seconds", type=float, default=None,
                    help="MuLan window hop (default: a whole window, no overlap)")
    ap.add_argument("--out", required=True, help="output directory (resumable)")
    ap.add_argument("--clips_per_shard", type=int, default=32)
    ap.add_argument("--no_progress", action="store_true")
    args, beam_args = ap.parse_known_args(argv)
    try:
        source = parse_source(args.source, corpus_dir=args.corpus_dir, tfds_dir=args.tfds_dir,
                              captions=args.captions)
        dirs = ModelDirs(codec=args.codec, semantic=args.semantic, mulan=args.mulan,
                         semantic_tokens=args.semantic_tokens,
                         mulan_hop_seconds=args.mulan_hop_seconds)
        run(source, dirs, args.out, clips_per_shard=args.clips_per_shard, pipeline_args=beam_args,
            progress=not args.no_progress)
    except (ValueError, FileNotFoundError, PlanMismatchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
