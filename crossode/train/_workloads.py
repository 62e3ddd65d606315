"""Training workloads: a neutral problem to fit (model, data, loss) plus how every run of a study is evaluated.

A workload is built from the config's ``[workload]`` table (``kind`` plus options) in NumPy only, identically in the
parent and in every run's worker, so every run trains the same model from the same initial parameters on the same
data. Evaluation is backend-free (SciPy at tight tolerance on the model's exact flow), so the metrics of runs with
different backends, solvers and gradient methods are measured the same way.

Kinds:

- ``spiral``: Onken & Ruthotto's time-series regression (their ``DO_Neural_ODEs`` code, after DiffEqFlux's
  example). True system ``du/dt = ((u^3)^T A)^T``, ``A = [[-0.1, 2], [-2, -0.1]]``, ``u0 = [2, 0]`` (crossode's
  ``cubic_spiral`` field), sampled at ``n_samples = 30`` equispaced times of ``[0, t1 = 1.5]`` (both ends
  included, as ``range(0, 1.5, length=30)``); model ``x -> x^3 -> Dense(2, width = 50, tanh) -> Dense(50, 2)``
  (:class:`~crossode.MLPRHS` with ``features = "cube"``, initialised from ``seed``); loss the neutral ``mse``
  ``1/2 sum_k ||u(t_k) - d_k||^2`` (half of Onken & Ruthotto's ``sum(abs2, ...)``: Adam's steps do not depend on a
  constant factor of the loss, except through ``eps``). Metrics: ``eval_loss`` (the same loss on the model's exact
  flow: DOP853 at rtol 1e-10) and ``extrapolation_error``, the relative L2 error ``||U - U_true||_F / ||U_true||_F``
  of that flow against the true system at ``n_extrapolate = 120`` equispaced times of ``[0, extrapolate_t1 = 6]``.
  Artifact: the extrapolated trajectory (for the report's phase-plane figure).
- ``cnf2d``: an FFJORD-style continuous normalizing flow on a 2-D toy density (:func:`crossode.problems.cnf_problem`,
  exact trace): ``dataset`` (``two_moons``, ``8gaussians``, ``checkerboard``), ``n_train`` training samples (the
  batch the mini-batches are drawn from), a time-input MLP of ``depth`` hidden layers of ``width`` (``activation``,
  default softplus), ``t1``. Metrics, the same for every run (:mod:`crossode.cnf`: PyTorch dopri5 at rtol 1e-7,
  atol 1e-9, tighter than any training setting): ``test_nll`` on ``n_test`` held-out samples (another seed) and
  ``invertibility_error`` ``||f^-1(f(x)) - x||_F / n`` on ``n_invertibility`` of them; ``invertibility_error_train``:
  the same with the run's own solver and step control (Onken & Ruthotto's point: a coarse discrete flow is not
  invertible). Artifact: the learned density
  on a ``grid`` x ``grid`` grid of ``[-extent, extent]^2`` beside a histogram of the held-out data.
- ``problem``: any batched or single zoo problem or problem file whose loss has data (``problem = "mlp_fit"``,
  ``{ name = "spiral_fit", overrides = {...} }`` or ``{ file = "p.toml" }``). Metric: ``eval_loss`` on the exact flow
  (DOP853 rtol 1e-10, or Radau for problems marked stiff).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from .._errors import InvalidInputError, fmt_choices

__all__ = ["Workload", "build_workload", "WORKLOAD_KINDS", "exact_flow"]

EVAL_RTOL, EVAL_ATOL = 1e-10, 1e-12
"""Tolerances of the backend-free evaluation solves (SciPy DOP853)."""


@dataclasses.dataclass
class Workload:
    """A built workload: ``problem`` (the training problem with all the data; its ``params`` are the initial
    parameters), ``evaluate(params, method=None) -> {metric: value | None}`` (``method``: the run's ``(solver,
    step)``, for metrics of the training discretisation), ``artifacts(params) -> dict`` (small arrays for the
    report, computed once at the end of a run), ``metrics`` (name -> one-line description) and the metric whose
    target the report's time-to-target uses by default."""

    kind: str
    problem: object
    description: str
    evaluate: Callable[[np.ndarray], dict]
    artifacts: Callable[[np.ndarray], dict]
    metrics: dict[str, str]
    target_metric: str = "loss"


