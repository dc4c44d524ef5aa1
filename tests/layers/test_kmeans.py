"""Mini-batch k-means: recovers planted clusters (in the input's units, through the
per-dimension normaliser), reseeds an empty cluster, and the same step on a batch split
over 8 devices."""
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mufm.layers.kmeans import (assign, init_minibatch, minibatch_step, moments,
                                normaliser)

U = 2.0 ** -24  # fp32 unit roundoff
SIGMA = 0.05  # blob spread, in normalised-scale units of each dimension


def planted(rng, centres, scales, n):
    """n frames around `centres` [k, D], dimension d stretched by scales[d]."""
    labels = rng.integers(0, len(centres), n)
    x = (centres[labels] + SIGMA * rng.standard_normal((n, centres.shape[1]))) * scales
    return x.astype(np.float32), labels


def test_normaliser_is_the_per_dimension_mean_and_std():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 3)).astype(np.float32) * [1.0, 10.0, 0.01] + [5.0, -3.0, 0.0]
    parts = [moments(jnp.asarray(x[:200])), moments(jnp.asarray(x[200:]))]
    mean, std = normaliser(*[a + b for a, b in zip(*parts)], eps=0.0)
    ref = x.astype(np.float64)
    n = len(x)
    # The sums of n terms are within n u of their magnitudes (Higham 3.1): the mean within
    # (n + 1) u mean|x|; the variance ss / n - mean^2 within (n + 3) u (mean(x^2) + 2 mean^2)
    # (the square of the mean doubles its relative error), and std = sqrt(var) within half
    # the variance's error over std, plus its own rounding.
    mean_tol = (n + 1) * U * np.abs(ref).mean(0)
    assert np.all(np.abs(np.asarray(mean) - ref.mean(0)) <= mean_tol)
    var_tol = (n + 3) * U * ((ref ** 2).mean(0) + 2 * ref.mean(0) ** 2)
    std_tol = var_tol / (2 * ref.std(0)) + U * ref.std(0)
    assert np.all(np.abs(np.asarray(std) - ref.std(0)) <= std_tol)


def test_recovers_planted_clusters():
    rng = np.random.default_rng(1)
    k, d = 8, 4
    centres = rng.permutation(np.array(np.meshgrid(*[[0.0, 1.0]] * 3)).reshape(3, -1).T)
    centres = np.concatenate([centres, rng.random((k, 1))], 1)  # 8 corners of a cube x a 4th dim
    scales = np.array([1.0, 100.0, 0.01, 1.0])  # without normalisation dim 1 would dominate
    x, labels = planted(rng, centres, scales, 4096)
    mean, std = normaliser(*moments(jnp.asarray(x)))
    step = jax.jit(minibatch_step)
    state = init_minibatch(jax.random.key(0), jnp.asarray(x[:512]), None, k, mean, std)
    for i in range(8):
        batch = x[512 * i:512 * (i + 1)]
        state, stats = step(state, jax.random.key(i + 1), jnp.asarray(batch))
    ids, _ = assign(state, jnp.asarray(x))
    ids = np.asarray(ids)
    # Every planted cluster is one id and every id one cluster.
    mapping = {int(lab): set(ids[labels == lab]) for lab in range(k)}
    assert all(len(v) == 1 for v in mapping.values()), mapping
    assert len(set.union(*mapping.values())) == k
    # Each centroid is the mean of the frames assigned to it over all batches (~512 per
    # cluster): off the true centre by ~SIGMA / sqrt(n) per dimension; 6 of those.
    found = np.asarray(state.centroids_in_input_units())
    counts = np.asarray(state.counts)
    for lab, (cid,) in mapping.items():
        tol = 6 * SIGMA / math.sqrt(counts[cid]) * scales
        np.testing.assert_array_less(np.abs(found[cid] - centres[lab] * scales), tol)
    assert float(stats["inertia"]) < 2 * d * SIGMA ** 2 / float(np.mean(np.asarray(std) / scales) ** 2)


def test_empty_cluster_is_reseeded():
    rng = np.random.default_rng(2)
    centres = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    x, labels = planted(rng, centres, np.ones(2), 1024)
    mean, std = normaliser(*moments(jnp.asarray(x)))
    state = init_minibatch(jax.random.key(0), jnp.asarray(x), None, 4, mean, std)
    # Put two seeds in one blob and one far from every frame: it gets no frame at all.
    start = np.asarray(state.centroids).copy()
    xn = (x - np.asarray(mean)) / np.asarray(std)
    start[0] = xn[labels == 0].mean(0)
    start[1] = xn[labels == 0].mean(0) + 0.01
    start[2] = xn[labels == 2].mean(0)
    start[3] = 1e3
    state = state.replace(centroids=jnp.asarray(start))
    state, stats = minibatch_step(state, jax.random.key(1), jnp.asarray(x[:512]))
    assert int(stats["reassigned"]) >= 1
    assert float(jnp.abs(state.centroids[3]).max()) < 10  # reseeded among the frames
    assert float(state.counts.min()) > 0
    for i in range(6):
        state, stats = minibatch_step(state, jax.random.key(2 + i), jnp.asarray(x[512:]))
    ids, _ = assign(state, jnp.asarray(x))
    # All four blobs are found again (the two seeds sharing blob 0 sort themselves out).
    per_blob = [np.bincount(np.asarray(ids)[labels == lab], minlength=4).argmax() for lab in range(4)]
    assert len(set(per_blob)) == 4, per_blob


def test_step_on_eight_devices_matches_one():
    rng = np.random.default_rng(3)
    x, _ = planted(rng, rng.random((6, 8)), np.ones(8), 1024)
    mean, std = normaliser(*moments(jnp.asarray(x)))
    state = init_minibatch(jax.random.key(0), jnp.asarray(x), None, 6, mean, std)
    one, _ = jax.jit(minibatch_step)(state, jax.random.key(1), jnp.asarray(x))
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    sharded = jax.device_put(jnp.asarray(x), NamedSharding(mesh, PartitionSpec("data", None)))
    eight, _ = jax.jit(minibatch_step)(state, jax.random.key(1), sharded)
    np.testing.assert_array_equal(eight.counts, one.counts)
    # Per-cluster sums of up to 1024 frames in another order: 2 M u of the summed magnitudes.
    tol = 2 * 1024 * U * float(np.abs((x - np.asarray(mean)) / np.asarray(std)).max())
    np.testing.assert_allclose(eight.centroids, one.centroids, rtol=0, atol=tol)
