"""What semantic tokens carry: held-out agreement with the corpus's exact note labels.

    python -m mufm.semantic evaluate --model_dir=RUN --codec_dir=CODEC_RUN \
        --corpus_dir=CORPUS --split=test --out=DIR

Clips: every clip of `split` (default `test`: works never trained on) of a built corpus,
each cut to its centre `max_seconds_per_clip` (default 30 s); a sample of `probe_clips`
train clips cut the same way trains the probe and the log-mel k-means. Frame labels come
from `mufm.semantic.frames` (pitch-class set, bass pitch class, GM program; frames with
no sounding note are left out of every figure below).

Token streams at 25 Hz, all scored on the same held-out frames:
- **semantic**: the run's fitted k-means (`SemanticTokenizer.encode_chunked`, as the
  CLI and the pre-tokenization job encode long files);
- **log-mel k-means**: the semantic model's own log-mel input (its front end, 100 Hz),
  the 4 mel frames of each 25 Hz frame averaged, clustered with the same mini-batch
  k-means code (`tokens.fit_frames`) and the same K on the train sample's frames;
- **codec level 0**: the first RVQ level of a trained codec run (50 Hz,
  `mufm.codec.tokenizer.encode_chunked`), resampled to 25 Hz by nearest frame: semantic
  frame i takes the codec frame holding its centre sample 960 i + 480, i.e. codec frame
  2 i + 1 for a 480-sample hop (with 2 codec frames per semantic frame no majority
  exists); its vocabulary is the codec's codebook size, which the table states;
- **random**: ids uniform in [0, K), the chance level of every figure at this K and this
  frame count (NMI and purity both grow with K at a fixed number of frames).

Figures:
- **NMI**: I(tokens; labels) / ((H(tokens) + H(labels)) / 2), the arithmetic-mean
  normalisation (scikit-learn's default), from the contingency table of the frames;
- **purity**: sum over tokens of the frames of its most common label, over all frames;
- **linear probe**: 12 independent logistic outputs (one per pitch class: is it
  sounding?), trained by full-batch Adam on standardised features of up to `probe_frames`
  sounding train frames, scored on the held-out frames: mean per-class accuracy, mean F1
  over the classes that occur, exact-set accuracy (all 12 right). Features: the
  tokenizer's layer and the pooled log-mel; a prior-only predictor (a class is on when it
  is on in most train frames) is the floor.

Also measured: how often chunked ids equal one pass over the whole (<= 30 s) crop, the
crop zero-padded to `max_seconds_per_clip` with its length given (`tokens` module
docstring says why they differ).

Writes `evaluation.md` (tables) and `evaluation.json` into `out`.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mufm.semantic import frames as frame_labels_mod
from mufm.semantic.frames import FrameLabels, mask_to_pitch_classes
from mufm.semantic.tokens import FitConfig, SemanticTokenizer, assign_frames, fit_frames, read_crop

LABELS = ("pitch_classes", "bass", "program")
LABEL_NAMES = {"pitch_classes": "pitch-class set", "bass": "bass pitch class",
               "program": "instrument program"}


# -- clustering figures (numpy, exact) ------------------------------------------------------
def contingency(a, b) -> np.ndarray:
    """[distinct a, distinct b] counts of the pairs (a_i, b_i)."""
    _, ai = np.unique(np.asarray(a), return_inverse=True)
    _, bi = np.unique(np.asarray(b), return_inverse=True)
    table = np.zeros((ai.max() + 1 if ai.size else 0, bi.max() + 1 if bi.size else 0), np.int64)
    np.add.at(table, (ai.ravel(), bi.ravel()), 1)
    return table


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-np.sum(p * np.log(p)))


def mutual_information(table: np.ndarray) -> float:
    """I in nats from a contingency table."""
    n = table.sum()
    pij = table / n
    outer = np.outer(table.sum(1), table.sum(0)) / (n * n)
    nz = pij > 0
    return float(np.sum(pij[nz] * np.log(pij[nz] / outer[nz])))


def nmi(a, b) -> float:
    """Normalised mutual information, arithmetic-mean normalisation. Both labelings
    constant (one class each): 1 (they agree); one constant, the other not: 0."""
    table = contingency(a, b)
    ha, hb = _entropy(table.sum(1)), _entropy(table.sum(0))
    if ha == 0.0 and hb == 0.0:
        return 1.0
    return max(0.0, mutual_information(table)) / ((ha + hb) / 2)


def purity(ids, labels) -> float:
    """Sum over clusters of their most common label's count, over all frames."""
    table = contingency(ids, labels)
    return float(table.max(1).sum() / table.sum())


