"""Batching of concurrent requests, with TF Serving's batching parameters
(`--max_batch_size`, `--batch_timeout_micros`, `--max_enqueued_batches`,
`--num_batch_threads`, `--allowed_batch_sizes`).

Requests are queued by key (model, version, signature, the shapes of their non-batch axes
and, for the generate signatures, the clip length they run at), since only requests of
one key can share a call. A batch thread takes the key whose oldest request is oldest,
waits until it holds `max_batch_size` rows or that request has waited
`batch_timeout_micros`, and runs up to `max_batch_size` rows at once, padded to the next
of `allowed_batch_sizes`. The queue holds at
most `max_enqueued_batches x max_batch_size` rows; past that `submit` raises QueueFull
(the server's 503). A request whose client went away is cancelled and never run. A batch
that fails is run again one request at a time, so one bad request fails only itself.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import threading
import time
from typing import Callable, Hashable

import numpy as np


class QueueFull(RuntimeError):
    """The batching queue holds as many rows as it may."""


@dataclasses.dataclass
class Pending:
    arrays: dict
    rows: int
    future: concurrent.futures.Future
    t: float


@dataclasses.dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = 8
    batch_timeout_micros: int = 20_000
    max_enqueued_batches: int = 4
    num_batch_threads: int = 1
    # Batches are padded up to one of these sizes (the last must be max_batch_size): XLA
    # compiles a program per batch size it meets, so a few sizes mean a few compiles.
    # (): no padding, every size compiles when first met.
    allowed_batch_sizes: tuple = (1, 2, 4, 8)

    def __post_init__(self):
        sizes = tuple(self.allowed_batch_sizes)
        if sizes and (list(sizes) != sorted(set(sizes)) or sizes[0] < 1
                      or sizes[-1] != self.max_batch_size):
            raise ValueError(f"--allowed_batch_sizes={','.join(map(str, sizes))}: increasing, "
                             f">= 1, the last equal to --max_batch_size={self.max_batch_size}")
        for k in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            if getattr(self, k) < 1:
                raise ValueError(f"--{k}={getattr(self, k)}: must be >= 1")
        if self.batch_timeout_micros < 0:
            raise ValueError(f"--batch_timeout_micros={self.batch_timeout_micros}: must be >= 0")


class Batcher:
    """`submit(key, arrays, rows)` -> a Future of that request's outputs, run by
    `run(key, arrays) -> outputs` and cut back to its rows by `split(outputs, start, stop)`."""

    def __init__(self, run: Callable[[Hashable, dict], dict],
                 split: Callable[[dict, int, int], dict], cfg: BatchingConfig):
        self._run, self._split, self.cfg = run, split, cfg
        self._queues: dict[Hashable, collections.deque] = {}
        self._rows = 0  # rows queued, not yet taken
        self._cond = threading.Condition()
        self._stopping = False
        self.stats = collections.Counter()  # batches, rows, cancelled, retried
        self._threads = [threading.Thread(target=self._loop, name=f"batch-{i}", daemon=True)
                         for i in range(cfg.num_batch_threads)]
        for t in self._threads:
            t.start()

    @property
    def capacity(self) -> int:
        return self.cfg.max_enqueued_batches * self.cfg.max_batch_size

    def queued_rows(self) -> int:
        with self._cond:
            return self._rows

    def submit(self, key: Hashable, arrays: dict, rows: int) -> concurrent.futures.Future:
        if rows > self.cfg.max_batch_size:
            raise ValueError(f"a request of {rows} rows is larger than --max_batch_size="
                             f"{self.cfg.max_batch_size}")
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if self._rows + rows > self.capacity:
                raise QueueFull(f"the batching queue is full ({self._rows} rows queued, "
                                f"--max_enqueued_batches x --max_batch_size = {self.capacity})")
            self._queues.setdefault(key, collections.deque()).append(
                Pending(arrays, rows, future, time.monotonic()))
            self._rows += rows
            self._cond.notify()
        return future

    def _take(self) -> tuple[Hashable, list[Pending]] | None:
        """Blocks until a batch is due (or stop): (key, its requests)."""
        timeout = self.cfg.batch_timeout_micros / 1e6
        with self._cond:
            while True:
                for key in [k for k, q in self._queues.items() if not q]:
                    del self._queues[key]
                if not self._queues:
                    if self._stopping:
                        return None
                    self._cond.wait()
                    continue
                key = min(self._queues, key=lambda k: self._queues[k][0].t)
                queue = self._queues[key]
                waited = time.monotonic() - queue[0].t
                full = sum(p.rows for p in queue) >= self.cfg.max_batch_size
                if full or waited >= timeout or self._stopping:
                    batch, rows = [], 0
                    while queue and rows + queue[0].rows <= self.cfg.max_batch_size:
                        p = queue.popleft()
                        self._rows -= p.rows
                        if p.future.set_running_or_notify_cancel():
                            batch.append(p)
                            rows += p.rows
                        else:
                            self.stats["cancelled"] += 1
                    if batch:
                        return key, batch
                    continue
                self._cond.wait(timeout - waited)

    def _loop(self) -> None:
        while True:
            got = self._take()
            if got is None:
                return
            key, batch = got
            self._execute(key, batch)

    def _execute(self, key: Hashable, batch: list[Pending]) -> None:
        arrays = (batch[0].arrays if len(batch) == 1 else
                  {k: np.concatenate([p.arrays[k] for p in batch]) for k in batch[0].arrays})
        arrays = pad_rows(arrays, sum(p.rows for p in batch), self.cfg.allowed_batch_sizes)
        self.stats["batches"] += 1
        self.stats["rows"] += sum(p.rows for p in batch)
        try:
            outputs = self._run(key, arrays)
        except Exception as e:  # noqa: BLE001 (handed to the requests' futures)
            if len(batch) == 1:
                batch[0].future.set_exception(e)
                return
            self.stats["retried"] += 1
            for p in batch:  # one at a time: a bad request fails only itself
                try:
                    p.future.set_result(self._run(key, p.arrays))
                except Exception as e1:  # noqa: BLE001
                    p.future.set_exception(e1)
            return
        start = 0
        for p in batch:
            p.future.set_result(self._split(outputs, start, start + p.rows))
            start += p.rows

    def stop(self, timeout: float | None = None) -> None:
        """Runs what is queued, then ends the batch threads."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout)


def pad_rows(arrays: dict[str, np.ndarray], rows: int, sizes: tuple) -> dict[str, np.ndarray]:
    """The batch padded to the smallest allowed size that holds it, with copies of its last
    row (a valid request, whose outputs are dropped)."""
    target = next((s for s in sizes if s >= rows), rows)
    if target == rows:
        return arrays
    return {k: np.concatenate([a, np.repeat(a[-1:], target - rows, axis=0)])
            for k, a in arrays.items()}


def rows_of(arrays: dict[str, np.ndarray]) -> int:
    """The batch size of a request: the longest leading axis among its inputs (scalars,
    which a columnar request may send for per-row settings, broadcast)."""
    sizes = {a.shape[0] for a in arrays.values() if a.ndim}
    if len(sizes) > 1:
        raise ValueError(f"the inputs have different batch sizes {sorted(sizes)}")
    return sizes.pop() if sizes else 1


def broadcast_rows(arrays: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    return {k: (np.broadcast_to(a, (rows,)).copy() if a.ndim == 0 else a)
            for k, a in arrays.items()}

