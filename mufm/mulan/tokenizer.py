"""Host-side WordPiece tokenisation of captions for the MiniLM text tower.

The reference is the shipped `tokenizer.json` read by HF `tokenizers` (the Rust library
sentence-transformers itself runs): BERT normaliser (clean control characters, lowercase,
strip accents through NFD), BERT pre-tokeniser, WordPiece, `[CLS] ... [SEP]`.

`backend="tf_text"` runs tensorflow-text's `FastBertTokenizer` on `vocab.txt` instead, the
op a SavedModel can carry in-graph. It gives the same ids on ordinary captions (tested) but
differs on two rare inputs: it normalises with NFKD (the ligature "ﬁ" becomes "fi", "½"
becomes "1⁄2", where the reference keeps them and maps them to [UNK]) and it splits words at
control characters where the reference deletes them ("x\\x00y" -> "x", "y" vs "xy").

Rules (tested in tests/mulan/test_text.py):
- truncation: a caption longer than `length` tokens keeps its first `length - 2` word
  pieces, then `[SEP]` (what sentence-transformers does at `max_seq_length` 256);
- padding: right, with `[PAD]` = 0 and mask 0, to `length`; `length=None` pads to the
  batch's longest rounded up to a multiple of `pad_multiple`, so a jitted tower meets few
  distinct shapes;
- a caption with no word piece at all (empty, whitespace or control characters only) is a
  ValueError naming it: its embedding would be that of "[CLS] [SEP]", a constant that
  only hides a data bug. A non-string is a TypeError.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np

from mufm.mulan.weights import minilm_dir

CLS_ID, SEP_ID, PAD_ID, UNK_ID = 101, 102, 0, 100
BACKENDS = ("tokenizers", "tf_text")


@functools.lru_cache(maxsize=4)
def _hf_tokenizer(weights_dir: str):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(minilm_dir(weights_dir) / "tokenizer.json"))
    # The file pads and truncates to 128; we do both ourselves, to the configured length.
    tok.no_padding()
    tok.no_truncation()
    return tok


@functools.lru_cache(maxsize=4)
def _tf_text_tokenizer(weights_dir: str):
    import tensorflow as tf  # heavy (seconds): only this backend needs it
    import tensorflow_text as tf_text

    vocab = (minilm_dir(weights_dir) / "vocab.txt").read_text(encoding="utf-8").splitlines()
    tokenizer = tf_text.FastBertTokenizer(vocab, token_out_type=tf.int64, unknown_token="[UNK]",
                                          lower_case_nfd_strip_accents=True)
    return tokenizer


def _word_pieces(texts: Sequence[str], backend: str, weights_dir: str) -> list[list[int]]:
    """Word-piece ids of each caption, without [CLS]/[SEP]."""
    if backend == "tokenizers":
        encodings = _hf_tokenizer(weights_dir).encode_batch(list(texts), add_special_tokens=False)
        return [e.ids for e in encodings]
    if backend == "tf_text":
        ragged = _tf_text_tokenizer(weights_dir).tokenize(list(texts)).merge_dims(1, -1)
        return [row.tolist() for row in ragged.numpy()]
    raise ValueError(f"tokenizer backend {backend!r}: use one of {BACKENDS}")


def tokenize(texts: Sequence[str], *, max_length: int = 256, length: int | None = None,
             pad_multiple: int = 16, backend: str = "tokenizers",
             weights_dir: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Captions -> (ids int32 [b, L], mask int32 [b, L]); the rules are in the module doc."""
    if isinstance(texts, str):
        raise TypeError("tokenize takes a sequence of captions, not one string")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"caption {i} is {type(t).__name__}, not str")
    if not texts:
        raise ValueError("tokenize got no captions")
    limit = max_length if length is None else length
    if not 2 < limit <= max_length:
        raise ValueError(f"length={length} must lie in (2, max_length={max_length}]")
    pieces = _word_pieces(texts, backend, weights_dir)
    for i, p in enumerate(pieces):
        if not p:
            raise ValueError(f"caption {i} ({texts[i]!r}) has no word piece: an empty caption "
                             "has no embedding")
    rows = [[CLS_ID] + p[:limit - 2] + [SEP_ID] for p in pieces]
    if length is None:
        longest = max(len(r) for r in rows)
        length = min(max_length, pad_multiple * math.ceil(longest / pad_multiple))
    ids = np.full((len(rows), length), PAD_ID, np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
        mask[i, :len(r)] = 1
    return ids, mask