def exact_flow(problem, params, t_eval, y0=None, tspan=None):
    """The model's trajectory at ``t_eval`` with parameters ``params`` by SciPy at tight tolerance (DOP853, rtol
    1e-10; Radau for stiff problems): ``(len(t_eval), *y0.shape)``, or ``None`` when the solve fails (a model that
    blows up)."""
    import scipy.integrate

    y0 = problem.y0 if y0 is None else np.asarray(y0, dtype=np.float64)
    t0, t1 = problem.tspan if tspan is None else tspan
    rhs, p, shape = problem.rhs, np.asarray(params, dtype=np.float64), y0.shape
    method = "Radau" if problem.stiff else "DOP853"
    with np.errstate(all="ignore"):
        try:
            sol = scipy.integrate.solve_ivp(lambda t, y: rhs.f(t, y.reshape(shape), p).ravel(), (t0, t1), y0.ravel(),
                                            t_eval=np.asarray(t_eval, dtype=np.float64), method=method,
                                            rtol=EVAL_RTOL, atol=EVAL_ATOL)
        except (ValueError, ArithmeticError):
            return None
    if sol.status != 0 or sol.y.shape[1] != len(t_eval) or not np.all(np.isfinite(sol.y)):
        return None
    return sol.y.T.reshape(len(t_eval), *shape)


# ---------------------------------------------------------------------------------------------------- options


