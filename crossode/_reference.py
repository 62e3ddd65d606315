"""The independent reference gradient (NumPy/SciPy only; depends on no backend).

Two methods:

- ``"closed_form"``: for linear, homogeneous, autonomous fields ``y' = A(p) y`` (detected symbolically):
  ``y(t_k) = expm(tau_k A) y0``; ``dL/dy0 = sum_k expm(tau_k A)^T g_k``;
  ``dL/dA = sum_k tau_k L(tau_k A^T, g_k y0^T)`` with ``L`` the Fréchet derivative of ``expm``
  (:func:`scipy.linalg.expm_frechet`), chained through ``dA/dp`` from SymPy. ``g_k = dL/dy(t_k)``.
- ``"sensitivity"``: the forward-sensitivity equations ``S' = (df/dy) S + [df/dp, 0]``, ``S(t0) = [0, I]``,
  solved with SciPy at tight tolerance (``DOP853``, rtol 1e-12, atol 1e-14 for non-stiff problems; ``Radau``,
  rtol 1e-11, atol 1e-14 with the analytic Jacobian for stiff ones), with exact Jacobians from SymPy (symbolic
  fields) or the exact MLP formulas (neural fields). ``dL/d[p, y0] = sum_k g_k^T S(t_k)``.

Time gradients (continuous-flow identities): ``dL/dt1 = g_K . f(t1, y(t1))`` when the last save is at ``t1``
(else 0) and ``dL/dt0 = -(dL/dy0) . f(t0, y0)`` (plus ``g_0 . f(t0, y0)`` when the first save is at ``t0``).

Measured accuracy (``tests/test_reference.py``): the two methods agree to ~1e-10 relative on the linear zoo
problems; the sensitivity method matches the analytic exponential-decay gradient to ~1e-11.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import scipy.integrate
import scipy.linalg

from ._errors import InvalidInputError
from ._problem import Problem
from ._record import SolverFailure
from ._rhs import SymbolicRHS

__all__ = ["Reference", "reference", "relative_error"]


@dataclasses.dataclass
class Reference:
    """Reference loss, saved states and gradients of a problem, with the method used and its run time."""

    loss: float
    ys: np.ndarray
    dparams: np.ndarray
    dy0: np.ndarray
    dt0: float
    dt1: float
    method: str
    time_s: float

    @property
    def grad(self) -> np.ndarray:
        """``[dparams, dy0]`` concatenated (the vector ``grad_error`` is measured on)."""
        return np.concatenate([self.dparams, self.dy0])


def relative_error(value, ref) -> float:
    """Relative L2 error ``||value - ref|| / ||ref||`` (absolute error when ``ref`` is zero)."""
    value = np.asarray(value, dtype=np.float64).ravel()
    ref = np.asarray(ref, dtype=np.float64).ravel()
    if value.shape != ref.shape:
        raise InvalidInputError(f"shape mismatch: got {value.shape}, reference {ref.shape}.")
    with np.errstate(over="ignore", invalid="ignore"):  # an exploded gradient gives inf, reported as such
        num = float(np.linalg.norm(value - ref))
        den = float(np.linalg.norm(ref))
    return num / den if den > 0 else num


_CACHE: dict[tuple[str, str], Reference] = {}


def reference(problem: Problem, method: str = "auto") -> Reference:
    """The independent reference for ``problem`` (cached per problem fingerprint and method).

    ``method``: ``"auto"`` (closed form when the field is linear, else forward sensitivities),
    ``"closed_form"`` or ``"sensitivity"``.
    """
    if method not in ("auto", "closed_form", "sensitivity"):
        raise InvalidInputError(f"`method` must be 'auto', 'closed_form' or 'sensitivity'; got {method!r}.")
    key = (problem.fingerprint(), method)
    if key not in _CACHE:
        start = time.perf_counter()
        linear = problem.rhs.linear_structure() if isinstance(problem.rhs, SymbolicRHS) else None
        if method == "closed_form" and linear is None:
            raise InvalidInputError(f"problem {problem.name!r} is not linear; no closed form is available.")
        if linear is not None and method in ("auto", "closed_form"):
            ref = _closed_form(problem, *linear)
        else:
            ref = _sensitivity(problem)
        ref.time_s = time.perf_counter() - start
        _CACHE[key] = ref
    return _CACHE[key]


def _time_gradients(problem: Problem, ys: np.ndarray, g: np.ndarray, dy0: np.ndarray) -> tuple[float, float]:
    f0 = problem.rhs.f(problem.t0, problem.y0, problem.params)
    dt0 = -float(dy0 @ f0)
    if problem.saveat[0] == problem.t0:
        dt0 += float(g[0] @ f0)
    dt1 = 0.0
    if problem.saveat[-1] == problem.t1:
        dt1 = float(g[-1] @ problem.rhs.f(problem.t1, ys[-1], problem.params))
    return dt0, dt1


def _closed_form(problem: Problem, a_fn, da_fn) -> Reference:
    p, y0 = problem.params, problem.y0
    a = a_fn(p)
    taus = problem.saveat - problem.t0
    ys = np.stack([scipy.linalg.expm(tau * a) @ y0 for tau in taus])
    g = problem.loss.cotangent(ys)
    dy0 = np.zeros_like(y0)
    d_a = np.zeros_like(a)
    for tau, gk in zip(taus, g):
        e, frechet = scipy.linalg.expm_frechet(tau * a.T, np.outer(gk, y0))
        dy0 += e @ gk
        d_a += tau * frechet
    dparams = np.einsum("ij,ijk->k", d_a, da_fn(p))
    dt0, dt1 = _time_gradients(problem, ys, g, dy0)
    return Reference(problem.loss.value(ys), ys, dparams, dy0, dt0, dt1, "closed_form", 0.0)


def _sensitivity(problem: Problem) -> Reference:
    rhs, p = problem.rhs, problem.params
    n, m = problem.n_states, problem.n_params
    cols = m + n

    def aug(t, z):
        y = z[:n]
        s = z[n:].reshape(n, cols)
        jy = rhs.jac_y(t, y, p)
        ds = jy @ s
        ds[:, :m] += rhs.jac_p(t, y, p)
        return np.concatenate([rhs.f(t, y, p), ds.ravel()])

    def aug_jac(t, z):
        # Newton only needs an approximation: drop the second-derivative couplings (block diagonal in J).
        jy = rhs.jac_y(t, z[:n], p)
        return scipy.linalg.block_diag(jy, np.kron(jy, np.eye(cols)))

    z0 = np.concatenate([problem.y0, np.hstack([np.zeros((n, m)), np.eye(n)]).ravel()])
    if problem.stiff:
        kw = dict(method="Radau", rtol=1e-11, atol=1e-14, jac=aug_jac)
        name = "sensitivity(Radau, rtol=1e-11)"
    else:
        kw = dict(method="DOP853", rtol=1e-12, atol=1e-14)
        name = "sensitivity(DOP853, rtol=1e-12)"
    sol = scipy.integrate.solve_ivp(aug, problem.tspan, z0, t_eval=problem.saveat, **kw)
    if sol.status != 0 or sol.y.shape[1] != problem.saveat.size:
        raise SolverFailure("solver_error", f"reference solve failed for {problem.name!r}: {sol.message}")
    zs = sol.y.T
    ys = zs[:, :n]
    if not np.all(np.isfinite(zs)):
        raise SolverFailure("diverged", f"reference solve for {problem.name!r} produced non-finite values")
    g = problem.loss.cotangent(ys)
    grad = np.zeros(cols)
    for gk, zk in zip(g, zs):
        grad += gk @ zk[n:].reshape(n, cols)
    dparams, dy0 = grad[:m], grad[m:]
    dt0, dt1 = _time_gradients(problem, ys, g, dy0)
    return Reference(problem.loss.value(ys), ys, dparams, dy0, dt0, dt1, name, 0.0)
