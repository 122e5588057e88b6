"""Entropic optimal transport: log-domain Sinkhorn and Sinkhorn-Newton-Sparse (SNS),
differentiable through the implicit layer, cost-matrix helpers, and point clouds
with a cost function (:class:`PointCloud`) that the solvers take in place of the
cost matrix without ever forming it.

Convention: ``min_P <C, P> + epsilon sum P log P`` over plans with marginals
``a``, ``b``; ``epsilon = 1 / eta`` of Tang et al. (2024), ``reg`` in POT/regot.
"""

from ._dual import OTSolution as OTSolution
from ._dual import marginal_error as marginal_error
from ._geometry import grid_cost as grid_cost
from ._geometry import grid_points as grid_points
from ._geometry import l1_cost as l1_cost
from ._geometry import pairwise_cost as pairwise_cost
from ._geometry import sqeuclidean_cost as sqeuclidean_cost
from ._pointcloud import PointCloud as PointCloud
from ._pointcloud import SparsePlan as SparsePlan
from ._sinkhorn import sinkhorn as sinkhorn
from ._sns import sinkhorn_newton_sparse as sinkhorn_newton_sparse
