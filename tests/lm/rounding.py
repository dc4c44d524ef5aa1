"""The fp32 rounding bound the LM tests compare two evaluations of a model against."""
from mufm.lm.model import LMConfig

U = 2.0 ** -24  # fp32 unit roundoff


def rounding_tolerance(cfg: LMConfig, length: int, *, tokens: int = 0) -> float:
    """Relative to an output's scale, how far two fp32 evaluations of the model can lie
    apart that differ only in the order they add terms in (other matmul shapes, keys from
    a cache, blocked queries, fused recomputation): each sum of n terms is within
    gamma_n ~ n u of exact relative to its terms (Higham, Accuracy and Stability, 3.1),
    so two orders within 2 n u, and the sums along the way add up (at this
    initialisation no layer grows or shrinks activations much). Forward, per block: the
    q/k/v projections and the MLP input (d_model terms each), the scores (head_dim), the
    softmax normaliser and the weighted values (length each), the output projection
    (heads x head_dim), the MLP output (d_ff) and two RMS norms (d_model); then the
    final norm and the logits. With `tokens`, gradients: the backward pass runs those
    sums again transposed and each weight's gradient adds `tokens` positions."""
    block = (4 + 2) * cfg.d_model + cfg.kv_dim + 2 * length + cfg.num_heads * cfg.kv_dim + cfg.d_ff
    terms = cfg.num_layers * block + 2 * cfg.d_model
    if tokens:
        terms = 2 * terms + tokens
    return 2 * terms * U
