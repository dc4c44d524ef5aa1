"""A stack of identical blocks, scanned or unrolled: shared by the stage LM and the conformer."""
from __future__ import annotations

from typing import Callable

from flax import nnx


def layer_stack(make_block: Callable[[nnx.Rngs], nnx.Module], num_layers: int, *, scan: bool,
                rngs: nnx.Rngs):
    """`num_layers` blocks from `make_block(rngs)`. Scanned: one module whose parameters carry a
    leading `layers` axis (vmapped init, split keys), so compile time does not grow with depth;
    unrolled: an nnx.List (XLA:CPU runs an unrolled backward pass ~2x faster)."""
    if scan:
        @nnx.split_rngs(splits=num_layers)
        @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def stack(r):
            return make_block(r)
        return stack(rngs)
    return nnx.List([make_block(rngs) for _ in range(num_layers)])
