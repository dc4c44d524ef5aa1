"""`MuLanModel`: the audio tower and the text tower into one 128-d space, with the learned
temperature of the contrastive loss (mufm/mulan/losses.py).

    audio  [b, n] + lengths [b]      -> AudioTower (audio.py)  -> a [b, 128], |a| = 1
    ids    [b, L] + mask [b, L]      -> TextTower  (text.py)   -> t [b, 128], |t| = 1
    loss = symmetric InfoNCE(a, t) at scale exp(min(log_scale, ln 100))

The text tower (MiniLM or scratch, `TextTowerConfig.kind`) is built without reading the MiniLM file (`pretrained=False`): the model is
built from shapes by the trainer, and `MuLanTask.pretrained_params` hands the file's arrays
to the trainer, which places them into the sharded state (mufm/train/loop.py). A trained
model loads its text weights from its checkpoint like every other parameter.

Frozen text encoder (`TextTowerConfig.frozen`): `frozen_labels(params)` names the
parameters the optimizer must leave alone ("frozen": the MiniLM encoder; "train": the rest,
the text projection included), and the train step differentiates only the "train" ones.
"""
from __future__ import annotations

import dataclasses
import math

import gin
import jax
import jax.numpy as jnp
from flax import nnx

from mufm.layers.linear import param
from mufm.mulan.audio import AudioTower, AudioTowerConfig, audio_flops
from mufm.mulan.losses import contrastive_loss, logit_scale
from mufm.mulan.text import TextTower, TextTowerConfig

FROZEN, TRAIN = "frozen", "train"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MuLanConfig:
    audio: AudioTowerConfig = AudioTowerConfig()
    text: TextTowerConfig = TextTowerConfig()
    init_temperature: float = 0.07  # CLIP
    max_logit_scale: float = 100.0  # CLIP's clamp of 1 / temperature

    def __post_init__(self):
        if self.audio.joint_dim != self.text.joint_dim:
            raise ValueError(f"audio joint_dim {self.audio.joint_dim} != text joint_dim "
                             f"{self.text.joint_dim}")
        if not 0 < self.init_temperature and 1 / self.init_temperature <= self.max_logit_scale:
            raise ValueError(f"init_temperature={self.init_temperature} must be > 0 with "
                             f"1 / init_temperature <= max_logit_scale={self.max_logit_scale}")

    @property
    def joint_dim(self) -> int:
        return self.audio.joint_dim


class MuLanModel(nnx.Module):
    def __init__(self, cfg: MuLanConfig, *, rngs: nnx.Rngs, pretrained_text: bool = False):
        self.cfg = cfg
        self.audio = AudioTower(cfg.audio, rngs=rngs)
        self.text = TextTower(cfg.text, rngs, pretrained=pretrained_text)
        init = math.log(1.0 / cfg.init_temperature)
        self.log_scale = param(rngs, lambda *_: jnp.asarray(init, jnp.float32), (), ())

    def embed_audio(self, waveform: jax.Array, lengths: jax.Array | None = None,
                    key: jax.Array | None = None) -> jax.Array:
        return self.audio(waveform, lengths, key)

    def embed_text(self, ids: jax.Array, mask: jax.Array, key: jax.Array | None = None) -> jax.Array:
        return self.text(ids, mask, key)

    def scale(self) -> jax.Array:
        return logit_scale(self.log_scale[...], self.cfg.max_logit_scale)

    def __call__(self, batch: dict, key: jax.Array | None = None, weights: jax.Array | None = None
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(loss, metrics) of a batch {waveform, waveform_length, text_ids, text_mask}; `key`
        (training) drives dropout, where the configs have any."""
        keys = (None, None) if key is None else tuple(jax.random.split(key))
        a = self.embed_audio(batch["waveform"], batch["waveform_length"], keys[0])
        t = self.embed_text(batch["text_ids"], batch["text_mask"], keys[1])
        return contrastive_loss(a, t, self.scale(), weights)


def _path_names(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def is_frozen(cfg: MuLanConfig, names: tuple[str, ...]) -> bool:
    """Whether the parameter at `names` (a params path) stays as loaded: the MiniLM encoder
    of a frozen text tower."""
    return cfg.text.frozen and names[:2] == ("text", "encoder")


def frozen_labels(cfg: MuLanConfig, params):
    """The params tree with FROZEN / TRAIN at each leaf (optax.multi_transform's labels)."""
    return jax.tree_util.tree_map_with_path(
        lambda p, _: FROZEN if is_frozen(cfg, _path_names(p)) else TRAIN, params)


def text_flops(cfg: TextTowerConfig, batch: int, length: int) -> float:
    """Forward FLOPs of the text tower on [batch, length] tokens: the encoder's per-token
    matmuls (4 d^2 attention + 2 d d_ff FFN per layer, MiniLM and scratch alike), attention
    scores and mixing (4 L d per token per layer), and the projection."""
    m = cfg.encoder
    per_token = m.num_layers * (2 * (4 * m.d_model ** 2 + 2 * m.d_model * m.d_ff)
                                + 4 * length * m.d_model)
    return float(batch * (length * per_token + 2 * m.d_model * cfg.joint_dim))


def train_flops(cfg: MuLanConfig, batch: int, num_samples: int, text_length: int) -> float:
    """Model FLOPs of one training step: forward + backward (3x forward) of the audio tower;
    the text tower 3x when fine-tuned, else its forward (its backward stops at the
    projection, whose gradient is negligible); the [B, B] logits (3 x 2 B^2 D)."""
    audio = 3.0 * audio_flops(cfg.audio, batch, num_samples)
    text = text_flops(cfg.text, batch, text_length) * (1.0 if cfg.text.frozen else 3.0)
    return audio + text + 3.0 * 2 * batch * batch * cfg.joint_dim
