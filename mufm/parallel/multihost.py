"""Multi-host start-up and host-local -> global batches."""
from __future__ import annotations

import logging
import os
from typing import Mapping

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
    if coordinator:
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]))
    elif len(tpu_hosts) > 1:
        jax.distributed.initialize()
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
