"""Which tensors get gradients (``_solve.resolve_params`` / ``check_params_declared``), for every sensitivity.

The rule (odeint's docstring): gradients reach ``y0`` and ``params`` (default: an ``nn.Module``'s parameters, or
the tensors and modules inside a ``functools.partial``). Direct differentiates through anything ``func`` uses;
every other sensitivity either returns the same gradient for every tensor that requires grad and that ``func``
uses, or raises ``InvalidInputError`` naming ``params=[...]``. Never a missing or silently wrong gradient.
"""

from __future__ import annotations

import functools

import pytest

torch = pytest.importorskip("torch")

from crossode import (  # noqa: E402
    ALF,
    MALI,
    Adaptive,
    Backsolve,
    Checkpointed,
    Direct,
    Dopri5,
    Forward,
    InvalidInputError,
    Stats,
)
from crossode._reference import relative_error as rel  # noqa: E402
from crossode.backends.torch import odeint  # noqa: E402

pytestmark = pytest.mark.torch
F64 = torch.float64

# (solver, sensitivity, tolerance against Direct on the same solver): discrete gradients to round-off,
# the continuous adjoint to its tolerance
CASES = [
    (Dopri5(), Checkpointed(), 1e-11),
    (Dopri5(), Backsolve(), 1e-5),
    (Dopri5(), Forward(), 1e-11),
    (ALF(), Checkpointed(), 1e-11),
    (ALF(), MALI(), 1e-11),
]
IDS = ["rk-checkpointed", "rk-backsolve", "rk-forward", "alf-checkpointed", "alf-mali"]
STEP = Adaptive(rtol=1e-5, atol=1e-7)


def weights():
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 4, generator=g, dtype=F64) / 2, torch.randn(4, generator=g, dtype=F64) / 4


def field(t, y, W, b):
    return torch.tanh(y @ W) + b


class Module(torch.nn.Module):
    def __init__(self):
        super().__init__()
        W, b = weights()
        self.W, self.b = torch.nn.Parameter(W), torch.nn.Parameter(b)

    def forward(self, t, y):
        return field(t, y, self.W, self.b)


