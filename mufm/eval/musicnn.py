"""A JAX port of musicnn's MTT_musicnn tagger (Pons & Serra 2019; the ``musicnn`` wheel
0.1.0, ISC licence) for the evaluation's FAD embedding and tag-distribution KL.

The weights are read from the TF1 checkpoint that ships inside the wheel (install it with
``pip install --no-deps musicnn==0.1.0``: the wheel pins an ancient numpy and TensorFlow 1,
so only its data and model code are installed; launch/install.sh does this) with
``tf.compat.v1.train.NewCheckpointReader``. TensorFlow is needed only to read the
checkpoint once; the forward pass is jax.

Input features (musicnn's own, re-derived here without librosa): 16 kHz mono (other rates
resampled with `mufm.audio.resample`), a centred STFT (reflect padding of n_fft // 2,
periodic Hann window of 512 samples, hop 256), the power spectrum on 96 Slaney-style mel
filters (Slaney mel scale, each triangle area-normalised to 2 / bandwidth: librosa's
``filters.mel`` defaults, which musicnn's ``librosa.feature.melspectrogram`` call uses),
cast to float16 as musicnn stores its training representations, then
``log10(10000 x + 1)``. (musicnn resamples with librosa.load's default, resampy's
kaiser_best; soxr's VHQ filter here differs from it only near the band edge. Reflect
padding is the librosa 0.6/0.7 default of musicnn's time; librosa 0.10 pads with zeros.)
The spectrogram is cut into non-overlapping 187-frame patches (3 s), the final partial
patch dropped as musicnn's extractor does; a clip shorter than one patch is repeat-padded
(the training config's ``pad_short: repeat-pad``).

Cost: about 1.3 s per minute of 24 kHz audio on 2 shared CPU cores (20 patches; the numpy
log-mel and resampling 0.1-0.3 s of it), after a one-off jit compile per batch size.

Network (inference mode: every batch norm uses the checkpoint's moving statistics,
epsilon 1e-3, the TF1 layer default; dropout is the identity):
  input BN(1) ->
  timbral: two convs over [7 frames x 38 | 67 mel bands] (valid in frequency, time padded
    by 3 each side), 204 filters, ReLU, BN, max over the remaining frequency axis;
  temporal: three convs over [128 | 64 | 32 frames x 1 band] (TF 'same' padding), 51
    filters, ReLU, BN, max over frequency; concatenated -> [T, 561];
  midend: three time convs of width 7 (64 filters, ReLU, BN), the second and third
    residual; front-end and midend outputs concatenated -> [T, 753];
  backend: max and mean over time, interleaved channel-wise into 1506 values (TF's
    flatten of [753, 2]), BN, dense 200 ReLU, BN (= "penultimate"), dense 50, sigmoid.

Layers returned by `features`: ``max_pool`` and ``mean_pool`` [753] (the temporal pools of
the 753 midend features), ``penultimate`` [200] and ``logits`` / ``probs`` [50], the keys
of musicnn's extractor. `embed` defaults to ``penultimate``: the last layer before the
classifier, the analogue of the VGGish embedding layer of the original FAD (Kilgour et
al. 2019), and 200-dimensional so its covariance is estimable from a few hundred clips,
where the 753-dimensional pools would need more clips than an evaluation set holds.
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from mufm.audio.resample import downmix, resample

SAMPLE_RATE = 16000
N_FFT = 512
HOP = 256
N_MELS = 96
PATCH_FRAMES = 187  # librosa.time_to_frames(3 s) + 1 at 16 kHz, hop 256
BN_EPSILON = 1e-3
LAYERS = ("max_pool", "mean_pool", "penultimate", "logits", "probs")

# MagnaTagATune's 50 tags in the order of the MTT_musicnn output units.
MTT_TAGS = (
    "guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock",
    "fast", "piano", "ambient", "beat", "violin", "vocal", "synth", "female", "indian",
    "opera", "male", "singing", "vocals", "no vocals", "harpsichord", "loud", "quiet",
    "flute", "woman", "male vocal", "no vocal", "pop", "soft", "sitar", "solo", "man",
    "classic", "choir", "voice", "new age", "dance", "male voice", "female vocal", "beats",
    "harp", "cello", "no voice", "weird", "country", "metal", "female voice", "choral")

INSTALL_HINT = ("the musicnn tagger needs the `musicnn` wheel's checkpoints: "
                "pip install --no-deps musicnn==0.1.0 (--no-deps: it pins numpy<1.17 and "
                "TensorFlow 1, which mufm does not use; launch/install.sh does this)")


# ----------------------------------------------------------------------------- features

def _slaney_hz_to_mel(f):
    f = np.asarray(f, np.float64)
    linear = f * 3.0 / 200.0  # 200/3 Hz per mel below 1 kHz
    log_part = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log_part, linear)


def _slaney_mel_to_hz(m):
    m = np.asarray(m, np.float64)
    linear = m * 200.0 / 3.0
    log_part = 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0))
    return np.where(m >= 15.0, log_part, linear)


@functools.lru_cache(maxsize=8)
def slaney_mel_filterbank(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT,
                          n_mels: int = N_MELS) -> np.ndarray:
    """``[n_fft // 2 + 1, n_mels]`` Slaney mel filters (0 Hz to Nyquist), each triangle
    scaled to 2 / (upper edge - lower edge) in Hz so every filter has unit area."""
    freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges = _slaney_mel_to_hz(np.linspace(_slaney_hz_to_mel(0.0),
                                          _slaney_hz_to_mel(sample_rate / 2.0), n_mels + 2))
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (freqs[:, None] - lower[None]) / (centre - lower)[None]
    falling = (upper[None] - freqs[:, None]) / (upper - centre)[None]
    fb = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (upper - lower))[None]
    fb = fb.astype(np.float32)
    fb.setflags(write=False)
    return fb


def mel_power(x16k: np.ndarray) -> np.ndarray:
    """``[frames, 96]`` mel power spectrogram of mono 16 kHz audio (centred frames)."""
    x = np.asarray(x16k, np.float32)
    pad = N_FFT // 2
    x = np.pad(x, (pad, pad), mode="reflect" if x.shape[0] > pad else "constant")
    count = 1 + (x.shape[0] - N_FFT) // HOP
    idx = np.arange(count)[:, None] * HOP + np.arange(N_FFT)[None, :]
    window = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)
    spec = np.fft.rfft(x[idx] * window, axis=-1)
    power = (spec.real ** 2 + spec.imag ** 2).astype(np.float32)
    return power @ slaney_mel_filterbank()


def log_mel(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    """``[frames, 96]`` musicnn input features: log10(10000 * float16(mel power) + 1)."""
    x = downmix(np.asarray(waveform, np.float32))
    x = resample(x, sample_rate, SAMPLE_RATE)
    mel = mel_power(x).astype(np.float16)
    return np.log10(10000.0 * mel.astype(np.float32) + 1.0).astype(np.float32)


def patches(features: np.ndarray, n_frames: int = PATCH_FRAMES) -> np.ndarray:
    """``[patches, n_frames, 96]`` non-overlapping patches; the trailing partial patch is
    dropped (musicnn's extractor), a clip shorter than one patch repeat-padded."""
    f = np.asarray(features, np.float32)
    if f.shape[0] == 0:
        raise ValueError("no frames: the clip is empty")
    if f.shape[0] < n_frames:
        f = np.tile(f, (-(-n_frames // f.shape[0]), 1))[:n_frames]
    count = f.shape[0] // n_frames
    return f[:count * n_frames].reshape(count, n_frames, f.shape[1])


# ----------------------------------------------------------------------------- weights

def checkpoint_dir(model: str = "MTT_musicnn") -> str:
    try:
        import musicnn  # noqa: F401  (the wheel's package: data + TF1 model code)
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    path = os.path.join(os.path.dirname(musicnn.__file__), model)
    if not os.path.exists(os.path.join(path, ".index")):
        raise FileNotFoundError(f"no checkpoint at {path}/ ({INSTALL_HINT})")
    return path + os.sep  # the checkpoint's prefix is the directory itself ('.index')


@functools.lru_cache(maxsize=2)
def load_checkpoint(model: str = "MTT_musicnn") -> dict[str, np.ndarray]:
    """Every non-optimizer variable of the wheel's checkpoint, by TF name."""
    if model != "MTT_musicnn":
        raise ValueError(f"only MTT_musicnn is ported, not {model}")
    prefix = checkpoint_dir(model)
    import tensorflow as tf
    reader = tf.compat.v1.train.NewCheckpointReader(prefix)
    out = {}
    for name in reader.get_variable_to_shape_map():
        if "Adam" in name or name.startswith("beta1_power") or name.startswith("beta2_power"):
            continue
        out[name] = np.asarray(reader.get_tensor(name), np.float32)
    return out


def _bn(ckpt, i):
    name = "batch_normalization" + (f"_{i}" if i else "")
    return {k: jnp.asarray(ckpt[f"{name}/{k}"])
            for k in ("gamma", "beta", "moving_mean", "moving_variance")}


def _conv(ckpt, name):
    return {"kernel": jnp.asarray(ckpt[f"{name}/kernel"]),
            "bias": jnp.asarray(ckpt[f"{name}/bias"])}


def params_from_checkpoint(ckpt: dict[str, np.ndarray]) -> dict:
    """The jax parameter tree. The TF graph creates its layers in this order: input BN
    (bn 0); timbral 7x38 (conv2d, bn 1) and 7x67 (conv2d_1, bn 2); temporal 128/64/32
    (conv2d_2..4, bn 3..5); midend (conv2d_5..7, bn 6..8); backend (bn 9, dense, bn 10,
    dense_1)."""
    c = lambda i: _conv(ckpt, "conv2d" + (f"_{i}" if i else ""))  # noqa: E731
    return {
        "input_bn": _bn(ckpt, 0),
        "timbral": [{"conv": c(0), "bn": _bn(ckpt, 1)}, {"conv": c(1), "bn": _bn(ckpt, 2)}],
        "temporal": [{"conv": c(2 + i), "bn": _bn(ckpt, 3 + i)} for i in range(3)],
        "midend": [{"conv": c(5 + i), "bn": _bn(ckpt, 6 + i)} for i in range(3)],
        "pool_bn": _bn(ckpt, 9),
        "dense": _conv(ckpt, "dense"),
        "dense_bn": _bn(ckpt, 10),
        "out": _conv(ckpt, "dense_1"),
    }


# ----------------------------------------------------------------------------- network

def _batch_norm(x, p):
    scale = p["gamma"] * jax.lax.rsqrt(p["moving_variance"] + BN_EPSILON)
    return (x - p["moving_mean"]) * scale + p["beta"]


def _conv2d(x, p, padding):
    """NHWC input, HWIO kernel (TF's layouts), stride 1."""
    y = jax.lax.conv_general_dilated(x, p["kernel"], (1, 1), padding,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=jax.lax.Precision.HIGHEST)
    return y + p["bias"]


def _same_time_padding(kernel_frames: int):
    total = kernel_frames - 1  # TF 'SAME' at stride 1: the odd extra frame goes after
    return [(total // 2, total - total // 2), (0, 0)]


def forward(params: dict, x: jax.Array) -> dict[str, jax.Array]:
    """``x [batch, frames, 96]`` log-mel patches -> every exposed layer (see module doc)."""
    h = _batch_norm(x[..., None], params["input_bn"])  # [B, T, F, 1]
    padded = jnp.pad(h, ((0, 0), (3, 3), (0, 0), (0, 0)))
    front = []
    for blk in params["timbral"]:
        y = _batch_norm(jax.nn.relu(_conv2d(padded, blk["conv"], "VALID")), blk["bn"])
        front.append(y.max(axis=2))  # [B, T, 204]
    for blk in params["temporal"]:
        pad = _same_time_padding(blk["conv"]["kernel"].shape[0])
        y = _batch_norm(jax.nn.relu(_conv2d(h, blk["conv"], pad)), blk["bn"])
        front.append(y.max(axis=2))  # [B, T, 51]
    front = jnp.concatenate(front, axis=-1)  # [B, T, 561]

    feats = [front]
    z = front
    for i, blk in enumerate(params["midend"]):
        # A [7, width] valid conv over a [T + 6, width, 1] map is a width-7 time conv
        # with `width` input channels; the kernel's [7, width, 1, out] reads as HWIO
        # once the singleton in-channel moves: [7, 1, width, out].
        k = blk["conv"]["kernel"]
        conv = {"kernel": jnp.transpose(k, (0, 2, 1, 3)), "bias": blk["conv"]["bias"]}
        zp = jnp.pad(z[:, :, None, :], ((0, 0), (3, 3), (0, 0), (0, 0)))
        y = _batch_norm(jax.nn.relu(_conv2d(zp, conv, "VALID")), blk["bn"])[:, :, 0, :]
        z = y if i == 0 else y + z
        feats.append(z)
    mid = jnp.concatenate(feats, axis=-1)  # [B, T, 753]

    max_pool = mid.max(axis=1)
    mean_pool = mid.mean(axis=1)
    flat = jnp.stack([max_pool, mean_pool], axis=-1).reshape(x.shape[0], -1)  # interleaved
    flat = _batch_norm(flat, params["pool_bn"])
    dense = jax.nn.relu(flat @ params["dense"]["kernel"] + params["dense"]["bias"])
    penultimate = _batch_norm(dense, params["dense_bn"])
    logits = penultimate @ params["out"]["kernel"] + params["out"]["bias"]
    return {"max_pool": max_pool, "mean_pool": mean_pool, "penultimate": penultimate,
            "logits": logits, "probs": jax.nn.sigmoid(logits)}


_forward = jax.jit(forward)


@functools.lru_cache(maxsize=2)
def params(model: str = "MTT_musicnn") -> dict:
    return params_from_checkpoint(load_checkpoint(model))


def features(waveform: np.ndarray, sample_rate: int, batch: int = 16) -> dict[str, np.ndarray]:
    """Every exposed layer for each 3 s patch of a clip: ``{layer: [patches, D]}``."""
    x = patches(log_mel(waveform, sample_rate))
    p = params()
    out: dict[str, list] = {k: [] for k in LAYERS}
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch]
        n = len(chunk)
        size = min(batch, 1 << (n - 1).bit_length())  # few compiled shapes: powers of two
        if n < size:
            chunk = np.concatenate([chunk, np.zeros((size - n,) + chunk.shape[1:], np.float32)])
        res = _forward(p, jnp.asarray(chunk))
        for k in LAYERS:
            out[k].append(np.asarray(res[k])[:n])
    return {k: np.concatenate(v) for k, v in out.items()}


def embed(waveform: np.ndarray, sample_rate: int, layer: str = "penultimate") -> np.ndarray:
    """``[patches, D]`` embeddings, one per 3 s patch (penultimate D=200; max_pool or
    mean_pool D=753)."""
    if layer not in ("penultimate", "max_pool", "mean_pool"):
        raise ValueError(f"layer must be penultimate, max_pool or mean_pool, not {layer!r}")
    return features(waveform, sample_rate)[layer]


def clip_embedding(waveform: np.ndarray, sample_rate: int,
                   layer: str = "penultimate") -> np.ndarray:
    """``[D]`` the mean of a clip's patch embeddings (one vector per clip for FAD)."""
    return embed(waveform, sample_rate, layer).mean(axis=0)


def tag_probs(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    """``[50]`` mean over patches of the per-patch tag probabilities (order: MTT_TAGS)."""
    return features(waveform, sample_rate)["probs"].mean(axis=0)


def top_tags(probs: np.ndarray, k: int = 5) -> list[tuple[str, float]]:
    order = np.argsort(-np.asarray(probs))[:k]
    return [(MTT_TAGS[i], float(probs[i])) for i in order]
