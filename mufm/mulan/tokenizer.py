"""Host-side tokenisation of captions for both text towers: WordPiece (MiniLM) and
sentencepiece (the `scratch` tower, mufm/mulan/spm.py).

The reference is the shipped `tokenizer.json` read by HF `tokenizers` (the Rust library
sentence-transformers itself runs): BERT normaliser (clean control characters, lowercase,
strip accents through NFD), BERT pre-tokeniser, WordPiece, `[CLS] ... [SEP]`.

`backend="tf_text"` runs tensorflow-text's `FastBertTokenizer` on `vocab.txt` instead, the
op a SavedModel can carry in-graph. It gives the same ids on ordinary captions (tested) but
differs on two rare inputs: it normalises with NFKD (the ligature "ﬁ" becomes "fi", "½"
becomes "1⁄2", where the reference keeps them and maps them to [UNK]) and it splits words at
control characters where the reference deletes them ("x\\x00y" -> "x", "y" vs "xy").

`backend="sentencepiece"` encodes with the run's own sentencepiece model at `spm_path`
(the scratch tower); its special ids are fixed when the model is fitted (`spm.SPECIAL_IDS`:
pad 0, unk 1, bos 2, eos 3), so pad is 0 for every backend and bos / eos take the places of
[CLS] / [SEP].

Rules, the same for every backend (tested in tests/mulan/test_text.py and test_scratch.py):
- truncation: a caption longer than `length` tokens keeps its first `length - 2` word
  pieces, then `[SEP]` (what sentence-transformers does at `max_seq_length` 256; with
  sentencepiece its first `length - 2` pieces, then eos);
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
import os
from typing import Sequence

import numpy as np

from mufm.mulan.weights import minilm_dir

CLS_ID, SEP_ID, PAD_ID, UNK_ID = 101, 102, 0, 100
BACKENDS = ("tokenizers", "tf_text", "sentencepiece")


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


def _spm_processor(spm_path: str):
    """The sentencepiece model at `spm_path`, cached by (path, size, mtime): a model
    rewritten in place (a refit in a test) is read again, never served stale."""
    if not spm_path:
        raise ValueError("the sentencepiece backend needs spm_path (the run's "
                         "text_tokenizer/spm.model, mufm/mulan/spm.py)")
    try:
        st = os.stat(spm_path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{spm_path}: no sentencepiece model there (a scratch run fits "
                                "it into MODEL_DIR/text_tokenizer/ when training starts)") from None
    return _spm_cached(os.path.abspath(spm_path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _spm_cached(path: str, size: int, mtime_ns: int):
    del size, mtime_ns  # cache key only
    import sentencepiece

    from mufm.mulan.spm import check_special_ids

    return check_special_ids(sentencepiece.SentencePieceProcessor(model_file=path), path)


def special_ids(backend: str) -> tuple[int, int]:
    """(first, last) ids around a caption's pieces: [CLS]/[SEP] or sentencepiece's bos/eos."""
    if backend == "sentencepiece":
        from mufm.mulan.spm import SPECIAL_IDS

        return SPECIAL_IDS["bos"], SPECIAL_IDS["eos"]
    return CLS_ID, SEP_ID


def _word_pieces(texts: Sequence[str], backend: str, weights_dir: str,
                 spm_path: str = "") -> list[list[int]]:
    """Piece ids of each caption, without [CLS]/[SEP] (bos/eos)."""
    if backend == "sentencepiece":
        from mufm.mulan.spm import clean_text

        return _spm_processor(spm_path).encode([clean_text(t) for t in texts], out_type=int)
    if backend == "tokenizers":
        encodings = _hf_tokenizer(weights_dir).encode_batch(list(texts), add_special_tokens=False)
        return [e.ids for e in encodings]
    if backend == "tf_text":
        ragged = _tf_text_tokenizer(weights_dir).tokenize(list(texts)).merge_dims(1, -1)
        return [row.tolist() for row in ragged.numpy()]
    raise ValueError(f"tokenizer backend {backend!r}: use one of {BACKENDS}")


def tokenize(texts: Sequence[str], *, max_length: int = 256, length: int | None = None,
             pad_multiple: int = 16, backend: str = "tokenizers",
             weights_dir: str = "", spm_path: str = "") -> tuple[np.ndarray, np.ndarray]:
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
    pieces = _word_pieces(texts, backend, weights_dir, spm_path)
    for i, p in enumerate(pieces):
        if not p:
            raise ValueError(f"caption {i} ({texts[i]!r}) has no word piece: an empty caption "
                             "has no embedding")
    first, last = special_ids(backend)
    rows = [[first] + list(p[:limit - 2]) + [last] for p in pieces]
    if length is None:
        longest = max(len(r) for r in rows)
        length = min(max_length, pad_multiple * math.ceil(longest / pad_multiple))
    ids = np.full((len(rows), length), PAD_ID, np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
        mask[i, :len(r)] = 1
    return ids, mask
