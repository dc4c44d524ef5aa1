"""The w2v-BERT-like semantic model (Chung et al. 2021), the source of MusicLM's semantic tokens.

    waveform [b, n] (24 kHz)
      -> log-mel, hop 240 (100 Hz): the shared filterbank through mufm.layers.spectral
      -> feature encoder: two 3x3 stride-2 conv2d + ReLU over (time, mel), a projection to
         d_model and a LayerNorm: features f [b, n // 960, d] at exactly 25 Hz
      -> contrastive module: span-masked f (a learned mask vector), a linear projection,
         `contrastive_layers` conformer blocks: context c; InfoNCE between c at masked
         frames and the quantized unmasked f, plus the codebook diversity loss
      -> MLM module: `mlm_layers` conformer blocks on c, a softmax per codebook group
         predicting the quantizer's ids at the masked frames (cross-entropy)

Frames. Log-mel frame i is centred on sample 240 i; 25 Hz frame j summarises mel frames
4j .. 4j + 3 (samples 960 j - 512 .. 960 j + 720 + 512 with n_fft 1024). An input of n
samples gives exactly n // 960 frames: mel frames past 4 (n // 960) are dropped, so the
n % 960 trailing samples of a partial frame only reach the last frame through its window.
With the strided convs padded by 1 on both sides, 4m mel frames become 2m, then m.

The quantizer (`GumbelProductQuantizer`) is wav2vec 2.0's: G groups of V codevectors, a
linear layer gives each group's logits; training picks the argmax of logits + Gumbel noise
with a straight-through Gumbel-softmax gradient at temperature tau (annealed per step from
`gumbel_max_temperature` by `gumbel_decay` down to `gumbel_min_temperature`); evaluation
picks the plain argmax. A code's id per group is the MLM target (w2v-BERT: G = 1, V = 1024).

Masking (`span_mask`) is wav2vec 2.0's process: every frame starts a span with probability
`mask_prob`, and a span masks `mask_length` frames from its start (spans overlap and stop
at the end): frame t is masked with probability 1 - (1 - p)^min(t + 1, M), ~49% of
interior frames for p = 0.065, M = 10. Starts are i.i.d. per frame rather than a fixed
count per utterance, so utterances differ in how many frames they mask.

InfoNCE (`info_nce`): for each masked frame t, the cosine similarity of the projected
context at t and the projected targets at t (the positive) and at K distractors
(`sample_negatives`: uniform over the other masked frames of the same utterance), over a
temperature kappa; a distractor with the positive's ids is the same target and is left out
(fairseq's neg_is_pos). Diversity (`diversity_loss`): (GV - sum_g exp(H(mean_t softmax(
logits_g)))) / GV over valid frames, 0 when every codevector is used equally.

Layers for embeddings (`embed(waveform, layer)`): 0 is the feature encoder's output,
1..C the contrastive blocks, C + 1 .. C + M the MLM blocks. MusicLM's tokens come from
the 7th MLM layer of the 24-layer model: layer C + 7 = 19.

Log-mel scale: a fixed affine (`mel_offset`, `mel_scale`) brings ln(mel + 1e-5) to about
unit scale; statistics of the utterance would make a frame depend on the whole file and
chunked encoding would no longer equal whole-file encoding.
"""
from __future__ import annotations

import dataclasses

import gin
import jax
import jax.numpy as jnp
from flax import nnx

from mufm.audio.features import LOG_MEL_FLOOR
from mufm.layers.conformer import ConformerConfig, ConformerStack, conformer_params
from mufm.layers.conv2d import Conv2d
from mufm.layers.dropout import dropout
from mufm.layers.dtypes import DTYPES
from mufm.layers.linear import Dense, param
from mufm.layers.norms import LayerNorm
from mufm.layers.spectral import mel_spectrogram
from mufm.parallel.logical import constrain

