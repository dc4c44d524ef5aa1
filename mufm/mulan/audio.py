"""MuLan's audio tower: 10 s of 24 kHz audio -> a unit vector of the 128-d joint space.

    waveform [b, n] (n <= window samples), lengths [b]
      -> log-mel, hop 240 (100 Hz): the shared filterbank (mufm.layers.spectral)
      -> two 3x3 stride-2 Conv2d + ReLU over (time, mel): 25 Hz frames
      -> a projection to d_model and a LayerNorm
      -> a ConformerStack (mufm.layers.conformer) over the valid frames
      -> mean over the valid frames -> Dense d_model -> 128 -> L2 normalisation

Frames. As in the semantic front end, an input of n samples gives n // 960 frames at
25 Hz (frame j summarises mel frames 4j .. 4j + 3); frame j is valid when it lies inside
the example's `lengths` samples (j < length // 960). A 10 s window is 250 frames.

Clips of any length (`window_starts`, `embed_clip` in mufm/mulan/embed.py): a clip
longer than the window is cut into windows with a 1 s hop (MusicLM: "the mean over
10 s windows with a 1 s hop"), the last window ending at the clip's end so no tail is
dropped; the clip's embedding is the mean of the windows' unit embeddings, renormalised.
A clip shorter than the window is zero-padded and masked (its padding frames never reach
the pooled vector, tested); one shorter than `min_seconds` (1 s: 25 frames) is refused,
since a few frames say little about "the music".

Silence: the log-mel has a floor (LOG_MEL_FLOOR), every norm has an epsilon and the pooling
divides by max(frames, 1), so an all-zero input gives a finite embedding and gradient.

Log-mel scale: a fixed affine (`mel_offset`, `mel_scale`), as in the semantic model, so a
window's features do not depend on the statistics of anything else.
"""
from __future__ import annotations

import dataclasses

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mufm.audio.features import LOG_MEL_FLOOR
from mufm.layers.conformer import ConformerConfig, ConformerStack, conformer_params
from mufm.layers.conv2d import Conv2d
from mufm.layers.dtypes import DTYPES
from mufm.layers.linear import Dense
from mufm.layers.norms import LayerNorm
from mufm.layers.spectral import mel_spectrogram
from mufm.parallel.logical import constrain

SUBSAMPLING = 4  # two stride-2 convs


@gin.configurable
@dataclasses.dataclass(frozen=True)
class AudioTowerConfig:
    sample_rate: int = 24_000
    window_seconds: float = 10.0  # MuLan's audio window
    hop_seconds: float = 1.0  # windows of a longer clip start every hop (MusicLM)
    min_seconds: float = 1.0  # shorter clips are refused (mufm/mulan/embed.py)
    # Front end: the shared log-mel.
    n_fft: int = 1024
    mel_hop: int = 240  # 100 Hz; x 4 subsampling = 960 samples = 25 Hz
    n_mels: int = 64
    mel_offset: float = 4.0  # (ln(mel + 1e-5) + offset) * scale: about unit scale
    mel_scale: float = 0.25
    subsample_channels: int = 32
    # Conformer.
    d_model: int = 256
    num_layers: int = 4
    num_heads: int = 4
    head_dim: int | None = None
    d_ff: int = 1024
    conv_kernel: int = 15
    relpos_num_buckets: int = 32
    relpos_max_distance: int = 128
    dropout_rate: float = 0.0
    joint_dim: int = 128
    dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"AudioTowerConfig.dtype={self.dtype!r}: use one of {sorted(DTYPES)}")
        if self.window_samples % self.hop or self.window_samples < self.hop:
            raise ValueError(f"window_seconds={self.window_seconds} must be a whole number (>= 1) "
                             f"of {self.hop}-sample frames")
        if not 0 < self.min_seconds <= self.window_seconds:
            raise ValueError(f"min_seconds={self.min_seconds} must lie in (0, window_seconds]")
        if self.hop_seconds <= 0:
            raise ValueError(f"hop_seconds={self.hop_seconds} must be > 0")
        self.conformer()  # validates heads, kernel, remat policy

    @property
    def hop(self) -> int:
        """Samples per output frame (960: 25 Hz at 24 kHz)."""
        return self.mel_hop * SUBSAMPLING

    @property
    def window_samples(self) -> int:
        return int(round(self.window_seconds * self.sample_rate))

    @property
    def hop_samples(self) -> int:
        return int(round(self.hop_seconds * self.sample_rate))

    @property
    def min_samples(self) -> int:
        return int(round(self.min_seconds * self.sample_rate))

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    def num_frames(self, num_samples: int) -> int:
        return num_samples // self.hop

    def conformer(self) -> ConformerConfig:
        return ConformerConfig(d_model=self.d_model, num_layers=self.num_layers,
                               num_heads=self.num_heads, head_dim=self.head_dim, d_ff=self.d_ff,
                               conv_kernel=self.conv_kernel,
                               relpos_num_buckets=self.relpos_num_buckets,
                               relpos_max_distance=self.relpos_max_distance,
                               dropout_rate=self.dropout_rate, dtype=self.dtype,
                               scan_layers=self.scan_layers, remat_policy=self.remat_policy)


