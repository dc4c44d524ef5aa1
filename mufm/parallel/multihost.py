"""Multi-host start-up and host-local -> global batches."""
from __future__ import annotations

import logging
import os
from typing import Callable, Iterator, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from mufm.parallel.logical import Rules, logical_to_spec

log = logging.getLogger(__name__)


def maybe_initialize_distributed() -> bool:
    """Calls jax.distributed.initialize() when the environment says there are several hosts.

    TPU pod slices (several entries in TPU_WORKER_HOSTNAMES) auto-detect everything; other
    clusters pass JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID.
    """
    coordinator = os.environ.get("JAX_COORDINATOR_ADDRESS")
    tpu_hosts = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    # A host that dies stops sending heartbeats to the coordination service; once they are
    # this many seconds overdue every other process is told and aborts, naming the dead
    # task, rather than waiting in a collective forever (jax's default: 100 s).
    heartbeat = os.environ.get("MUFM_HEARTBEAT_TIMEOUT_S")
    timeouts = {"heartbeat_timeout_seconds": int(heartbeat)} if heartbeat else {}
    if coordinator:
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]), **timeouts)
    elif len(tpu_hosts) > 1:
        jax.distributed.initialize(**timeouts)
    else:
        return False
    log.info("process %d of %d, %d local / %d global devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


def batch_sharding(mesh: Mesh, rules: Rules, ndim: int) -> NamedSharding:
    axes = ("batch", "length") + (None,) * (ndim - 2) if ndim >= 2 else ("batch",)
    return NamedSharding(mesh, logical_to_spec(axes[:ndim], rules, mesh, strict=False))


def global_batch(host_batch: Mapping[str, np.ndarray], mesh: Mesh, rules: Rules) -> dict[str, jax.Array]:
    """Assembles each host's slice of the batch into arrays sharded over the mesh."""
    return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, rules, v.ndim), v)
            for k, v in host_batch.items()}


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is True on any (a blocking all-gather of one bool;
    with one process, just `flag`)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.asarray(multihost_utils.process_allgather(np.array(bool(flag)))).any())


def process_sum(values: Mapping[str, float]) -> dict[str, float]:
    """`values` summed over every process (same keys on each; one all-gather)."""
    if jax.process_count() == 1:
        return {k: float(v) for k, v in values.items()}
    from jax.experimental import multihost_utils

    keys = sorted(values)
    gathered = np.asarray(multihost_utils.process_allgather(
        np.array([float(values[k]) for k in keys], np.float64)))
    return dict(zip(keys, (float(x) for x in gathered.reshape(-1, len(keys)).sum(0))))


def aligned_batches(it: Iterator[dict], num_batches: int,
                    empty: Callable[[], dict]) -> Iterator[dict]:
    """Up to `num_batches` host batches of `it`, the same number on every process.

    Each host reads its own shard of a finite split, and shards need not hold the same number
    of batches; a host that stopped early would leave the others waiting in the next eval
    program's collectives forever. So before each batch the hosts agree whether any of them
    still has one: the pass ends when none has, and a host that ran out meanwhile takes part
    with `empty()` (a batch of no rows, which the caller pads like any short batch and does
    not score)."""
    for _ in range(num_batches):
        host = next(it, None)
        if not any_process(host is not None):
            return
        yield empty() if host is None else host


def host_local(x: jax.Array, sharding: NamedSharding) -> np.ndarray:
    """This process's rows of a global array whose leading axis is the batch that `sharding`
    (the batch's own sharding, as `global_batch` placed it) spreads over the hosts: the
    inverse of `global_batch`, whatever sharding the program gave its output. With several
    processes the array is gathered first (the other hosts' rows are not addressable here)."""
    if x.is_fully_addressable:
        full = np.asarray(jax.device_get(x))
    else:
        from jax.experimental import multihost_utils

        full = np.asarray(multihost_utils.process_allgather(x, tiled=True))
    # The rows this process's devices hold of the batch, in order: make_array_from_process_
    # local_data laid the host's rows out over exactly these.
    ranges = sorted({(s[0].start or 0, x.shape[0] if s[0].stop is None else s[0].stop)
                     for s in sharding.addressable_devices_indices_map(x.shape).values()})
    return np.concatenate([full[a:b] for a, b in ranges])


def real_rows(sharding: NamedSharding, global_rows: int, local_real: int) -> np.ndarray:
    """Bool mask [global_rows] of a global batch's real rows, when each process filled its
    first `local_real` rows (its own count, which may differ between hosts at the end of
    uneven shards) and padded the rest; `sharding` is the batch's (1-D) sharding."""
    counts = [int(local_real)]
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        counts = [int(c) for c in np.asarray(
            multihost_utils.process_allgather(np.array(int(local_real), np.int32))).reshape(-1)]
    ranges: dict[int, set] = {}
    for device, index in sharding.devices_indices_map((global_rows,)).items():
        s = index[0]
        ranges.setdefault(device.process_index, set()).add(
            (s.start or 0, global_rows if s.stop is None else s.stop))
    mask = np.zeros((global_rows,), bool)
    for process, spans in ranges.items():
        rows = np.concatenate([np.arange(a, b) for a, b in sorted(spans)])
        mask[rows[:counts[process]]] = True
    return mask
