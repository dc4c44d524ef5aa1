"""k-means in JAX: k-means++ seeding and Lloyd's iterations on one batch (the codec's RVQ
initialisation, `mufm.layers.rvq`), and a jitted mini-batch k-means (Sculley 2010) over a
stream of batches, with per-dimension normalisation, for semantic tokens (AudioLM /
MusicLM: k-means with K = 1024 on w2v-BERT embeddings, "each dimension normalised to zero
mean and unit variance" before clustering).

Mini-batch fit, all from explicit keys and pure functions of (state, batch):
1. `moments` over sample batches (summed: count, sum, sum of squares per dimension, so
   batches and hosts add), then `normaliser` -> (mean, std);
2. `init_minibatch(key, x, weights, k, mean, std)`: greedy k-means++ seeding (2 + ln k
   trials per centre) on the first (normalised) batch, counts 0;
3. `minibatch_step(state, key, x, weights)`: assign every frame to its nearest centroid;
   each centroid becomes the running mean of every frame ever assigned to it, i.e.
   c <- (n c + sum of its batch frames) / (n + m) (Sculley's per-centre learning rate
   1 / count, applied to the batch at once); then empty or starved clusters (count <
   `reassign_ratio` x the largest count, and every cluster still at count 0) are
   reseeded at batch frames drawn with probability proportional to their squared
   distance to the nearest centroid (as k-means++ would place a new centre), their
   counts set to the smallest surviving count, so a reseeded centre is neither stuck nor
   dominant (scikit-learn's MiniBatchKMeans policy).
`assign(state, x)` gives the ids of new frames. Frames are rows [M, D] with logical axes
(`batch`, `codebook_dim`): under a mesh the batch is split across devices and the per-cluster
sums are reduced by XLA, the centroids replicated.
"""
from __future__ import annotations

import math

import flax
import jax
import jax.numpy as jnp

from mufm.parallel.logical import constrain


def sq_distances(x: jax.Array, codebook: jax.Array) -> jax.Array:
    """[M, D] x [K, D] -> [M, K] squared Euclidean distances (fp32)."""
    return (jnp.sum(x * x, -1, keepdims=True) - 2.0 * x @ codebook.T
            + jnp.sum(codebook * codebook, -1)[None, :])


def sample_frames(key, x: jax.Array, weights: jax.Array, n: int) -> jax.Array:
    """n frames of x [M, D] drawn uniformly with replacement among frames of positive
    weight (any frame when none has). Draws n integers and binary-searches the running
    count of active frames: a categorical draw would make n x M Gumbel variates."""
    active = weights > 0
    active = jnp.where(jnp.any(active), active, True)
    running = jnp.cumsum(active.astype(jnp.int32))
    rank = jax.random.randint(key, (n,), 0, running[-1])
    return x[jnp.searchsorted(running, rank, side="right")]


def kmeans_plus_plus(key, x: jax.Array, weights: jax.Array, k: int, local_trials: int = 1
                     ) -> jax.Array:
    """k-means++ seeding: each next centre is a frame drawn with probability proportional
    to weight x squared distance to the nearest centre so far (O(k * M * D), sequential).

    `local_trials` > 1 is greedy k-means++ (Arthur & Vassilvitskii's variant, scikit-learn's
    default with 2 + ln k trials): draw that many candidates by the same rule and keep the
    one that lowers the summed squared distance most, which rarely puts two seeds in one
    well-separated cluster where plain k-means++ often does (Lloyd's or mini-batch steps
    never undo that)."""
    first_key, key = jax.random.split(key)
    first = sample_frames(first_key, x, weights, 1)[0]
    centroids = jnp.zeros((k, x.shape[-1]), x.dtype).at[0].set(first)
    nearest = jnp.sum(jnp.square(x - first), -1)

    def pick(i, carry):
        centroids, nearest = carry
        score = nearest * weights
        # All active frames already coincide with centres: fall back to uniform picks.
        logits = jnp.where(score > 0, jnp.log(jnp.maximum(score, 1e-30)), -jnp.inf)
        logits = jnp.where(jnp.any(score > 0), logits, jnp.where(weights > 0, 0.0, -jnp.inf))
        logits = jnp.where(jnp.any(jnp.isfinite(logits)), logits, 0.0)
        if local_trials == 1:
            c = x[jax.random.categorical(jax.random.fold_in(key, i), logits)]
            return centroids.at[i].set(c), jnp.minimum(nearest, jnp.sum(jnp.square(x - c), -1))
        cands = x[jax.random.categorical(jax.random.fold_in(key, i), logits, shape=(local_trials,))]
        after = jnp.minimum(nearest[None], sq_distances(cands, x))  # [trials, M]
        best = jnp.argmin(jnp.sum(after * weights[None], -1))
        return centroids.at[i].set(cands[best]), after[best]

    return jax.lax.fori_loop(1, k, pick, (centroids, nearest))[0]


def kmeans(key, x: jax.Array, weights: jax.Array, k: int, iters: int):
    """Weighted Lloyd's k-means with k-means++ seeding (random seeding often puts two
    centres in one cluster, which Lloyd's iterations never undo).

    Returns (centroids [k, D], cluster sizes [k]). Empty clusters keep their centroid.
    """
    centroids = kmeans_plus_plus(key, x, weights, k)

    def assign(c):
        onehot = jax.nn.one_hot(jnp.argmin(sq_distances(x, c), -1), k, dtype=x.dtype)
        onehot = onehot * weights[:, None]
        return onehot.sum(0), onehot.T @ x

    def step(_, c):
        counts, sums = assign(c)
        return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1e-9)[:, None], c)

    centroids = jax.lax.fori_loop(0, iters, step, centroids)
    return centroids, assign(centroids)[0]