def y0_(requires_grad):
    y0 = torch.randn(3, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    return y0.requires_grad_(requires_grad)


def run(func, y0, solver, sensitivity, tensors, params=None):
    """Gradient of a fixed loss w.r.t. ``tensors`` (and ``y0`` when it requires grad) through ``odeint``."""
    ys = odeint(func, y0, [0.0, 0.5, 1.0], solver=solver, sensitivity=sensitivity, step=STEP, params=params)
    loss = (ys[1:] ** 2).sum()
    inputs = list(tensors) + ([y0] if y0.requires_grad else [])
    return torch.autograd.grad(loss, inputs, allow_unused=True)


def leaves():
    return [x.requires_grad_() for x in weights()]


def reference(solver, y0_grad):
    """Direct on the same solver (a closure: Direct differentiates through everything func uses)."""
    W, b = leaves()
    return run(lambda t, y: field(t, y, W, b), y0_(y0_grad), solver, Direct(), (W, b))


def check(got, ref, tol):
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert g is not None, "a tensor that requires grad got no gradient"
        assert rel(g, r) < tol


@pytest.mark.parametrize("y0_grad", [True, False], ids=["y0-grad", "y0-nograd"])
@pytest.mark.parametrize("solver,sensitivity,tol", CASES, ids=IDS)
def test_module_parameters(solver, sensitivity, tol, y0_grad):
    m = Module()
    check(run(m, y0_(y0_grad), solver, sensitivity, (m.W, m.b)), reference(solver, y0_grad), tol)


@pytest.mark.parametrize("y0_grad", [True, False], ids=["y0-grad", "y0-nograd"])
@pytest.mark.parametrize("solver,sensitivity,tol", CASES, ids=IDS)
def test_explicit_params_with_closure(solver, sensitivity, tol, y0_grad):
    W, b = leaves()
    got = run(lambda t, y: field(t, y, W, b), y0_(y0_grad), solver, sensitivity, (W, b), params=[W, b])
    check(got, reference(solver, y0_grad), tol)


@pytest.mark.parametrize("y0_grad", [True, False], ids=["y0-grad", "y0-nograd"])
@pytest.mark.parametrize("solver,sensitivity,tol", CASES, ids=IDS)
def test_functools_partial_tensors_are_found(solver, sensitivity, tol, y0_grad):
    W, b = leaves()
    got = run(functools.partial(field, W=W, b=b), y0_(y0_grad), solver, sensitivity, (W, b))
    check(got, reference(solver, y0_grad), tol)


@pytest.mark.parametrize("y0_grad", [True, False], ids=["y0-grad", "y0-nograd"])
@pytest.mark.parametrize("solver,sensitivity,tol", CASES, ids=IDS)
def test_closure_raises_clear_error(solver, sensitivity, tol, y0_grad):
    """The issue's case: before the fix MALI returned |W.grad| ~ 1e-7 instead of ~8, the RK ones None/raw errors."""
    W, b = leaves()
    shapes = r"shapes (\(4, 4\), \(4,\)|\(4,\), \(4, 4\))"
    with pytest.raises(InvalidInputError, match=r"2 tensors that require grad.*" + shapes + r".*params=\[\.\.\.\]"):
        run(lambda t, y: field(t, y, W, b), y0_(y0_grad), solver, sensitivity, (W, b))


@pytest.mark.parametrize("solver", [Dopri5(), ALF()], ids=["rk", "alf"])
def test_closure_is_fine_with_direct(solver):
    W, b = leaves()
    g = run(lambda t, y: field(t, y, W, b), y0_(False), solver, Direct(), (W, b))
    assert all(x is not None and float(x.norm()) > 0 for x in g)


@pytest.mark.parametrize("solver,sensitivity,tol", CASES, ids=IDS)
def test_partly_declared_and_closure_over_module_raise(solver, sensitivity, tol):
    m = Module()
    with pytest.raises(InvalidInputError, match=r"1 tensor that requires grad.*\(4,\)"):
        run(m, y0_(True), solver, sensitivity, (m.W,), params=[m.W])  # m.b is used but not declared
    with pytest.raises(InvalidInputError, match="nn.Module"):
        run(lambda t, y: m(t, y), y0_(True), solver, sensitivity, (m.W, m.b))
    m.b.requires_grad_(False)  # a frozen tensor needs no declaration
    check(run(m, y0_(True), solver, sensitivity, (m.W,), params=[m.W]), reference(solver, True)[:1] +
          reference(solver, True)[2:], 1.0)


@pytest.mark.parametrize("solver,sensitivity,tol", CASES, ids=IDS)
def test_non_leaf_param_and_closure_over_y0(solver, sensitivity, tol):
    """A declared non-leaf tensor (built outside func) passes its gradient on; func using y0 itself is caught."""
    W0, b = leaves()
    W = W0 * 1.0  # non-leaf
    got = run(lambda t, y: field(t, y, W, b), y0_(True), solver, sensitivity, (W0, b), params=[W, b])
    check(got, reference(solver, True), tol)
    y0 = y0_(True)
    with pytest.raises(InvalidInputError, match=r"\(3, 4\)"):
        odeint(lambda t, y: field(t, y, W0, b) + 0 * y0, y0, [0.0, 1.0], solver=solver, sensitivity=sensitivity,
               step=STEP, params=[W0, b])


def test_no_check_without_grad_mode_and_check_is_counted():
    W, b = leaves()
    with torch.no_grad():  # inference: nothing to differentiate, no check, no extra evaluation
        st = Stats()
        odeint(lambda t, y: field(t, y, W, b), y0_(False), [0.0, 1.0], sensitivity=Checkpointed(), step=STEP,
               stats=st)
    st_d, st_c = Stats(), Stats()
    odeint(Module(), y0_(True), [0.0, 1.0], sensitivity=Direct(), step=STEP, stats=st_d)
    odeint(Module(), y0_(True), [0.0, 1.0], sensitivity=Checkpointed(), step=STEP, stats=st_c)
    assert st_c.nfe_forward == st_d.nfe_forward + 1 and st.nfe_forward == st_d.nfe_forward


def test_params_validation():
    W, b = leaves()
    with pytest.raises(InvalidInputError, match="`params`"):
        odeint(Module(), y0_(True), [0.0, 1.0], params=W)
    with pytest.raises(InvalidInputError, match=r"params\[1\]"):
        odeint(Module(), y0_(True), [0.0, 1.0], params=[W, 3.0])


@pytest.mark.parametrize("solver,sensitivity,tol", CASES[2:], ids=IDS[2:])
def test_bound_method_and_nested_partial(solver, sensitivity, tol):
    m = Module()
    check(run(m.forward, y0_(True), solver, sensitivity, (m.W, m.b)), reference(solver, True), tol)
    W, b = leaves()
    inner = functools.partial(field, b=b)
    got = run(functools.partial(lambda t, y, g, W: g(t, y, W), g=inner, W=W), y0_(True), solver, sensitivity, (W, b))
    check(got, reference(solver, True), tol)


# ------------------------------------------------------------------- Direct's backward count without per-eval hooks


def _hooked(func, counter):
    """``func`` whose every output that requires grad counts the VJPs autograd runs through it (the independent
    per-evaluation count the solver no longer pays for)."""

    def f(t, y):
        out = func(t, y)
        if out.requires_grad:
            out.register_hook(lambda g: counter.__setitem__(0, counter[0] + 1))
        return out

    return f


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "tsit5", "dopri8", "heun", "rk4-fixed", "euler-fixed",
                                    "alf", "alf-fixed"])
