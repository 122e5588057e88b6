"""The Deep Conjugate Direction Method: network, solver, training, shipped weights."""

from ._io import default_model as default_model
from ._io import load_model as load_model
from ._io import save_model as save_model
from ._model import DCDMNet as DCDMNet
from ._solver import dcdm as dcdm

load_dcdm_model = load_model

__all__ = [
    "DCDMNet",
    "dcdm",
    "default_model",
    "load_dcdm_model",
    "load_model",
    "save_model",
]
