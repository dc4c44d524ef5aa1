"""Named rematerialisation policies for a transformer block (MaxText-style names).

- none:       keep every activation (fastest, most memory)
- minimal:    save matmul outputs that have no batch dimension in the contraction
              (`dots_with_no_batch_dims`: all projections), recompute the rest
- save_proj:  save exactly the named projections (q, k, v, attention out, MLP in/gate/out,
              the conformer conv module's pointwise convs)
- save_qkv_proj: save only q, k, v projections
- full:       save nothing inside the block; recompute it all in the backward pass
"""
from __future__ import annotations

import jax

# The conformer's conv module adds its pointwise convs (mufm.layers.conformer).
_PROJECTIONS = ("query_proj", "key_proj", "value_proj", "out_proj", "mlp_in", "mlp_gate", "mlp_out",
                "conv_value", "conv_gate", "conv_out")

REMAT_POLICIES = {
    "none": None,
    "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_proj": jax.checkpoint_policies.save_only_these_names(*_PROJECTIONS),
    "save_qkv_proj": jax.checkpoint_policies.save_only_these_names("query_proj", "key_proj", "value_proj"),
    "full": jax.checkpoint_policies.nothing_saveable,
}


def remat_policy(name: str):
    if name not in REMAT_POLICIES:
        raise ValueError(f"unknown remat_policy {name!r}; choose one of {sorted(REMAT_POLICIES)}")
    return REMAT_POLICIES[name]