def resample_nearest(codes: np.ndarray, num_frames: int, src_hop: int, dst_hop: int = 960
                     ) -> np.ndarray:
    """codes [t_src] at hop `src_hop` -> [num_frames] at `dst_hop`: the source frame that
    holds each destination frame's centre sample dst_hop i + dst_hop // 2."""
    idx = (np.arange(num_frames) * dst_hop + dst_hop // 2) // src_hop
    return codes[np.minimum(idx, len(codes) - 1)]


# -- linear probe ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    steps: int = 500
    learning_rate: float = 0.05
    l2: float = 1e-4


@functools.partial(jax.jit, static_argnames=("steps", "learning_rate"))
def _train_probe(x, y, *, steps: int, learning_rate: float, l2: float):
    params = {"w": jnp.zeros((x.shape[1], y.shape[1])), "b": jnp.zeros((y.shape[1],))}
    tx = optax.adam(learning_rate)

    def loss(p):
        logits = x @ p["w"] + p["b"]
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, y)) + l2 * jnp.sum(p["w"] ** 2)

    def step(carry, _):
        p, opt = carry
        g = jax.grad(loss)(p)
        updates, opt = tx.update(g, opt, p)
        return (optax.apply_updates(p, updates), opt), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
    return params


def probe_scores(pred: np.ndarray, truth: np.ndarray) -> dict:
    """pred, truth bool [m, 12] -> mean per-class accuracy, mean F1 over the classes that
    occur in `truth`, exact-set accuracy."""
    tp = np.sum(pred & truth, 0)
    fp, fn = np.sum(pred & ~truth, 0), np.sum(~pred & truth, 0)
    occurs = np.sum(truth, 0) > 0
    f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    return {"mean_class_accuracy": float(np.mean(pred == truth)),
            "mean_f1": float(np.mean(f1[occurs])) if occurs.any() else float("nan"),
            "exact_set_accuracy": float(np.mean(np.all(pred == truth, 1))),
            "frames": int(len(truth))}


def linear_probe(train_x, train_y, test_x, test_y, cfg: ProbeConfig = ProbeConfig()) -> dict:
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    p = _train_probe(jnp.asarray((train_x - mean) / std, jnp.float32),
                     jnp.asarray(train_y, jnp.float32), steps=cfg.steps,
                     learning_rate=cfg.learning_rate, l2=cfg.l2)
    logits = np.asarray(jnp.asarray((test_x - mean) / std, jnp.float32) @ p["w"] + p["b"])
    return probe_scores(logits > 0, test_y)


