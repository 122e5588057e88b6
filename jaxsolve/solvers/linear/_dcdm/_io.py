"""Saving and loading DCDM models and training checkpoints.

A file is one JSON header line (format name, version, the model's configuration and,
for a checkpoint, the training configuration) followed by the leaves of the model
(and optimiser state) written by :func:`equinox.tree_serialise_leaves`. The header
lets :func:`load_model` rebuild the right network before reading the weights, and
gives a clear error when a file does not match.
"""

from __future__ import annotations

import functools
import json
import pathlib

import equinox as eqx
import jax

from ._model import DCDMNet

__all__ = ["save_model", "load_model", "default_model", "WEIGHTS_DIR"]

_FORMAT = "jaxsolve-dcdm"
_VERSION = 1
WEIGHTS_DIR = pathlib.Path(__file__).parent / "weights"


def _write(path, header: dict, tree) -> None:
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write((json.dumps(header, sort_keys=True) + "\n").encode())
        eqx.tree_serialise_leaves(f, tree)
    tmp.replace(path)  # atomic: an interrupted write never leaves a broken file


def _read_header(f, path) -> dict:
    line = f.readline()
    try:
        header = json.loads(line.decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        header = None
    if not isinstance(header, dict) or header.get("format") != _FORMAT:
        raise ValueError(
            f"{str(path)!r} is not a jaxsolve DCDM weights file (no "
            f"{_FORMAT!r} header); write one with jaxsolve's DCDM training command"
        )
    if header.get("version") != _VERSION:
        raise ValueError(
            f"{str(path)!r} has DCDM file format version {header.get('version')}, "
            f"this jaxsolve reads version {_VERSION}"
        )
    return header


def _skeleton(config: dict, path) -> DCDMNet:
    try:
        return DCDMNet(
            int(config["dim"]),
            int(config["width"]),
            int(config["coarsest"]),
            key=jax.random.key(0),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(
            f"{str(path)!r}: invalid DCDM model configuration {config}"
        ) from e


def _deserialise(f, like, path):
    try:
        return eqx.tree_deserialise_leaves(f, like)
    except Exception as e:  # shape/dtype mismatch or a truncated file
        raise ValueError(
            f"the weights in {str(path)!r} do not match the DCDM model described "
            f"by its header (corrupted or truncated file?): {e}"
        ) from e


def save_model(path, model: DCDMNet, **metadata) -> None:
    """Write ``model`` (and JSON-serialisable ``metadata``) to ``path``."""
    header = {"format": _FORMAT, "version": _VERSION, "kind": "model"}
    header["model"] = model.config()
    header["metadata"] = metadata
    _write(path, header, model)


def load_model(path, *, like: DCDMNet | None = None) -> DCDMNet:
    """Read a model written by :func:`save_model` (or the model of a training
    checkpoint). With ``like``, the file must hold a model of ``like``'s
    configuration (else a ``ValueError`` says how they differ)."""
    path = pathlib.Path(path)
    # Loaded eagerly even when first asked for inside jit (the shipped model is
    # cached: a traced copy would leak out of that trace).
    with jax.ensure_compile_time_eval(), open(path, "rb") as f:
        header = _read_header(f, path)
        config = header["model"]
        if like is not None and like.config() != config:
            raise ValueError(
                f"{str(path)!r} holds a DCDM model {config}, which does not match "
                f"the expected model {like.config()}"
            )
        model = _skeleton(config, path)
        if header.get("kind") == "checkpoint":
            return _load_ckpt_model(f, header, model, path)
        return _deserialise(f, model, path)


def _load_ckpt_model(f, header, model, path):
    from ._train import _optimizer  # noqa: PLC0415 (the optimiser only for checkpoints)

    opt_state = _optimizer(header["training"]).init(eqx.filter(model, eqx.is_array))
    like = {"model": model, "opt_state": opt_state}
    return _deserialise(f, like, path)["model"]


def save_checkpoint(path, model, opt_state, step: int, training: dict) -> None:
    header = {"format": _FORMAT, "version": _VERSION, "kind": "checkpoint"}
    header["model"] = model.config()
    header["training"] = training
    header["step"] = int(step)
    _write(path, header, {"model": model, "opt_state": opt_state})


def load_checkpoint(path, model, opt_state, training: dict):
    """Return ``(model, opt_state, step)`` from a checkpoint of the same model and
    training configuration (else ``ValueError``)."""
    path = pathlib.Path(path)
    with open(path, "rb") as f:
        header = _read_header(f, path)
        if header.get("kind") != "checkpoint":
            raise ValueError(
                f"{str(path)!r} is a DCDM model, not a training checkpoint"
            )
        if header["model"] != model.config() or header["training"] != training:
            raise ValueError(
                f"the checkpoint {str(path)!r} was written for model "
                f"{header['model']} and training {header['training']}, not for "
                f"model {model.config()} and training {training}; remove it or "
                "change --checkpoint"
            )
        tree = _deserialise(f, {"model": model, "opt_state": opt_state}, path)
    return tree["model"], tree["opt_state"], int(header["step"])


@functools.cache
def default_model(dim: int) -> DCDMNet:
    """The shipped model for ``dim`` (2 or 3), loaded once."""
    path = WEIGHTS_DIR / f"dcdm_{dim}d.eqx"
    if not path.exists():
        raise ValueError(
            f"no shipped DCDM weights for dim={dim} ({path.name} is not in the "
            "package); train a model with `python -m jaxsolve.train_dcdm --dim "
            f"{dim} --out FILE` and pass `model=jaxsolve.load_dcdm_model(FILE)`"
        )
    return load_model(path)
