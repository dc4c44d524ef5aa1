"""`report.html` of one evaluation: a page a person reads and listens to.

Per prompt: the caption, an audio player for the generated clip (and for its reference
clip when the prompt has one), their mel spectrograms, and the requested against the
estimated key and tempo. Then the metric tables with their floor / ceiling / chance
rows, and, when the evaluation is one of several over checkpoints (`--watch`), the
metrics plotted over the steps. The audio files sit beside the page (`wav/`, relative
links); the spectrograms and plots are embedded as PNG data, so the page plus its `wav/`
folder is the whole report.
"""
from __future__ import annotations

import base64
import html
import io
import os
from typing import Sequence

import numpy as np

STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 1100px; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.prompt { border-top: 1px solid #999; padding: 1em 0; }
.clips { display: flex; gap: 2em; flex-wrap: wrap; }
img { width: 420px; height: auto; }
"""


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def mel_image(audio: np.ndarray, sample_rate: int, title: str) -> str:
    """A log-mel spectrogram of `audio` as an embeddable PNG data URI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mufm.audio.features import log_mel

    mel = log_mel(np.asarray(audio, np.float64), sample_rate, n_fft=2048, hop=512, n_mels=80)
    fig, ax = plt.subplots(figsize=(6, 2.4))
    ax.imshow(mel.T, origin="lower", aspect="auto",
              extent=(0, len(audio) / sample_rate, 0, mel.shape[1]), cmap="magma")
    ax.set_xlabel("s")
    ax.set_ylabel("mel band")
    ax.set_title(title, fontsize=9)
    return _png(fig)


def curves_image(history: dict[int, dict]) -> str | None:
    """The scalars of several evaluated steps, one small plot each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mufm.eval.job import scalars

    if len(history) < 2:
        return None
    steps = sorted(history)
    series = [scalars(history[s]) for s in steps]
    names = [k for k in series[-1] if all(k in s for s in series)]
    names = [k for k in names if "/n" not in k and not k.endswith("_n")][:12]
    if not names:
        return None
    cols = 3
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(12, 2.6 * rows), squeeze=False)
    for ax, name in zip(axes.ravel(), names):
        ax.plot(steps, [s[name] for s in series], marker="o")
        ax.set_title(name.removeprefix("eval/"), fontsize=8)
        ax.set_xlabel("step", fontsize=8)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def _table(title: str, rows: dict) -> str:
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_fmt(v)}</td></tr>"
                    for k, v in rows.items())
    return f"<h3>{html.escape(title)}</h3><table>{cells}</table>"


def _fmt(v) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{html.escape(str(k))} {_fmt(x)}" for k, x in v.items())
    if isinstance(v, float):
        return f"{v:.3f}"
    return html.escape(str(v))


def write_report(out_dir: str, results: dict, audio: Sequence[np.ndarray], sample_rate: int,
                 references: dict[int, np.ndarray] | None = None,
                 history: dict[int, dict] | None = None, title: str = "mufm evaluation") -> str:
    """Writes out_dir/report.html (the generated clips already in out_dir/wav/<i>.wav;
    reference clips, by prompt index, are written beside them) and returns its path."""
    import soundfile as sf

    references = references or {}
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p>{results['prompts']} prompts, {results['seconds']:g} s each.</p>"]
    for name in ("control", "mcc", "fad_mulan", "fad_musicnn", "kl_musicnn_tags",
                 "memorization", "semantic_entropy_bits", "timings_s"):
        if name in results:
            parts.append(_table(name, results[name]))
    if history:
        image = curves_image(history)
        if image:
            parts.append(f"<h2>Over checkpoints</h2><img class='curves' src='{image}' "
                         f"alt='metrics over steps' style='width:100%'>")
    parts.append("<h2>Prompts</h2>")
    for i, row in enumerate(results["rows"]):
        clips = [("generated", row["wav"], audio[i])]
        if i in references:
            rel = f"wav/ref_{i:03d}.wav"
            sf.write(os.path.join(out_dir, rel), references[i], sample_rate, subtype="PCM_16")
            clips.append(("reference", rel, references[i]))
        block = "".join(
            f"<div><b>{name}</b><br><audio controls preload='none' src='{html.escape(rel)}'>"
            f"</audio><br><img src='{mel_image(wave, sample_rate, name)}' alt='{name} mel'></div>"
            for name, rel, wave in clips)
        asked = f"{row.get('requested_key') or '-'}, {row.get('requested_bpm') or '-'} bpm"
        heard = f"{row['estimated_key']}, {row['estimated_bpm']:g} bpm"
        parts.append(f"<div class='prompt'><p><b>{i}</b> {html.escape(row['caption'])}<br>"
                     f"asked: {html.escape(asked)}; estimated: {html.escape(heard)}</p>"
                     f"<div class='clips'>{block}</div></div>")
    parts.append("</body></html>")
    path = os.path.join(out_dir, "report.html")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write("\n".join(parts))
    os.replace(path + ".tmp", path)
    return path
