"""Ready-made problems (data and operators only; no solver is imported here)."""

from .pde import convection_diffusion_2d as convection_diffusion_2d
from .pde import poisson_2d as poisson_2d
from .regression import logistic_loss as logistic_loss
from .regression import make_classification as make_classification
from .regression import ridge_logistic_objective as ridge_logistic_objective
