"""``crossode.check`` on PyTorch solvers: good ones pass with the right observed order, broken ones fail with a
reason that names what is wrong; crossode's own RK tableaux show their declared order in the gradient too."""

import json

import numpy as np
import pytest

pytest.importorskip("torch")

import crossode as co  # noqa: E402
from crossode.check import check  # noqa: E402
from crossode.torch import odeint as crossode_odeint  # noqa: E402
from crossode.testing import check_solver  # noqa: E402

pytestmark = pytest.mark.torch

FAST = ["linear", "exponential_decay"]
KS = range(2, 21, 2)  # a coarser Taylor grid keeps these tests at a few seconds


def test_correct_rk4_passes_with_order_4(torch_solvers):
    r = check(torch_solvers.rk4, "torch", order=4, problems=FAST + ["mlp"], builtin=False, taylor_ks=KS)
    assert r.passed, r.table()
    for p in r.problems:
        assert p.status == "pass" and abs(p.gradient.order - 4) < 0.1 and abs(p.taylor.slope - 2) < 0.05
        assert all(c.status == "ok" and c.grad_error < 1e-5 for c in p.cells)
        assert [c.nfe_forward for c in p.cells][1] == 2 * p.cells[0].nfe_forward  # counted through func
        assert p.cells[0].nfe_backward == 0  # autograd: VJPs, no re-evaluation of func


def test_wrong_weight_fails_with_the_order_and_the_method_named(torch_solvers):
    r = check(torch_solvers.rk4_wrong_weight, "torch", order=4, problems=FAST, builtin=False, taylor_ks=KS)
    assert not r.passed
    for p in r.problems:
        assert p.status == "fail" and abs(p.gradient.order - 2) < 0.15
        assert "gradient order 2.0" in p.reason and "expected 4.00" in p.reason
        assert "method itself is of lower order" in p.reason     # the Taylor test is consistent: not the backward
        assert p.taylor.consistent


def test_detached_stage_fails_with_the_taylor_test(torch_solvers):
    r = check(torch_solvers.rk4_detached_stage, "torch", order=4, problems=FAST, builtin=False, taylor_ks=KS)
    for p in r.problems:
        assert p.status == "fail" and abs(p.solution.order - 4) < 0.2   # the forward pass is fine
        assert p.taylor.status == "inconsistent" and abs(p.taylor.slope - 1) < 0.1
        assert abs(p.gradient.order) < 0.1 and "gradient order" in p.reason   # the gradient error stalls
        assert "Taylor test" in p.reason and "slope 1.0" in p.reason and "detached stage" in p.reason


@pytest.mark.parametrize("name, status, words", [
    ("rk4_nan", "diverged", "non-finite states"),
    ("rk4_detached_output", "solver_error", "detached from autograd"),
    ("rk4_final_only", "solver_error", "returned shape (1,), expected (len(t), *y0.shape) = (6, 1)"),
    ("rk4_raises", "crashed", "RuntimeError: step size controller exploded (torch_solvers.py:"),
])
def test_contract_violations_are_statuses(torch_solvers, name, status, words):
    r = check(getattr(torch_solvers, name), "torch", order=4, problems=["exponential_decay"], builtin=False)
    (p,) = r.problems
    assert p.status == "fail" and all(c.status == status for c in p.cells)
    assert words in p.reason and f"{status} at dt=0.1" in r.failures()[0]
    assert "\n" not in p.reason


def test_zero_gradient_for_a_parameter_is_named(torch_solvers):
    def frozen_params(func, y0, t, *, dt=None, rtol=None, atol=None):
        for q in func.parameters():
            q.requires_grad_(False)   # the solver silently cuts the parameters out
        try:
            return torch_solvers.rk4(func, y0, t, dt=dt)
        finally:
            for q in func.parameters():
                q.requires_grad_(True)

    r = check(frozen_params, "torch", order=4, problems=["exponential_decay"], builtin=False)
    assert "the gradient w.r.t. the parameters is None" in r.problems[0].reason


def _crossode(solver, sensitivity=co.Direct()):
    """crossode's own torch odeint in the check contract."""
    def odeint(func, y0, t, *, dt=None, rtol=None, atol=None):
        step = co.Fixed(dt=dt) if dt is not None else co.Adaptive(rtol=rtol, atol=atol)
        return crossode_odeint(func, y0, t, solver=solver, sensitivity=sensitivity, step=step)

    return odeint


OSCILLATOR = co.Problem(co.SymbolicRHS(["x", "y"], ["w", "c"], ["w*y - c*x", "-w*x"]), y0=[1.0, 0.5],
                        params={"w": 10.0, "c": 0.3}, tspan=(0.0, 2.0), name="oscillator")

# (solver, problems, dts, order tolerance): step sizes in each method's asymptotic range with errors above the
# reference's resolution. Dopri8's range is out of reach in float64 (its error constant is tiny: errors go from
# pre-asymptotic to round-off within a factor ~4 of dt), so it gets DiffEqDevTools' tolerance for such methods, 1.
TABLEAUX = [
    (co.Euler(), FAST, [0.1, 0.05, 0.025], 0.3),
    (co.Midpoint(), FAST, [0.1, 0.05, 0.025], 0.3),
    (co.Heun(), FAST, [0.1, 0.05, 0.025], 0.3),
    (co.Bosh3(), FAST, [0.1, 0.05, 0.025], 0.3),
    (co.RK4(), FAST, [0.1, 0.05, 0.025], 0.3),
    (co.Dopri5(), [co.get_problem("linear"), co.get_problem("exponential_decay", k=2.0)],
     [0.0625, 0.03125, 0.015625], 0.3),
    (co.Tsit5(), [co.get_problem("linear")], [0.125, 0.0625, 0.03125], 0.3),
    (co.Dopri8(), [OSCILLATOR], [0.08, 0.04, 0.02], 1.0),
]


