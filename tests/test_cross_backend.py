"""PyTorch and JAX solve the same discretisation: same grids, same step counts, gradients equal to round-off.

Both backends step on the same grid by construction (``crossode/backends/jax/_control.py`` is the PyTorch
step controller as a Diffrax controller, ``crossode/backends/jax/_alf.py`` the PyTorch ALF controller): fixed
grids are :func:`crossode.fixed_grid` everywhere, adaptive steps land on every save time in both backends. What
still differs is the last bit of each vector-field evaluation (PyTorch kernels against XLA, which contracts
``a*b + c`` into FMAs), so gradients agree to ~1e-13, not bitwise, and ALF's error estimate ``h (u - v)``, a
difference of nearly equal slopes, turns those bits into ~1e-12..1e-9 relative differences of long adaptive ALF
grids (accept/reject decisions are the same unless an error norm ties with 1 at that level).

Every result is also checked against the independent reference (:func:`crossode.reference`) at the accuracy the
step size or tolerance allows. JAX cells are compiled on first call only (``aot=False``, no counting programs).
"""

import numpy as np
import pytest

pytestmark = [pytest.mark.torch, pytest.mark.jax]

pytest.importorskip("torch")
pytest.importorskip("jax")
pytest.importorskip("diffrax")

import crossode as co  # noqa: E402
from crossode import ALF, MALI, RK4, Adaptive, Direct, Dopri5, Fixed, Tsit5  # noqa: E402
from crossode.backends.jax._backend import DiffraxBackend  # noqa: E402

JAX = DiffraxBackend(aot=False, count_nfe=False)

PROBLEMS = {
    "cubic_spiral": lambda: co.get_problem("cubic_spiral"),  # 29 save times
    "cubic_spiral_short": lambda: co.get_problem("cubic_spiral", t1=0.5, n_save=6),
    "lotka_volterra": lambda: co.get_problem("lotka_volterra"),  # 4 save times
    "lotka_volterra_short": lambda: co.get_problem("lotka_volterra", t1=2.0),
    "mlp": lambda: co.get_problem("mlp"),  # 2 save times
    # batched: 4 trajectories, time-input MLP, mse targets per trajectory
    "mlp_fit_small": lambda: co.get_problem("mlp_fit", batch=4, n=2, width=8, depth=2),
    # batched CNF: 8 two-moons samples, state [x, logp], exact trace, cnf_nll loss (scale 2: a flow that needs steps)
    "cnf_small": lambda: co.get_problem("cnf_moons", batch=8, widths=[2, 16, 16, 2], scale=2.0),
}


def _grad(g) -> np.ndarray:
    return np.concatenate([g.dparams, np.ravel(g.dy0)])


def _rel(a, b) -> float:
    a, b = _grad(a), _grad(b)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(a)))


def _both(name, solver, sensitivity, step):
    problem = PROBLEMS[name]()
    return problem, co.gradient(problem, "torch", solver, sensitivity, step), co.gradient(problem, JAX, solver,
                                                                                          sensitivity, step)


def _check_reference(problem, g, tol):
    ref = co.reference(problem)
    assert co.relative_error(_grad(g), ref.grad) < tol
    assert abs(g.loss - ref.loss) < tol * abs(ref.loss)


# (problem, solver, sensitivity, step, gradient agreement torch/JAX, reference tolerance)
FIXED = [
    ("cubic_spiral", RK4(), Direct(), Fixed(0.05), 1e-12, 5e-3),  # error ~ dt^4: 1.2e-3
    ("lotka_volterra", Dopri5(), Direct(), Fixed(0.05), 1e-12, 1e-6),  # 1.0e-7
    ("cubic_spiral", ALF(), MALI(), Fixed(0.01), 1e-12, 5e-3),  # error ~ dt^2: 1.5e-3
    ("lotka_volterra", ALF(), MALI(), Fixed(0.01), 1e-10, 1e-3),  # 2.5e-4 (1000 steps: agreement 5e-12)
    ("mlp", ALF(), MALI(), Fixed(0.01), 1e-12, 1e-5),  # 1.6e-6
]


@pytest.mark.parametrize("name, solver, sensitivity, step, agree, ref_tol", FIXED,
                         ids=[f"{c[0]}-{c[1].name}" for c in FIXED])
def test_fixed_steps_same_discretisation(name, solver, sensitivity, step, agree, ref_tol):
    problem, t, j = _both(name, solver, sensitivity, step)
    n = len(co.fixed_grid(*problem.tspan, step.dt, problem.saveat)) - 1
    assert (t.stats.steps_accepted, t.stats.steps_rejected) == (j.stats.steps_accepted, j.stats.steps_rejected) \
        == (n, 0)
    assert _rel(t, j) < agree
    assert abs(t.loss - j.loss) < agree * abs(t.loss)
    _check_reference(problem, t, ref_tol)
    _check_reference(problem, j, ref_tol)


