"""The scratch text tower's sentencepiece model: fitted on the train split's captions when a
run starts, saved inside the run, reused on resume and at inference.

Where it lives: `<MODEL_DIR>/text_tokenizer/spm.model` (`spm_path(model_dir)`), never a
path stored in the run's config. The task knows its MODEL_DIR (`MuLanTask.model_dir =
%MODEL_DIR`, bound by the scratch model configs and checked against
`RunConfig.model_dir`); the first time it tokenizes it calls `ensure(model_dir, cfg,
captions)`, which reads the model if the file is there (a resumed run: never refitted) and
otherwise fits it and writes it. `MuLan.load(model_dir)` reads the same file, so a trained
run loads from its MODEL_DIR alone, wherever the directory was moved. Why not a separate
CLI step with a gin path: two commands and a path given twice, and a run that silently
depends on a file outside it; why not the model's bytes in model_config.json: a ~50 kB
blob in a config dataclass that every repr and gin dump would carry.

Rules of the fit (`fit`):
- input: each caption through `clean_text` (what the tokenizer does before encoding too:
  tab, newline and carriage return become spaces, other control characters are deleted,
  as BERT's normaliser does, so a caption of control characters only is empty for both
  towers), then sorted (the order the data pipeline reads them in does not matter),
  duplicates kept (their counts are the statistics a unigram / BPE model learns from);
- deterministic: sentencepiece's random generator seeded, one thread, no sentence
  sampling (`input_sentence_size=0`): two fits of the same captions give the same bytes
  (tested);
- special ids fixed (`SPECIAL_IDS`): pad 0 (the tokenizer pads with 0 for every backend),
  unk 1, bos 2, eos 3; `check_special_ids` refuses a model with others;
- the vocabulary is exactly `ScratchTextConfig.vocab_size` pieces (sentencepiece's hard
  limit): captions too few to support it are an error saying the largest size they allow;
- several hosts each fit from the whole train split (not their shard), so every host gets
  the same bytes; the file is written to a unique temporary name and renamed, so hosts
  sharing a file system never see a torn file.
"""
from __future__ import annotations

import functools
import io
import os
import re
import unicodedata
from typing import Callable, Iterable, Sequence

SPM_DIR = "text_tokenizer"
SPM_FILE = "spm.model"
SPECIAL_IDS = {"pad": 0, "unk": 1, "bos": 2, "eos": 3}
SEED = 0


def clean_text(text: str) -> str:
    """Tab / newline / CR -> space; other control characters (Unicode Cc) deleted."""
    return "".join(" " if ch in "\t\n\r" else ch for ch in text
                   if ch in "\t\n\r" or unicodedata.category(ch) != "Cc")


def spm_path(model_dir: str) -> str:
    return os.path.join(model_dir, SPM_DIR, SPM_FILE)


def check_special_ids(sp, where: str):
    """`sp` if its pad/unk/bos/eos ids are `SPECIAL_IDS`, else a ValueError naming `where`."""
    got = {"pad": sp.pad_id(), "unk": sp.unk_id(), "bos": sp.bos_id(), "eos": sp.eos_id()}
    if got != SPECIAL_IDS:
        raise ValueError(f"{where}: special ids {got}, the scratch tower needs {SPECIAL_IDS} "
                         "(fit it with mufm.mulan.spm.fit)")
    return sp


def fit(captions: Iterable[str], cfg) -> bytes:
    """The serialized sentencepiece model of `captions` for a `ScratchTextConfig` (its
    vocab_size, model_type, character_coverage); the rules are in the module doc."""
    import sentencepiece

    sentences = sorted(c for c in map(clean_text, captions) if c.strip())
    if not sentences:
        raise ValueError("no non-empty caption to fit the scratch text tokenizer on")
    sentencepiece.set_random_generator_seed(SEED)
    out = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=out, vocab_size=cfg.vocab_size,
            model_type=cfg.model_type, character_coverage=cfg.character_coverage,
            num_threads=1, input_sentence_size=0, shuffle_input_sentence=False,
            pad_id=SPECIAL_IDS["pad"], unk_id=SPECIAL_IDS["unk"], bos_id=SPECIAL_IDS["bos"],
            eos_id=SPECIAL_IDS["eos"], hard_vocab_limit=True, minloglevel=2)
    except RuntimeError as e:
        limit = re.search(r"<= (\d+)", str(e))
        if limit:
            raise ValueError(f"ScratchTextConfig.vocab_size={cfg.vocab_size} is more than the "
                             f"{len(sentences)} train captions support: at most {limit.group(1)} "
                             f"pieces") from None
        raise
    return out.getvalue()


def write(model: bytes, path: str) -> str:
    """Writes `model` to `path` atomically (a unique temporary name, then a rename)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}.{os.urandom(4).hex()}"
    with open(tmp, "wb") as f:
        f.write(model)
    os.replace(tmp, path)
    return path


def check_fits_config(path: str, cfg) -> None:
    """A saved model must match the config that will embed its ids: the same vocab_size
    (the embedding table's rows) and model_type; a resumed run with another config is an
    error, not a silent mismatch."""
    import sentencepiece
    from sentencepiece import sentencepiece_model_pb2

    sp = check_special_ids(sentencepiece.SentencePieceProcessor(model_file=path), path)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(sp.serialized_model_proto())
    model_type = sentencepiece_model_pb2.TrainerSpec.ModelType.Name(
        proto.trainer_spec.model_type).lower()
    if sp.get_piece_size() != cfg.vocab_size or model_type != cfg.model_type:
        raise ValueError(f"{path} was fitted with vocab_size={sp.get_piece_size()}, "
                         f"model_type={model_type!r}; ScratchTextConfig says "
                         f"{cfg.vocab_size}, {cfg.model_type!r}: use a new MODEL_DIR or the "
                         f"run's own config")


def ensure(model_dir: str, cfg, captions: Callable[[], Sequence[str]]) -> str:
    """The path of the run's sentencepiece model: read if saved (resume, inference), else
    fitted on `captions()` (called only then) and saved. Checked against `cfg` either way."""
    path = spm_path(model_dir)
    if not os.path.exists(path):
        write(fit(captions(), cfg), path)
    st = os.stat(path)
    # Called for every batch: the check runs once per file version and config.
    _checked(os.path.abspath(path), st.st_size, st.st_mtime_ns, cfg)
    return path


@functools.lru_cache(maxsize=16)
def _checked(path: str, size: int, mtime_ns: int, cfg) -> None:
    del size, mtime_ns  # cache key only
    check_fits_config(path, cfg)