@pytest.mark.parametrize("solver, problems, dts, tol", TABLEAUX, ids=[t[0].name for t in TABLEAUX])
def test_crossode_tableaux_show_their_order_in_the_gradient(solver, problems, dts, tol):
    report = check_solver(_crossode(solver), "torch", order=solver.order, problems=problems, dts=dts,
                          order_tolerance=tol, taylor_ks=KS)
    for p in report.problems:
        assert abs(p.gradient.order - solver.order) <= tol and p.taylor.consistent


def test_check_solver_raises_with_the_table(torch_solvers):
    with pytest.raises(AssertionError) as err:
        check_solver(torch_solvers.rk4_wrong_weight, "torch", order=4, problems=["exponential_decay"],
                     taylor_ks=KS)
    text = str(err.value)
    assert "exponential_decay: gradient order 2.0" in text and "per setting" in text and "FAIL" in text


def test_adaptive_dopri5_tracks_rtol_and_inconclusive_problems_do_not_fail():
    """crossode's Dopri5 (adaptive, Direct): the gradient error follows rtol like the solution's; on `mlp` the
    output times bound the steps, so neither error moves with rtol: inconclusive, not failed."""
    r = check(_crossode(co.Dopri5()), "torch", rtols=[1e-4, 1e-6, 1e-8], problems=["exponential_decay", "mlp"],
              builtin=False, taylor_ks=KS)
    by = {p.problem: p for p in r.problems}
    assert by["exponential_decay"].status == "pass", r.table()
    assert by["mlp"].status == "inconclusive" and "neither the solution nor the gradient" in by["mlp"].reason
    assert r.passed and r.failures() == []
    ed = by["exponential_decay"]
    assert ed.gradient.shrinking and abs(ed.gradient.order - ed.solution.order) <= 0.3


def test_builtin_rows_and_outputs(torch_solvers, tmp_path):
    r = check(torch_solvers.rk4, "torch", order=4, problems=["exponential_decay"], dts=[0.1, 0.05],
              taylor_ks=KS, label="my_rk4")
    (p,) = r.problems
    assert p.builtin_solver == "rk4" and [b.status for b in p.builtin] == ["ok", "ok"]
    # the same method on the same grid: crossode's RK4 gradient equals the candidate's to round-off
    for c, b in zip(p.cells, p.builtin):
        assert abs(c.grad_error - b.grad_error) < 1e-12 and b.nfe_forward == c.nfe_forward
    paths = r.write(str(tmp_path / "out"))
    data = json.loads(open(paths["json"]).read())
    assert data["passed"] and data["problems"][0]["gradient_order"]["order"] == pytest.approx(4, abs=0.1)
    records = [json.loads(x) for x in open(paths["records"])]
    assert [x["tags"]["role"] for x in records] == ["candidate", "candidate", "builtin", "builtin"]
    assert all(co.Record.from_dict(x).problem == "exponential_decay" for x in records)
    assert open(paths["figure"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert "my_rk4" in r.table() and "PASS" in r.table()


def test_default_problems_skip_dense_outputs():
    from crossode.check import default_problems

    chosen, skipped = default_problems([0.1, 0.05])
    names = [p.name for p in chosen]
    assert "cubic_spiral" in skipped and "0.0517 apart" in skipped["cubic_spiral"]
    assert "robertson" not in names and "van_der_pol_stiff" not in names and "lotka_volterra" in names
    assert default_problems(None)[1] == {}


def test_named_problem_that_does_not_fit_dt_runs_with_a_note(torch_solvers):
    r = check(torch_solvers.rk4, "torch", order=4, problems=["cubic_spiral"], dts=[0.1, 0.05], builtin=False,
              taylor_ks=KS)
    (p,) = r.problems
    assert all(c.status == "ok" for c in p.cells)
    assert any("does not divide the output intervals" in n for n in p.notes)


def test_bad_arguments(torch_solvers):
    rk4 = torch_solvers.rk4
    for kwargs, match in [
        ({"framework": "tensorflow"}, "framework"),
        ({"dts": [0.1]}, "2 to 12"),
        ({"dts": [0.1, -0.1]}, "positive"),
        ({"dts": [0.1, 0.05], "rtols": [1e-3, 1e-4]}, "not both"),
        ({"problems": ["nope"]}, "Unknown problem"),
        ({"order": 0}, "order"),
        ({"order_tolerance": -1}, "order_tolerance"),
        ({"repeats": 0}, "repeats"),
    ]:
        with pytest.raises(co.InvalidInputError, match=match):
            check(rk4, **{"framework": "torch", **kwargs})
    with pytest.raises(co.InvalidInputError, match="callable"):
        check(None)


def test_adjoint_style_solver_gets_the_parameters():
    """func is an nn.Module whose one parameter is the flat parameter vector: solvers that take
    func.parameters() (torchdiffeq's odeint_adjoint) work unchanged."""
    torchdiffeq = pytest.importorskip("torchdiffeq")

    def adjoint_rk4(func, y0, t, *, dt=None, rtol=None, atol=None):
        return torchdiffeq.odeint_adjoint(func, y0, t, method="rk4", options={"step_size": dt})

    r = check(adjoint_rk4, "torch", order=4, problems=["exponential_decay"], builtin=False, taylor_ks=KS)
    (p,) = r.problems
    assert all(c.status == "ok" for c in p.cells) and p.cells[0].nfe_backward > 0
    assert np.isfinite(p.gradient.order)