# -- per-clip streams -----------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("graphdef",))
def _pooled_log_mel(graphdef, params, rest, waveform):
    """[b, n] -> [b, n // 960, n_mels]: the model's log-mel, 4 frames averaged per frame."""
    from flax import nnx

    mel = nnx.merge(graphdef, params, rest).encoder.log_mel(waveform)
    b, m, c = mel.shape
    return mel.reshape(b, m // 4, 4, c).mean(2)


@dataclasses.dataclass
class ClipStreams:
    labels: FrameLabels
    semantic: np.ndarray  # ids [t], chunked
    whole: np.ndarray  # ids [t], one pass
    embedding: np.ndarray  # [t, d]
    log_mel: np.ndarray  # [t, n_mels]
    codec: np.ndarray | None  # level-0 ids resampled to 25 Hz [t]


def centre_crop(record: dict, corpus_dir: str, max_seconds: float) -> tuple[np.ndarray, float]:
    seconds = record["num_samples"] / record["sample_rate"]
    start = max(0.0, (seconds - max_seconds) / 2)
    return read_crop(os.path.join(corpus_dir, record["audio"]), start, min(seconds, max_seconds)), start


def clip_streams(tok: SemanticTokenizer, record: dict, corpus_dir: str, max_seconds: float,
                 codec=None, *, need_tokens: bool = True) -> ClipStreams | None:
    """The label and token streams of one clip's centre crop (None when under one frame)."""
    from mufm.data.corpus.labels import read_labels, window

    cfg = tok.cfg
    wave, start = centre_crop(record, corpus_dir, max_seconds)
    # One fixed shape for the whole-crop pass and the log-mel: one compile for every clip.
    padded = np.zeros((1, int(round(max_seconds * cfg.sample_rate)) // cfg.hop * cfg.hop), np.float32)
    wave = wave[:padded.shape[1]]
    t = len(wave) // cfg.hop
    if t == 0:
        return None
    notes = window(read_labels(corpus_dir, record["clip_id"]), start, len(wave) / cfg.sample_rate)
    labels = frame_labels_mod.frame_labels(notes["notes"], t, hop=cfg.hop, sample_rate=cfg.sample_rate)
    padded[0, :len(wave)] = wave
    log_mel = np.asarray(_pooled_log_mel(*tok.model.parts, jnp.asarray(padded)))[0, :t]
    ids, emb = tok.encode_chunked(wave, with_embeddings=True)
    whole = tok.encode(padded, lengths=[len(wave)])[0, :t] if need_tokens else ids
    codes = None
    if codec is not None and need_tokens:
        from mufm.codec.tokenizer import encode_chunked

        ccfg = codec.configs["codec"]
        level0 = encode_chunked(*codec.parts, wave[None], num_levels=1)[0, :, 0]
        codes = resample_nearest(level0, t, ccfg.hop, cfg.hop)
    return ClipStreams(labels=labels, semantic=ids, whole=whole, embedding=emb, log_mel=log_mel,
                       codec=codes)


def evenly_spaced(records: list, n: int | None) -> list:
    if n is None or n >= len(records):
        return records
    return [records[int(i)] for i in np.linspace(0, len(records) - 1, n).round()]


@dataclasses.dataclass(frozen=True)
class EvalResult:
    table_md: str
    table_json: str
    result: dict


def evaluate_tokens(tok: SemanticTokenizer, corpus_dir: str, out_dir: str, *, codec=None,
                    split: str = "test", max_seconds_per_clip: float = 30.0,
                    max_clips: int | None = None, probe_clips: int = 64,
                    probe_frames: int = 50_000, seed: int = 0, progress: bool = True,
                    log=print) -> EvalResult:
    from tqdm.auto import tqdm

    from mufm.data.corpus.manifest import read_manifest

    t0 = time.perf_counter()
    records = read_manifest(corpus_dir)
    held = evenly_spaced([r for r in records if r["split"] == split], max_clips)
    train = evenly_spaced([r for r in records if r["split"] == "train"], probe_clips)
    if not held:
        raise ValueError(f"{corpus_dir}: no clips in split {split!r}")
    if not train:
        raise ValueError(f"{corpus_dir}: no train clips for the probe and the log-mel k-means")
    k = tok.num_clusters
    streams = []
    for r in tqdm(held, desc=f"{split} clips", unit="clip", disable=not progress):
        s = clip_streams(tok, r, corpus_dir, max_seconds_per_clip, codec)
        if s is not None:
            streams.append(s)
    train_streams = []
    for r in tqdm(train, desc="train clips (probe, log-mel k-means)", unit="clip",
                  disable=not progress):
        s = clip_streams(tok, r, corpus_dir, max_seconds_per_clip, need_tokens=False)
        if s is not None:
            train_streams.append(s)

    labels = FrameLabels.concatenate([s.labels for s in streams])
    sounding = ~labels.silent
    cat = lambda name, ss: np.concatenate([getattr(s, name) for s in ss])
    mel_train = cat("log_mel", train_streams)
    log(f"log-mel k-means: K = {k} on {len(mel_train)} train frames")
    mel_fit = fit_frames(mel_train, FitConfig(num_clusters=k, seed=seed,
                                              minibatch_frames=min(4096, len(mel_train))),
                         progress=progress, log=log)
    mel_test = cat("log_mel", streams)
    mel_ids = assign_frames(mel_fit.state, mel_test)[0]
    rng = np.random.default_rng(seed)
    semantic_ids = cat("semantic", streams)
    rows = [("semantic", f"semantic layer {tok.layer} (step {tok.model.step})", k, semantic_ids),
            ("log_mel_kmeans", f"log-mel k-means ({tok.cfg.n_mels} mels, 4 frames pooled)", k,
             mel_ids)]
    if codec is not None:
        ccfg = codec.configs["codec"]
        rows.append(("codec_level0", f"codec level 0 (step {codec.step}, {ccfg.frame_rate:g} Hz "
                     f"-> 25 Hz nearest)", ccfg.codebook_size, cat("codec", streams)))
    rows.append(("random", "random ids (uniform)", k, rng.integers(0, k, len(labels))))
    clustering = []
    for key, name, vocab, ids in rows:
        row = {"key": key, "tokens": name, "K": int(vocab),
               "used": int(len(np.unique(ids[sounding])))}
        row["entropy_bits"] = _entropy(np.unique(ids[sounding], return_counts=True)[1]) / np.log(2)
        for lab in LABELS:
            y = getattr(labels, lab)[sounding]
            row[f"nmi_{lab}"] = nmi(ids[sounding], y)
            row[f"mi_{lab}"] = mutual_information(contingency(ids[sounding], y))  # nats
            row[f"purity_{lab}"] = purity(ids[sounding], y)
        clustering.append(row)

    # Probe on sounding frames: up to probe_frames of the train sample, all held-out frames.
    train_labels = FrameLabels.concatenate([s.labels for s in train_streams])
    train_on = np.flatnonzero(~train_labels.silent)
    if len(train_on) > probe_frames:
        train_on = np.sort(rng.choice(train_on, probe_frames, replace=False))
    ytr = mask_to_pitch_classes(train_labels.pitch_classes[train_on])
    yte = mask_to_pitch_classes(labels.pitch_classes[sounding])
    probes = []
    for key, name, xtr, xte in (
            ("semantic", f"semantic layer {tok.layer} embeddings ({tok.cfg.d_model} dims)",
             cat("embedding", train_streams), cat("embedding", streams)),
            ("log_mel", f"pooled log-mel ({tok.cfg.n_mels} dims)", mel_train, mel_test)):
        probes.append({"key": key, "features": name,
                       **linear_probe(xtr[train_on], ytr, xte[sounding], yte)})
    prior = np.mean(ytr, 0) > 0.5
    probes.append({"key": "prior", "features": "train prior (no features)",
                   **probe_scores(np.broadcast_to(prior, yte.shape), yte)})
    whole = cat("whole", streams)
    agreement = float(np.mean(whole == semantic_ids))

    seconds = len(labels) / tok.cfg.frame_rate
    result = {
        "model_dir": tok.model.model_dir, "step": tok.model.step, "layer": tok.layer, "K": k,
        "tokens_fitted_on_frames": tok.meta.get("frames"),
        "codec_dir": getattr(codec, "model_dir", None), "corpus_dir": os.path.abspath(corpus_dir),
        "split": split, "clips": len(streams), "max_seconds_per_clip": max_seconds_per_clip,
        "frames": int(len(labels)), "sounding_frames": int(sounding.sum()), "seconds": seconds,
        "probe_train_clips": len(train_streams), "probe_train_frames": int(len(train_on)),
        "log_mel_kmeans_train_frames": int(len(mel_train)),
        "label_classes": {lab: int(len(np.unique(getattr(labels, lab)[sounding]))) for lab in LABELS},
        "clustering": clustering, "probe": probes,
        "chunked_vs_whole": {"agreement": agreement, "frames": int(len(whole)),
                             "window_frames": tok.window_frames,
                             "context_frames": tok.window_frames // 4},
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    os.makedirs(out_dir, exist_ok=True)
    js, md = os.path.join(out_dir, "evaluation.json"), os.path.join(out_dir, "evaluation.md")
    with open(js, "w") as f:
        json.dump(result, f, indent=1)
    with open(md, "w") as f:
        f.write(markdown(result))
    return EvalResult(table_md=md, table_json=js, result=result)


def markdown(r: dict) -> str:
    lines = [
        "# Semantic tokens: held-out evaluation",
        "",
        f"Run `{r['model_dir']}` step {r['step']}, layer {r['layer']}, K = {r['K']}. "
        f"{r['clips']} clips of the `{r['split']}` split (centre crops <= "
        f"{r['max_seconds_per_clip']:g} s): {r['frames']} frames at 25 Hz "
        f"({r['seconds'] / 60:.1f} min), {r['sounding_frames']} with a sounding note (the "
        f"frames scored; distinct labels among them: "
        + ", ".join(f"{LABEL_NAMES[k]} {v}" for k, v in r["label_classes"].items()) + "). "
        f"NMI: arithmetic-mean normalisation. Log-mel k-means and the probes trained on "
        f"{r['probe_train_clips']} train clips ({r['log_mel_kmeans_train_frames']} frames; "
        f"{r['probe_train_frames']} sounding frames for the probes).",
        "",
        "| tokens | K | used | NMI pitch-class set | NMI bass | NMI program | purity pitch-class set | purity bass | purity program |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in r["clustering"]:
        lines.append(f"| {c['tokens']} | {c['K']} | {c['used']} | " + " | ".join(
            f"{c[f'{m}_{lab}']:.3f}" for m in ("nmi", "purity") for lab in LABELS) + " |")
    lines += ["", "Linear probe, 12 pitch classes (sounding held-out frames):", "",
              "| features | mean per-class accuracy | mean F1 | exact-set accuracy |",
              "|---|---|---|---|"]
    for p in r["probe"]:
        lines.append(f"| {p['features']} | {p['mean_class_accuracy']:.3f} | {p['mean_f1']:.3f} | "
                     f"{p['exact_set_accuracy']:.3f} |")
    c = r["chunked_vs_whole"]
    lines += ["", f"Chunked encoding ({c['window_frames']}-frame windows, {c['context_frames']} "
              f"frames of context each side) equals one pass over the whole crop at "
              f"{100 * c['agreement']:.2f}% of {c['frames']} frames.",
              "", f"Wall time {r['wall_seconds']:.0f} s.", ""]
    return "\n".join(lines)
