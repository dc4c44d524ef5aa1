"""Continuous evaluation (T5X's `eval` beside `train`): watch one run of a cascade for new
committed checkpoints and evaluate the cascade with each, once.

The watched run is one role of a `GenerateConfig` (usually a stage LM being trained); the
other roles stay as configured. Each step is evaluated into `<out>/step_<step>/` (as
`mufm.eval.job.evaluate` writes) with its summary as `eval/...` scalars at that step in
`<out>`'s TensorBoard events, so the figures plot over training; then the step is recorded
in `<out>/evaluated_steps.json` (written atomically). A restarted job reads that file and
skips what is recorded: killed mid-evaluation, it evaluates that step again from the
start, and no recorded step ever twice.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable

DONE = "evaluated_steps.json"


def evaluated_steps(out_dir: str) -> dict[int, dict]:
    path = os.path.join(out_dir, DONE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return {int(k): v for k, v in json.load(f).items()}


def _record(out_dir: str, step: int, summary: dict) -> None:
    done = evaluated_steps(out_dir)
    done[step] = summary
    path = os.path.join(out_dir, DONE)
    with open(path + ".tmp", "w") as f:
        json.dump({str(k): v for k, v in sorted(done.items())}, f, indent=1, default=float)
    os.replace(path + ".tmp", path)


def watch(config, role: str, evaluate_step: Callable, out_dir: str, *, poll_s: float = 60.0,
          until_step: int | None = None, timeout_s: float | None = None, once: bool = False,
          log: Callable = print) -> list[int]:
    """Evaluates every committed step of `config.<role>`'s run not yet in `out_dir`:
    `evaluate_step(cascade, step_out_dir, step)` -> summary dict. Polls every `poll_s`
    until a step >= `until_step` is evaluated, `timeout_s` passes, or (with `once`) after
    one pass. Returns the steps evaluated by this call."""
    from mufm.train.restore import committed_steps

    if role not in ("mulan", "semantic", "coarse", "fine", "codec"):
        raise ValueError(f"--watch={role!r}: watch one of mulan, semantic, coarse, fine, codec")
    if not getattr(config, role):
        raise ValueError(f"--watch={role}: GenerateConfig.{role} names no run")
    # The run itself (it may have no checkpoint yet: the job can start beside training).
    run_dir = os.path.abspath(os.path.expanduser(getattr(config, role)))
    if os.path.basename(os.path.dirname(run_dir)) == "checkpoints":
        run_dir = os.path.dirname(os.path.dirname(run_dir))
    os.makedirs(out_dir, exist_ok=True)
    start, evaluated = time.monotonic(), []
    while True:
        done = evaluated_steps(out_dir)
        for step in committed_steps(run_dir):
            if step in done:
                continue
            log(f"evaluating {role} step {step}")
            cascade = dataclasses.replace(
                config, **{role: os.path.join(run_dir, "checkpoints", str(step))}).load()
            summary = evaluate_step(cascade, os.path.join(out_dir, f"step_{step}"), step)
            _record(out_dir, step, summary)
            evaluated.append(step)
            done[step] = summary
        if once or (until_step is not None and any(s >= until_step for s in done)):
            return evaluated
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            log(f"no step >= {until_step} after {timeout_s:g} s: stopping")
            return evaluated
        time.sleep(poll_s)
