"""MuLan evaluation on held-out works: `python -m mufm.mulan evaluate` (markdown + JSON).

The clips are the corpus's `test` split, read from its manifest (whole works are held
out, so no variant of a test work was seen in training). Each clip gives one audio
embedding (`--window center`: its centre 10 s window, as the held-out crops of training;
`clip`: the mean over all 10 s windows with a 1 s hop) and one caption embedding.

Figures (N = the number of clips, every clip a candidate for every query):
- text-to-audio and audio-to-text retrieval: R@1, R@5, R@10 and the median rank (1-based)
  beside their chance levels (R@k = k / N, median (N + 1) / 2);
- zero-shot attributes: for key/mode, tempo bin (the corpus's tempo adjectives) and main
  instrument (the first listed), one prompt per class present ("a piece in D minor",
  "a fast piece", "a piece played by a violin"); each clip takes the class whose prompt
  scores highest; accuracy beside chance (1 / classes) and the majority-class rate;
- the cosine of matching (audio, caption) pairs vs mismatched pairs (mean of the
  off-diagonal);
- with fitted tokens: the fraction of the 12 text tokens of a caption equal to the audio
  tokens of its clip (how well the text side can stand in for audio when sampling), and
  that fraction for level 0 alone.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable

import numpy as np


def ranks(scores: np.ndarray) -> np.ndarray:
    """0-based rank of the matching candidate (column i for row i) among each row's scores;
    ties count against the match (a constant scorer ranks every match last)."""
    diag = np.diagonal(scores)[:, None]
    return np.sum(scores >= diag, axis=1) - 1


def retrieval(scores: np.ndarray) -> dict[str, float]:
    r = ranks(scores)
    n = len(r)
    out = {f"r@{k}": float(np.mean(r < k)) for k in (1, 5, 10)}
    out.update({f"chance_r@{k}": min(k / n, 1.0) for k in (1, 5, 10)})
    out["median_rank"] = float(np.median(r + 1))
    out["chance_median_rank"] = (n + 1) / 2
    return out


def article(word: str) -> str:
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


ATTRIBUTES: dict[str, tuple[Callable[[dict], str], Callable[[str], str]]] = {
    # name: (the class of a clip's attributes, the prompt of a class)
    "key": (lambda a: a.get("key", ""), lambda c: f"a piece in {c}"),
    "tempo": (lambda a: a.get("tempo_adjective", ""), lambda c: f"{article(c)} piece"),
    "instrument": (lambda a: (a.get("instruments") or [""])[0],
                   lambda c: f"a piece played by {article(c)}"),
}


def zero_shot(audio: np.ndarray, classes: list[str], prompt: Callable[[str], str],
              embed_text) -> dict[str, float]:
    names = sorted(set(classes))
    prompts = embed_text([prompt(c) for c in names])
    pred = np.argmax(audio @ prompts.T, axis=1)
    truth = np.asarray([names.index(c) for c in classes])
    counts = np.bincount(truth, minlength=len(names))
    return {"accuracy": float(np.mean(pred == truth)), "classes": len(names),
            "chance": 1.0 / len(names), "majority": float(counts.max() / len(truth))}


@dataclasses.dataclass(frozen=True)
class EvalResult:
    figures: dict
    table_md: str
    table_json: str


def evaluate_clips(mulan, records: list[dict], waveforms: list[np.ndarray], *,
                   window: str = "center", progress=None) -> dict:
    """The figures of the module doc for clips `records` (manifest records) and their audio."""
    from mufm.mulan.embed import BadInputError

    cfg = mulan.audio_cfg
    if len(records) < 2:
        raise ValueError(f"evaluation needs at least 2 clips, got {len(records)}")
    audio = []
    for w in waveforms:
        if window == "center":
            W = cfg.window_samples
            start = max(len(w) - W, 0) // 2
            piece = mulan.check_waveform(w)[start:start + W]
            win = np.zeros((1, W), np.float32)
            win[0, :len(piece)] = piece
            audio.append(mulan.embed_windows(win, np.asarray([len(piece)], np.int32))[0])
        elif window == "clip":
            audio.append(mulan.embed_clip(w))
        else:
            raise BadInputError(f"window={window!r}: use center or clip")
        if progress:
            progress(1)
    audio = np.stack(audio)
    text = mulan.embed_text([r["caption"] for r in records])
    s = audio @ text.T
    n = len(records)
    off = ~np.eye(n, dtype=bool)
    figures = {"clips": n, "window": window,
               "text_to_audio": retrieval(s.T), "audio_to_text": retrieval(s),
               "cosine_matching": float(np.mean(np.diagonal(s))),
               "cosine_mismatched": float(np.mean(s[off])), "zero_shot": {}}
    for name, (cls, prompt) in ATTRIBUTES.items():
        classes = [cls(r.get("attributes", {})) for r in records]
        if all(classes) and len(set(classes)) > 1:
            figures["zero_shot"][name] = zero_shot(audio, classes, prompt, mulan.embed_text)
    if mulan.tokens is not None:
        ta, tt = mulan.tokens.encode(audio), mulan.tokens.encode(text)
        figures["token_agreement"] = float(np.mean(ta == tt))
        figures["token_agreement_level0"] = float(np.mean(ta[:, 0] == tt[:, 0]))
    return figures


def markdown(f: dict, title: str) -> str:
    n = f["clips"]
    lines = [f"# {title}", "",
             f"{n} held-out clips ({f['window']} window); every clip is a candidate for every "
             f"query (chance R@k = k / {n}, chance median rank {(n + 1) / 2:g}).", "",
             "| direction | R@1 | R@5 | R@10 | median rank |", "|---|---|---|---|---|"]
    for d in ("text_to_audio", "audio_to_text"):
        r = f[d]
        lines.append(f"| {d.replace('_', ' ')} | {r['r@1']:.3f} | {r['r@5']:.3f} | "
                     f"{r['r@10']:.3f} | {r['median_rank']:g} |")
    r = f["text_to_audio"]
    lines.append(f"| chance | {r['chance_r@1']:.3f} | {r['chance_r@5']:.3f} | "
                 f"{r['chance_r@10']:.3f} | {r['chance_median_rank']:g} |")
    lines += ["", "| zero-shot | accuracy | classes | chance | majority class |", "|---|---|---|---|---|"]
    for name, z in f["zero_shot"].items():
        lines.append(f"| {name} | {z['accuracy']:.3f} | {z['classes']} | {z['chance']:.3f} | "
                     f"{z['majority']:.3f} |")
    lines += ["", f"cosine of matching pairs {f['cosine_matching']:.3f}, of mismatched pairs "
              f"{f['cosine_mismatched']:.3f}"]
    if "token_agreement" in f:
        lines.append(f"text tokens equal to the matching clip's audio tokens: "
                     f"{f['token_agreement']:.3f} of 12 levels (level 0: "
                     f"{f['token_agreement_level0']:.3f})")
    return "\n".join(lines) + "\n"


def evaluate_checkpoint(mulan, corpus_dir: str, out_dir: str, *, split: str = "test",
                        max_clips: int | None = None, window: str = "center",
                        progress_factory=None) -> EvalResult:
    from mufm.audio.decode import load
    from mufm.data.corpus.manifest import read_manifest

    records = [r for r in read_manifest(corpus_dir) if r["split"] == split]
    if max_clips:
        records = records[:max_clips]
    if len(records) < 2:
        raise ValueError(f"{corpus_dir}: split {split!r} has {len(records)} clips; need >= 2")
    waves = [load(os.path.join(corpus_dir, r["audio"])) for r in records]
    bar = progress_factory(len(records)) if progress_factory else None
    figures = evaluate_clips(mulan, records, waves, window=window,
                             progress=(lambda k: bar.update(k)) if bar else None)
    if bar:
        bar.close()
    figures.update(model_dir=mulan.model_dir, corpus_dir=corpus_dir, split=split)
    os.makedirs(out_dir, exist_ok=True)
    md, js = os.path.join(out_dir, "mulan_eval.md"), os.path.join(out_dir, "mulan_eval.json")
    with open(md, "w") as f:
        f.write(markdown(figures, f"MuLan evaluation: {split} split of {corpus_dir}"))
    with open(js, "w") as f:
        json.dump(figures, f, indent=1, sort_keys=True)
    return EvalResult(figures=figures, table_md=md, table_json=js)
