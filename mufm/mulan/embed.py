"""A trained MuLan for inference: embeddings of captions and of clips of any length.

    from mufm.mulan.embed import MuLan
    mulan = MuLan.load("runs/mulan_cpu")             # its MODEL_DIR (newest step)
    t = mulan.embed_text(["a piece in D minor"])     # [1, 128], unit norm
    a = mulan.embed_clip(waveform)                   # [128]: any length >= min_seconds
    ids = mulan.tokens_text([...]), mulan.tokens_audio(waveform)   # 12 ids each (tokens.py)

Clips (`embed_clip`): windows of the tower's 10 s with a 1 s hop (`audio.window_starts`:
the last window ends at the clip's end), run `batch` windows at a time through one jitted
program of fixed shape; the clip's embedding is the mean of the windows' unit embeddings,
renormalised (MusicLM). A clip shorter than a window is one zero-padded, masked window.
Refused with `BadInputError` (one line, for the CLI): fewer samples than `min_seconds`, a
non-finite sample, an empty or non-1-D array. Silence is not refused here (its embedding is
finite, tested); the CLI refuses silent files, whose embedding says nothing about music.

Captions (`embed_text`): tokenised to the run's `caption_tokens` (64): longer captions keep
their first 62 word pieces (the documented truncation of mufm/mulan/tokenizer.py); `
truncated(captions)` says which ones were cut. An empty caption is a `BadInputError`. A
run with the scratch text tower tokenises with its own sentencepiece model,
`<MODEL_DIR>/text_tokenizer/spm.model` (mufm/mulan/spm.py): `load` needs nothing else.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mufm.mulan.audio import safe_normalize, window_starts
from mufm.mulan.model import MuLanModel
from mufm.mulan.tokenizer import tokenize

TOKENS_DIR = "mulan_tokens"


class BadInputError(ValueError):
    """Input MuLan cannot embed: one line saying why."""


@dataclasses.dataclass
class MuLan:
    model: MuLanModel
    caption_tokens: int = 64
    batch: int = 8  # windows per jitted call
    tokens: "object | None" = None  # a MuLanTokens (tokens.py), when fitted
    model_dir: str | None = None

    def __post_init__(self):
        graphdef, state = nnx.split(self.model)
        self._state = state
        self._audio = jax.jit(lambda s, w, l: nnx.merge(graphdef, s).embed_audio(w, l))
        self._text = jax.jit(lambda s, i, m: nnx.merge(graphdef, s).embed_text(i, m))

    @property
    def audio_cfg(self):
        return self.model.cfg.audio

    @classmethod
    def load(cls, model_dir: str, *, batch: int = 8, step: int | None = None) -> "MuLan":
        from mufm.mulan.tokens import MuLanTokens
        from mufm.train.restore import load

        loaded = load(model_dir, step, family="mulan")
        text_cfg = loaded.configs["model"].text
        if text_cfg.kind == "scratch":
            from mufm.mulan.spm import spm_path
            from mufm.train.restore import CheckpointNotFoundError

            path = spm_path(loaded.model_dir)
            if not os.path.isfile(path):
                raise CheckpointNotFoundError(f"{model_dir}: a scratch text tower run without its "
                                              f"sentencepiece model {path}")
        tokens_dir = os.path.join(loaded.model_dir, TOKENS_DIR)
        tokens = MuLanTokens.load(tokens_dir) if os.path.isdir(tokens_dir) else None
        return cls(model=loaded.module(), caption_tokens=int(loaded.configs["caption_tokens"]),
                   batch=batch, tokens=tokens, model_dir=loaded.model_dir)

    # -- text ---------------------------------------------------------------------------
    def tokenizer_kwargs(self) -> dict:
        """`tokenize`'s arguments for this model's tower: MiniLM's files, or the scratch
        tower's sentencepiece model in `model_dir` (mufm/mulan/spm.py)."""
        return self.model.cfg.text.tokenizer_kwargs(self.model_dir)

    def tokenize(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        kwargs = self.tokenizer_kwargs()
        try:
            return tokenize(list(captions), length=self.caption_tokens, **kwargs)
        except (ValueError, TypeError) as e:
            raise BadInputError(str(e)) from None

    def truncated(self, captions: Sequence[str]) -> list[bool]:
        """Whether each caption loses word pieces to the `caption_tokens` limit."""
        # One piece past the limit is enough to tell (and works whatever the tower's own
        # max_length, which a tiny tower may set below caption_tokens).
        kwargs = dict(self.tokenizer_kwargs(), max_length=self.caption_tokens + 1)
        ids, _ = tokenize(list(captions), **kwargs)
        return [int(np.sum(r != 0)) > self.caption_tokens for r in ids]

    def embed_text(self, captions: Sequence[str], batch: int = 256) -> np.ndarray:
        ids, mask = self.tokenize(captions)
        out = []
        for i in range(0, len(ids), batch):
            n = min(batch, len(ids) - i)
            pad = lambda x: np.concatenate([x[i:i + n], np.repeat(x[i:i + 1], batch - n, 0)])
            out.append(np.asarray(self._text(self._state, pad(ids), pad(mask)))[:n])
        return np.concatenate(out)

    # -- audio --------------------------------------------------------------------------
    def check_waveform(self, waveform: np.ndarray) -> np.ndarray:
        w = np.asarray(waveform, np.float32)
        cfg = self.audio_cfg
        if w.ndim != 1 or not w.size:
            raise BadInputError(f"audio must be a non-empty mono waveform, got shape {w.shape}")
        if not np.all(np.isfinite(w)):
            raise BadInputError("audio holds non-finite samples")
        if len(w) < cfg.min_samples:
            raise BadInputError(f"audio of {len(w) / cfg.sample_rate:.2f} s is shorter than "
                                f"MuLan's minimum of {cfg.min_seconds:g} s")
        return w

    def embed_windows(self, windows: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """[k, W] windows with their valid lengths -> [k, D] unit embeddings."""
        out, b = [], self.batch
        for i in range(0, len(windows), b):
            n = min(b, len(windows) - i)
            w = np.zeros((b, windows.shape[1]), np.float32)
            l = np.full((b,), windows.shape[1], np.int32)
            w[:n], l[:n] = windows[i:i + n], lengths[i:i + n]
            out.append(np.asarray(self._audio(self._state, w, l))[:n])
        return np.concatenate(out)

    def clip_windows(self, waveform: np.ndarray, hop_samples: int | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
        """The clip's windows [k, W] (zero-padded when shorter) and valid lengths [k], every
        `hop_samples` (default the tower's hop, 1 s)."""
        cfg = self.audio_cfg
        w, W = self.check_waveform(waveform), cfg.window_samples
        starts = window_starts(len(w), W, hop_samples or cfg.hop_samples)
        windows = np.zeros((len(starts), W), np.float32)
        lengths = np.zeros((len(starts),), np.int32)
        for j, s in enumerate(starts):
            piece = w[s:s + W]
            windows[j, :len(piece)], lengths[j] = piece, len(piece)
        return windows, lengths

    def embed_clip(self, waveform: np.ndarray, hop_samples: int | None = None) -> np.ndarray:
        """[n] -> [D]: the renormalised mean of the clip's window embeddings (windows every
        `hop_samples`; the pre-tokenization job hops a whole window, 10x fewer windows)."""
        e = self.embed_windows(*self.clip_windows(waveform, hop_samples))
        return np.asarray(safe_normalize(jnp.asarray(e.mean(0))))

    def embed_clips(self, waveforms: Sequence[np.ndarray],
                    progress: Callable[[int], None] | None = None) -> np.ndarray:
        out = []
        for w in waveforms:
            out.append(self.embed_clip(w))
            if progress:
                progress(1)
        return np.stack(out)

    # -- conditioning tokens --------------------------------------------------------------
    def _quantizer(self):
        if self.tokens is None:
            raise BadInputError(f"{self.model_dir or 'this model'} has no fitted tokens "
                                f"({TOKENS_DIR}/): run `python -m mufm.mulan fit_tokens` first")
        return self.tokens

    def tokens_text(self, captions: Sequence[str]) -> np.ndarray:
        return self._quantizer().encode(self.embed_text(captions))

    def tokens_audio(self, waveform: np.ndarray, hop_samples: int | None = None) -> np.ndarray:
        return self._quantizer().encode(self.embed_clip(waveform, hop_samples)[None])[0]
