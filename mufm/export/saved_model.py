"""The cascade as one TF SavedModel: a caption in, a waveform out, for `saved_model_cli`,
TF Serving and mufm's own front end (mufm/serve/).

Layout (what TF Serving expects): `DIR/NAME/<version>/saved_model.pb` + `variables/` +
`assets.extra/tf_serving_warmup_requests` (one request per compiled clip length, replayed
at load so no client pays a compile) + `assets.extra/mufm_export.json` (the export's
config, runs and signatures).

Inside, T5X's exportable-module pattern: every weight of the six models is a non-trainable
`tf.Variable`, and each program of mufm/export/programs.py is converted by jax2tf with
native serialization (StableHLO lowered for each of `ExportConfig.platforms`, one
`XlaCallModule` op per program), a polymorphic batch, inside a `tf.function(jit_compile=
True)`. Caption tokenisation is TF string ops around them (mufm/export/text.py): those
cannot be XLA-compiled, so the signatures themselves are plain graph functions.

Long form: the cascade's window plan is fixed by the clip's length, so the cascade is
traced once per *bucket* (`bucket_seconds`, 2 x, ... up to `max_seconds`); a request runs
the smallest bucket that holds its longest row, and each row is cut to its own `seconds`
(and zeroed past it). A row's tokens are those of `Cascade.generate([text],
seconds=<its bucket>, seed=<its seed>)`: what a row gets depends on its text, seed and
bucket, never on the other rows of its batch.

Signatures (`saved_model_cli show --all` lists them):
- `serving_default` / `generate`: text string [b], seconds float64 [b] or scalar, seed int64
  [b] or scalar -> waveform float32 [b, n] (n: the longest row's samples), lengths int64
  [b], sample_rate int64 [b].
- `generate_wav`: the same -> wav_bytes string [b] (16-bit PCM WAV of each row; TF Serving's
  REST API returns an output whose name ends in `_bytes` as {"b64": ...}), lengths.
- `generate_codes`: the same -> codes int32 [b, 2 x frames, levels] (the acoustic tokens the
  codec decodes; what the exactness test compares), frames int64 [b].
- `generate_sampled`: text, seconds, seed and the temperature overrides
  `semantic_temperature`, `coarse_temperature`, `fine_temperature` (float32 [b] or scalar,
  up to 100; 0: greedy; negative: the stage's own temperature) -> what `generate` and
  `generate_codes` return together.
  `generate_sampled_wav`: the same inputs -> wav_bytes, lengths. A signature's inputs are
  all required in TF Serving, so the overrides are signatures of their own; the other
  generate signatures feed the cascade's own temperatures to the same compiled program.
- `embed_text`: text [b] -> embedding float32 [b, D] (MuLan's joint space, unit norm).
- `embed_audio`: waveform float32 [b, n <= MuLan's window] -> embedding [b, D] (one window;
  a longer clip's embedding is the renormalised mean over 10 s windows every 1 s).
- `encode_audio`: waveform [b, n] at the codec's rate -> codes int32 [b, ceil(n / hop), levels].
- `decode_codes`: codes int32 [b, t, all the codec's levels] -> waveform float32 [b, t x hop].
- `semantic_tokens` (when the cascade has its semantic tokenizer): waveform [b, n <= its
  window] -> ids int32 [b, n // 960].
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Sequence

import gin
import jax
import numpy as np

from mufm.lm.layouts import SEMANTIC_HZ
from mufm.sample.cascade import STAGES
from mufm.sample.requests import MAX_TEMPERATURE

WARMUP_FILE = "tf_serving_warmup_requests"
META_FILE = "mufm_export.json"
SEED_LIMIT = 2 ** 31  # seeds are int32 inside the program


class ExportError(ValueError):
    """An export that cannot be made as configured: one line saying why."""


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ExportConfig:
    name: str = "mufm"  # the model's name: DIR/NAME/<version>/, /v1/models/NAME
    version: int = 0  # 0: one more than the newest version already in DIR/NAME
    max_seconds: float = 30.0  # the longest clip serving_default generates
    bucket_seconds: float = 10.0  # clip lengths traced: this, twice this, ... max_seconds
    # Lowered for each (one StableHLO module with a branch per platform where lowerings
    # differ; TF runs the one of the device it is on). CUDA lowers without a GPU here, but
    # has not run on one: see the README.
    platforms: tuple = ("cpu", "tpu", "cuda")
    warmup: bool = True  # write warm-up requests into assets.extra
    # A warm-up request per bucket and batch size: XLA compiles a program for every batch
    # size it meets, so these sizes cost a client nothing (serve's --allowed_batch_sizes).
    warmup_batch_sizes: tuple = (1,)
    # Load the written SavedModel in TensorFlow and run its warm-up requests before it is
    # moved into place: TF's XLA compiles the programs itself, and a program it cannot
    # read (a StableHLO op newer than it knows) fails the export, not a server's start.
    verify: bool = True

    def __post_init__(self):
        if not self.max_seconds > 0 or not self.bucket_seconds > 0:
            raise ExportError(f"max_seconds={self.max_seconds}, bucket_seconds="
                              f"{self.bucket_seconds}: both must be > 0")
        if self.version < 0:
            raise ExportError(f"version={self.version}: must be >= 0 (0: the next one)")
        unknown = set(self.platforms) - {"cpu", "tpu", "cuda", "rocm"}
        if unknown or not self.platforms:
            raise ExportError(f"platforms={self.platforms}: use some of cpu, tpu, cuda, rocm")

    def buckets(self) -> list[float]:
        """The clip lengths (seconds) the export traces, shortest first."""
        n = math.ceil(self.max_seconds / self.bucket_seconds - 1e-9)
        return [min(self.bucket_seconds * (k + 1), self.max_seconds) for k in range(n)]


def next_version(base: str) -> int:
    """One more than the newest numeric version directory in `base` (1 when none)."""
    if not os.path.isdir(base):
        return 1
    versions = [int(d) for d in os.listdir(base) if d.isdigit()]
    return max(versions, default=0) + 1


class _Converted:
    """jax2tf conversions of the programs over one list of weight variables."""

    def __init__(self, programs, platforms: Sequence[str]):
        import tensorflow as tf

        leaves, self._treedef = jax.tree.flatten(programs.weights)
        paths = [jax.tree_util.keystr(p) for p, _ in
                 jax.tree_util.tree_flatten_with_path(programs.weights)[0]]
        self.variables = [tf.Variable(np.asarray(x), trainable=False, name=_var_name(p))
                          for x, p in zip(leaves, paths)]
        self._platforms = tuple(platforms)
        self.programs = programs

    def convert(self, fn, polymorphic: Sequence[str | None]):
        """`fn(weights, *inputs)` as a jit-compiled tf.function of the inputs alone."""
        import tensorflow as tf
        from jax.experimental import jax2tf

        treedef = self._treedef
        converted = jax2tf.convert(
            lambda leaves, *args: fn(jax.tree.unflatten(treedef, leaves), *args),
            polymorphic_shapes=[None, *polymorphic], with_gradient=False,
            native_serialization_platforms=self._platforms)
        variables = self.variables
        return tf.function(lambda *args: converted(variables, *args), jit_compile=True,
                           autograph=False)


def _var_name(path: str) -> str:
    name = "".join(ch if ch.isalnum() or ch in "_." else "_" for ch in path).strip("_")
    return name[-200:] or "w"


def build_module(programs, cfg: ExportConfig):
    """A tf.Module holding the weights and every signature's function."""
    import tensorflow as tf

    from mufm.export.text import GraphTokenizer
    from mufm.sample.requests import frames_for

    c = programs.cascade
    if cfg.max_seconds > c.max_seconds:
        raise ExportError(f"max_seconds={cfg.max_seconds} is over the cascade's max_seconds="
                          f"{c.max_seconds}")
    conv = _Converted(programs, cfg.platforms)
    tokenizer = GraphTokenizer(c.mulan.tokenizer_kwargs(), c.mulan.caption_tokens)
    sr, hop = programs.sample_rate, programs.hop
    buckets = cfg.buckets()
    bucket_frames = [frames_for(s) for s in buckets]
    text_poly = ["(b, _)", "(b, _)"]
    embed_text = conv.convert(programs.embed_text, text_poly)
    # One program per bucket serves every generate signature: the defaults go in as the
    # temperatures of the signatures without overrides.
    generators = [conv.convert(lambda w, i, m, s, t, f=f: programs.generate(w, i, m, s, t, f),
                               text_poly + ["(b,)", "(b, _)"]) for f in bucket_frames]
    default_temperatures = programs.default_temperatures()
    decode = conv.convert(programs.decode_codes, ["(b, t, _)"])
    encode = conv.convert(programs.encode_audio, ["(b, n)"])
    mulan_window = c.mulan.audio_cfg.window_samples
    embed_audio = conv.convert(programs.embed_audio, ["(b, _)", "(b,)"])
    tok = c.semantic_tokenizer
    semantic_window = tok.window_frames * tok.cfg.hop if tok is not None else 0
    semantic = (conv.convert(programs.semantic_tokens, ["(b, _)", "(b,)"])
                if tok is not None else None)
    max_seconds = float(cfg.max_seconds)

    def requests(text, seconds, seed, temperatures):
        """Checked inputs: ids, mask [b, L], seconds float64 [b], seeds int32 [b],
        temperatures float32 [b, stages] (each stage's: a scalar or [b])."""
        text = tf.reshape(text, [-1])
        b = tf.shape(text)[0]
        checks = [tf.debugging.assert_positive(b, message="no text given")]
        seconds = tf.broadcast_to(tf.cast(seconds, tf.float64), [b])
        seed = tf.broadcast_to(tf.cast(seed, tf.int64), [b])
        checks += [
            tf.debugging.assert_all_finite(seconds, "seconds must be finite"),
            tf.debugging.assert_positive(seconds, message="seconds must be > 0"),
            tf.debugging.assert_less_equal(seconds, tf.constant(max_seconds, tf.float64),
                                           message=f"seconds must be <= {max_seconds:g} (this "
                                                   f"export's max_seconds)"),
            tf.debugging.assert_non_negative(seed, message="seed must be >= 0"),
            tf.debugging.assert_less(seed, tf.constant(SEED_LIMIT, tf.int64),
                                     message="seed must be < 2**31"),
        ]
        rows = []
        for name, t, default in zip(STAGES, temperatures, default_temperatures):
            t = tf.broadcast_to(tf.cast(t, tf.float32), [b])
            checks += [
                tf.debugging.assert_all_finite(t, f"{name}_temperature must be finite"),
                tf.debugging.assert_less_equal(t, tf.constant(MAX_TEMPERATURE), message=(
                    f"{name}_temperature must be <= {MAX_TEMPERATURE:g}"))]
            rows.append(tf.where(t < 0, tf.constant(default, tf.float32), t))
        with tf.control_dependencies(checks):
            ids, mask = tokenizer.tokenize(text)
            temps = tf.stack(rows, axis=1)
        return ids, mask, seconds, tf.cast(seed, tf.int32), temps

    def run(text, seconds, seed, temperatures=default_temperatures):
        """(waveform [b, n], codes [b, 2 x bucket frames, levels], lengths, frames)."""
        ids, mask, seconds, seeds, temps = requests(text, seconds, seed, temperatures)
        # `frames_for` in the graph (float64 input: the same rounding as Python's).
        frames = tf.cast(tf.math.ceil(seconds * SEMANTIC_HZ - 1e-9), tf.int64)
        lengths = tf.cast(tf.round(seconds * sr), tf.int64)
        longest = tf.reduce_max(frames)
        index = tf.reduce_sum(tf.cast(longest > tf.constant(bucket_frames[:-1], tf.int64),
                                      tf.int32)) if len(buckets) > 1 else tf.constant(0)
        wave, codes = tf.switch_case(
            index, [lambda g=g: g(ids, mask, seeds, temps) for g in generators])
        n = tf.reduce_max(lengths)
        wave = wave[:, :n] * tf.sequence_mask(lengths, n, dtype=tf.float32)
        return wave, codes, lengths, frames

    def wav_rows(wave, lengths):
        """16-bit PCM WAV bytes [b] of each row's first `lengths` samples."""
        def one(args):
            row, n = args
            return tf.audio.encode_wav(tf.clip_by_value(row[:n], -1.0, 1.0)[:, None], sr)

        return tf.map_fn(one, (wave, lengths), fn_output_signature=tf.string)

    gen_spec = dict(text=tf.TensorSpec([None], tf.string, name="text"),
                    seconds=tf.TensorSpec(None, tf.float64, name="seconds"),
                    seed=tf.TensorSpec(None, tf.int64, name="seed"))

    @tf.function(input_signature=list(gen_spec.values()), autograph=False)
    def generate(text, seconds, seed):
        wave, _, lengths, _ = run(text, seconds, seed)
        return {"waveform": wave, "lengths": lengths,
                "sample_rate": tf.fill(tf.shape(lengths), tf.constant(sr, tf.int64))}

    @tf.function(input_signature=list(gen_spec.values()), autograph=False)
    def generate_wav(text, seconds, seed):
        wave, _, lengths, _ = run(text, seconds, seed)
        return {"wav_bytes": wav_rows(wave, lengths), "lengths": lengths}

    @tf.function(input_signature=list(gen_spec.values()), autograph=False)
    def generate_codes(text, seconds, seed):
        _, codes, _, frames = run(text, seconds, seed)
        return {"codes": codes[:, :2 * tf.reduce_max(frames)], "frames": frames}

    temp_spec = {f"{name}_temperature": tf.TensorSpec(None, tf.float32,
                                                      name=f"{name}_temperature")
                 for name in STAGES}

    @tf.function(input_signature=[*gen_spec.values(), *temp_spec.values()], autograph=False)
    def generate_sampled(text, seconds, seed, semantic_temperature, coarse_temperature,
                         fine_temperature):
        temperatures = (semantic_temperature, coarse_temperature, fine_temperature)
        wave, codes, lengths, frames = run(text, seconds, seed, temperatures)
        return {"waveform": wave, "lengths": lengths,
                "sample_rate": tf.fill(tf.shape(lengths), tf.constant(sr, tf.int64)),
                "codes": codes[:, :2 * tf.reduce_max(frames)], "frames": frames}

    @tf.function(input_signature=[*gen_spec.values(), *temp_spec.values()], autograph=False)
    def generate_sampled_wav(text, seconds, seed, semantic_temperature, coarse_temperature,
                             fine_temperature):
        temperatures = (semantic_temperature, coarse_temperature, fine_temperature)
        wave, _, lengths, _ = run(text, seconds, seed, temperatures)
        return {"wav_bytes": wav_rows(wave, lengths), "lengths": lengths}

    @tf.function(input_signature=[gen_spec["text"]], autograph=False)
    def embed_text_sig(text):
        ids, mask = tokenizer.tokenize(tf.reshape(text, [-1]))
        return {"embedding": embed_text(ids, mask)}

    def padded(waveform, window: int, what: str):
        waveform = tf.cast(waveform, tf.float32)
        n = tf.shape(waveform)[1]
        checks = [tf.debugging.assert_less_equal(n, window, message=f"{what}: at most {window} "
                                                 f"samples a row (one window)"),
                  tf.debugging.assert_all_finite(waveform, f"{what}: non-finite samples")]
        with tf.control_dependencies(checks):
            lengths = tf.fill([tf.shape(waveform)[0]], n)
            return tf.ensure_shape(tf.pad(waveform, [[0, 0], [0, window - n]]), [None, window]), lengths

    wave_spec = tf.TensorSpec([None, None], tf.float32, name="waveform")

    @tf.function(input_signature=[wave_spec], autograph=False)
    def embed_audio_sig(waveform):
        w, lengths = padded(waveform, mulan_window, "embed_audio")
        return {"embedding": embed_audio(w, lengths)}

    @tf.function(input_signature=[wave_spec], autograph=False)
    def encode_audio_sig(waveform):
        check = tf.debugging.assert_all_finite(waveform, "encode_audio: non-finite samples")
        with tf.control_dependencies([check]):
            return {"codes": encode(waveform)}

    codec_cfg = c.codec.configs["codec"]

    @tf.function(input_signature=[tf.TensorSpec([None, None, codec_cfg.num_levels], tf.int32,
                                                name="codes")], autograph=False)
    def decode_codes_sig(codes):
        checks = [tf.debugging.assert_non_negative(codes, message="codes must be >= 0"),
                  tf.debugging.assert_less(codes, codec_cfg.codebook_size,
                                           message=f"codes must be < {codec_cfg.codebook_size}")]
        with tf.control_dependencies(checks):
            return {"waveform": decode(codes)}

    signatures = {"serving_default": generate, "generate": generate,
                  "generate_wav": generate_wav, "generate_codes": generate_codes,
                  "generate_sampled": generate_sampled,
                  "generate_sampled_wav": generate_sampled_wav,
                  "embed_text": embed_text_sig, "embed_audio": embed_audio_sig,
                  "encode_audio": encode_audio_sig, "decode_codes": decode_codes_sig}
    if semantic is not None:
        @tf.function(input_signature=[wave_spec], autograph=False)
        def semantic_tokens_sig(waveform):
            w, lengths = padded(waveform, semantic_window, "semantic_tokens")
            n = tf.shape(waveform)[1] // tok.cfg.hop
            return {"ids": semantic(w, lengths)[:, :n]}

        signatures["semantic_tokens"] = semantic_tokens_sig
    module = tf.Module()
    module.weights = conv.variables
    module.meta = {"buckets": buckets, "bucket_frames": bucket_frames, "sample_rate": sr,
                   "hop": hop, "mulan_window": mulan_window, "semantic_window": semantic_window,
                   "max_seconds": max_seconds}
    return module, signatures


