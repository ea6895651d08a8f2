"""The paper's theory (Sec. 3) as code: bias-free SDL, x_q = σ(W_E x_p), x̂_r = W_D x_q.

Shapes: W_E [n_q, n_p], W_D [n_r, n_q], W_p [n_p, n], W_r [n_r, n], codes [N, n], M [n]; σ is any
callable on [batch, n_q] tensors (an sdlkit Activation, or e.g. `torch.relu`).

- loss: M_d (`feature_moments`), L̃ (`approx_loss`, Thm 3.1), Monte Carlo L (`exact_loss`), the gap
  bound, autograd gradients and plain gradient descent.
- patterns: activation patterns (Def 3.1) and their latent/feature classes.
- constructions: Thm 3.3's recovering configuration and bounds, Example 3.5, Thm 3.4's zero-loss
  dictionary that recovers no feature.
- minima: Thm 3.6's spurious partial minima (the stated construction is NOT stationary in general;
  see the module docstring).
- absorption: Thm 3.8's absorption recipe (fails on ties and with one shared threshold).
- math_checks (on constructed points) and training_checks (on trained dictionaries): the claims checked
  numerically; run: `sdlkit theory`, which runs every check and writes the report.
"""

from sdlkit.paper.theory._util import realise_preactivations
from sdlkit.paper.theory.absorption_recipe import absorption_configuration, threshold_sigma
from sdlkit.paper.theory.constructions import (
    example_3_5,
    recovering_configuration,
    spread_rotation,
    thm33_bounds,
    zero_loss_non_identifiable,
)
from sdlkit.paper.theory.loss import (
    approx_loss,
    descend,
    exact_loss,
    feature_moments,
    feature_moments_from,
    grad_norm,
    loss_and_grads,
    loss_gap_bound,
    sup_residual,
)
from sdlkit.paper.theory.minima import random_partition, spurious_minimum, stationary_block_codes
from sdlkit.paper.theory.patterns import activation_pattern, classify, pattern_from_partition

__all__ = [
    "absorption_configuration",
    "activation_pattern",
    "approx_loss",
    "classify",
    "descend",
    "exact_loss",
    "example_3_5",
    "feature_moments",
    "feature_moments_from",
    "grad_norm",
    "loss_and_grads",
    "loss_gap_bound",
    "pattern_from_partition",
    "random_partition",
    "realise_preactivations",
    "recovering_configuration",
    "spread_rotation",
    "spurious_minimum",
    "stationary_block_codes",
    "sup_residual",
    "thm33_bounds",
    "threshold_sigma",
    "zero_loss_non_identifiable",
]
