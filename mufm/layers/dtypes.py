"""Compute dtypes by their gin names (configs say 'float32' or 'bfloat16')."""
import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
