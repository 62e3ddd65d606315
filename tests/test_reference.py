"""The independent reference: closed form and forward sensitivities agree; accuracy is stated and checked."""

import numpy as np
import pytest

from crossode import Loss, Problem, SymbolicRHS, load_problem_file, reference, relative_error
from crossode.problems import get_problem


@pytest.mark.parametrize("name", ["linear", "exponential_decay", "decay2", "error_norm_trap"])
def test_closed_form_matches_sensitivities(name):
    p = get_problem(name)
    closed, sens = reference(p, "closed_form"), reference(p, "sensitivity")
    assert closed.method == "closed_form" and sens.method.startswith("sensitivity")
    assert relative_error(sens.grad, closed.grad) < 1e-9
    assert relative_error(sens.ys, closed.ys) < 1e-10
    assert abs(sens.dt0 - closed.dt0) <= 1e-9 * max(1.0, abs(closed.dt0))


def test_damped_linear_file_within_1e8_of_closed_form(data_dir):
    p = load_problem_file(data_dir / "damped_linear.toml")
    assert relative_error(reference(p, "sensitivity").grad, reference(p, "closed_form").grad) < 1e-8


def test_exponential_decay_analytic():
    k, y0, ts = 0.5, 1.0, np.linspace(1.0, 5.0, 5)
    p = get_problem("exponential_decay")
    r = reference(p, "sensitivity")
    ys = y0 * np.exp(-k * ts)
    assert np.allclose(r.ys[:, 0], ys, rtol=1e-11)
    # L = 1/2 sum y0^2 exp(-2 k t):  dL/dk = -sum t y0^2 exp(-2kt), dL/dy0 = sum y0 exp(-2kt)
    assert abs(r.dparams[0] - (-(ts * ys**2).sum())) < 1e-10
    assert abs(r.dy0[0] - (ys**2 / y0).sum()) < 1e-10


def test_error_norm_trap_value():
    # Sapienza et al.: d u1(5) / d u0 = (1 + e^10)/2, -(e^10 - 1)/2 ~ (11013.73, -11012.73)
    r = reference(get_problem("error_norm_trap"))
    e = np.exp(10.0)
    assert np.allclose(r.dy0, [(1 + e) / 2, -(e - 1) / 2], rtol=1e-10)


@pytest.mark.parametrize("name", ["lotka_volterra", "fitzhugh_nagumo", "mlp", "cubic_spiral"])
def test_sensitivity_gradient_vs_central_differences(name):
    p = get_problem(name)
    r = reference(p)
    rng = np.random.default_rng(1)
    v = rng.standard_normal(p.n_params + p.n_states)
    h = 1e-5

    def loss(x):
        q = p.remake(params=x[: p.n_params], y0=x[p.n_params:])
        return reference(q).loss

    x = np.concatenate([p.params, p.y0])
    fd = (loss(x + h * v) - loss(x - h * v)) / (2 * h)
    assert abs(fd - r.grad @ v) <= 1e-6 * max(1.0, abs(fd))


def test_time_gradients_vs_finite_differences():
    p = get_problem("lotka_volterra")
    r = reference(p)
    h = 1e-6
    rhs = p.rhs
    # moving t1 moves the last save (it sits at t1); moving t0 keeps the saves fixed
    def at(t0, t1):
        saveat = p.saveat.copy()
        saveat[-1] = t1
        return reference(Problem(rhs, y0=p.y0, params=p.params, tspan=(t0, t1), saveat=saveat)).loss

    fd1 = (at(0.0, p.t1 + h) - at(0.0, p.t1 - h)) / (2 * h)
    fd0 = (at(h, p.t1) - at(-h, p.t1)) / (2 * h)
    assert abs(fd1 - r.dt1) < 1e-5 * max(1, abs(fd1))
    assert abs(fd0 - r.dt0) < 1e-5 * max(1, abs(fd0))


@pytest.mark.slow
def test_stiff_robertson_reference_vs_differences():
    p = get_problem("robertson", t1=10.0)
    r = reference(p)
    h = 1e-6
    i = 0  # k1
    q = lambda s: reference(p.remake(params=p.params * np.where(np.arange(3) == i, 1 + s, 1))).loss  # noqa: E731
    fd = (q(h) - q(-h)) / (2 * h * p.params[i])
    assert abs(fd - r.dparams[i]) < 1e-5 * abs(fd)


def test_linear_loss_uses_weights():
    rhs = SymbolicRHS(["x"], ["k"], ["-k*x"])
    p = Problem(rhs, y0=[2.0], params=[1.0], tspan=(0, 1), saveat=[0.5, 1.0], loss=Loss("linear", [[1.0], [3.0]]))
    r = reference(p)
    assert np.isclose(r.loss, 2 * np.exp(-0.5) + 6 * np.exp(-1.0), rtol=1e-12)
    assert np.isclose(r.dy0[0], np.exp(-0.5) + 3 * np.exp(-1.0), rtol=1e-12)


