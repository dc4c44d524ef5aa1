"""Metric writing (clu: TensorBoard + log) and the console progress bar."""
from __future__ import annotations

import time
from typing import Mapping, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm


class MetricsLogger:
    """Averages step metrics over a logging interval and adds throughput figures:
    `<unit>_per_s` for each of `units_per_step` (e.g. {"tokens": 8192}) and
    `model_flops_per_s` when `flops_per_step` is given. `postfix` names the metrics the
    progress bar shows."""

    def __init__(self, model_dir: str, *, total_steps: int, start_step: int,
                 units_per_step: Mapping[str, float] | None = None, flops_per_step: float = 0.0,
                 postfix: Sequence[str] = ("loss", "accuracy")):
        from clu import metric_writers  # imports TensorFlow: only in a real run

        self.is_main = jax.process_index() == 0
        self.writer = metric_writers.create_default_writer(model_dir, just_logging=not self.is_main)
        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                        disable=not self.is_main, dynamic_ncols=True)
        self.units_per_step = dict(units_per_step or {})
        self.flops_per_step, self.postfix = flops_per_step, tuple(postfix)
        self._pending: list[Mapping[str, jax.Array]] = []
        self._t0, self._steps0 = time.perf_counter(), start_step

    def add(self, metrics: Mapping[str, jax.Array]) -> None:
        self._pending.append(metrics)
        self.bar.update(1)

    def flush(self, step: int) -> dict[str, float]:
        if not self._pending:
            return {}
        fetched = jax.device_get(self._pending)  # one sync for the whole interval
        self._pending = []
        now = time.perf_counter()
        steps = max(step - self._steps0, 1)
        dt = max(now - self._t0, 1e-9)
        self._t0, self._steps0 = now, step
        out = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
        out["nonfinite_skipped"] = float(fetched[-1]["nonfinite_skipped"])
        out["steps_per_s"] = steps / dt
        for unit, per_step in self.units_per_step.items():
            out[f"{unit}_per_s"] = steps * per_step / dt
        if self.flops_per_step:
            out["model_flops_per_s"] = steps * self.flops_per_step / dt
        self.writer.write_scalars(step, out)
        shown = {k.split("/")[-1]: f"{out[k]:.4g}" for k in self.postfix if k in out}
        shown.update({f"{u}/s": f"{out[f'{u}_per_s']:.3g}" for u in self.units_per_step})
        self.bar.set_postfix(shown)
        return out

    def write_eval(self, step: int, metrics: Mapping[str, float]) -> None:
        self.writer.write_scalars(step, {f"eval/{k}": v for k, v in metrics.items()})
        if self.is_main:
            self.bar.write(f"step {step} eval " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))

    def write_audios(self, step: int, audios: Mapping[str, np.ndarray], sample_rate: int) -> None:
        """Audio summaries: each value [clips, samples] (mono, [-1, 1])."""
        self.writer.write_audios(step, {k: np.clip(np.asarray(v, np.float32), -1.0, 1.0)[..., None]
                                        for k, v in audios.items()}, sample_rate=sample_rate)

    def close(self) -> None:
        self.bar.close()
        self.writer.flush()
        self.writer.close()
