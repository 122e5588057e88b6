"""Linear solvers: Krylov methods (CG, restarted GMRES, BiCGStab, GCRO-DR with
recycling, deflated CG), the learned DCDM solver, and dense LU.

Every solver takes ``operator`` as a square matrix or a matrix-free function
``x -> A x``, returns a :class:`jaxsolve.Solution`, runs under ``jit``/``vmap`` and is
differentiable (forward and reverse mode, any order) with respect to the right-hand
side and to the operator's arrays through ``jax.lax.custom_linear_solve``.
"""

from ._bicgstab import bicgstab as bicgstab
from ._cg import cg as cg
from ._dcdm import DCDMNet as DCDMNet
from ._dcdm import dcdm as dcdm
from ._dcdm import load_dcdm_model as load_dcdm_model
from ._deflated_cg import deflated_cg as deflated_cg
from ._deflated_cg import recycled_cg as recycled_cg
from ._dense import dense_solve as dense_solve
from ._family import greedy_order as greedy_order
from ._family import solve_family as solve_family
from ._gcrodr import RecycleSolution as RecycleSolution
from ._gcrodr import RecycleSpace as RecycleSpace
from ._gcrodr import gcrodr as gcrodr
from ._gmres import gmres as gmres
from ._solve import LINEAR_METHODS as LINEAR_METHODS
from ._solve import linear_solve as linear_solve
from ._spectral import SpectralPreconditioner as SpectralPreconditioner

# linear_solve(..., method=...) for the methods defined after _solve.py:
LINEAR_METHODS["dcdm"] = dcdm  # the learned solver, for grid-shaped systems
LINEAR_METHODS["gcrodr"] = gcrodr  # GCRO-DR, starting with no recycle space
