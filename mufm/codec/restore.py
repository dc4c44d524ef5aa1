"""A trained codec back from a `train_codec` run: its config from the run's config.gin, its
generator parameters and codebooks from an orbax checkpoint (the discriminators and the
optimizer states stay on disk: a partial restore onto this host's default device, whatever
mesh the run trained on).
"""
from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
from flax import nnx


class CheckpointNotFoundError(FileNotFoundError):
    """The directory is not a codec training run (or one of its step directories)."""


@dataclasses.dataclass(frozen=True)
class TrainedCodec:
    """A codec ready for `mufm.models.codec_tokenizer` (encode/decode, chunked or not)."""
    cfg: object  # CodecConfig
    graphdef: object
    params: object
    codebook_state: object
    step: int
    model_dir: str

    @property
    def parts(self):
        return self.graphdef, self.params, self.codebook_state


def resolve(checkpoint_dir: str, step: int | None = None) -> tuple[str, int]:
    """(model_dir, step) for a MODEL_DIR (newest committed step unless `step`) or for one of
    its `checkpoints/<step>` directories."""
    path = os.path.abspath(os.path.expanduser(checkpoint_dir))
    if os.path.basename(path).isdigit() and os.path.basename(os.path.dirname(path)) == "checkpoints":
        return os.path.dirname(os.path.dirname(path)), int(os.path.basename(path))
    ckpts = os.path.join(path, "checkpoints")
    if not os.path.isfile(os.path.join(path, "config.gin")) or not os.path.isdir(ckpts):
        raise CheckpointNotFoundError(
            f"{checkpoint_dir}: not a codec training run (expected config.gin and checkpoints/ "
            f"written by `python -m mufm.codec train`)")
    committed = sorted(int(d) for d in os.listdir(ckpts)
                       if d.isdigit() and os.path.exists(os.path.join(ckpts, d, "state")))
    if step is None:
        if not committed:
            raise CheckpointNotFoundError(f"{checkpoint_dir}: no committed checkpoint in {ckpts}")
        return path, committed[-1]
    if step not in committed:
        raise CheckpointNotFoundError(f"{checkpoint_dir}: no checkpoint for step {step} "
                                      f"(have {committed})")
    return path, step


def read_run_config(model_dir: str) -> None:
    """Parses the run's operative config.gin into gin (replacing the current config)."""
    import gin

    import mufm.train.codec_loop  # noqa: F401  (registers every configurable the run used)

    gin.clear_config()
    gin.parse_config_file(os.path.join(model_dir, "config.gin"), skip_unknown=True)


def load_codec(checkpoint_dir: str, step: int | None = None) -> TrainedCodec:
    import gin
    import orbax.checkpoint as ocp

    from mufm.models.codec import Codec, CodecConfig
    from mufm.models.quantizers import CodebookState

    model_dir, step = resolve(checkpoint_dir, step)
    read_run_config(model_dir)
    with gin.config_scope(None):
        cfg = CodecConfig()
    abstract = nnx.eval_shape(lambda: Codec(cfg, rngs=nnx.Rngs(0)))
    graphdef, params, codebooks = nnx.split(abstract, nnx.Param, CodebookState)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    as_target = lambda tree: jax.tree.map(
        lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=device), nnx.to_pure_dict(tree))
    target = {"params": {"generator": as_target(params)},
              "model_state": {"generator": as_target(codebooks)}}
    path = os.path.join(model_dir, "checkpoints", str(step), "state")
    with ocp.PyTreeCheckpointer() as ckptr:
        restored = ckptr.restore(path, args=ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True))
    params_state = nnx.State(params)
    nnx.replace_by_pure_dict(params_state, restored["params"]["generator"])
    codebook_state = nnx.State(codebooks)
    nnx.replace_by_pure_dict(codebook_state, restored["model_state"]["generator"])
    if not int(np.min(np.asarray(codebook_state["quantizer"]["initialized"][...]))):
        raise CheckpointNotFoundError(f"{model_dir} step {step}: the codebooks were never "
                                      f"initialised (a checkpoint before the first train step?)")
    return TrainedCodec(cfg=cfg, graphdef=graphdef, params=params_state,
                        codebook_state=codebook_state, step=step, model_dir=model_dir)
