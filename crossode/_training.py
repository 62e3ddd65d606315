"""The neutral training protocol between crossode and each backend: optimizer settings, one step's output, the trainer.

Used by ``crossode train`` (:mod:`crossode.train`) and by the Taylor test of ``compare --taylor``
(:func:`crossode._harness.measure`; :meth:`Trainer.solve` evaluates the solver's loss at other parameters without
rebuilding the cell).

A backend package that can train exposes a public ``make_trainer`` function (``crossode.backends.torch.make_trainer``,
``crossode.backends.jax.make_trainer``, ``crossode.backends.julia.make_trainer``; a plugin backend: in the module of
its entry point) with the signature of :func:`make_trainer` below minus ``backend``. The trainer it returns owns the
parameters (initialised from ``problem.params``, so every run of a study starts from the same point) and the
framework's own optimizer (``torch.optim.Adam``, ``optax.adam``, Optimisers.jl's ``Adam``) with the :class:`Adam`
settings passed explicitly, and implements
:class:`Trainer`. Nothing here imports a framework.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from typing import Protocol

import numpy as np

from ._errors import InvalidInputError, UnsupportedError
from ._record import Stats

__all__ = ["Adam", "StepOutput", "Trainer", "make_trainer", "trainer_factory", "per_row_data", "select_rows",
           "check_batch_size"]


@dataclasses.dataclass(frozen=True)
class Adam:
    """Adam's hyperparameters, passed explicitly to every framework's Adam so that all runs use the same ones.

    ``lr``: learning rate; ``b1``, ``b2``: decay rates of the first and second moment estimates; ``eps``: added to
    the square root of the bias-corrected second moment. The defaults are ``torch.optim.Adam``'s and ``optax.adam``'s
    (identical: 0.9, 0.999, 1e-8, no ``eps`` inside the square root, no weight decay), with Onken & Ruthotto's
    learning rate 0.1 left to the config. Optimisers.jl's ``Adam(eta, beta, epsilon)`` has the same defaults and
    the same rule (``src/rules.jl``: ``eps`` outside the square root).
    """

    lr: float = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self):
        for name, lo, hi in (("lr", 0.0, math.inf), ("b1", 0.0, 1.0), ("b2", 0.0, 1.0), ("eps", 0.0, math.inf)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (lo <= v < hi) or not math.isfinite(v):
                raise InvalidInputError(f"`optimizer.{name}` must be a number in [{lo:g}, {hi:g}); got {v!r}.")
            object.__setattr__(self, name, float(v))
        if self.lr <= 0:
            raise InvalidInputError(f"`optimizer.lr` must be positive; got {self.lr!r}.")


@dataclasses.dataclass
class StepOutput:
    """One optimizer step: the mini-batch ``loss`` and ``grad_norm`` (L2 norm of ``dloss/dparams``) at the
    parameters *before* the update, and the solver's work counters of that gradient."""

    loss: float
    grad_norm: float
    stats: Stats


class Trainer(Protocol):
    """What a backend's ``make_trainer`` returns.

    - ``step(rows)``: one optimizer step on the mini-batch ``rows`` (indices into the problem's batch axis, ``None``
      for the whole batch); raises :class:`~crossode.SolverFailure` (``diverged``, ``max_steps``,
      ``reconstruction_error``, ...) when the gradient cannot be computed, before updating the parameters.
    - ``params()``: the current flat parameters (float64 NumPy copy, the problem's layout).
    - ``solve(params)``: forward solve of the whole batch at ``params`` with the run's solver and step control
      (float64 NumPy ``(len(saveat), *y0.shape)``); raises :class:`~crossode.SolverFailure`.
    - ``synchronize()``, ``peak_memory() -> (bytes, kind) | None`` (device or compiled-program memory; ``None``:
      the caller measures the process's peak RSS), ``compile_s`` (seconds spent compiling at construction, or
      ``None``), ``versions`` (framework versions).
    """

    compile_s: float | None

    def step(self, rows: np.ndarray | None) -> StepOutput: ...

    def params(self) -> np.ndarray: ...

    def solve(self, params: np.ndarray) -> np.ndarray: ...

    def synchronize(self) -> None: ...

    def peak_memory(self) -> tuple[int, str] | None: ...


def per_row_data(problem) -> bool:
    """Whether the loss data has one entry per trajectory (``(len(saveat), batch, n_states)``), so a mini-batch takes
    its rows; shared data (``(len(saveat), n_states)``) is the same for every mini-batch."""
    data = problem.loss.data
    return data is not None and problem.batch is not None and data.ndim == 3


def select_rows(problem, y0, data, rows):
    """``(y0[rows], data[:, rows])`` for framework arrays ``y0`` (the problem's) and ``data`` (its
    :attr:`~crossode.Problem.loss_data`); ``rows=None`` returns them unchanged."""
    if rows is None:
        return y0, data
    return y0[rows], (data[:, rows] if per_row_data(problem) else data)


def check_batch_size(problem, batch_size) -> int | None:
    """``batch_size`` validated against ``problem`` (``None`` = the whole batch); raises :class:`InvalidInputError`."""
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InvalidInputError(f"`batch_size` must be a positive integer; got {batch_size!r}.")
    if problem.batch is None:
        raise InvalidInputError("`batch_size` needs a batched problem (y0 of shape (batch, n_states)).")
    if batch_size > problem.batch:
        raise InvalidInputError(f"`batch_size` = {batch_size} exceeds the {problem.batch} trajectories of the data.")
    return int(batch_size)


def trainer_factory(backend: str):
    """The ``make_trainer`` function of ``backend``'s package (the module of its registry target), importing the
    framework now; raises :class:`~crossode.BackendUnavailableError` when the backend cannot load here and
    :class:`~crossode.UnsupportedError` when it has no training support."""
    from ._registry import BACKENDS, get_backend

    get_backend(backend)  # unavailable -> BackendUnavailableError with the reason
    module = importlib.import_module(BACKENDS[backend].target.split(":")[0])
    factory = getattr(module, "make_trainer", None)
    if factory is None:
        raise UnsupportedError(f"the {backend!r} backend has no training support (its package "
                               f"{module.__name__!r} defines no make_trainer); training runs use torch, jax or julia.")
    return factory


def make_trainer(backend: str, problem, solver, sensitivity, step, *, device: str = "cpu", dtype: str = "float64",
                 optimizer: Adam | None = None, batch_size: int | None = None) -> Trainer:
    """A :class:`Trainer` for ``problem`` on ``backend`` with the given solver, sensitivity and step control.

    ``optimizer``: Adam settings (``None``: only :meth:`Trainer.solve` is used, e.g. by the Taylor test);
    ``batch_size``: rows per mini-batch (``None``: the whole batch every step). Raises
    :class:`~crossode.UnsupportedError` when the backend cannot run the combination.
    """
    factory = trainer_factory(backend)
    return factory(problem, solver, sensitivity, step, device=device, dtype=dtype, optimizer=optimizer,
                   batch_size=batch_size)
