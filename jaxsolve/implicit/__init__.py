"""Implicit differentiation: ``custom_root``, ``custom_fixed_point`` and the
differentiable ``linear_solve``."""

from ..solvers.linear import linear_solve as linear_solve
from ._root import custom_fixed_point as custom_fixed_point
from ._root import custom_root as custom_root
