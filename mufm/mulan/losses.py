"""MuLan's contrastive objective: symmetric InfoNCE over the global batch (CLIP's loss).

For B (audio, text) pairs with unit embeddings a_i, t_j:

    logits[i, j] = s * <a_i, t_j>,   s = exp(min(log_scale, ln max_scale))
    loss = 1/2 (CE_rows + CE_cols),  CE_rows = mean_i (logsumexp_j logits[i, j] - logits[i, i])

so each clip must pick its own caption among the B captions and each caption its own clip.
`log_scale` is learned (CLIP: initialised at ln(1 / 0.07), the scale clamped at 100); the
clamp is in the forward pass, so the parameter gets no gradient above it. The reported
`temperature` is 1 / s.

The batch is the *global* one: under jit the embeddings are sharded on the batch axis and
the [B, B] logits are one logical array, so every example's negatives are the other B - 1
examples of every device (tested: 8 devices give the 1-device loss and gradients).

`weights` [B] (1 = real, 0 = padding) lets an evaluation pad a short last batch: a padding
row is neither an anchor nor a candidate. Captions that happen to be identical within a
batch are still negatives of each other (CLIP does the same; the corpus rarely repeats a
caption and augmentation makes repeats rarer still).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from mufm.parallel.logical import constrain

NEG_INF = -1e9  # finite: a row with no candidate keeps a finite (zero-weighted) loss


def logit_scale(log_scale: jax.Array, max_scale: float) -> jax.Array:
    return jnp.exp(jnp.minimum(log_scale.astype(jnp.float32), math.log(max_scale)))


def contrastive_loss(audio: jax.Array, text: jax.Array, scale: jax.Array,
                     weights: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss, metrics) of unit embeddings audio [B, D], text [B, D] at logit scale `scale`.

    Metrics: loss, audio_to_text_loss / text_to_audio_loss, audio_to_text_accuracy /
    text_to_audio_accuracy (the matching pair scores highest in its row / column: in-batch
    retrieval R@1 among the batch), temperature, examples (the weighted count).
    """
    b = audio.shape[0]
    w = jnp.ones((b,), jnp.float32) if weights is None else weights.astype(jnp.float32)
    a, t = audio.astype(jnp.float32), text.astype(jnp.float32)
    logits = constrain(scale * (a @ t.T), ("batch", None))  # [audio i, text j]
    # Padding rows/columns are no candidates.
    candidate = (w[:, None] > 0) & (w[None, :] > 0)
    logits = jnp.where(candidate, logits, NEG_INF)
    diag = jnp.diagonal(logits)
    rows = jax.nn.logsumexp(logits, axis=1) - diag  # audio -> its caption
    cols = jax.nn.logsumexp(logits, axis=0) - diag  # caption -> its clip
    n = jnp.maximum(jnp.sum(w), 1.0)
    a2t, t2a = jnp.sum(rows * w) / n, jnp.sum(cols * w) / n
    idx = jnp.arange(b)
    acc_a2t = jnp.sum((jnp.argmax(logits, axis=1) == idx) * w) / n
    acc_t2a = jnp.sum((jnp.argmax(logits, axis=0) == idx) * w) / n
    loss = 0.5 * (a2t + t2a)
    return loss, {"loss": loss, "audio_to_text_loss": a2t, "text_to_audio_loss": t2a,
                  "audio_to_text_accuracy": acc_a2t, "text_to_audio_accuracy": acc_t2a,
                  "temperature": 1.0 / scale, "examples": jnp.sum(w)}
