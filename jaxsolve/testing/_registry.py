"""Registry of solver test cases."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

__all__ = ["BadInput", "SolverCase", "REGISTRY", "register"]


@dataclasses.dataclass(frozen=True)
class BadInput:
    """An input corruption and what the solver must do about it.

    ``corrupt(inputs) -> inputs``. ``expect`` is either an exception type (raised at
    trace time, e.g. ``ValueError`` for a wrong shape) or a ``RESULTS`` item that
    ``solve(*inputs, throw=False)`` must return (and ``throw=True`` must raise).
    """

    description: str
    corrupt: Callable[[tuple], tuple]
    expect: Any


@dataclasses.dataclass(frozen=True)
class SolverCase:
    """A small problem for one solver.

    Attributes:
        name: unique id, e.g. ``"cg/dense"``.
        make_inputs: ``make_inputs(dtype) -> tuple`` of the inputs (pytrees of
            arrays); every floating leaf is differentiated by the test matrix.
        solve: ``solve(*inputs, throw=True) -> Solution``.
        residual: ``residual(value, *inputs) -> scalar``, a relative optimality
            residual that must be small at the solution (e.g. ``||Ax-b||/||b||``).
        perturb: ``perturb(inputs, scale) -> inputs``, another problem of the same
            shapes (used to build batches for vmap and for the no-recompile check).
        bad_inputs: input corruptions and the expected reaction.
        tolerance: per dtype name, the bound on ``residual`` (and on derivative
            errors, relative).
        fd_step: finite-difference step (float64).
        messages: the solver's own messages for result codes (by code name), as
            given to :func:`jaxsolve._solution.finalize`; a raised error must
            carry them (default: :class:`jaxsolve.RESULTS`'s).
        linear_operator: for a linear solver, ``linear_operator(operator, b,
            throw) -> Solution`` solves with a given matrix-free operator; the
            matrix then checks that a non-linear, wrongly shaped or wrongly
            typed operator is refused.
        requires_symmetric: the linear solver refuses non-symmetric operators
            (``RESULTS.not_symmetric``).
    """

    name: str
    make_inputs: Callable[[Any], tuple]
    solve: Callable[..., Any]
    residual: Callable[..., Any]
    perturb: Callable[[tuple, float], tuple]
    bad_inputs: tuple[BadInput, ...] = ()
    tolerance: dict = dataclasses.field(
        default_factory=lambda: {"float64": 1e-8, "float32": 1e-3}
    )
    fd_step: float = 1e-6
    messages: dict = dataclasses.field(default_factory=dict)
    linear_operator: Callable[..., Any] | None = None
    requires_symmetric: bool = False

    def message(self, code) -> str:
        """The message a raised error carries for ``code`` (a RESULTS item)."""
        from .._solution import RESULTS

        for name, item in RESULTS._name_to_item.items():
            if item == code:
                return self.messages.get(name, RESULTS[code])
        raise ValueError(f"unknown code {code!r}")


REGISTRY: dict[str, SolverCase] = {}


def register(case: SolverCase) -> SolverCase:
    if case.name in REGISTRY:
        raise ValueError(f"a solver case named {case.name!r} is already registered")
    REGISTRY[case.name] = case
    return case