def export(programs, out_dir: str, cfg: ExportConfig = ExportConfig(), *,
           runs: dict | None = None, log=print) -> str:
    """Writes the SavedModel of `programs` to OUT/NAME/<version>/ (tf.saved_model.save, then
    the assets.extra files) and returns that directory. Written to a temporary directory
    and renamed into place: a half-written version is never visible to a server."""
    import shutil

    import tensorflow as tf

    base = os.path.join(out_dir, cfg.name)
    version = cfg.version or next_version(base)
    final = os.path.join(base, str(version))
    if os.path.exists(final):
        raise ExportError(f"{final} exists: pick another ExportConfig.version (0: the next)")
    tmp = os.path.join(base, f".tmp-{version}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    from mufm.sample.decode import portable_top_k

    module, signatures = build_module(programs, cfg)
    with portable_top_k():  # the programs are traced here
        concrete = {k: f.get_concrete_function() for k, f in signatures.items()}
    log(f"[export] tracing {len(concrete)} signatures ({len(cfg.buckets())} clip lengths) "
        f"took {time.perf_counter() - t0:.1f} s")
    t1 = time.perf_counter()
    tf.saved_model.save(module, tmp, signatures=concrete)
    extra = os.path.join(tmp, "assets.extra")
    os.makedirs(extra, exist_ok=True)
    meta = dict(module.meta, name=cfg.name, version=version, platforms=list(cfg.platforms),
                signatures=sorted(concrete), runs=runs or {}, jax=jax.__version__,
                tensorflow=tf.__version__, config=dataclasses.asdict(cfg),
                sampling={k: dataclasses.asdict(v) for k, v in programs.cascade.configs.items()},
                exported=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    with open(os.path.join(extra, META_FILE), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
    if cfg.warmup:
        write_warmup(os.path.join(extra, WARMUP_FILE), cfg.name, cfg.buckets(),
                     cfg.warmup_batch_sizes)
    if cfg.verify:
        t2 = time.perf_counter()
        try:
            verify(tmp, cfg.buckets())
        except Exception as e:
            shutil.rmtree(tmp, ignore_errors=True)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ExportError(f"TensorFlow cannot run the exported model: {first}") from e
        log(f"[export] verified in TensorFlow ({len(cfg.buckets())} clip lengths) in "
            f"{time.perf_counter() - t2:.1f} s")
    os.replace(tmp, final)
    log(f"[export] wrote {final} in {time.perf_counter() - t1:.1f} s")
    return final


def verify(path: str, buckets: Sequence[float]) -> None:
    """Loads the SavedModel at `path` and runs serving_default once per bucket."""
    import tensorflow_text  # noqa: F401  (the caption ops)
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    fn = loaded.signatures["serving_default"]
    for inputs in warmup_requests(buckets):
        out = fn(**{k: tf.constant(v) for k, v in inputs.items()})
        wave = out["waveform"].numpy()
        if wave.shape != (1, int(out["lengths"].numpy()[0])) or not np.all(np.isfinite(wave)):
            raise ExportError(f"serving_default gave a waveform of shape {wave.shape} with "
                              f"non-finite samples or the wrong length")


def warmup_requests(buckets: Sequence[float], sizes: Sequence[int] = (1,)) -> list[dict]:
    """One serving_default request per bucket and batch size: {input: numpy value}."""
    return [{"text": np.array([b"a piece of music"] * n), "seconds": np.full((n,), s),
             "seed": np.arange(n, dtype=np.int64)} for s in buckets for n in sizes]


def write_warmup(path: str, name: str, buckets: Sequence[float],
                 sizes: Sequence[int] = (1,)) -> None:
    """TF Serving's warm-up file: a TFRecord of PredictionLog protos, replayed at load."""
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    with tf.io.TFRecordWriter(path) as w:
        for inputs in warmup_requests(buckets, sizes):
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=name, signature_name="serving_default"))
            for key, value in inputs.items():
                request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            w.write(log.SerializeToString())


def read_warmup(path: str) -> list[tuple[str, dict]]:
    """(signature, {input: numpy}) of each request in a warm-up file."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    out = []
    for record in tf.data.TFRecordDataset(path):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        req = log.predict_log.request
        out.append((req.model_spec.signature_name or "serving_default",
                    {k: tf.make_ndarray(v) for k, v in req.inputs.items()}))
    return out


def read_meta(version_dir: str) -> dict:
    with open(os.path.join(version_dir, "assets.extra", META_FILE)) as f:
        return json.load(f)