# Adaptive explicit RK (rtol 1e-6, atol 1e-8): both backends end steps on every save time with the same controller
# (before: Diffrax interpolated the save times, cubic_spiral Dopri5 53/12 steps against PyTorch's 67/15).
ADAPTIVE_RK = [
    ("cubic_spiral", Dopri5(), (67, 15), 1e-4),  # reference error 1.2e-5
    ("lotka_volterra", Dopri5(), (82, 22), 1e-4),  # 1.3e-5
    ("lotka_volterra", Tsit5(), (92, 15), 1e-4),  # 3.1e-6
    ("mlp", Tsit5(), (4, 0), 1e-6),  # 2.2e-9
]


@pytest.mark.parametrize("name, solver, counts, ref_tol", ADAPTIVE_RK,
                         ids=[f"{c[0]}-{c[1].name}" for c in ADAPTIVE_RK])
def test_adaptive_rk_same_grid(name, solver, counts, ref_tol):
    problem, t, j = _both(name, solver, Direct(), Adaptive(rtol=1e-6, atol=1e-8, max_steps=4096))
    assert (t.stats.steps_accepted, t.stats.steps_rejected) == counts
    assert (j.stats.steps_accepted, j.stats.steps_rejected) == counts
    assert _rel(t, j) < 1e-10
    assert abs(t.loss - j.loss) < 1e-12 * abs(t.loss)
    _check_reference(problem, t, ref_tol)
    _check_reference(problem, j, ref_tol)


# Adaptive ALF + MALI: the JAX loop is the PyTorch controller step for step.
ADAPTIVE_ALF = [
    ("cubic_spiral_short", 1e-5, 1e-3),
    ("lotka_volterra_short", 1e-5, 1e-3),
    ("mlp", 1e-6, 1e-5),
]


@pytest.mark.parametrize("name, rtol, ref_tol", ADAPTIVE_ALF, ids=[c[0] for c in ADAPTIVE_ALF])
def test_adaptive_alf_mali_same_grid(name, rtol, ref_tol):
    problem, t, j = _both(name, ALF(), MALI(), Adaptive(rtol=rtol, atol=rtol * 1e-2, max_steps=20_000))
    assert t.stats.steps_accepted > 100
    assert (t.stats.steps_accepted, t.stats.steps_rejected) == (j.stats.steps_accepted, j.stats.steps_rejected)
    assert t.stats.nfe_forward == j.stats.nfe_forward
    assert _rel(t, j) < 1e-10
    assert abs(t.loss - j.loss) < 1e-10 * abs(t.loss)
    _check_reference(problem, t, ref_tol)
    _check_reference(problem, j, ref_tol)