@pytest.mark.parametrize("used", ["last", "middle", "all"])
def test_direct_backward_count_equals_per_evaluation_hooks(method, used):
    """One hook per solve reports exactly the VJPs per-evaluation hooks see: rejected attempts (tight rtol on a
    stiff-ish start forces some), FSAL last stages and error-only stages excluded, whichever outputs the loss uses."""
    from crossode import RK4, Bosh3, Dopri8, Euler, Fixed, Heun, Tsit5

    solvers = {"dopri5": Dopri5(), "bosh3": Bosh3(), "tsit5": Tsit5(), "dopri8": Dopri8(), "heun": Heun(),
               "rk4-fixed": RK4(), "euler-fixed": Euler(), "alf": ALF(), "alf-fixed": ALF()}
    rtol = 1e-4 if method in ("heun", "alf") else 1e-7
    step = Fixed(0.07) if method.endswith("fixed") else Adaptive(rtol=rtol, atol=rtol / 100, dt0=0.7)
    W, b = weights()
    W = (4 * W).requires_grad_(True)
    func = functools.partial(lambda t, y, W, b: torch.tanh(y @ W) * torch.cos(3 * t) + b, W=W, b=b)
    y0 = y0_(True)
    t = torch.linspace(0.0, 3.0, 5, dtype=F64)
    counter, st = [0], Stats()
    ys = odeint(_hooked(func, counter), y0, t, solver=solvers[method], sensitivity=Direct(), step=step, stats=st)
    if isinstance(step, Adaptive):
        assert st.steps_rejected > 0  # the case the count must exclude is present
    loss = {"last": ys[-1].sum(), "middle": ys[2].pow(2).sum(), "all": ys.pow(2).sum()}[used]
    loss.backward(retain_graph=True)
    assert counter[0] > 0 and st.nfe_backward == counter[0]
    first = counter[0]
    ys[-1].sum().backward()  # a second backward through the same graph counts again, as the hooks do
    assert counter[0] == 2 * first and st.nfe_backward == counter[0]
