"""Caption tokenisation as TensorFlow ops, so a SavedModel takes raw strings: the rules of
mufm/mulan/tokenizer.py (truncation to `length - 2` pieces, [CLS]/[SEP] or bos/eos, right
padding with 0, a caption with no piece refused) on tensorflow-text's tokenizers:

- the MiniLM tower: `FastBertTokenizer` on the shipped vocab.txt (the `tf_text` backend of
  mufm/mulan/tokenizer.py: the same ids as the reference on ordinary captions, tested there;
  the two rare differences are listed in that module's docstring);
- the scratch tower: `SentencepieceTokenizer` on the run's own spm.model, after the
  control-character cleaning of `mufm.mulan.spm.clean_text` done with regex ops.
"""
from __future__ import annotations

from mufm.mulan.tokenizer import special_ids


class GraphTokenizer:
    """`tokenize(text: tf.string [b]) -> (ids int32 [b, length], mask int32 [b, length])`,
    built once from a `MuLan`'s tokenizer settings (`MuLan.tokenizer_kwargs`)."""

    def __init__(self, kwargs: dict, length: int):
        import tensorflow as tf
        import tensorflow_text as tf_text

        self.backend, self.length = kwargs["backend"], int(length)
        if self.backend == "sentencepiece":
            with open(kwargs["spm_path"], "rb") as f:
                model = f.read()
            self._tokenizer = tf_text.SentencepieceTokenizer(model=model, out_type=tf.int32)
        else:  # "tokenizers" or "tf_text": the MiniLM vocabulary either way
            from mufm.mulan.weights import minilm_dir

            vocab = (minilm_dir(kwargs["weights_dir"]) / "vocab.txt").read_text(
                encoding="utf-8").splitlines()
            self._tokenizer = tf_text.FastBertTokenizer(
                vocab, token_out_type=tf.int32, unknown_token="[UNK]",
                lower_case_nfd_strip_accents=True)
        self.first, self.last = special_ids(self.backend)

    def pieces(self, text):
        """Ragged [b, None] int32 piece ids of each caption, no specials."""
        import tensorflow as tf

        if self.backend == "sentencepiece":
            # clean_text: tab / newline / CR -> space, the other control characters deleted.
            text = tf.strings.regex_replace(text, r"[\t\n\r]", " ")
            text = tf.strings.regex_replace(text, r"\p{Cc}", "")
            return self._tokenizer.tokenize(text)
        return self._tokenizer.tokenize(text).merge_dims(1, -1)

    def tokenize(self, text):
        import tensorflow as tf

        pieces = self.pieces(text)
        counts = pieces.row_lengths()
        check = tf.debugging.assert_greater(
            counts, tf.zeros_like(counts),
            message="a caption has no word piece (empty, or whitespace and control characters "
                    "only): an empty caption has no embedding")
        with tf.control_dependencies([check]):
            pieces = pieces[:, :self.length - 2]
        b = tf.shape(text)[0]
        rows = tf.concat([tf.fill([b, 1], self.first), pieces, tf.fill([b, 1], self.last)],
                         axis=1)
        ids = rows.to_tensor(default_value=0, shape=[None, self.length])
        mask = tf.sequence_mask(rows.row_lengths(), self.length, dtype=tf.int32)
        return tf.cast(ids, tf.int32), mask
