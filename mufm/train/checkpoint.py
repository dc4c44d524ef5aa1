"""Orbax checkpoints of the train state plus the input position.

Layout: MODEL_DIR/checkpoints/<step>/{state, data}. `data` records how many global batches
the run has consumed, so a resumed run rebuilds its deterministic input pipeline and skips
exactly that many. Saves are async (the device->host copy blocks, the write does not);
a save interrupted by a crash is never committed, and restore picks the newest committed
step. Restoring onto a different mesh is a matter of passing the new shardings in the
abstract target.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import gin
import jax
import orbax.checkpoint as ocp
from etils import epath


@gin.configurable
@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    save_every: int = 100
    keep: int = 3
    async_save: bool = True


class Checkpointer:
    def __init__(self, model_dir: str, cfg: CheckpointConfig):
        self.directory = str(run_path(model_dir) / "checkpoints")
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=cfg.save_every, max_to_keep=cfg.keep,
            enable_async_checkpointing=cfg.async_save, create=True)
        self._mngr = ocp.CheckpointManager(self.directory, options=options,
                                           item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def save(self, step: int, state: Any, data: dict, *, force: bool = False) -> bool:
        return self._mngr.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data)), force=force)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """abstract_state: ShapeDtypeStructs carrying the *target* shardings."""
        out = self._mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        return out["state"], dict(out["data"])

    def close(self) -> None:
        self._mngr.wait_until_finished()
        self._mngr.close()


def run_path(model_dir: str) -> epath.Path:
    """MODEL_DIR as a path every writer of the run shares: local paths made absolute,
    `gs://bucket/...` (or any other scheme etils/tf.io.gfile reads) left as they are."""
    if "://" in model_dir:
        return epath.Path(model_dir)
    return epath.Path(os.path.abspath(os.path.expanduser(model_dir)))


def write_gin_config(model_dir: str, operative: str) -> str | None:
    """Writes the operative gin config beside the checkpoints (process 0 only)."""
    if jax.process_index() != 0:
        return None
    directory = run_path(model_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.gin"
    path.write_text(operative)
    return str(path)
