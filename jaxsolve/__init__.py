"""jaxsolve: numerical solvers for JAX that you differentiate through.

Every solver returns a :class:`Solution` (value, result code, statistics), runs under
``jax.jit`` and ``jax.vmap``, and is differentiated by the implicit-differentiation
layer (:mod:`jaxsolve.implicit`), never by unrolling its loop.
"""

from . import implicit as implicit
from ._solution import RESULTS as RESULTS
from ._solution import Solution as Solution
from .implicit import custom_fixed_point as custom_fixed_point
from .implicit import custom_root as custom_root
from .solvers import bilevel as bilevel
from .solvers import ot as ot
from .solvers.linear import DCDMNet as DCDMNet
from .solvers.linear import bicgstab as bicgstab
from .solvers.linear import cg as cg
from .solvers.linear import dcdm as dcdm
from .solvers.linear import dense_solve as dense_solve
from .solvers.linear import gcrodr as gcrodr
from .solvers.linear import gmres as gmres
from .solvers.linear import linear_solve as linear_solve
from .solvers.linear import load_dcdm_model as load_dcdm_model
from .solvers.linear import solve_family as solve_family
from .solvers.ot import OTSolution as OTSolution
from .solvers.ot import PointCloud as PointCloud
from .solvers.ot import SparsePlan as SparsePlan
from .solvers.ot import sinkhorn as sinkhorn
from .solvers.ot import sinkhorn_newton_sparse as sinkhorn_newton_sparse

__version__ = "0.1.0"
