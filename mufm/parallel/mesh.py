"""Device mesh with axes (data, fsdp, tensor) from gin-given ICI and DCN shapes.

`ici_parallelism` is the mesh shape inside one slice (chips joined by the inter-chip
interconnect), `dcn_parallelism` across slices (data-centre network). One entry may be -1:
it takes whatever devices are left. The product of both is the global mesh shape, axis by
axis, as in MaxText.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import gin
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

from mufm.parallel.logical import Rules, normalize_rules

MESH_AXES = ("data", "fsdp", "tensor")

# Defaults that suit a data+fsdp+tensor mesh; configs/mesh/*.gin restate them explicitly.
DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("layers", None),
    ("rvq", None),
    ("codebook", None),
    ("codebook_dim", None),
    ("conv_width", None),
    ("conv_in", None),
    ("conv_out", None),
    ("channels", None),
    ("time", None),
    ("joint", None),
    ("mel", None),
    ("conv_freq", None),
    ("codebook_groups", None),
    ("final", None),
    ("target_length", None),
)


class MeshError(ValueError):
    """The requested mesh shape does not fit the devices."""


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MeshConfig:
    ici_parallelism: Sequence[int] = (-1, 1, 1)
    dcn_parallelism: Sequence[int] = (1, 1, 1)
    logical_axis_rules: Sequence = DEFAULT_RULES

    @property
    def rules(self) -> Rules:
        return normalize_rules(self.logical_axis_rules)


def _fill(shape: Sequence[int], total: int, what: str) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != len(MESH_AXES):
        raise MeshError(f"{what}={shape} must have {len(MESH_AXES)} entries for axes {MESH_AXES}")
    if shape.count(-1) > 1:
        raise MeshError(f"{what}={shape}: at most one entry may be -1")
    if any(s == 0 or s < -1 for s in shape):
        raise MeshError(f"{what}={shape}: entries must be positive or -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if total % known:
            raise MeshError(
                f"{what}={shape}: the fixed axes ({known} devices) do not divide the "
                f"{total} devices available")
        shape = tuple(total // known if s == -1 else s for s in shape)
    if math.prod(shape) != total:
        raise MeshError(
            f"{what}={shape} asks for {math.prod(shape)} devices but there are {total}")
    return shape


def _num_slices(devices: Sequence[jax.Device]) -> int:
    slices = {getattr(d, "slice_index", 0) for d in devices}
    return len(slices)


def mesh_shape(config: MeshConfig, num_devices: int, num_slices: int = 1) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(ici_shape, dcn_shape) with -1 filled; raises MeshError naming the culprit."""
    if num_devices % num_slices:
        raise MeshError(f"{num_devices} devices do not split into {num_slices} slices")
    dcn = _fill(config.dcn_parallelism, num_slices, "dcn_parallelism")
    ici = _fill(config.ici_parallelism, num_devices // num_slices, "ici_parallelism")
    return ici, dcn


def build_mesh(config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    devices = list(jax.devices() if devices is None else devices)
    slices = _num_slices(devices)
    ici, dcn = mesh_shape(config, len(devices), slices)
    if slices > 1:
        arr = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
    else:
        try:
            arr = mesh_utils.create_device_mesh(ici, devices)
        except (ValueError, NotImplementedError, AssertionError):
            # Topologies mesh_utils has no physical layout for: plain row-major order.
            arr = np.asarray(devices).reshape(ici)
    return Mesh(arr, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