# Batched problems: one solve of the (batch, n) state in both backends, the error norm over all its entries.
BATCHED = [
    ("mlp_fit_small", Dopri5(), Direct(), Adaptive(rtol=1e-7, atol=1e-9), 1e-6),
    ("mlp_fit_small", ALF(), MALI(), Adaptive(rtol=1e-5, atol=1e-7), 1e-4),
    ("cnf_small", Dopri5(), Direct(), Adaptive(rtol=1e-7, atol=1e-9), 1e-6),  # 9/1 steps, reference error 6.9e-8
    pytest.param("cnf_small", ALF(), MALI(), Adaptive(rtol=1e-5, atol=1e-7), 1e-5,  # 718/2 steps, 1.8e-6
                 marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name, solver, sensitivity, step, ref_tol", BATCHED,
                         ids=[f"{c[0]}-{c[1].name}" for c in (getattr(c, "values", c) for c in BATCHED)])
def test_batched_same_grid_and_gradient(name, solver, sensitivity, step, ref_tol):
    problem, t, j = _both(name, solver, sensitivity, step)
    assert t.dy0.shape == j.dy0.shape == problem.y0.shape
    assert t.stats.steps_accepted > 3
    assert (t.stats.steps_accepted, t.stats.steps_rejected) == (j.stats.steps_accepted, j.stats.steps_rejected)
    assert _rel(t, j) < 1e-10
    assert abs(t.loss - j.loss) < 1e-12 * abs(t.loss)
    _check_reference(problem, t, ref_tol)
    _check_reference(problem, j, ref_tol)


@pytest.mark.parametrize("name", ["cubic_spiral_short", "mlp"])
def test_adaptive_alf_grids_agree(name):
    """The accepted step boundaries themselves (forward march only, internal APIs)."""
    import jax
    import jax.numpy as jnp
    import torch

    from crossode._stepping import initial_step
    from crossode.backends.jax._alf import ALFConfig, alf_loop
    from crossode.backends.jax._field import make_vector_field
    from crossode.backends.torch._alf import _Counter, march
    from crossode.backends.torch._field import make_field_and_params

    problem = PROBLEMS[name]()
    step = Adaptive(rtol=1e-6, atol=1e-8)
    t0, t1 = problem.tspan
    times = [t0, *[float(s) for s in problem.saveat if s != t0]]
    times = times if times[-1] == t1 else [*times, t1]
    f, _ = make_field_and_params(problem, torch.tensor(problem.params, dtype=torch.float64))
    y0 = torch.tensor(problem.y0, dtype=torch.float64)
    with torch.no_grad():
        grid_t = march(f, y0, f(torch.tensor(t0, dtype=torch.float64), y0), times, 1.0, step, _Counter()).grid

    fj = make_vector_field(problem)
    f0 = problem.rhs.f(t0, np.asarray(problem.y0), np.asarray(problem.params))
    dt0, _ = initial_step(problem, 2, step.rtol, step.atol, f0=f0)
    cfg = ALFConfig(t0, t1, np.asarray(problem.saveat, dtype=np.float64), rtol=step.rtol, atol=step.atol, dt0=dt0,
                    max_steps=len(grid_t) + 1000)
    r = jax.jit(lambda y, p: alf_loop(fj, cfg, y, fj(t0, y, p), p, record_times=True))(
        jnp.asarray(problem.y0), jnp.asarray(problem.params))
    grid_j = np.asarray(r.ts[: int(r.n_acc) + 1])
    assert grid_j.shape == grid_t.shape
    assert grid_j[-1] == grid_t[-1] == t1
    for s in problem.saveat:  # save times are step boundaries, exactly
        assert s in grid_j and s in grid_t
    # first steps agree to the round-off of Hairer's initial step (NumPy vs PyTorch f), later ones drift slowly
    assert np.max(np.abs(grid_j - grid_t)) < 1e-10 * (t1 - t0)


@pytest.mark.slow
def test_done_when_batched_mlp_file_compare(tmp_path, data_dir):
    """Issue 14's check: the batched MLP file (batch 64, 8-64-64-8, time input, mse targets from an .npz) through
    `crossode compare` on torch and JAX, every gradient at solver tolerance against the adjoint reference."""
    import json

    from crossode.cli import main

    out = tmp_path / "records.jsonl"
    args = ["compare", "--problem-file", str(data_dir / "batched_mlp.toml"), "--backend", "torch,jax", "--solver",
            "dopri5,alf", "--sensitivity", "direct,backsolve,mali", "--repeats", "1", "--out", str(out)]
    assert main(args) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    ran = [r for r in records if r["status"] != "unsupported"]
    assert {(r["backend"], r["solver"], r["sensitivity"]) for r in ran} == {
        (b, s, g) for b in ("torch", "jax") for s, g in
        (("dopri5", "direct"), ("dopri5", "backsolve"), ("alf", "direct"), ("alf", "mali"))}
    for r in ran:
        assert r["status"] == "ok", r
        assert r["reference"].startswith("adjoint(DOP853")
        assert r["grad_error"] < r["rtol"], r  # rtol 1e-6: measured 8e-11 (dopri5) .. 1.8e-8 (ALF)


@pytest.mark.slow
def test_done_when_cnf_compare(tmp_path):
    """Issue 9 §3's neutral check: the zoo CNF (256 two-moons samples, 2-64-64-64-2 softplus with time input, exact
    trace, cnf_nll loss) through `crossode compare` on torch and JAX at FFJORD's tolerances, every gradient against
    the independent adjoint reference (about 2.5 minutes on 2 shared cores, most of it the reference and compiles)."""
    import json

    from crossode.cli import main

    out = tmp_path / "records.jsonl"
    args = ["compare", "--problem", "cnf_moons", "--backend", "torch,jax", "--solver", "dopri5", "--sensitivity",
            "direct,backsolve", "--rtol", "1e-6", "--atol", "1e-8", "--repeats", "1", "--out", str(out)]
    assert main(args) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(r["backend"], r["sensitivity"]) for r in records} == {
        (b, g) for b in ("torch", "jax") for g in ("direct", "backsolve")}
    for r in records:
        assert r["status"] == "ok", r
        assert r["reference"].startswith("adjoint(DOP853")
        assert r["grad_error"] < 1e-7, r  # measured 7.1e-10 (Direct), 1.2e-9 / 9.6e-10 (Backsolve torch / JAX)