# ------------------------------------------------------------------------------- adjoint, batches, disk cache

from crossode import MLPRHS, PROBLEMS  # noqa: E402
from crossode import _reference as reference_module  # noqa: E402
from crossode._reference import SENSITIVITY_MAX_ENTRIES, cache_dir, choose_method  # noqa: E402

# the batched zoo problems at their defaults need millions of sensitivity entries (mlp_fit 2.7M, 18 s; the CNFs
# 6.6M): checked at a reduced size
_SMALL_CNF = dict(batch=4, widths=[2, 8, 8, 2])
ZOO = {name: {} for name in PROBLEMS} | {"mlp_fit": dict(batch=4, n=3, width=8)} | {
    name: _SMALL_CNF for name in PROBLEMS if name.startswith("cnf_")}
SLOW = {"van_der_pol_stiff", "robertson"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in ZOO])
def test_adjoint_matches_sensitivities_on_the_zoo(name):
    p = get_problem(name, **ZOO[name])
    adj, sens = reference(p, "adjoint"), reference(p, "sensitivity")
    assert adj.method.startswith("adjoint(") and sens.method.startswith("sensitivity(")
    assert relative_error(adj.grad, sens.grad) < 1e-8
    assert relative_error(adj.ys, sens.ys) < 1e-10
    assert abs(adj.loss - sens.loss) <= 1e-10 * abs(sens.loss)
    assert abs(adj.dt0 - sens.dt0) <= 1e-8 * max(1.0, abs(sens.dt0))


def test_adjoint_backwards_in_time_and_batched_time_gradients():
    back = get_problem("lotka_volterra").remake(tspan=(2.0, 0.0), saveat=[1.5, 0.5, 0.0])
    a, s = reference(back, "adjoint"), reference(back, "sensitivity")
    assert relative_error(a.grad, s.grad) < 1e-10 and abs(a.dt0 - s.dt0) < 1e-9 * abs(s.dt0)
    batched = get_problem("mlp_fit", batch=3, n=2, width=4, depth=1).remake(
        tspan=(1.0, 0.0), saveat=[0.0], loss=Loss("mse", targets=np.zeros((1, 3, 2))))
    a, s = reference(batched, "adjoint"), reference(batched, "sensitivity")
    assert relative_error(a.grad, s.grad) < 1e-10
    assert abs(a.dt1 - s.dt1) < 1e-10 * abs(s.dt1) and abs(a.dt0 - s.dt0) < 1e-10 * abs(s.dt0)


@pytest.mark.parametrize("name", ["linear", "exponential_decay", "decay2", "error_norm_trap"])
def test_adjoint_matches_closed_form(name):
    p = get_problem(name)
    assert relative_error(reference(p, "adjoint").grad, reference(p, "closed_form").grad) < 1e-9


def _split(p):
    """The single-trajectory problems of a batched sum-of-squares problem."""
    return [p.remake(y0=row) for row in p.y0]


@pytest.mark.parametrize("method", ["closed_form", "sensitivity", "adjoint"])
def test_batched_reference_is_the_sum_over_trajectories(method):
    base = get_problem("linear", n=3, t1=1.0)
    y0 = np.random.default_rng(5).standard_normal((3, 3))
    p = base.remake(y0=y0, saveat=[0.5, 1.0])
    r = reference(p, method)
    parts = [reference(q, "closed_form") for q in _split(p)]
    assert r.ys.shape == (2, 3, 3) and r.dy0.shape == (3, 3)
    np.testing.assert_allclose(r.dparams, sum(q.dparams for q in parts), rtol=1e-9)
    np.testing.assert_allclose(r.dy0, np.stack([q.dy0 for q in parts]), rtol=1e-9)
    np.testing.assert_allclose(r.ys, np.stack([q.ys for q in parts], axis=1), rtol=1e-10)
    assert r.loss == pytest.approx(sum(q.loss for q in parts), rel=1e-10)
    assert r.dt0 == pytest.approx(sum(q.dt0 for q in parts), rel=1e-8)


def test_batched_mse_gradient_vs_central_differences():
    p = get_problem("spiral_fit", batch=3, n_save=4, width=6)
    r = reference(p)
    rng = np.random.default_rng(2)
    v = rng.standard_normal(p.n_params + p.y0.size)
    h = 1e-5

    def loss(x):
        return reference(p.remake(params=x[: p.n_params], y0=x[p.n_params:].reshape(p.y0.shape)), "adjoint").loss

    x = np.concatenate([p.params, p.y0.ravel()])
    fd = (loss(x + h * v) - loss(x - h * v)) / (2 * h)
    assert abs(fd - r.grad @ v) <= 1e-6 * max(1.0, abs(fd))


