"""Ready-made problems (data and operators only; no solver is imported here)."""

from .families import PDEFamily as PDEFamily
from .families import darcy_family as darcy_family
from .families import gaussian_random_field as gaussian_random_field
from .families import heat_family as heat_family
from .families import helmholtz_family as helmholtz_family
from .families import poisson_family as poisson_family
from .obstacles import PoissonObstacles as PoissonObstacles
from .obstacles import obstacle_layout as obstacle_layout
from .obstacles import obstacle_rhs as obstacle_rhs
from .obstacles import poisson_obstacles as poisson_obstacles
from .pde import convection_diffusion_2d as convection_diffusion_2d
from .pde import poisson_2d as poisson_2d
from .regression import logistic_loss as logistic_loss
from .regression import make_classification as make_classification
from .regression import ridge_logistic_objective as ridge_logistic_objective
