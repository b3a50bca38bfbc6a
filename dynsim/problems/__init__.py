"""Losses and their data: :class:`Problem` and the problems of the seed papers.

Every problem states its loss convention (factor 1/2 or not) in its docstring.
"""

from .base import Problem, batch_loss, draw_dataset, objective
from .classification import corrupt_labels, cross_entropy, load_digits, load_mnist1d, mlp_classifier, mlp_forward
from .deterministic import quadratic, sin_product
from .regression import linear_regression_1d
from .saddle import rank1_saddle

__all__ = [
    "Problem",
    "batch_loss",
    "draw_dataset",
    "objective",
    "linear_regression_1d",
    "rank1_saddle",
    "quadratic",
    "sin_product",
    "load_digits",
    "load_mnist1d",
    "corrupt_labels",
    "mlp_classifier",
    "mlp_forward",
    "cross_entropy",
]
