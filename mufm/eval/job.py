"""One evaluation of a cascade: generate from a prompt set, score what came out, write it.

Every figure sits beside the rows that give it meaning:

| metric | generated | floor / ceiling / chance |
|---|---|---|
| key (exact, MIREX weighted) | estimated key of each clip vs its prompt's | real reference clips vs their own captions (ceiling); generated vs another prompt's key (chance) |
| tempo (Acc1, Acc2, bin) | as key | as key |
| MCC | cos(text, audio) of each prompt and its clip | mismatched pairs (chance); real clips and their captions (ceiling) |
| FAD (MuLan audio embeddings) | generated vs held-out reference | held-out vs train clips (floor); white noise at the clips' level vs reference (ceiling) |
| FAD (musicnn penultimate layer, per 3 s patch) | generated vs reference | white noise vs reference (ceiling) |
| KL of musicnn tag distributions | KL(reference_i, generated_i) | a reference against another prompt's reference; white noise (ceiling) |
| memorization | generated semantic runs of n found in the train tokens (exact, Hamming <= k) | - |
| semantic entropy | of generated 125-token windows | of the train tokens' windows |

Generation is batched: a batch's noise comes from the seed of its first prompt, so the
same prompt set with the same batch size always gives the same audio. Each row's figures
and the summary go to `metrics.json`, the clips to `wav/`, the summary as `eval/...`
scalars to TensorBoard events in the output directory, and `report.html`
(mufm/eval/report.py) shows every prompt with players and spectrograms of its clip and
reference beside the tables.
"""
from __future__ import annotations

import json
import os
import time
from typing import Callable, Sequence

import numpy as np

from mufm.eval import control
from mufm.eval.fad import fad
from mufm.eval.mcc import cycle_consistency
from mufm.eval.memorization import TokenIndex, mean_window_entropy, memorization
from mufm.eval.prompts import Prompt


def _crop(path: str, duration_s: float | None, seconds: float, sample_rate: int) -> np.ndarray:
    from mufm.semantic.tokens import read_crop

    start = max(0.0, ((duration_s or seconds) - seconds) / 2)
    return read_crop(path, start, seconds, sample_rate)


def generate(cascade, prompts: Sequence[Prompt], seconds: float, batch: int = 4,
             log: Callable = print) -> tuple[np.ndarray, np.ndarray]:
    """(audio [n, samples], semantic tokens [n, frames]) for the prompts, in order."""
    from mufm.codec.tokenizer import decode_chunked

    audio, semantic = [], []
    for i in range(0, len(prompts), batch):
        group = prompts[i:i + batch]
        t0 = time.perf_counter()
        request = cascade.text_request([p.caption for p in group], seconds)
        tokens = cascade.tokens(request, seed=group[0].seed, progress=False)
        wave = decode_chunked(*cascade.codec.parts, tokens["acoustic"])[:, :request.samples]
        audio.append(wave.astype(np.float32))
        semantic.append(tokens["semantic"])
        log(f"generated prompts {i}..{i + len(group) - 1} of {len(prompts)}: "
            f"{time.perf_counter() - t0:.1f} s")
    return np.concatenate(audio), np.concatenate(semantic)


def control_scores(estimates: Sequence[tuple], prompts: Sequence[Prompt]) -> dict:
    """Mean key and tempo scores of (key, bpm) estimates against the prompts' requests
    (prompts without a key or bpm are left out of that figure)."""
    keys, tempi = [], []
    for (key, bpm), p in zip(estimates, prompts):
        if p.key:
            ref = control.parse_key(p.key)
            keys.append((float(key == ref), control.key_weighted_score(key, ref)))
        if p.bpm:
            tempi.append(control.tempo_accuracy(bpm, p.bpm))
    out = {}
    if keys:
        out.update(key_exact=float(np.mean([k[0] for k in keys])),
                   key_weighted=float(np.mean([k[1] for k in keys])), key_n=len(keys))
    if tempi:
        out.update({f"tempo_{m}": float(np.mean([t[m] for t in tempi])) for m in ("acc1", "acc2", "bin")},
                   tempo_n=len(tempi))
    return out


