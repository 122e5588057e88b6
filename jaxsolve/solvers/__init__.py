"""Solver families: ``linear`` (Krylov), and later ``ot`` and ``bilevel``."""