NEG_INF = -1e9  # finite: a frame with no usable distractor keeps a finite loss (zero)
SUBSAMPLING = 4  # two stride-2 convs


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SemanticConfig:
    sample_rate: int = 24_000
    # Front end: the shared log-mel.
    n_fft: int = 1024
    mel_hop: int = 240  # 100 Hz; x 4 subsampling = 960 samples = 25 Hz
    n_mels: int = 80
    mel_offset: float = 4.0  # (ln(mel + 1e-5) + offset) * scale
    mel_scale: float = 0.25
    subsample_channels: int = 64
    # Conformer stacks.
    d_model: int = 256
    num_heads: int = 4
    head_dim: int | None = None
    d_ff: int = 1024
    conv_kernel: int = 15
    contrastive_layers: int = 4
    mlm_layers: int = 4
    relpos_num_buckets: int = 32
    relpos_max_distance: int = 128
    dropout_rate: float = 0.0
    feature_dropout: float = 0.0  # on the feature encoder's output
    # Quantizer: G groups x V codevectors, `codevector_dim` wide in all.
    codebook_groups: int = 1
    codebook_size: int = 1024
    codevector_dim: int = 256
    gumbel_max_temperature: float = 2.0
    gumbel_min_temperature: float = 0.5
    gumbel_decay: float = 0.999995
    # Std of the code-logit weights (fairseq: 1): on layer-normed features the logits then
    # have std ~sqrt(d_model) x this, against the Gumbel noise's ~1.3 (see the quantizer).
    quantizer_weight_std: float = 1.0
    # Scale of the Gumbel noise added to the code logits in training (wav2vec 2.0: 1). At 0
    # the codes are the noise-free argmax and the gradient is a straight-through softmax at
    # the annealed temperature: the targets stay a function of the features however flat
    # the diversity term makes the logits.
    gumbel_noise_scale: float = 1.0
    # Contrastive task.
    final_dim: int = 256  # context and targets are projected to this before the cosine
    num_negatives: int = 100
    contrastive_temperature: float = 0.1
    diversity_weight: float = 0.1
    contrastive_weight: float = 1.0
    mlm_weight: float = 1.0
    # Span masking.
    mask_prob: float = 0.065
    mask_length: int = 10
    # Compute.
    dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"SemanticConfig.dtype={self.dtype!r}: use one of {sorted(DTYPES)}")
        if self.codevector_dim % self.codebook_groups:
            raise ValueError(f"codevector_dim={self.codevector_dim} is not divisible by "
                             f"codebook_groups={self.codebook_groups}")
        if not 0.0 <= self.mask_prob <= 1.0 or self.mask_length < 1:
            raise ValueError(f"mask_prob={self.mask_prob} must lie in [0, 1] and "
                             f"mask_length={self.mask_length} be >= 1")
        if self.num_negatives < 1:
            raise ValueError(f"num_negatives={self.num_negatives} must be >= 1")
        self.conformer(1)  # validates heads, kernel and remat policy

    @property
    def hop(self) -> int:
        """Samples per output frame (960: 25 Hz at 24 kHz)."""
        return self.mel_hop * SUBSAMPLING

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop

    @property
    def num_layers(self) -> int:
        return self.contrastive_layers + self.mlm_layers

    def num_frames(self, num_samples: int) -> int:
        return num_samples // self.hop

    def conformer(self, num_layers: int) -> ConformerConfig:
        return ConformerConfig(d_model=self.d_model, num_layers=num_layers,
                               num_heads=self.num_heads, head_dim=self.head_dim, d_ff=self.d_ff,
                               conv_kernel=self.conv_kernel,
                               relpos_num_buckets=self.relpos_num_buckets,
                               relpos_max_distance=self.relpos_max_distance,
                               dropout_rate=self.dropout_rate, dtype=self.dtype,
                               scan_layers=self.scan_layers, remat_policy=self.remat_policy)

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]


def gumbel_temperature(cfg: SemanticConfig, step: jax.Array) -> jax.Array:
    """wav2vec 2.0's schedule: max(max_t * decay^step, min_t)."""
    t = cfg.gumbel_max_temperature * jnp.power(cfg.gumbel_decay, step.astype(jnp.float32))
    return jnp.maximum(t, cfg.gumbel_min_temperature)


# -- masking and losses (pure functions, tested against numpy) ----------------------------
def span_mask(key: jax.Array, valid: jax.Array, prob: float, length: int) -> jax.Array:
    """[b, t] bool: spans of `length` frames from i.i.d. Bernoulli(prob) starts, within
    `valid` frames."""
    starts = jax.random.bernoulli(key, prob, valid.shape).astype(jnp.int32)
    count = jnp.cumsum(starts, axis=1)
    before = jnp.pad(count, ((0, 0), (length, 0)))[:, :valid.shape[1]]  # count[t - length]
    return ((count - before) > 0) & (valid > 0)