def _opt_number(opts, key, default, *, positive=False, integer=False, lo=None, hi=None):
    v = opts.pop(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise InvalidInputError(f"`workload.{key}` must be a finite number; got {v!r}.")
    if integer and (not isinstance(v, int) or v < 1):
        raise InvalidInputError(f"`workload.{key}` must be a positive integer; got {v!r}.")
    if positive and not v > 0:
        raise InvalidInputError(f"`workload.{key}` must be positive; got {v!r}.")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise InvalidInputError(f"`workload.{key}` must be in [{lo}, {hi}]; got {v!r}.")
    return v


def _no_more(kind, opts):
    if opts:
        raise InvalidInputError(f"`workload` kind {kind!r}: unknown option(s) {sorted(opts)}.")


# ----------------------------------------------------------------------------------------------------- spiral


def _spiral(opts: dict) -> Workload:
    from .._limits import MAX_SAVES
    from .._problem import Loss, Problem
    from .._rhs import ACTIVATIONS, MLPRHS
    from ..problems import cubic_spiral

    n = _opt_number(opts, "n_samples", 30, integer=True, hi=MAX_SAVES)
    t1 = _opt_number(opts, "t1", 1.5, positive=True)
    width = _opt_number(opts, "width", 50, integer=True, hi=100_000)
    seed = _opt_number(opts, "seed", 0, lo=0, hi=2**32 - 1)
    t_ext = _opt_number(opts, "extrapolate_t1", 6.0, positive=True)
    n_ext = _opt_number(opts, "n_extrapolate", 120, integer=True, hi=MAX_SAVES)
    activation = opts.pop("activation", "tanh")
    if activation not in ACTIVATIONS:
        raise InvalidInputError(f"`workload.activation` must be one of {fmt_choices(ACTIVATIONS)}; got {activation!r}.")
    _no_more("spiral", opts)
    if n < 2:
        raise InvalidInputError(f"`workload.n_samples` must be at least 2; got {n}.")
    truth = cubic_spiral(t1=t_ext)  # the true system: y' = A^T y^3 from [2, 0]
    t_train = np.linspace(0.0, t1, n)
    t_ext_grid = np.linspace(0.0, t_ext, n_ext)
    t_all = np.unique(np.concatenate([t_train, t_ext_grid]))
    true_all = exact_flow(truth, truth.params, t_all, tspan=(0.0, float(t_all[-1])))
    if true_all is None:
        raise InvalidInputError("the true spiral could not be solved on the requested span.")
    pick = lambda ts: true_all[np.searchsorted(t_all, ts)]  # noqa: E731
    data, true_ext = pick(t_train), pick(t_ext_grid)
    rhs = MLPRHS([2, width, 2], activation, features="cube", seed=int(seed))
    problem = Problem(rhs, y0=truth.y0, tspan=(0.0, t1), saveat=t_train, loss=Loss("mse", targets=data),
                      name="spiral", description=f"Onken & Ruthotto's spiral: {rhs.describe()}, {n} samples on "
                                                 f"[0, {t1:g}]")
    norm = float(np.linalg.norm(true_ext))

    def flow(params):
        return exact_flow(problem, params, t_all, tspan=(0.0, float(t_all[-1])))

    def evaluate(params, method=None):
        ys = flow(params)
        if ys is None:
            return {"eval_loss": None, "extrapolation_error": None}
        train = ys[np.searchsorted(t_all, t_train)]
        ext = ys[np.searchsorted(t_all, t_ext_grid)]
        return {"eval_loss": problem.loss.value(train),
                "extrapolation_error": float(np.linalg.norm(ext - true_ext)) / norm}

    def artifacts(params):
        ys = flow(params)
        ext = None if ys is None else ys[np.searchsorted(t_all, t_ext_grid)].tolist()
        return {"trajectory": {"t": t_ext_grid.tolist(), "y": ext, "true": true_ext.tolist(), "t_train": t1}}

    return Workload("spiral", problem, problem.description, evaluate, artifacts, {
        "eval_loss": "the training loss on the model's exact flow (DOP853, rtol 1e-10)",
        "extrapolation_error": f"relative L2 error of the model's exact flow against the true spiral at {n_ext} times "
                               f"of [0, {t_ext:g}]",
    })


# ---------------------------------------------------------------------------------------------------- problem


def _problem(opts: dict, base_dir: str) -> Workload:
    import os

    from ..sweep._config import build_problem

    spec = opts.pop("problem", None)
    _no_more("problem", opts)
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or ("name" in spec) == ("file" in spec) or set(spec) - {"name", "file",
                                                                                          "overrides"}:
        raise InvalidInputError("`workload.problem` must be a zoo name, { name = ..., overrides = {...} } or "
                                "{ file = ... }.")
    spec = dict(spec)
    if "file" in spec:
        spec["file"] = os.path.normpath(os.path.join(base_dir, str(spec["file"])))
    if not isinstance(spec.get("overrides", {}), dict):
        raise InvalidInputError("`workload.problem.overrides` must be a table.")
    problem = build_problem(spec)
    if problem.loss.kind != "mse":
        raise InvalidInputError(f"workload problem {problem.name!r} has a {problem.loss.kind!r} loss; training needs "
                                "data (kind = 'mse').")

    def evaluate(params, method=None):
        ys = exact_flow(problem, params, problem.saveat)
        return {"eval_loss": None if ys is None else problem.loss.value(ys)}

    return Workload("problem", problem, problem.description or problem.name, evaluate, lambda params: {},
                    {"eval_loss": "the training loss on the model's exact flow (SciPy, rtol 1e-10)"})


# ----------------------------------------------------------------------------------------------------- cnf2d


def _cnf2d(opts: dict) -> Workload:
    from .. import cnf, datasets
    from ..problems import cnf_problem

    dataset = opts.pop("dataset", "two_moons")
    if dataset not in datasets.DATASETS:
        raise InvalidInputError(f"`workload.dataset` must be one of {fmt_choices(datasets.DATASETS)}; got "
                                f"{dataset!r}.")
    n_train = _opt_number(opts, "n_train", 4096, integer=True, hi=1_000_000)
    n_test = _opt_number(opts, "n_test", 2048, integer=True, hi=1_000_000)
    n_inv = _opt_number(opts, "n_invertibility", 512, integer=True, hi=1_000_000)
    grid = _opt_number(opts, "grid", 60, integer=True, hi=400)
    width = _opt_number(opts, "width", 64, integer=True, hi=10_000)
    depth = _opt_number(opts, "depth", 3, integer=True, hi=16)
    seed = _opt_number(opts, "seed", 0, lo=0, hi=2**32 - 1)
    data_seed = _opt_number(opts, "data_seed", 0, lo=0, hi=2**32 - 2)
    t1 = _opt_number(opts, "t1", 1.0, positive=True)
    activation = opts.pop("activation", "softplus")
    lim = _opt_number(opts, "extent", 4.0, positive=True)
    _no_more("cnf2d", opts)
    if n_inv > n_test:
        raise InvalidInputError(f"`workload.n_invertibility` ({n_inv}) must not exceed `n_test` ({n_test}).")
    problem = cnf_problem(dataset, batch=int(n_train), widths=[2] + [int(width)] * int(depth) + [2],
                          activation=activation, seed=int(seed), data_seed=int(data_seed), t1=float(t1),
                          name=f"cnf2d_{dataset}")
    test = datasets.sample(dataset, int(n_test), seed=int(data_seed) + 1)  # held out: another seed
    kw = {"backend": "torch", "chunk": 2048}  # the same tight dopri5 (cnf.EVAL_STEP) for every run

    def evaluate(params, method=None):
        p = problem.remake(params=np.asarray(params, dtype=np.float64))
        out = {}
        try:
            out["test_nll"] = cnf.nll(p, test, **kw)
        except Exception:  # noqa: BLE001 - a model whose flow fails has no metric
            out["test_nll"] = None
        try:
            out["invertibility_error"] = cnf.invertibility_error(p, test[:n_inv], **kw)
        except Exception:  # noqa: BLE001
            out["invertibility_error"] = None
        if method is not None:  # the same test with the run's own solver and step control (torch)
            try:
                out["invertibility_error_train"] = cnf.invertibility_error(p, test[:n_inv], backend="torch",
                                                                           solver=method[0], step=method[1])
            except Exception:  # noqa: BLE001
                out["invertibility_error_train"] = None
        return out

    def artifacts(params):
        p = problem.remake(params=np.asarray(params, dtype=np.float64))
        ext = (-lim, lim)
        try:
            _, _, logp = cnf.density_grid(p, xlim=ext, ylim=ext, n=int(grid), **kw)
            img = np.exp(logp).tolist()
        except Exception:  # noqa: BLE001
            img = None
        hist, _, _ = np.histogram2d(test[:, 1], test[:, 0], bins=int(grid), range=[ext, ext], density=True)
        return {"density": {"p": img, "data": hist.tolist(), "extent": [-lim, lim, -lim, lim]}}

    return Workload("cnf2d", problem, problem.description, evaluate, artifacts, {
        "test_nll": f"held-out negative log-likelihood (nats) of {n_test} fresh samples, dopri5 rtol 1e-7 atol 1e-9",
        "invertibility_error": f"||f^-1(f(x)) - x||_F / n of {n_inv} held-out samples, the same tight dopri5",
        "invertibility_error_train": "the same with the run's own solver and step control (PyTorch)",
    }, target_metric="test_nll")


WORKLOAD_KINDS = {"spiral": _spiral, "problem": _problem, "cnf2d": _cnf2d}
"""Workload builders by ``kind``."""


def build_workload(spec: dict, base_dir: str = ".") -> Workload:
    """The :class:`Workload` of a ``[workload]`` table (``kind`` plus options); raises :class:`InvalidInputError`
    naming the bad option."""
    if not isinstance(spec, dict):
        raise InvalidInputError(f"`workload` must be a table; got {spec!r}.")
    opts = dict(spec)
    kind = opts.pop("kind", None)
    if kind not in WORKLOAD_KINDS:
        raise InvalidInputError(f"`workload.kind` must be one of {fmt_choices(WORKLOAD_KINDS)}; got {kind!r}.")
    if kind == "problem":
        return _problem(opts, base_dir)
    return WORKLOAD_KINDS[kind](opts)
