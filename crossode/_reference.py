"""The independent reference gradient (NumPy/SciPy only; depends on no backend and shares no code with one).

Three methods, for single (``y0`` of shape ``(n,)``) and batched (``(batch, n)``) problems alike:

- ``"closed_form"``: for linear, homogeneous, autonomous fields ``y' = A(p) y`` (detected symbolically):
  ``y(t_k) = expm(tau_k A) y0``; ``dL/dy0 = sum_k expm(tau_k A)^T g_k``;
  ``dL/dA = sum_k tau_k L(tau_k A^T, g_k y0^T)`` with ``L`` the Fréchet derivative of ``expm``
  (:func:`scipy.linalg.expm_frechet`; for a batch ``G_k^T Y0``, the sum of the per-trajectory outer products),
  chained through ``dA/dp`` from SymPy. ``g_k = dL/dy(t_k)``.
- ``"sensitivity"``: the forward-sensitivity equations ``S' = (df/dy) S + [df/dp, 0]``, ``S(t0) = [0, I]``, per
  trajectory (a batch's trajectories are independent, so each has its own ``n x (n_params + n)`` block), solved with
  SciPy at tight tolerance (``DOP853``, rtol 1e-12, atol 1e-14 for non-stiff problems; ``Radau``, rtol 1e-11, atol
  1e-14 with the analytic Jacobian for stiff ones), with exact Jacobians from SymPy (symbolic fields) or the exact MLP
  formulas (neural fields). ``dL/d[p, y0] = sum_k g_k^T S(t_k)``. Cost per evaluation ``~ batch n^2 (n + p)``.
- ``"adjoint"``: the forward solve (same solver and tolerances) with dense output, then the continuous adjoint
  ``a' = -(df/dy)^T a`` backwards from the last save time with the parameter integral ``w' = -(df/dp)^T a`` in the
  same solve (``w(t0) = dL/dp``, ``a(t0) = dL/dy0``), ``g_k`` added to ``a`` at each save time, the state ``y(t)``
  taken from the forward solve's dense output, and the exact vectorised NumPy VJPs of the field
  (:meth:`crossode.AbstractRHS.vjp`). Cost per evaluation ``~ 2-3 x`` one evaluation of ``f`` on the batch.

``method="auto"`` picks: ``closed_form`` for linear fields; else ``sensitivity`` while the sensitivity system has at
most :data:`SENSITIVITY_MAX_ENTRIES` entries (``y0.size * (1 + n_states + n_params)``: every zoo problem at its
defaults); else ``adjoint``. :attr:`Reference.method` (and ``Record.reference``) names the method and tolerance used.

Time gradients (continuous-flow identities): ``dL/dt1 = g_K . f(t1, y(t1))`` when the last save is at ``t1``
(else 0) and ``dL/dt0 = -(dL/dy0) . f(t0, y0)`` (plus ``g_0 . f(t0, y0)`` when the first save is at ``t0``).

Measured accuracy (``tests/test_reference.py``): closed form and sensitivities agree to ~1e-12 relative on the
linear zoo problems; sensitivities match the analytic exponential-decay gradient to ~1e-11; adjoint and
sensitivities agree to <= 1e-8 (typically ~1e-10) on every zoo problem.

Disk cache: references are stored under :func:`cache_dir` (``$CROSSODE_CACHE/references``, default
``$XDG_CACHE_HOME/crossode/references`` or ``~/.cache/crossode/references``; ``CROSSODE_CACHE=off`` disables it),
one ``.npz`` per (problem digest, requested method, code version), written atomically (temporary file + rename).
The code version hashes :data:`REFERENCE_VERSION`, the NumPy/SciPy/SymPy versions and the source of this module,
:mod:`crossode._rhs`, :mod:`crossode._cnf` (CNF fields) and :mod:`crossode._problem`, so any change of the
reference code invalidates old entries.
Unreadable, corrupt or mismatching entries are ignored with a warning and recomputed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import stat
import time
import warnings

import numpy as np

from ._errors import InvalidInputError
from ._problem import Problem
from ._record import SolverFailure
from ._rhs import SymbolicRHS

__all__ = ["Reference", "reference", "relative_error", "choose_method", "cache_dir", "METHODS",
           "SENSITIVITY_MAX_ENTRIES", "REFERENCE_VERSION"]

METHODS = ("auto", "closed_form", "sensitivity", "adjoint")
"""Values of ``reference(problem, method=...)``."""

SENSITIVITY_MAX_ENTRIES = 2_000
"""``method="auto"`` uses forward sensitivities up to this many entries ``y0.size * (1 + n_states + n_params)``
of the sensitivity system, the adjoint above."""

REFERENCE_VERSION = 2
"""Bump to invalidate every cached reference (the source hash already covers edits of the reference code)."""

MAX_CACHE_ENTRY_BYTES = 1 << 30
"""Cache entries larger than this are ignored (never read)."""

_NONSTIFF = dict(method="DOP853", rtol=1e-12, atol=1e-14)
_STIFF = dict(method="Radau", rtol=1e-11, atol=1e-14)


@dataclasses.dataclass
class Reference:
    """Reference loss, saved states and gradients of a problem, with the method used and its run time.

    ``ys`` has shape ``(len(saveat), *y0.shape)``, ``dy0`` the shape of ``y0``. ``method`` names the method and
    tolerance (e.g. ``"adjoint(DOP853, rtol=1e-12)"``); ``time_s`` is the time it took to compute (also when it
    was read from the disk cache, then ``cached`` is true); ``nfe`` counts the right-hand-side evaluations of the
    SciPy solves (sensitivity: of the augmented system; adjoint: forward + backward, each backward one a VJP),
    ``None`` for the closed form.
    """

    loss: float
    ys: np.ndarray
    dparams: np.ndarray
    dy0: np.ndarray
    dt0: float
    dt1: float
    method: str
    time_s: float
    cached: bool = False
    nfe: int | None = None

    @property
    def grad(self) -> np.ndarray:
        """``[dparams, dy0.ravel()]`` concatenated (the vector ``grad_error`` is measured on)."""
        return np.concatenate([self.dparams, np.ravel(self.dy0)])


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


def choose_method(problem: Problem) -> str:
    """The method ``method="auto"`` uses for ``problem`` (see the module docstring for the rule)."""
    if isinstance(problem.rhs, SymbolicRHS) and problem.rhs.linear_matrix is not None:
        return "closed_form"
    entries = problem.y0.size * (1 + problem.n_states + problem.n_params)
    return "sensitivity" if entries <= SENSITIVITY_MAX_ENTRIES else "adjoint"


def reference(problem: Problem, method: str = "auto", *, cache: bool = True) -> Reference:
    """The independent reference for ``problem``.

    ``method``: one of :data:`METHODS` (``"auto"``: see :func:`choose_method`). With ``cache`` (default) the result
    is kept in memory and on disk (:func:`cache_dir`) and read back from there; ``cache=False`` always computes.
    """
    if method not in METHODS:
        raise InvalidInputError(f"`method` must be one of {', '.join(map(repr, METHODS))}; got {method!r}.")
    if not isinstance(problem, Problem):
        raise InvalidInputError(f"`problem` must be a crossode.Problem; got {type(problem).__name__}.")
    key = (problem.digest(), method)
    if cache:
        hit = _CACHE.get(key) or _disk_get(problem, method)
        if hit is not None:
            _CACHE[key] = hit
            return hit
    start = time.perf_counter()
    chosen = choose_method(problem) if method == "auto" else method
    if chosen == "closed_form":
        linear = problem.rhs.linear_structure() if isinstance(problem.rhs, SymbolicRHS) else None
        if linear is None:
            raise InvalidInputError(f"problem {problem.name!r} is not linear; no closed form is available.")
        ref = _closed_form(problem, *linear)
    elif chosen == "sensitivity":
        ref = _sensitivity(problem)
    else:
        ref = _adjoint(problem)
    ref.time_s = time.perf_counter() - start
    if cache:
        _CACHE[key] = ref
        _disk_put(problem, method, ref)
    return ref


# ---------------------------------------------------------------------------------------------- methods


def _time_gradients(problem: Problem, ys: np.ndarray, g: np.ndarray, dy0: np.ndarray) -> tuple[float, float]:
    f0 = problem.rhs.f(problem.t0, problem.y0, problem.params)
    dt0 = -float((dy0 * f0).sum())
    if problem.saveat[0] == problem.t0:
        dt0 += float((g[0] * f0).sum())
    dt1 = 0.0
    if problem.saveat[-1] == problem.t1:
        dt1 = float((g[-1] * problem.rhs.f(problem.t1, ys[-1], problem.params)).sum())
    return dt0, dt1


def _finish(problem: Problem, ys: np.ndarray, g: np.ndarray, dparams, dy0, name: str) -> Reference:
    dt0, dt1 = _time_gradients(problem, ys, g, dy0)
    return Reference(problem.loss.value(ys), ys, dparams, dy0, dt0, dt1, name, 0.0)


def _closed_form(problem: Problem, a_fn, da_fn) -> Reference:
    import scipy.linalg

    p, y0 = problem.params, problem.y0
    a = a_fn(p)
    taus = problem.saveat - problem.t0
    y0m = y0.reshape(-1, problem.n_states)  # (batch or 1, n)
    ys = np.stack([y0m @ scipy.linalg.expm(tau * a).T for tau in taus]).reshape(problem.ys_shape)
    g = problem.loss.cotangent(ys)
    dy0 = np.zeros_like(y0m)
    d_a = np.zeros_like(a)
    for tau, gk in zip(taus, g.reshape(len(taus), *y0m.shape)):
        e, frechet = scipy.linalg.expm_frechet(tau * a.T, gk.T @ y0m)  # sum over the batch of g y0^T
        dy0 += gk @ e.T
        d_a += tau * frechet
    dparams = np.einsum("ij,ijk->k", d_a, da_fn(p))
    return _finish(problem, ys, g, dparams, dy0.reshape(y0.shape), "closed_form")


def _solver_options(problem: Problem) -> tuple[dict, str]:
    kw = _STIFF if problem.stiff else _NONSTIFF
    return dict(kw), f"{kw['method']}, rtol={kw['rtol']:g}"


def _check(sol, problem: Problem, what: str, n_points: int | None = None):
    if sol.status != 0 or (n_points is not None and sol.y.shape[1] != n_points):
        raise SolverFailure("solver_error", f"reference {what} failed for {problem.name!r}: {sol.message}")
    if not np.all(np.isfinite(sol.y)):
        raise SolverFailure("diverged", f"reference {what} for {problem.name!r} produced non-finite values")


def _sparse_or_dense(blocks):
    import scipy.linalg
    import scipy.sparse

    if sum(b.shape[0] for b in blocks) <= 2000:
        return scipy.linalg.block_diag(*blocks)
    return scipy.sparse.block_diag(blocks, format="csc")


def _sensitivity(problem: Problem) -> Reference:
    import scipy.integrate

    rhs, p = problem.rhs, problem.params
    shape = problem.y0.shape  # (n,) or (batch, n): one n x cols sensitivity block per trajectory
    n, m = problem.n_states, problem.n_params
    size = problem.y0.size
    cols = m + n

    def aug(t, z):
        y = z[:size].reshape(shape)
        s = z[size:].reshape(*shape, cols)
        ds = rhs.jac_y(t, y, p) @ s
        ds[..., :m] += rhs.jac_p(t, y, p)
        return np.concatenate([rhs.f(t, y, p).ravel(), ds.ravel()])

    def aug_jac(t, z):
        # Newton only needs an approximation: drop the second-derivative couplings (block diagonal in J).
        jy = rhs.jac_y(t, z[:size].reshape(shape), p).reshape(-1, n, n)
        return _sparse_or_dense(list(jy) + [np.kron(j, np.eye(cols)) for j in jy])

    s0 = np.broadcast_to(np.hstack([np.zeros((n, m)), np.eye(n)]), (*shape[:-1], n, cols))
    z0 = np.concatenate([problem.y0.ravel(), s0.ravel()])
    kw, label = _solver_options(problem)
    if problem.stiff:
        kw["jac"] = aug_jac
    sol = scipy.integrate.solve_ivp(aug, problem.tspan, z0, t_eval=problem.saveat, **kw)
    _check(sol, problem, "solve", problem.saveat.size)
    zs = sol.y.T
    ys = zs[:, :size].reshape(problem.ys_shape)
    g = problem.loss.cotangent(ys)
    sens = zs[:, size:].reshape(len(zs), -1, n, cols)  # (K, batch or 1, n, cols)
    gs = g.reshape(len(zs), -1, n)
    grad = np.einsum("kbi,kbij->bj", gs, sens)  # (batch or 1, cols)
    dparams = grad[:, :m].sum(axis=0)
    dy0 = grad[:, m:].reshape(shape)
    ref = _finish(problem, ys, g, dparams, dy0, f"sensitivity({label})")
    ref.nfe = int(sol.nfev)
    return ref


def _adjoint(problem: Problem) -> Reference:
    import scipy.integrate
    import scipy.sparse

    rhs, p = problem.rhs, problem.params
    shape, size, m = problem.y0.shape, problem.y0.size, problem.n_params
    kw, label = _solver_options(problem)
    fwd_kw = dict(kw)
    if problem.stiff:
        n = problem.n_states
        fwd_kw["jac"] = lambda t, y: _sparse_or_dense(list(rhs.jac_y(t, y.reshape(shape), p).reshape(-1, n, n)))
    fwd = scipy.integrate.solve_ivp(lambda t, y: rhs.f(t, y.reshape(shape), p).ravel(), problem.tspan,
                                    problem.y0.ravel(), t_eval=problem.saveat, dense_output=True, **fwd_kw)
    _check(fwd, problem, "forward solve", problem.saveat.size)
    ys = fwd.y.T.reshape(problem.ys_shape)
    g = problem.loss.cotangent(ys)
    y_of = fwd.sol

    def back(t, z):
        y = y_of(t).reshape(shape)
        vy, vp = rhs.vjp(t, y, p, z[:size].reshape(shape))
        out = np.empty(size + m)
        out[:size] = -vy.ravel()
        out[size:] = -vp
        return out

    back_kw = dict(kw)
    if problem.stiff:
        def back_jac(t, z):
            y = y_of(t).reshape(shape)
            n = problem.n_states
            jy = rhs.jac_y(t, y, p).reshape(-1, n, n)
            jp = rhs.jac_p(t, y, p).reshape(size, m)
            jyt = scipy.sparse.block_diag([-j.T for j in jy], format="csr")
            top = scipy.sparse.hstack([jyt, scipy.sparse.csr_matrix((size, m))])
            bottom = scipy.sparse.hstack([scipy.sparse.csr_matrix(-jp.T), scipy.sparse.csr_matrix((m, m))])
            full = scipy.sparse.vstack([top, bottom], format="csc")
            return full.toarray() if size + m <= 2000 else full

        back_kw["jac"] = back_jac
    z = np.zeros(size + m)
    nfe = int(fwd.nfev)
    stops = list(problem.saveat[::-1]) + [problem.t0]
    for k in range(problem.saveat.size):
        z[:size] += g[problem.saveat.size - 1 - k].ravel()
        t_from, t_to = stops[k], stops[k + 1]
        if t_from == t_to:
            continue
        sol = scipy.integrate.solve_ivp(back, (t_from, t_to), z, **back_kw)
        _check(sol, problem, "adjoint solve")
        nfe += int(sol.nfev)
        z = sol.y[:, -1].copy()
    dy0 = z[:size].reshape(shape)
    dparams = z[size:]
    ref = _finish(problem, ys, g, dparams, dy0, f"adjoint({label})")
    ref.nfe = nfe
    return ref


# -------------------------------------------------------------------------------------------- disk cache


def cache_dir() -> pathlib.Path | None:
    """The reference cache directory, or ``None`` when disabled (``CROSSODE_CACHE=off``); see the module docstring."""
    root = os.environ.get("CROSSODE_CACHE")
    if root is not None:
        if root.strip().lower() in ("", "0", "off", "none", "false", "no"):
            return None
        return pathlib.Path(root).expanduser() / "references"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "crossode" / "references"


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Hash of everything a cached reference depends on besides the problem (see the module docstring)."""
    import scipy
    import sympy

    from . import _cnf, _problem, _rhs

    h = hashlib.sha256(f"v{REFERENCE_VERSION}|{np.__version__}|{scipy.__version__}|{sympy.__version__}".encode())
    for module in (__file__, _rhs.__file__, _cnf.__file__, _problem.__file__):
        try:
            h.update(pathlib.Path(module).read_bytes())
        except OSError:  # e.g. a zipped install: fall back to the version number alone
            h.update(module.encode())
    return h.hexdigest()[:16]