def masked_fraction_expected(t: int, prob: float, length: int) -> float:
    """Expected masked fraction of a t-frame utterance under `span_mask` (all valid)."""
    reach = [min(i + 1, length) for i in range(t)]
    return sum(1.0 - (1.0 - prob) ** r for r in reach) / t


def sample_negatives(key: jax.Array, masked: jax.Array, num: int) -> tuple[jax.Array, jax.Array]:
    """(indices [b, t, num], usable [b, t]): for every frame, `num` frames drawn uniformly
    with replacement among the masked frames of its utterance other than itself (an
    unmasked frame's draws are never used). `usable` is False
    where the utterance has fewer than two masked frames (no distractor exists)."""
    b, t = masked.shape
    m = masked.astype(jnp.int32)
    count = jnp.sum(m, axis=1)  # [b]
    # Masked frames first, in order: order[b, r] is the r-th masked frame of row b.
    order = jnp.argsort(1 - m, axis=1, stable=True)
    rank = jnp.cumsum(m, axis=1) - 1  # a masked frame's own rank among the masked
    pool = jnp.maximum(count - 1, 1)[:, None, None]
    r = jax.random.randint(key, (b, t, num), 0, pool)
    r = jnp.where((r >= rank[:, :, None]) & (m[:, :, None] > 0), r + 1, r)  # skip itself
    idx = jnp.take_along_axis(order, r.reshape(b, t * num), axis=1).reshape(b, t, num)
    return idx, jnp.broadcast_to((count >= 2)[:, None], (b, t))


