"""Train state on an 8-device data x fsdp x tensor mesh: placement follows the rules."""
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from mufm.lm.model import LMConfig, StageLM
from mufm.parallel.logical import sharding_context
from mufm.parallel.mesh import DEFAULT_RULES, MeshConfig, build_mesh
from mufm.train.optim import OptimizerConfig, make_optimizer
from mufm.train.state import create_train_state

CFG = LMConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, d_ff=64, dtype="float32")


def make(rngs):
    return StageLM(CFG, rngs=rngs)


def _state(opt="adamw"):
    mesh = build_mesh(MeshConfig(ici_parallelism=(2, 2, 2)))
    tx, _ = make_optimizer(OptimizerConfig(name=opt), 10)
    with sharding_context(mesh, DEFAULT_RULES):
        state, shardings, spec = create_train_state(make, tx, mesh, DEFAULT_RULES, seed=0)
    return mesh, state, shardings


def test_params_and_adam_moments_follow_the_rules():
    mesh, state, _ = _state()
    p = state.params
    expect = {
        ("blocks", "mlp", "wi", "kernel"): P(None, "fsdp", "tensor"),  # layers, embed, mlp
        ("blocks", "mlp", "wo", "kernel"): P(None, "tensor", "fsdp"),  # layers, mlp, embed
        ("blocks", "attn", "query", "kernel"): P(None, "fsdp", "tensor", None),  # embed heads kv
        ("blocks", "attn", "out", "kernel"): P(None, "tensor", None, "fsdp"),
        ("embed", "embedding"): P("tensor", "fsdp"),  # vocab, embed
        ("final_norm", "scale"): P("fsdp"),
    }
    adam = state.opt_state[1][0]  # chain(clip, adamw) -> adamw's ScaleByAdamState
    for path, spec in expect.items():
        leaf = p
        mu, nu = adam.mu, adam.nu
        for k in path:
            leaf, mu, nu = leaf[k], mu[k], nu[k]
        assert leaf.sharding.spec == spec, path
        assert mu.sharding.spec == spec and nu.sharding.spec == spec, path
        # Really split: each device holds only its shard.
        shard_shape = leaf.addressable_shards[0].data.shape
        assert np.prod(shard_shape) * len(mesh.devices.flat) >= leaf.size
    assert state.step.sharding.spec == P()


def test_adafactor_factored_stats_are_placed():
    _, state, shardings = _state("adafactor")
    leaves = jax.tree.leaves(state.opt_state)
    assert leaves and all(isinstance(x, jax.Array) for x in leaves)


def test_init_from_shapes_matches_eager_init():
    """jit(init, out_shardings) gives the same numbers as building the model eagerly."""
    from flax import nnx

    _, state, _ = _state()
    eager = nnx.to_pure_dict(nnx.state(StageLM(CFG, rngs=nnx.Rngs(params=jax.random.key(0))), nnx.Param))
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
