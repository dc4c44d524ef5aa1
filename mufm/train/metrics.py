"""Metric writing (clu: TensorBoard + log) and the console progress bar."""
from __future__ import annotations

import time
from typing import Mapping

import jax
import numpy as np
from tqdm.auto import tqdm


class MetricsLogger:
    """Averages step metrics over a logging interval and adds throughput figures."""

    def __init__(self, model_dir: str, *, total_steps: int, start_step: int,
                 tokens_per_batch: int, flops_per_token: float):
        from clu import metric_writers  # imports TensorFlow: only in a real run

        self.is_main = jax.process_index() == 0
        self.writer = metric_writers.create_default_writer(model_dir, just_logging=not self.is_main)
        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                        disable=not self.is_main, dynamic_ncols=True)
        self.tokens_per_batch, self.flops_per_token = tokens_per_batch, flops_per_token
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
        out["tokens_per_s"] = steps * self.tokens_per_batch / dt
        out["model_flops_per_s"] = out["tokens_per_s"] * self.flops_per_token
        self.writer.write_scalars(step, out)
        self.bar.set_postfix(loss=f"{out['loss']:.4f}", acc=f"{out['accuracy']:.3f}",
                             tok_s=f"{out['tokens_per_s']:.0f}")
        return out

    def write_eval(self, step: int, metrics: Mapping[str, float]) -> None:
        self.writer.write_scalars(step, {f"eval/{k}": v for k, v in metrics.items()})
        if self.is_main:
            self.bar.write(f"step {step} eval " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))

    def close(self) -> None:
        self.bar.close()
        self.writer.flush()
        self.writer.close()