def safe_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x / |x| over the last axis, in fp32, with a finite gradient at x = 0 (sqrt(max(., eps^2)))."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), -1, keepdims=True), eps * eps))


def window_starts(num_samples: int, window: int, hop: int) -> np.ndarray:
    """First samples of the windows covering a clip: 0, hop, 2 hop, ... while a whole window
    fits, plus one window ending at the clip's end when the hops do not land there; [0] for a
    clip no longer than one window."""
    if num_samples <= window:
        return np.zeros((1,), np.int64)
    starts = list(range(0, num_samples - window + 1, hop))
    if starts[-1] != num_samples - window:
        starts.append(num_samples - window)
    return np.asarray(starts, np.int64)


class AudioTower(nnx.Module):
    """waveform [b, n] (n <= window), lengths [b] -> joint embeddings [b, joint_dim], |e| = 1."""

    def __init__(self, cfg: AudioTowerConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dtype, c = cfg.compute_dtype, cfg.subsample_channels
        self.conv1 = Conv2d(1, c, dtype=dtype, rngs=rngs)
        self.conv2 = Conv2d(c, c, dtype=dtype, rngs=rngs)
        mels = -(-(-(-cfg.n_mels // 2)) // 2)  # ceil(ceil(n_mels / 2) / 2)
        self.input_proj = Dense((mels, c), (cfg.d_model,), in_axes=("mel", "channels"),
                                out_axes=("embed",), dtype=dtype, rngs=rngs)
        self.input_norm = LayerNorm(cfg.d_model, dtype=dtype, rngs=rngs)
        self.conformer = ConformerStack(cfg.conformer(), rngs=rngs)
        self.projection = Dense((cfg.d_model,), (cfg.joint_dim,), in_axes=("embed",),
                                out_axes=("joint",), dtype=dtype, use_bias=True, rngs=rngs)

    def log_mel(self, waveform: jax.Array) -> jax.Array:
        """[b, n] -> [b, 4 (n // hop), n_mels], scaled log-mel at 100 Hz."""
        cfg = self.cfg
        mel = mel_spectrogram(waveform.astype(jnp.float32), sample_rate=cfg.sample_rate,
                              n_fft=cfg.n_fft, hop=cfg.mel_hop, n_mels=cfg.n_mels)
        mel = mel[:, :SUBSAMPLING * cfg.num_frames(waveform.shape[-1])]
        return constrain((jnp.log(mel + LOG_MEL_FLOOR) + cfg.mel_offset) * cfg.mel_scale,
                         ("batch", "length", "mel"))

    def valid_frames(self, num_samples: int, lengths: jax.Array) -> jax.Array:
        """[b, t] 1.0 where frame j lies within the example's samples (j < length // hop)."""
        t = self.cfg.num_frames(num_samples)
        return (jnp.arange(t)[None] < (lengths // self.cfg.hop)[:, None]).astype(jnp.float32)

    def frames(self, waveform: jax.Array, lengths: jax.Array, key: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array]:
        """(the conformer's output frames [b, t, d_model], valid [b, t])."""
        if waveform.shape[-1] > self.cfg.window_samples:
            raise ValueError(f"{waveform.shape[-1]} samples exceed the tower's window of "
                             f"{self.cfg.window_samples}: cut longer clips into windows "
                             f"(mufm.mulan.embed)")
        valid = self.valid_frames(waveform.shape[-1], lengths)
        x = self.log_mel(waveform)[..., None]
        x = jax.nn.relu(self.conv2(jax.nn.relu(self.conv1(x))))
        x = constrain(self.input_norm(self.input_proj(x)), ("batch", "length", "embed"))
        return self.conformer(x, valid, key=key), valid

    def __call__(self, waveform: jax.Array, lengths: jax.Array | None = None,
                 key: jax.Array | None = None) -> jax.Array:
        if lengths is None:
            lengths = jnp.full(waveform.shape[:1], waveform.shape[-1], jnp.int32)
        x, valid = self.frames(waveform, lengths, key)
        # Masked mean: padding frames never reach the pooled vector.
        w = valid[..., None]
        pooled = jnp.sum(x.astype(jnp.float32) * w, 1) / jnp.maximum(jnp.sum(w, 1), 1.0)
        pooled = constrain(pooled, ("batch", "embed"))
        return safe_normalize(constrain(self.projection(pooled), ("batch", "joint")))


def audio_flops(cfg: AudioTowerConfig, batch: int, num_samples: int) -> float:
    """Analytic forward FLOPs of the tower on `batch` windows of `num_samples`: the convs,
    the input projection, the conformer (matmuls + attention) and the output projection."""
    t = cfg.num_frames(num_samples)
    c = cfg.subsample_channels
    f1, f2 = -(-cfg.n_mels // 2), -(-(-(-cfg.n_mels // 2)) // 2)
    conv = 2 * 9 * (1 * c * 2 * t * f1 + c * c * t * f2)
    proj = 2 * t * f2 * c * cfg.d_model
    conformer = cfg.conformer()
    blocks = cfg.num_layers * t * (2 * conformer_params(conformer)
                                   + 4 * t * cfg.num_heads * conformer.kv_dim)
    out = 2 * cfg.d_model * cfg.joint_dim
    return float(batch * (conv + proj + blocks + out))