def _entry_path(problem: Problem, method: str) -> pathlib.Path | None:
    d = cache_dir()
    if d is None:
        return None
    key = hashlib.sha256(f"{code_version()}|{problem.digest()}|{method}".encode()).hexdigest()[:32]
    return d / f"{key}.npz"


def _warn(msg: str) -> None:
    warnings.warn(f"crossode reference cache: {msg}", RuntimeWarning, stacklevel=3)


def _disk_get(problem: Problem, method: str) -> Reference | None:
    path = _entry_path(problem, method)
    if path is None:
        return None
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        _warn(f"cannot read {path}: {e}; recomputing.")
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_CACHE_ENTRY_BYTES:
        _warn(f"ignoring {path}: not a regular file or larger than {MAX_CACHE_ENTRY_BYTES} bytes; recomputing.")
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            ys, dparams, dy0 = (np.array(z[k], dtype=np.float64) for k in ("ys", "dparams", "dy0"))
        if meta.get("version") != code_version() or meta.get("digest") != problem.digest() or (
                meta.get("requested") != method):
            raise ValueError("its key does not match the problem")
        if ys.shape != problem.ys_shape or dparams.shape != (problem.n_params,) or dy0.shape != problem.y0.shape:
            raise ValueError("its arrays have the wrong shapes")
        nfe = meta.get("nfe")
        return Reference(float(meta["loss"]), ys, dparams, dy0, float(meta["dt0"]), float(meta["dt1"]),
                         str(meta["method"]), float(meta["time_s"]), cached=True,
                         nfe=None if nfe is None else int(nfe))
    except Exception as e:  # noqa: BLE001 - a corrupt entry is never fatal: recompute
        _warn(f"ignoring corrupt entry {path} ({type(e).__name__}: {e}); recomputing.")
        return None


def _disk_put(problem: Problem, method: str, ref: Reference) -> None:
    path = _entry_path(problem, method)
    if path is None:
        return
    meta = dict(version=code_version(), digest=problem.digest(), requested=method, problem=problem.name,
                method=ref.method, loss=ref.loss, dt0=ref.dt0, dt1=ref.dt1, time_s=ref.time_s, nfe=ref.nfe)
    import tempfile  # (with `random`) ~10 ms: paid when a reference is stored, not by `import crossode`

    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, meta=np.array(json.dumps(meta)), ys=ref.ys, dparams=ref.dparams, dy0=ref.dy0)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # atomic: readers see the old entry or the complete new one
        tmp = None
    except OSError as e:
        _warn(f"cannot write {path}: {e}.")
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