# -- mini-batch k-means -------------------------------------------------------------------
@flax.struct.dataclass
class KMeansState:
    centroids: jax.Array  # [k, D], in normalised units
    counts: jax.Array  # [k] frames assigned so far (after reseeding: see minibatch_step)
    mean: jax.Array  # [D] the per-dimension normaliser
    std: jax.Array  # [D]
    step: jax.Array  # batches consumed

    def centroids_in_input_units(self) -> jax.Array:
        return self.centroids * self.std + self.mean


def moments(x: jax.Array, weights: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(count, sum [D], sum of squares [D]) of the weighted rows of x [M, D], in fp32."""
    x = x.astype(jnp.float32)
    w = jnp.ones(x.shape[:1], jnp.float32) if weights is None else weights.astype(jnp.float32)
    return jnp.sum(w), w @ x, w @ (x * x)


def normaliser(count: jax.Array, total: jax.Array, squares: jax.Array, eps: float = 1e-6
               ) -> tuple[jax.Array, jax.Array]:
    """(mean, std) from summed moments; a constant dimension gets std sqrt(eps), not 0."""
    n = jnp.maximum(count, 1.0)
    mean = total / n
    var = jnp.maximum(squares / n - mean * mean, 0.0)
    return mean, jnp.sqrt(var + eps)


def _normalise(state: KMeansState, x: jax.Array) -> jax.Array:
    x = constrain(x.astype(jnp.float32), ("batch", "codebook_dim"))
    return (x - state.mean) / state.std


def init_minibatch(key: jax.Array, x: jax.Array, weights: jax.Array | None, k: int,
                   mean: jax.Array, std: jax.Array) -> KMeansState:
    """k-means++ seeds from the normalised batch x [M, D]; counts start at 0, so the first
    step replaces each seed by the mean of its frames."""
    w = jnp.ones(x.shape[:1], jnp.float32) if weights is None else weights.astype(jnp.float32)
    state = KMeansState(centroids=jnp.zeros((k, x.shape[-1]), jnp.float32),
                        counts=jnp.zeros((k,), jnp.float32), mean=mean.astype(jnp.float32),
                        std=std.astype(jnp.float32), step=jnp.zeros((), jnp.int32))
    trials = 2 + int(math.log(k))
    return state.replace(centroids=kmeans_plus_plus(key, _normalise(state, x), w, k, trials))


def assign(state: KMeansState, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(ids [M] int32, squared distances to the chosen centroid [M], normalised units)."""
    d = sq_distances(_normalise(state, x), state.centroids)
    ids = jnp.argmin(d, -1)
    return ids.astype(jnp.int32), jnp.maximum(jnp.take_along_axis(d, ids[:, None], -1)[:, 0], 0.0)


def minibatch_step(state: KMeansState, key: jax.Array, x: jax.Array,
                   weights: jax.Array | None = None, *, reassign_ratio: float = 0.01
                   ) -> tuple[KMeansState, dict[str, jax.Array]]:
    """One mini-batch update (module docstring). Returns the new state and {inertia: mean
    squared distance of the batch's frames before the update, reassigned: clusters
    reseeded}."""
    k = state.centroids.shape[0]
    xn = _normalise(state, x)
    w = jnp.ones(x.shape[:1], jnp.float32) if weights is None else weights.astype(jnp.float32)
    ids, dist = assign(state, x)
    onehot = jax.nn.one_hot(ids, k, dtype=jnp.float32) * w[:, None]
    batch_counts = onehot.sum(0)
    sums = onehot.T @ xn
    counts = state.counts + batch_counts
    centroids = jnp.where(counts[:, None] > 0,
                          (state.counts[:, None] * state.centroids + sums)
                          / jnp.maximum(counts, 1.0)[:, None], state.centroids)
    starved = (counts < reassign_ratio * jnp.max(counts)) | (counts <= 0)
    # Reseed at frames drawn by squared distance to the updated centroids (k-means++'s rule);
    # a draw per cluster, used only where that cluster is starved.
    nearest = jnp.min(sq_distances(xn, centroids), -1) * w
    logits = jnp.where(nearest > 0, jnp.log(jnp.maximum(nearest, 1e-30)), -jnp.inf)
    logits = jnp.where(jnp.any(nearest > 0), logits, jnp.where(w > 0, 0.0, -jnp.inf))
    fresh = xn[jax.random.categorical(key, logits, shape=(k,))]
    survivors = jnp.where(starved, jnp.inf, counts)
    floor = jnp.where(jnp.all(starved), 1.0, jnp.min(survivors))
    centroids = jnp.where(starved[:, None], fresh, centroids)
    counts = jnp.where(starved, floor, counts)
    inertia = jnp.sum(dist * w) / jnp.maximum(jnp.sum(w), 1.0)
    new = state.replace(centroids=centroids, counts=counts, step=state.step + 1)
    return new, {"inertia": inertia, "reassigned": jnp.sum(starved).astype(jnp.int32)}
