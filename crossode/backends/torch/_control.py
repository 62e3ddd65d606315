"""Adaptive step-size control shared by every PyTorch stepper (explicit RK here, ALF in ``_alf.py``).

Conventions (Diffrax's ``PIDController`` with its defaults, except that a step is accepted at ``norm <= 1`` rather
than ``< 1`` and that a step shortened to land on a save time keeps the earlier, larger proposal; the JAX backend's
``LandingController`` reproduces exactly this, so both backends take the same steps):

- error norm: ``RMS(err / (atol + rtol * max(|y|, |y_new|)))`` over all elements; a step is accepted when the
  norm is ``<= 1`` and rejected when it is larger or not finite;
- next step: ``h * clip(safety * norm**(-1/q), ...)`` with ``q`` the order of the error estimate (embedded
  order + 1) and ``safety = 0.9``; an accepted step never shrinks the next one (factor in ``[1, 10]``; ALF lets
  it shrink, see ``StepController``), a rejected one always shrinks it (factor in ``[0.2, 0.9]``);
- step-size selection is never differentiated: everything here works on Python floats.

Failures are raised as :class:`~crossode.SolverFailure`: ``max_steps`` when the step budget is spent,
``step_size_too_small`` when ``|h|`` falls below :func:`crossode._stepping.min_step_size`, ``diverged`` for
non-finite states. Nothing here ever takes an uncontrolled step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ... import _stepping as hairer

from ..._record import SolverFailure

__all__ = ["rms_norm", "initial_step", "StepController"]


def rms_norm(err: torch.Tensor, y: torch.Tensor, y_new: torch.Tensor, rtol: float, atol: float) -> torch.Tensor:
    """Scaled RMS norm of a local error estimate, as a 0-d tensor (no gradient is recorded).

    ``scale = atol + rtol * max(|y|, |y_new|)`` elementwise; returns ``sqrt(mean((err / scale)**2))``.
    A non-finite ``y_new`` gives a non-finite norm (so the step is rejected) even where ``err`` is finite.
    """
    with torch.no_grad():
        scale = atol + rtol * torch.maximum(y.abs(), y_new.abs())
        ratio = err / scale
        # `0 * y_new.sum()` is NaN iff y_new has an inf/NaN: an inf state would otherwise get an inf scale and
        # a zero scaled error, i.e. be accepted.
        return ratio.square().mean().sqrt() + 0.0 * y_new.sum()


def initial_step(
    f: Callable[[float, torch.Tensor], torch.Tensor],
    t0: float,
    y0: torch.Tensor,
    f0: torch.Tensor,
    order: int,
    rtol: float,
    atol: float,
    direction: float,
    norm: Callable[[torch.Tensor, torch.Tensor], float] | None = None,
) -> float:
    """Hairer's initial step (Hairer, Norsett & Wanner, *Solving ODEs I*, II.4; Diffrax, SciPy).

    Uses ``f0 = f(t0, y0)`` (which the caller also uses as its first stage) plus **one** evaluation of ``f``
    at ``t0 + h0``. ``order`` is the order of the error estimate (``q``). ``norm(x, y)`` is an optional
    replacement for the RMS of ``x / (atol + rtol*|y|)`` (e.g. to control only part of an augmented state).
    Returns the step magnitude (a positive Python float); the caller applies ``direction``.
    """
    with torch.no_grad():
        if norm is None and f0.shape == y0.shape and f0.dtype == y0.dtype:
            # the default norm with the scale computed once and d0, d1 from one stacked reduction (one sync)
            scale = atol + rtol * y0.abs()
            d0, d1 = _rms_rows(torch.stack((y0, f0)).div_(scale))
            h0 = hairer.first_guess(d0, d1)
            f1 = f(t0 + direction * h0, y0 + (direction * h0) * f0)
            (d2,) = _rms_rows((f1 - f0).div_(scale).unsqueeze(0))
            return hairer.refine(h0, d1, d2 / h0, order)
        if norm is None:

            def norm(x, y):
                return float(torch.sqrt(torch.mean(torch.square(x / (atol + rtol * y.abs())))))

        d1 = norm(f0, y0)
        h0 = hairer.first_guess(norm(y0, y0), d1)
        f1 = f(t0 + direction * h0, y0 + (direction * h0) * f0)
        return hairer.refine(h0, d1, norm(f1 - f0, y0) / h0, order)


def _rms_rows(x: torch.Tensor) -> list[float]:
    """``float(sqrt(mean(square(x[i]))))`` for every row ``i`` of ``x`` (one sync; bit for bit on CPU)."""
    x = x.square_().view(x.shape[0], -1)
    n = x.shape[1]
    if x.dtype == torch.float64 and x.device.type == "cpu" and n:
        return [math.sqrt(s / n) for s in x.sum(1).tolist()]  # CPU mean is sum / n, sqrt is correctly rounded
    return x.mean(1).sqrt_().tolist()


class StepController:
    """Integral (I) or proportional-integral (PI) step-size controller, with a step budget.

    **Arguments:**
    - ``order``: order ``q`` of the error estimate (the exponent is ``-1/q``).
    - ``rtol``, ``atol``: tolerances (kept for callers that build norms from the controller).
    - ``max_steps``: accepted + rejected attempts allowed.
    - ``safety``, ``factor_min``, ``factor_max``: as in the module docstring.
    - ``accept_factor_min``: lower clip of the factor after an accepted step; ``1.0`` (default, Diffrax's rule):
      an accepted step never shrinks the next one. ALF passes ``0.0`` (TorchDiffEqPack's and SciPy's rule: the
      next step may shrink, by at most ``safety``, when the norm is close to 1; see ``_alf.py``).
    - ``pcoeff``, ``icoeff``: PI coefficients in Diffrax's convention
      (``factor = safety * norm**(-(icoeff+pcoeff)/q) * prev_norm**(pcoeff/q)``); the default is pure I control.

    Usage: ``controller.check_budget()`` before each attempt, then ``accept, h = controller.propose(h, norm)``.
    ``accepted``/``rejected`` count the attempts seen by :meth:`propose`.
    """

    def __init__(
        self,
        order: int,
        rtol: float,
        atol: float,
        max_steps: int,
        *,
        safety: float = 0.9,
        factor_min: float = 0.2,
        factor_max: float = 10.0,
        pcoeff: float = 0.0,
        icoeff: float = 1.0,
        accept_factor_min: float = 1.0,
    ):
        self.order = order
        self.rtol = rtol
        self.atol = atol
        self.max_steps = max_steps
        self.safety = safety
        self.factor_min = factor_min
        self.factor_max = factor_max
        self.pcoeff = pcoeff
        self.icoeff = icoeff
        self.accept_factor_min = accept_factor_min
        self.accepted = 0
        self.rejected = 0
        self._prev_norm = 1.0

    def check_budget(self, t: float) -> None:
        """Raise ``SolverFailure('max_steps')`` if another attempt would exceed ``max_steps``."""
        if self.accepted + self.rejected >= self.max_steps:
            raise SolverFailure(
                "max_steps",
                f"reached max_steps={self.max_steps} ({self.accepted} accepted, {self.rejected} rejected) at t={t:.6g}",
            )

    def propose(self, h: float, err_norm: float) -> tuple[bool, float]:
        """Decide on an attempted step of size ``h`` with scaled error ``err_norm``; return ``(accept, h_next)``.

        ``h_next`` has the sign of ``h``. A non-finite ``err_norm`` is a rejection with the smallest factor.
        """
        if not math.isfinite(err_norm):
            self.rejected += 1
            return False, h * self.factor_min
        accept = err_norm <= 1.0
        if err_norm == 0.0:
            factor = self.factor_max
        else:
            q = self.order
            factor = self.safety * err_norm ** (-(self.icoeff + self.pcoeff) / q)
            if self.pcoeff:
                factor *= self._prev_norm ** (self.pcoeff / q)
        if accept:
            factor = min(max(factor, self.accept_factor_min), self.factor_max)
            self.accepted += 1
            self._prev_norm = max(err_norm, 1e-10)
        else:
            factor = min(max(factor, self.factor_min), self.safety)
            self.rejected += 1
        return accept, h * factor