def info_nce(context: jax.Array, targets: jax.Array, ids: jax.Array, masked: jax.Array,
             negatives: jax.Array, usable: jax.Array, temperature: float
             ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(summed loss, correct count, frames) over masked frames.

    context, targets [b, t, f]; ids [b, t, G]; negatives [b, t, K] frame indices. The
    logits of frame t are cos(c_t, q_t) / kappa, then cos(c_t, q_n) / kappa for each
    distractor n, with NEG_INF where q_n has q_t's ids or no distractor exists; the loss
    is the cross-entropy with the positive first; correct: the positive scores highest."""
    normalise = lambda v: v * jax.lax.rsqrt(jnp.maximum(jnp.sum(v * v, -1, keepdims=True), 1e-16))
    c, q = normalise(context.astype(jnp.float32)), normalise(targets.astype(jnp.float32))
    sim = constrain(jnp.einsum("btf,bsf->bts", c, q), ("batch", "length", "target_length"))
    sim = sim / temperature
    pos = jnp.sum(c * q, -1) / temperature
    neg = jnp.take_along_axis(sim, negatives, axis=2)  # [b, t, K]
    neg_ids = jax.vmap(lambda i, n: i[n])(ids, negatives)  # [b, t, K, G]
    same = jnp.all(neg_ids == ids[:, :, None, :], axis=-1)
    neg = jnp.where(same | ~usable[..., None], NEG_INF, neg)
    logits = jnp.concatenate([pos[..., None], neg], axis=-1)
    ce = jax.nn.logsumexp(logits, axis=-1) - pos
    w = masked.astype(jnp.float32)
    correct = (jnp.argmax(logits, axis=-1) == 0).astype(jnp.float32)
    return jnp.sum(ce * w), jnp.sum(correct * w), jnp.sum(w)


def codebook_statistics(logits: jax.Array, ids: jax.Array, valid: jax.Array
                        ) -> dict[str, jax.Array]:
    """logits [b, t, G, V] (noise-free), chosen ids [b, t, G], valid [b, t] ->
    diversity_loss = (GV - sum_g exp(H(p_g))) / GV with p_g the mean softmax over valid
    frames (wav2vec 2.0), and the perplexity exp(H) of the chosen codes' frequencies,
    averaged over groups."""
    g, v = logits.shape[-2:]
    w = valid.astype(jnp.float32)[..., None, None]
    n = jnp.maximum(jnp.sum(w), 1.0)
    entropy = lambda p: -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), -1)
    probs = jnp.sum(jax.nn.softmax(logits.astype(jnp.float32), axis=-1) * w, axis=(0, 1)) / n
    prob_perplexity = jnp.exp(entropy(probs))  # [G]
    hits = jnp.sum(jax.nn.one_hot(ids, v, dtype=jnp.float32) * w, axis=(0, 1)) / n
    return {"diversity_loss": (g * v - jnp.sum(prob_perplexity)) / (g * v),
            "prob_perplexity": jnp.mean(prob_perplexity),
            "codebook_perplexity": jnp.mean(jnp.exp(entropy(hits)))}


def mlm_cross_entropy(logits: jax.Array, ids: jax.Array, masked: jax.Array
                      ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(summed cross-entropy, correct count, terms) over masked frames x groups.
    logits [b, t, G, V], ids [b, t, G]."""
    logits = logits.astype(jnp.float32)
    target = jnp.take_along_axis(logits, ids[..., None], axis=-1)[..., 0]
    ce = jax.nn.logsumexp(logits, axis=-1) - target
    w = jnp.broadcast_to(masked.astype(jnp.float32)[..., None], ce.shape)
    correct = (jnp.argmax(logits, axis=-1) == ids).astype(jnp.float32)
    return jnp.sum(ce * w), jnp.sum(correct * w), jnp.sum(w)


# -- modules ------------------------------------------------------------------------------
class FeatureEncoder(nnx.Module):
    def __init__(self, cfg: SemanticConfig, *, rngs: nnx.Rngs):
        dtype, c = cfg.compute_dtype, cfg.subsample_channels
        self.cfg = cfg
        self.conv1 = Conv2d(1, c, dtype=dtype, rngs=rngs)
        self.conv2 = Conv2d(c, c, dtype=dtype, rngs=rngs)
        mels = -(-(-(-cfg.n_mels // 2)) // 2)  # ceil(ceil(n_mels / 2) / 2)
        self.proj = Dense((mels, c), (cfg.d_model,), in_axes=("mel", "channels"),
                          out_axes=("embed",), dtype=dtype, rngs=rngs)
        self.norm = LayerNorm(cfg.d_model, dtype=dtype, rngs=rngs)

    def log_mel(self, waveform: jax.Array) -> jax.Array:
        """[b, n] -> [b, 4 (n // hop), n_mels], scaled log-mel at 100 Hz."""
        cfg = self.cfg
        mel = mel_spectrogram(waveform.astype(jnp.float32), sample_rate=cfg.sample_rate,
                              n_fft=cfg.n_fft, hop=cfg.mel_hop, n_mels=cfg.n_mels)
        mel = mel[:, :SUBSAMPLING * cfg.num_frames(waveform.shape[-1])]
        return (jnp.log(mel + LOG_MEL_FLOOR) + cfg.mel_offset) * cfg.mel_scale

    def __call__(self, waveform: jax.Array) -> jax.Array:
        """[b, n] -> features [b, n // hop, d_model]."""
        x = self.log_mel(waveform)[..., None]
        x = jax.nn.relu(self.conv2(jax.nn.relu(self.conv1(x))))
        return constrain(self.norm(self.proj(x)), ("batch", "length", "embed"))


class GumbelProductQuantizer(nnx.Module):
    def __init__(self, cfg: SemanticConfig, *, rngs: nnx.Rngs):
        g, v = cfg.codebook_groups, cfg.codebook_size
        # Weights of std quantizer_weight_std (fairseq: 1, weight_proj.normal_(0, 1)): logits of std
        # ~sqrt(d_model) on the layer-normed features: code choices are then set by the
        # features, not by the Gumbel noise (std ~1.3). With fan-in init (logits of std ~1)
        # the noise picks the codes, the targets carry nothing, and 500 steps of semantic_base on the
        # medium corpus stayed at chance (contrastive loss = ln(1 + num_negatives), MLM
        # loss = ln(codebook_size)) while the diversity term flattened every frame's softmax.
        self.logits = Dense((cfg.d_model,), (g, v), in_axes=("embed",),
                            out_axes=("codebook_groups", "codebook"),
                            init_scale=cfg.d_model * cfg.quantizer_weight_std ** 2, rngs=rngs)
        self.codevectors = param(rngs, nnx.initializers.uniform(1.0),
                                 (g, v, cfg.codevector_dim // g),
                                 ("codebook_groups", "codebook", "codebook_dim"))
        self.groups, self.size = g, v
        self.noise_scale = cfg.gumbel_noise_scale

    def __call__(self, features: jax.Array, *, temperature: jax.Array | float = 1.0,
                 key: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
        """features [b, t, d] -> (quantized [b, t, codevector_dim], ids [b, t, G], noise-free
        logits [b, t, G, V]). With `key`: Gumbel-noised hard choice, straight-through
        Gumbel-softmax gradient at `temperature`; without: the argmax."""
        logits = constrain(self.logits(features).astype(jnp.float32),
                           ("batch", "length", "codebook_groups", "codebook"))
        if key is None:
            ids = jnp.argmax(logits, axis=-1)
            onehot = jax.nn.one_hot(ids, self.size, dtype=jnp.float32)
        else:
            noisy = logits + self.noise_scale * jax.random.gumbel(key, logits.shape, jnp.float32)
            ids = jnp.argmax(noisy, axis=-1)
            soft = jax.nn.softmax(noisy / temperature, axis=-1)
            onehot = jax.nn.one_hot(ids, self.size, dtype=jnp.float32)
            onehot = onehot + soft - jax.lax.stop_gradient(soft)
        quantized = jnp.einsum("btgv,gvc->btgc", onehot, self.codevectors[...])
        quantized = quantized.reshape(*quantized.shape[:2], -1)
        return constrain(quantized, ("batch", "length", "codebook_dim")), ids.astype(jnp.int32), logits


class SemanticModel(nnx.Module):
    def __init__(self, cfg: SemanticConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dtype = cfg.compute_dtype
        dense = lambda i, o, ia, oa: Dense((i,), (o,), in_axes=ia, out_axes=oa, dtype=dtype,
                                           rngs=rngs)
        self.encoder = FeatureEncoder(cfg, rngs=rngs)
        self.mask_embedding = param(rngs, nnx.initializers.uniform(1.0), (cfg.d_model,), ("embed",))
        self.input_proj = dense(cfg.d_model, cfg.d_model, ("embed",), ("embed",))
        self.contrastive = ConformerStack(cfg.conformer(cfg.contrastive_layers), rngs=rngs)
        self.quantizer = GumbelProductQuantizer(cfg, rngs=rngs)
        self.context_proj = dense(cfg.d_model, cfg.final_dim, ("embed",), ("final",))
        self.target_proj = Dense((cfg.codevector_dim,), (cfg.final_dim,), in_axes=("codebook_dim",),
                                 out_axes=("final",), rngs=rngs)
        self.mlm = ConformerStack(cfg.conformer(cfg.mlm_layers), rngs=rngs)
        self.mlm_head = Dense((cfg.d_model,), (cfg.codebook_groups, cfg.codebook_size),
                              in_axes=("embed",), out_axes=("codebook_groups", "codebook"),
                              dtype=dtype, rngs=rngs)

    def valid_frames(self, num_samples: int, lengths: jax.Array | None, batch: int) -> jax.Array:
        """[b, t] 1.0 where frame j lies within the example's samples (j < length // hop)."""
        t = self.cfg.num_frames(num_samples)
        if lengths is None:
            return jnp.ones((batch, t), jnp.float32)
        return (jnp.arange(t)[None] < (lengths // self.cfg.hop)[:, None]).astype(jnp.float32)

    def embed(self, waveform: jax.Array, layer: int, lengths: jax.Array | None = None) -> jax.Array:
        """[b, n] -> [b, n // hop, d_model]: the output of layer `layer` (0: the feature
        encoder; 1..C contrastive blocks; C + 1 .. C + M MLM blocks), unmasked, no dropout."""
        cfg = self.cfg
        if not 0 <= layer <= cfg.num_layers:
            raise ValueError(f"layer={layer} outside [0, {cfg.num_layers}] (0: feature encoder, "
                             f"1..{cfg.contrastive_layers}: contrastive, then MLM)")
        valid = self.valid_frames(waveform.shape[-1], lengths, waveform.shape[0])
        x = self.encoder(waveform)
        if layer == 0:
            return x
        x = self.contrastive(self.input_proj(x), valid, num_layers=min(layer, cfg.contrastive_layers))
        if layer <= cfg.contrastive_layers:
            return x
        return self.mlm(x, valid, num_layers=layer - cfg.contrastive_layers)

    def __call__(self, waveform: jax.Array, lengths: jax.Array | None = None, *, key: jax.Array,
                 train: bool = False, temperature: jax.Array | float = 1.0
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(loss, metrics) of one batch. `key` draws the masks and distractors; with
        `train`, also the Gumbel noise and dropout."""
        cfg = self.cfg
        mask_key, neg_key, gumbel_key, drop_key = jax.random.split(key, 4)
        valid = self.valid_frames(waveform.shape[-1], lengths, waveform.shape[0])
        features = self.encoder(waveform)
        features = dropout(features, cfg.feature_dropout,
                           jax.random.fold_in(drop_key, 0) if train else None)
        masked = span_mask(mask_key, valid, cfg.mask_prob, cfg.mask_length)
        x = jnp.where(masked[..., None], self.mask_embedding[...].astype(features.dtype), features)
        ctx = self.contrastive(self.input_proj(x), valid,
                               key=jax.random.fold_in(drop_key, 1) if train else None)
        quantized, ids, q_logits = self.quantizer(features, temperature=temperature,
                                                  key=gumbel_key if train else None)
        negatives, usable = sample_negatives(neg_key, masked, cfg.num_negatives)
        c_sum, c_correct, n_masked = info_nce(self.context_proj(ctx), self.target_proj(quantized),
                                              ids, masked, negatives, usable,
                                              cfg.contrastive_temperature)
        stats = codebook_statistics(q_logits, ids, valid)
        h = self.mlm(ctx, valid, key=jax.random.fold_in(drop_key, 2) if train else None)
        mlm_logits = constrain(self.mlm_head(h), ("batch", "length", "codebook_groups", "codebook"))
        m_sum, m_correct, m_terms = mlm_cross_entropy(mlm_logits, jax.lax.stop_gradient(ids), masked)
        denom = jnp.maximum(n_masked, 1.0)
        contrastive = c_sum / denom
        mlm = m_sum / jnp.maximum(m_terms, 1.0)
        loss = (cfg.contrastive_weight * (contrastive + cfg.diversity_weight * stats["diversity_loss"])
                + cfg.mlm_weight * mlm)
        metrics = dict(stats, loss=loss, contrastive_loss=contrastive, mlm_loss=mlm,
                       contrastive_accuracy=c_correct / denom,
                       mlm_accuracy=m_correct / jnp.maximum(m_terms, 1.0),
                       masked_fraction=n_masked / jnp.maximum(jnp.sum(valid), 1.0),
                       masked_frames=n_masked)
        return loss, metrics


def train_flops(cfg: SemanticConfig, batch: int, num_samples: int) -> float:
    """Analytic model FLOPs of one training step (forward + backward = 3x forward): the
    feature encoder's convs and projection, the conformer matmuls and attention, the
    quantizer, the projections, the similarity matrix and the MLM head."""
    t = cfg.num_frames(num_samples)
    c = cfg.subsample_channels
    f1, f2 = -(-cfg.n_mels // 2), -(-(-(-cfg.n_mels // 2)) // 2)
    conv = 2 * 9 * (1 * c * 2 * t * f1 + c * c * t * f2)
    proj = 2 * t * f2 * c * cfg.d_model
    conformer = cfg.conformer(1)
    blocks = cfg.num_layers * t * (2 * conformer_params(conformer)
                                   + 4 * t * cfg.num_heads * conformer.kv_dim)
    heads = 2 * t * (cfg.d_model * cfg.d_model  # input projection
                     + 2 * cfg.d_model * cfg.codebook_groups * cfg.codebook_size  # quantizer, MLM
                     + cfg.codevector_dim * cfg.codebook_size  # codevector lookup as a matmul
                     + (cfg.d_model + cfg.codevector_dim) * cfg.final_dim)
    similarity = 2 * t * t * cfg.final_dim
    return 3.0 * batch * (conv + proj + blocks + heads + similarity)
