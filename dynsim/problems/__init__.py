"""Losses and their data: :class:`Problem` and the problems of the seed papers.

Every problem states its loss convention (factor 1/2 or not) in its docstring.
"""

from .base import Problem, batch_loss, draw_dataset, objective
from .chain import ZeroChainConstants, progress_index, zero_chain, zero_chain_constants, zero_chain_function
from .classification import (
    batch_norm,
    cnn1d_classifier,
    corrupt_labels,
    cross_entropy,
    load_digits,
    load_mnist1d,
    mlp_classifier,
    mlp_forward,
)
from .deterministic import (
    asymmetric_v,
    exploding_function,
    flattened_quadratic,
    l1_norm,
    lessard_function,
    quadratic,
    sin_product,
    single_neuron,
    slow_function,
    zigzag,
)
from .nets import ACTIVATIONS, C0, activation_fn, scalar_net, two_layer_net
from .regression import RareJumpConstants, linear_regression_1d, rare_jump_constants, rare_jump_oracle
from .resisting import ResistingPair, alternating_slopes, resisting_pair
from .saddle import rank1_saddle
from .sequences import gaussian_inputs, sequence_classifier, zipf_markov_tokens

__all__ = [
    "Problem",
    "batch_loss",
    "alternating_slopes",
    "resisting_pair",
    "ResistingPair",
    "zero_chain",
    "zero_chain_function",
    "zero_chain_constants",
    "ZeroChainConstants",
    "progress_index",
    "draw_dataset",
    "objective",
    "linear_regression_1d",
    "RareJumpConstants",
    "rare_jump_constants",
    "rare_jump_oracle",
    "rank1_saddle",
    "quadratic",
    "flattened_quadratic",
    "single_neuron",
    "exploding_function",
    "slow_function",
    "sin_product",
    "l1_norm",
    "lessard_function",
    "zigzag",
    "asymmetric_v",
    "load_digits",
    "load_mnist1d",
    "corrupt_labels",
    "mlp_classifier",
    "mlp_forward",
    "batch_norm",
    "cross_entropy",
    "cnn1d_classifier",
    "zipf_markov_tokens",
    "gaussian_inputs",
    "sequence_classifier",
    "scalar_net",
    "two_layer_net",
    "activation_fn",
    "ACTIVATIONS",
    "C0",
]
