"""Multi-host start-up decisions and host-local -> global batch assembly."""
import jax
import numpy as np

from mufm.parallel import multihost
from mufm.parallel.mesh import DEFAULT_RULES, MeshConfig, build_mesh


def test_single_host_environment_does_not_initialize(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
    for var in ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(var, raising=False)
    assert multihost.maybe_initialize_distributed() is False
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "localhost")  # a single-host TPU VM
    assert multihost.maybe_initialize_distributed() is False
    assert calls == []


def test_pod_slice_and_explicit_cluster_initialize(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append(k))
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    monkeypatch.delenv("MUFM_HEARTBEAT_TIMEOUT_S", raising=False)
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "10.0.0.2,10.0.0.3")
    assert multihost.maybe_initialize_distributed() is True
    assert calls[-1] == {}  # TPU pods auto-detect everything
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "host0:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "2")
    assert multihost.maybe_initialize_distributed() is True
    assert calls[-1] == {"coordinator_address": "host0:1234", "num_processes": 4, "process_id": 2}
    monkeypatch.setenv("MUFM_HEARTBEAT_TIMEOUT_S", "15")  # a dead host is noticed sooner
    assert multihost.maybe_initialize_distributed() is True
    assert calls[-1]["heartbeat_timeout_seconds"] == 15


def test_global_batch_is_sharded_over_batch_axes():
    mesh = build_mesh(MeshConfig(ici_parallelism=(2, 2, 2)))
    host = {"decoder_target_tokens": np.arange(8 * 6, dtype=np.int32).reshape(8, 6)}
    batch = multihost.global_batch(host, mesh, DEFAULT_RULES)
    arr = batch["decoder_target_tokens"]
    assert arr.sharding.spec[0] == ("data", "fsdp")
    assert arr.addressable_shards[0].data.shape == (2, 6)
    np.testing.assert_array_equal(np.asarray(arr), host["decoder_target_tokens"])


def test_aligned_batches_stops_when_no_host_has_more():
    # One process: the agreement is with itself, so the pass is the iterator's own, capped.
    empty = lambda: {"x": np.zeros((0,))}
    batches = [{"x": np.ones((2,))}, {"x": np.ones((1,))}]
    assert len(list(multihost.aligned_batches(iter(batches), 5, empty))) == 2
    assert len(list(multihost.aligned_batches(iter(batches), 1, empty))) == 1
    assert multihost.any_process(False) is False and multihost.any_process(True) is True
    assert multihost.process_sum({"a": 1.5, "b": 2}) == {"a": 1.5, "b": 2.0}


def test_host_local_and_real_rows_invert_global_batch():
    mesh = build_mesh(MeshConfig(ici_parallelism=(2, 2, 2)))
    host = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    g = multihost.global_batch({"x": host}, mesh, DEFAULT_RULES)["x"]
    # An output laid out by the compiler (here replicated) still comes back as the host's rows.
    replicated = jax.device_put(g, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    sharding = multihost.batch_sharding(mesh, DEFAULT_RULES, 2)
    np.testing.assert_array_equal(multihost.host_local(replicated, sharding), host)
    np.testing.assert_array_equal(multihost.host_local(g, sharding), host)
    mask = multihost.real_rows(multihost.batch_sharding(mesh, DEFAULT_RULES, 1), 8, 5)
    assert mask.tolist() == [True] * 5 + [False] * 3
