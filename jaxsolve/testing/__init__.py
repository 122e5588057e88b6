"""The solver registry behind jaxsolve's shared test matrix and GPU check.

Every solver family registers small problems here (:func:`register`); the suite in
``tests/test_matrix.py`` and ``benchmarks/gpu_check.py`` then run each of them through
the same checks: jit, vmap, jvp and vjp against finite differences, float32 and
float64, no recompilation, and bad input. A new solver only adds a registry entry.
"""

# Importing the case modules fills the registry.
from . import _bilevel_cases as _bilevel_cases  # noqa: E402, I001
from . import _dcdm_cases as _dcdm_cases  # noqa: E402
from . import _implicit_cases as _implicit_cases  # noqa: E402
from . import _linear_cases as _linear_cases  # noqa: E402
from . import _ot_cases as _ot_cases  # noqa: E402
from . import _recycling_cases as _recycling_cases  # noqa: E402
from ._registry import REGISTRY as REGISTRY
from ._registry import BadInput as BadInput
from ._registry import SolverCase as SolverCase
from ._registry import register as register
