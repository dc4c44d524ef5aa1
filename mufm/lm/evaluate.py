"""Held-out evaluation of a trained stage LM, per stream level, against a unigram model.

    python -m mufm.lm evaluate --model_dir=runs/stage_coarse [--split=test] [--shuffle_mulan]

Reads the run's stored data config (its token task, layout and tokens directory;
`--tokens_dir` points elsewhere) and passes over every example of `--split` once, in
fixed crops. For each (stream, level) of the target it reports the token count, the model's
accuracy and perplexity, and the same for the unigram model of that level fitted on the
train split's tokens (`counts.npz` of the pre-tokenization job; add-half smoothing). The
model's distribution at a position is its softmax restricted to the position's stream block
(`StageLayout` ids, as the sampler's `logit_mask` restricts it), so model and baseline are
scored over the same codebook. A second baseline, persistence (`repeat accuracy`), guesses
the code the same level held one frame earlier: music changes slowly at 25-50 Hz, so a
model has learned something beyond "hold the note" only where it beats that; as a
distribution (`repeat ppl`), a * [code == previous] + (1 - a) * unigram with the best a on
the evaluated data. `--shuffle_mulan` evaluates with each clip's MuLan tokens
taken from another clip: if the numbers do not move, the model ignores its conditioning.

Writes `<model_dir>/eval_<split>[_shuffled].json` and prints a table.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Sequence

import numpy as np


def _registration(cfg):
    regs = [r for r in cfg.registrations if hasattr(r, "layout")]
    if not regs:
        raise ValueError("this run was not trained on a token task (no TokenTaskRegistration in "
                         "its data config)")
    return regs[0]


def unigram_tables(tokens_dir: str, layout) -> dict[str, np.ndarray]:
    """Smoothed train-split unigram log-probabilities per target stream name."""
    path = os.path.join(tokens_dir, "counts.npz")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing: rerun `python -m mufm.data.pretokenize` on "
                                f"{tokens_dir} (it writes it from the shard markers)")
    counts = np.load(path)
    out = {}
    for st in layout.streams:
        seg = next(s for s in layout.segments if s.name == st.segment)
        c = counts[f"train/{seg.stream}"][st.level if seg.stream != "semantic" else 0].astype(np.float64)
        p = (c + 0.5) / (c.sum() + 0.5 * len(c))
        out[st.name] = np.log(p)
    return out


def evaluate_run(model_dir: str, *, split: str = "test", tokens_dir: str | None = None,
                 shuffle_mulan: bool = False, batch_size: int | None = None,
                 max_batches: int | None = None, progress: bool = True) -> dict:
    import jax
    import jax.numpy as jnp
    from tqdm import tqdm

    from mufm.data.pipeline import make_dataset
    from mufm.train.restore import load

    loaded = load(model_dir, family="lm")
    cfg = loaded.configs["data"]
    reg = _registration(cfg)
    reg = dataclasses.replace(reg, tokens_dir=tokens_dir or reg.tokens_dir,
                              shuffle_mulan=shuffle_mulan or reg.shuffle_mulan,
                              conditioning_dropout=0.0)
    reg.check()
    cfg = dataclasses.replace(cfg, registrations=(reg,), batch_size=batch_size or cfg.batch_size,
                              input_shards=None)
    layout = reg.layout
    names = layout.stream_names
    lo = np.zeros(len(names), np.int32)
    hi = np.full(len(names), layout.vocab_size, np.int32)
    for i, st in enumerate(layout.streams, start=1):
        lo[i], hi[i] = st.offset, st.offset + st.size
    uni = unigram_tables(reg.tokens_dir, layout)
    model = loaded.module()
    from flax import nnx

    graphdef, state = nnx.split(model)

    @jax.jit
    def score(state, batch):
        m = nnx.merge(graphdef, state)
        logits = m(batch["decoder_input_tokens"], positions=batch.get("decoder_positions"),
                   segment_ids=batch.get("decoder_segment_ids"))
        s = batch["decoder_stream_ids"]
        ids = jnp.arange(logits.shape[-1])
        allowed = (ids >= jnp.asarray(lo)[s][..., None]) & (ids < jnp.asarray(hi)[s][..., None])
        logits = jnp.where(allowed, logits, -1e30)
        logp = jax.nn.log_softmax(logits, -1)
        t = batch["decoder_target_tokens"]
        nll = -jnp.take_along_axis(logp, t[..., None], -1)[..., 0]
        return nll, jnp.argmax(logp, -1) == t

    n_streams = len(names)
    tot = {k: np.zeros(n_streams) for k in ("n", "nll", "correct", "uni_nll", "uni_correct",
                                            "repeat_correct")}
    lag = layout.target.num_levels  # frame-major: the same level one frame back
    # Persistence as a distribution: a * [code == previous] + (1 - a) * unigram, with the
    # repeat weight a the best of a grid on the evaluated data itself (so the baseline is
    # favoured, never the model).
    grid = np.linspace(0.02, 0.98, 49)
    repeat_nll = np.zeros((n_streams, len(grid)))
    uni_best = {name: int(np.argmax(t)) for name, t in uni.items()}
    ds = make_dataset(cfg, split=split, shuffle=False, num_epochs=1, drop_remainder=False)
    bar = tqdm(desc=f"evaluate {split}", unit="batch", disable=not progress)
    for i, batch in enumerate(ds.as_numpy_iterator()):
        if max_batches is not None and i >= max_batches:
            break
        nll, correct = (np.asarray(x) for x in score(state, batch))
        w = batch["decoder_loss_weights"] > 0
        s = batch["decoder_stream_ids"]
        t = batch["decoder_target_tokens"]
        seg = batch.get("decoder_segment_ids", np.ones_like(t))
        prev = np.zeros_like(t)
        prev[:, lag:] = np.where((s[:, lag:] == s[:, :-lag]) & (seg[:, lag:] == seg[:, :-lag]),
                                 t[:, :-lag], 0)
        for k in np.unique(s[w]):
            sel = w & (s == k)
            st = layout.streams[k - 1]
            codes = t[sel] - st.offset
            tot["n"][k] += sel.sum()
            tot["nll"][k] += nll[sel].sum()
            tot["correct"][k] += correct[sel].sum()
            tot["uni_nll"][k] -= uni[st.name][codes].sum()
            tot["uni_correct"][k] += (codes == uni_best[st.name]).sum()
            # Persistence: the code the level held one frame earlier (the unigram's choice
            # at a segment's first frame), what any model of slowly changing music beats.
            guess = np.where(prev[sel] > 0, prev[sel] - st.offset, uni_best[st.name])
            tot["repeat_correct"][k] += (codes == guess).sum()
            p_uni = np.exp(uni[st.name][codes])[:, None]
            same = ((prev[sel] > 0) & (codes == prev[sel] - st.offset))[:, None]
            first = (prev[sel] == 0)[:, None]
            p = np.where(first, p_uni, grid[None] * same + (1 - grid[None]) * p_uni)
            repeat_nll[k] -= np.log(p).sum(0)
        bar.update(1)
    bar.close()
    rows = []
    for k, st in enumerate(layout.streams, start=1):
        n = tot["n"][k]
        if not n:
            continue
        rows.append({"stream": st.name, "level": st.level, "tokens": int(n),
                     "accuracy": tot["correct"][k] / n, "perplexity": math.exp(tot["nll"][k] / n),
                     "unigram_accuracy": tot["uni_correct"][k] / n,
                     "unigram_perplexity": math.exp(tot["uni_nll"][k] / n),
                     "repeat_accuracy": tot["repeat_correct"][k] / n,
                     "repeat_perplexity": math.exp(repeat_nll[k].min() / n),
                     "repeat_weight": float(grid[np.argmin(repeat_nll[k])])})
    n = sum(r["tokens"] for r in rows)
    summary = {"model_dir": loaded.model_dir, "step": loaded.step, "split": split,
               "stage": layout.name, "tokens_dir": reg.tokens_dir, "shuffle_mulan": reg.shuffle_mulan,
               "trained_with_shuffled_mulan": _registration(loaded.configs["data"]).shuffle_mulan,
               "tokens": n, "levels": rows,
               "accuracy": sum(r["accuracy"] * r["tokens"] for r in rows) / max(n, 1),
               "perplexity": math.exp(sum(math.log(r["perplexity"]) * r["tokens"] for r in rows) / max(n, 1)),
               "unigram_accuracy": sum(r["unigram_accuracy"] * r["tokens"] for r in rows) / max(n, 1),
               "repeat_accuracy": sum(r["repeat_accuracy"] * r["tokens"] for r in rows) / max(n, 1),
               "repeat_perplexity": math.exp(sum(math.log(r["repeat_perplexity"]) * r["tokens"]
                                                 for r in rows) / max(n, 1)),
               "unigram_perplexity": math.exp(sum(math.log(r["unigram_perplexity"]) * r["tokens"]
                                                  for r in rows) / max(n, 1))}
    return summary


def format_table(summary: dict) -> str:
    lines = [f"{summary['stage']} stage, {summary['model_dir']} step {summary['step']}, "
             f"{summary['split']} split{' (MuLan shuffled)' if summary['shuffle_mulan'] else ''}: "
             f"{summary['tokens']} target tokens",
             f"{'stream':<14}{'tokens':>9}{'acc':>8}{'ppl':>9}{'uni acc':>9}{'uni ppl':>9}"
             f"{'repeat acc':>11}{'repeat ppl':>11}"]
    for r in summary["levels"] + [dict(summary, stream="all")]:
        lines.append(f"{r['stream']:<14}{r['tokens']:>9}{r['accuracy']:>8.3f}{r['perplexity']:>9.1f}"
                     f"{r['unigram_accuracy']:>9.3f}{r['unigram_perplexity']:>9.1f}"
                     f"{r['repeat_accuracy']:>11.3f}{r['repeat_perplexity']:>11.1f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m mufm.lm evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model_dir", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--tokens_dir", default=None)
    ap.add_argument("--shuffle_mulan", action="store_true")
    ap.add_argument("--batch_size", type=int, default=None)
    ap.add_argument("--max_batches", type=int, default=None)
    ap.add_argument("--out", default=None, help="JSON path (default <model_dir>/eval_<split>.json)")
    ap.add_argument("--no_progress", action="store_true")
    args = ap.parse_args(argv)
    from mufm.train.restore import CheckpointNotFoundError, WrongFamilyError

    try:
        summary = evaluate_run(args.model_dir, split=args.split, tokens_dir=args.tokens_dir,
                               shuffle_mulan=args.shuffle_mulan, batch_size=args.batch_size,
                               max_batches=args.max_batches, progress=not args.no_progress)
    except (ValueError, FileNotFoundError, CheckpointNotFoundError, WrongFamilyError) as e:
        print(f"mufm.lm evaluate: error: {e}", file=sys.stderr)
        return 2
    out = args.out or os.path.join(args.model_dir,
                                   f"eval_{args.split}{'_shuffled' if args.shuffle_mulan else ''}.json")
    with open(out, "w") as f:
        json.dump(summary, f, indent=1)
    print(format_table(summary))
    print(f"wrote {out}")
    return 0
