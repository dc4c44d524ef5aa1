"""Logical axis rules and mesh construction."""
import jax
import pytest
from jax.sharding import PartitionSpec as P

from mufm.parallel.logical import ShardingRuleError, logical_to_spec, named_shardings
from mufm.parallel.mesh import DEFAULT_RULES, MeshConfig, MeshError, build_mesh, mesh_shape

RULES = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "tensor"), ("length", None),
         ("layers", None))


def mesh222():
    return build_mesh(MeshConfig(ici_parallelism=(2, 2, 2)))


def test_mesh_fills_minus_one():
    assert mesh_shape(MeshConfig(ici_parallelism=(-1, 2, 1)), 8) == ((4, 2, 1), (1, 1, 1))
    assert mesh_shape(MeshConfig(ici_parallelism=(1, -1, 1), dcn_parallelism=(-1, 1, 1)), 8, 2) == (
        (1, 4, 1), (2, 1, 1))
    mesh = build_mesh(MeshConfig())
    assert dict(mesh.shape) == {"data": 8, "fsdp": 1, "tensor": 1}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


@pytest.mark.parametrize("ici,needle", [((3, 1, 1), "ici_parallelism=(3, 1, 1)"),
                                        ((-1, -1, 1), "at most one"),
                                        ((3, -1, 1), "do not divide"),
                                        ((2, 2), "3 entries")])
def test_mesh_errors_name_the_setting(ici, needle):
    with pytest.raises(MeshError, match="ici_parallelism") as e:
        build_mesh(MeshConfig(ici_parallelism=ici))
    assert needle in str(e.value)


def test_rules_resolve_in_order_skipping_used_axes():
    mesh = mesh222()
    # Parameter (embed, mlp): embed on fsdp, mlp on tensor.
    assert logical_to_spec(("embed", "mlp"), RULES, mesh, (8, 8)) == P("fsdp", "tensor")
    # Activation (batch, length, embed): fsdp already taken by batch, so embed stays whole.
    assert logical_to_spec(("batch", "length", "embed"), RULES, mesh, (8, 4, 8)) == P(
        ("data", "fsdp"), None, None)


def test_indivisible_parameter_names_param_and_axis():
    with pytest.raises(ShardingRuleError, match=r"blocks/mlp/wi.*'mlp'.*size 3"):
        logical_to_spec(("embed", "mlp"), RULES, mesh222(), (8, 3), name="blocks/mlp/wi")


def test_missing_rule_and_unknown_mesh_axis_are_named():
    with pytest.raises(ShardingRuleError, match=r"w: logical axis 'heads' has no rule"):
        logical_to_spec(("heads",), RULES, mesh222(), (8,), name="w")
    with pytest.raises(ShardingRuleError, match=r"names mesh axis 'model'"):
        logical_to_spec(("embed",), (("embed", "model"),), mesh222(), (8,), name="w")


def test_activation_resolution_is_lenient():
    # A decoding batch of 1 cannot split over data x fsdp: left replicated, no error.
    assert logical_to_spec(("batch", "length"), RULES, mesh222(), (1, 5), strict=False) == P(None, None)


def test_named_shardings_over_a_tree():
    import jax.numpy as jnp

    mesh = mesh222()
    axes = {"a": ("embed", "mlp"), "b": {"c": ("layers", "embed")}}
    shapes = {"a": jnp.zeros((4, 4)), "b": {"c": jnp.zeros((3, 4))}}
    sh = named_shardings(axes, shapes, mesh, DEFAULT_RULES)
    assert sh["a"].spec == P("fsdp", "tensor") and sh["b"]["c"].spec == P(None, "fsdp")
