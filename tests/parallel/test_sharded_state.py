"""Train state on an 8-device data x fsdp x tensor mesh: placement follows the rules."""
import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from mufm.lm.model import LMConfig, StageLM
from mufm.parallel.logical import sharding_context
from mufm.parallel.mesh import DEFAULT_RULES, MeshConfig, build_mesh
from mufm.train.optim import OptimizerConfig, make_optimizer
from mufm.train.state import create_train_state

CFG = LMConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, d_ff=64, dtype="float32")
# Adafactor factors a parameter's second moment only when its two largest dims are both
# >= 128 (optax's min_dim_size_to_factor): d_model 128 and d_ff 256 factor the MLP, the
# embedding and the logits, not the attention kernels (head_dim 32).
ADAFACTOR_CFG = LMConfig(vocab_size=128, d_model=128, num_layers=2, num_heads=4, d_ff=256,
                         dtype="float32")


def make(rngs, cfg=CFG):
    return StageLM(cfg, rngs=rngs)


def _state(opt="adamw", cfg=CFG):
    mesh = build_mesh(MeshConfig(ici_parallelism=(2, 2, 2)))
    tx, _ = make_optimizer(OptimizerConfig(name=opt), 10)
    with sharding_context(mesh, DEFAULT_RULES):
        state, shardings, spec = create_train_state(lambda rngs: make(rngs, cfg), tx, mesh,
                                                    DEFAULT_RULES, seed=0)
    return mesh, state, shardings


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def _split_shape(shape, spec, mesh):
    """The per-device shard shape of an array of `shape` under `spec` on `mesh`."""
    entries = tuple(spec) + (None,) * (len(shape) - len(spec))
    out = []
    for dim, axes in zip(shape, entries):
        axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        split = int(np.prod([mesh.shape[a] for a in axes]))
        assert dim % split == 0, (shape, spec)
        out.append(dim // split)
    return tuple(out)


def _assert_placed(x, spec, mesh):
    """x has `spec` and every device holds exactly its split of it (the whole array when
    replicated), the 8 devices' pieces together covering each element |replicas| times."""
    assert x.sharding.spec == spec, (x.sharding.spec, spec)
    want = _split_shape(x.shape, spec, mesh)
    shards = x.addressable_shards
    assert len(shards) == mesh.devices.size
    assert {sh.data.shape for sh in shards} == {want}, (x.shape, spec, want)
    distinct = {tuple((i.start, i.stop) for i in sh.index) for sh in shards}
    assert len(distinct) * int(np.prod(want)) == x.size  # the distinct pieces tile x


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
        # ... and that shard is the split along the sharded dims by the mesh axis sizes
        # (2 each here), for the parameter and both moments.
        for x in (leaf, mu, nu):
            _assert_placed(x, spec, mesh)
        assert shard_shape != leaf.shape
    assert state.step.sharding.spec == P()
    _assert_placed(state.step, P(), mesh)  # replicated: every device holds the whole
    assert state.step.sharding.is_fully_replicated


def test_adafactor_factored_stats_are_placed():
    mesh, state, shardings = _state("adafactor", ADAFACTOR_CFG)
    leaves = jax.tree.leaves(state.opt_state)
    assert leaves and all(isinstance(x, jax.Array) for x in leaves)
    fac = state.opt_state[1][0]  # chain(clip, adafactor) -> scale_by_factored_rms's state
    assert type(fac).__name__ == "FactoredState"
    # mufm.train.state.state_shardings: an optimizer leaf with its parameter's path and
    # shape (an unfactored second moment v) follows the parameter; the factored row and
    # column statistics (other shapes) and the (1,) placeholders are replicated.
    # param path: (v_row shape, v_col shape) when factored, else None (v is the full moment).
    expect = {
        ("blocks", "mlp", "wi", "kernel"): ((2, 128), (2, 256)),  # [layers, embed, mlp]
        ("blocks", "mlp", "wo", "kernel"): ((2, 128), (2, 256)),  # [layers, mlp, embed]
        ("embed", "embedding"): ((128,), (128,)),  # 2-D [vocab, embed]: a row and a column
        ("logits", "kernel"): ((128,), (128,)),
        ("blocks", "attn", "query", "kernel"): None,  # head_dim 32 < 128: not factored
        ("blocks", "attn_norm", "scale"): None,
        ("final_norm", "scale"): None,
    }
    for path, factored in expect.items():
        param = _get(state.params, path)
        v_row, v_col, v = (_get(t, path) for t in (fac.v_row, fac.v_col, fac.v))
        if factored:
            assert (v_row.shape, v_col.shape, v.shape) == (*factored, (1,)), path
            for x in (v_row, v_col, v):
                _assert_placed(x, P(), mesh)
            assert param.sharding.spec != P()  # so "replicated" is a choice, not the default
        else:
            assert v_row.shape == v_col.shape == (1,) and v.shape == param.shape, path
            _assert_placed(v_row, P(), mesh)
            _assert_placed(v_col, P(), mesh)
            _assert_placed(v, param.sharding.spec, mesh)
    # Every second-moment leaf of every parameter is one of the two placements above.
    for kind in (fac.v_row, fac.v_col, fac.v):
        for (path, x), p in zip(jax.tree_util.tree_leaves_with_path(kind), jax.tree.leaves(state.params)):
            assert x.sharding.spec == (p.sharding.spec if x.shape == p.shape else P()), path
    _assert_placed(fac.count, P(), mesh)


def test_init_from_shapes_matches_eager_init():
    """jit(init, out_shardings) gives the same numbers as building the model eagerly."""
    from flax import nnx

    _, state, _ = _state()
    eager = nnx.to_pure_dict(nnx.state(StageLM(CFG, rngs=nnx.Rngs(params=jax.random.key(0))), nnx.Param))
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