def test_method_choice_by_size():
    assert choose_method(get_problem("linear")) == "closed_form"
    for name in ("lotka_volterra", "robertson", "mlp", "cubic_spiral"):
        assert choose_method(get_problem(name)) == "sensitivity"
    big = get_problem("mlp_fit")
    assert big.y0.size * (1 + big.n_states + big.n_params) > SENSITIVITY_MAX_ENTRIES
    assert choose_method(big) == "adjoint"
    r = reference(get_problem("spiral_fit", batch=2, width=300))  # 4 x (1 + 2 + 1502) > 2000 entries
    assert r.method == "adjoint(DOP853, rtol=1e-12)"


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSODE_CACHE", str(tmp_path))
    monkeypatch.setattr(reference_module, "_CACHE", {})
    return tmp_path / "references"


def _small():
    return Problem(MLPRHS([2, 4, 2], seed=7), y0=[[1.0, 0.0], [0.0, 1.0]], tspan=(0.0, 1.0), saveat=[0.5, 1.0])


def test_disk_cache_hit_and_miss(fresh_cache):
    p = _small()
    first = reference(p)
    assert not first.cached
    entries = list(fresh_cache.glob("*.npz"))
    assert len(entries) == 1 and not list(fresh_cache.glob(".tmp-*"))  # written atomically, no leftovers
    reference_module._CACHE.clear()  # a new process: only the disk has it
    second = reference(p)
    assert second.cached and second.method == first.method and second.time_s == first.time_s
    np.testing.assert_array_equal(second.grad, first.grad)
    np.testing.assert_array_equal(second.ys, first.ys)
    # another problem (params changed) is a miss, as is another requested method
    assert not reference(p.remake(params=p.params * 1.01)).cached
    assert not reference(p, "adjoint").cached
    assert len(list(fresh_cache.glob("*.npz"))) == 3
    assert not reference(p, cache=False).cached  # computing on demand bypasses both caches


def test_disk_cache_version_change_invalidates(fresh_cache, monkeypatch):
    p = _small()
    reference(p)
    reference_module._CACHE.clear()
    monkeypatch.setattr(reference_module, "code_version", lambda: "another-version")
    assert not reference(p).cached


@pytest.mark.parametrize("damage", ["garbage", "truncate", "wrong_shape", "directory"])
def test_disk_cache_corrupt_entry_is_ignored_with_a_warning(fresh_cache, damage):
    p = _small()
    good = reference(p)
    (entry,) = fresh_cache.glob("*.npz")
    if damage == "garbage":
        entry.write_bytes(b"not an npz at all")
    elif damage == "truncate":
        entry.write_bytes(entry.read_bytes()[:200])
    elif damage == "wrong_shape":
        with np.load(entry) as z:
            parts = dict(z)
        parts["dy0"] = np.zeros(7)
        np.savez(entry, **parts)
    else:
        entry.unlink()
        entry.mkdir()
    reference_module._CACHE.clear()
    with pytest.warns(RuntimeWarning, match="reference cache"):
        again = reference(p)
    assert not again.cached
    np.testing.assert_allclose(again.grad, good.grad, rtol=1e-15)
    if damage != "directory":  # the recomputed entry replaced the corrupt one
        reference_module._CACHE.clear()
        assert reference(p).cached


def test_disk_cache_disabled_and_unwritable(tmp_path, monkeypatch):
    monkeypatch.setattr(reference_module, "_CACHE", {})
    monkeypatch.setenv("CROSSODE_CACHE", "off")
    assert cache_dir() is None
    reference(_small())
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where the cache directory should be: writing fails, with a warning only
    monkeypatch.setenv("CROSSODE_CACHE", str(blocker))
    reference_module._CACHE.clear()
    with pytest.warns(RuntimeWarning, match="cannot write"):
        r = reference(_small())
    assert np.all(np.isfinite(r.grad))
    monkeypatch.delenv("CROSSODE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "crossode" / "references"


def test_batched_time_gradients_vs_finite_differences():
    p = get_problem("mlp_fit", batch=3, n=2, width=4, depth=1, n_save=2)  # saves at 0.5 and t1 = 1
    r = reference(p)
    h = 1e-6

    def at(t0, t1):
        saveat = p.saveat.copy()
        saveat[-1] = t1
        return reference(p.remake(tspan=(t0, t1), saveat=saveat)).loss

    fd1 = (at(0.0, 1.0 + h) - at(0.0, 1.0 - h)) / (2 * h)
    fd0 = (at(h, 1.0) - at(-h, 1.0)) / (2 * h)
    assert abs(fd1 - r.dt1) < 1e-5 * max(1, abs(fd1))
    assert abs(fd0 - r.dt0) < 1e-5 * max(1, abs(fd0))