def _estimates(clips: Sequence[np.ndarray], sample_rate: int) -> list[tuple]:
    return [(control.estimate_key(c, sample_rate), control.estimate_tempo(c, sample_rate))
            for c in clips]


def evaluate(cascade, prompts: Sequence[Prompt], seconds: float, out_dir: str, *,
             tokens_dir: str | None = None, corpus_dir: str | None = None, batch: int = 4,
             memorization_n: int = 125, memorization_k: int = 3,
             log: Callable = print, scalars_dir: str | None = None, step: int = 0) -> dict:
    """Generates `seconds` for every prompt, scores it (module docstring) and writes
    out_dir/{metrics.json, wav/}. `tokens_dir` (the train split's pre-tokenized records)
    enables memorization and the train entropy; `corpus_dir` the FAD floor. The summary
    goes to TensorBoard in `scalars_dir` (default out_dir) at `step`."""
    import soundfile as sf

    if not prompts:
        raise ValueError("no prompts to evaluate")
    prompts = list(prompts)
    rate = cascade.sample_rate
    timings = {}
    t0 = time.perf_counter()
    audio, semantic = generate(cascade, prompts, seconds, batch, log)
    timings["generate"] = time.perf_counter() - t0
    os.makedirs(os.path.join(out_dir, "wav"), exist_ok=True)
    for i, wave in enumerate(audio):
        sf.write(os.path.join(out_dir, "wav", f"{i:03d}.wav"), wave, rate, subtype="FLOAT")

    results: dict = {"prompts": len(prompts), "seconds": seconds}
    t0 = time.perf_counter()
    gen_est = _estimates(audio, rate)
    results["control"] = {"generated": control_scores(gen_est, prompts),
                          # Each clip against the next prompt's request: what matching
                          # by luck scores on this prompt set.
                          "chance": control_scores(gen_est, prompts[1:] + prompts[:1])}
    paired = [i for i, p in enumerate(prompts) if p.audio]  # prompts with a reference clip
    with_audio = [prompts[i] for i in paired]
    noise = _noise_like(audio)
    references = [_crop(p.audio, p.duration_s, seconds, rate) for p in with_audio]
    if references:
        results["control"]["reference"] = control_scores(_estimates(references, rate), with_audio)
    timings["control"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    mulan = cascade.mulan
    text = mulan.embed_text([p.caption for p in prompts])
    gen_emb = np.stack([mulan.embed_clip(a) for a in audio])
    results["mcc"] = {"generated": cycle_consistency(text, gen_emb)}
    if len(references) >= 2:
        ref_emb = np.stack([mulan.embed_clip(r) for r in references])
        ref_text = mulan.embed_text([p.caption for p in with_audio])
        results["mcc"]["reference"] = cycle_consistency(ref_text, ref_emb)
        results["fad_mulan"] = {
            "generated": fad(gen_emb, ref_emb),
            "white_noise": fad(np.stack([mulan.embed_clip(n) for n in noise]), ref_emb)}
        if corpus_dir:
            from mufm.eval.prompts import corpus_prompts

            train = corpus_prompts(corpus_dir, "train", limit=len(references))
            train_emb = np.stack([mulan.embed_clip(_crop(p.audio, p.duration_s, seconds, rate))
                                  for p in train])
            results["fad_mulan"]["train_vs_reference"] = fad(train_emb, ref_emb)
        results["fad_mulan"]["note"] = (f"{len(references)} clips per set, {ref_emb.shape[1]}-d "
                                        f"embeddings: rank-deficient covariances, compare rows "
                                        f"of one evaluation only")
    timings["mulan"] = time.perf_counter() - t0

    if references:
        t0 = time.perf_counter()
        results.update(_musicnn_rows(audio, paired, references, noise, rate))
        timings["musicnn"] = time.perf_counter() - t0

    results["semantic_entropy_bits"] = {"generated": mean_window_entropy(semantic)}
    if tokens_dir:
        t0 = time.perf_counter()
        train_tokens = _train_semantic(tokens_dir)
        index = TokenIndex(train_tokens, n=memorization_n, k=memorization_k)
        results["memorization"] = memorization(index, semantic)
        results["semantic_entropy_bits"]["train"] = mean_window_entropy(train_tokens)
        timings["memorization"] = time.perf_counter() - t0
    results["rows"] = [{"id": p.id, "caption": p.caption, "seed": p.seed, "wav": f"wav/{i:03d}.wav",
                        "requested_key": p.key, "requested_bpm": p.bpm,
                        "estimated_key": str(k), "estimated_bpm": round(float(b), 2)}
                       for i, (p, (k, b)) in enumerate(zip(prompts, gen_est))]
    results["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(results, f, indent=1, default=float)
    _write_scalars(scalars_dir or out_dir, results, step)
    from mufm.eval.report import write_report
    from mufm.eval.watch import evaluated_steps

    history = dict(evaluated_steps(scalars_dir), **{step: results}) if scalars_dir else None
    write_report(out_dir, results, audio, rate, dict(zip(paired, references)), history,
                 title=f"mufm evaluation, step {step}" if scalars_dir else "mufm evaluation")
    return results


def _noise_like(audio: Sequence[np.ndarray]) -> list[np.ndarray]:
    """White noise at each clip's RMS: the ceiling rows."""
    rng = np.random.default_rng(0)
    return [rng.standard_normal(len(a)).astype(np.float32) * float(np.sqrt(np.mean(a ** 2)))
            for a in audio]


def _musicnn_rows(audio, paired, references, noise, rate) -> dict:
    """FAD on musicnn's penultimate layer (every 3 s patch a sample) and KL between tag
    distributions: each generated clip against its prompt's reference clip, beside a
    pairing of real clips (each reference against another prompt's: how far apart two
    real clips' tags are) and white noise (ceiling). `paired`: the generated clips that
    have a reference, in the references' order."""
    from mufm.eval import musicnn
    from mufm.eval.tag_kl import kl_divergence

    feats = {name: [musicnn.features(c, rate) for c in clips]
             for name, clips in (("generated", audio), ("reference", references),
                                 ("noise", noise))}
    emb = {k: np.concatenate([f["penultimate"] for f in v]) for k, v in feats.items()}
    probs = {k: np.stack([f["probs"].mean(0) for f in v]) for k, v in feats.items()}
    gen = probs["generated"][paired]
    ref = probs["reference"]
    return {"fad_musicnn": {"generated": fad(emb["generated"], emb["reference"]),
                            "white_noise": fad(emb["noise"], emb["reference"]),
                            "patches": int(len(emb["generated"]))},
            "kl_musicnn_tags": {"generated": kl_divergence(ref, gen),
                                "another_reference": kl_divergence(np.roll(ref, 1, 0), ref)
                                if len(ref) > 1 else float("nan"),
                                "white_noise": kl_divergence(ref, probs["noise"][paired])}}


def _train_semantic(tokens_dir: str) -> list[np.ndarray]:
    import glob

    from mufm.data.token_records import read_records, shard_pattern

    paths = sorted(glob.glob(os.path.join(tokens_dir, shard_pattern("train"))))
    if not paths:
        raise FileNotFoundError(f"{tokens_dir}: no train shards ({shard_pattern('train')})")
    return [np.asarray(r["semantic"]) for p in paths for r in read_records(p)]


def scalars(results: dict) -> dict:
    """The summary as flat `eval/...` scalars."""
    out = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}", v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
            out[prefix] = float(value)

    for k in ("control", "mcc", "fad_mulan", "fad_musicnn", "kl_musicnn_tags", "memorization",
              "semantic_entropy_bits"):
        if k in results:
            walk(f"eval/{k}", results[k])
    return out


def _write_scalars(out_dir: str, results: dict, step: int = 0) -> None:
    from clu import metric_writers

    writer = metric_writers.create_default_writer(out_dir, just_logging=False)
    writer.write_scalars(step, scalars(results))
    writer.flush()
    writer.close()
