"""Shared pieces of the MALI comparison scripts: problems, the one vector field every method uses, the runners.

Every method (crossode and the installed peers TorchDiffEqPack / torchdiffeq) integrates the *same* ``nn.Module``
(same weights), float64, one thread, loss ``L = 1/2 ||y(T)||^2`` (the zoo problems' default ``sum_squares`` loss on
``saveat = [T]``: TorchDiffEqPack's MALI returns the end state only, mali.md §8 item 5). Gradient errors are
relative L2 errors against :func:`crossode.reference` (closed form for ``linear``, forward sensitivities at rtol
1e-12 for ``mlp``).

Counting: :class:`Field` counts its own ``forward`` calls and, through an identity autograd Function on its output,
every backward pass through an evaluation (one VJP of ``f``). Calls made while the forward solve runs are
"forward evaluations"; calls and VJPs while ``backward`` runs are "backward evaluations / VJPs". This is the only
NFE count TorchDiffEqPack allows (its own counters count steps, mali.md §8 item 7). Counting is switched off for the
timed repetitions.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import crossode as co  # noqa: E402
from crossode.torch import odeint as co_odeint  # noqa: E402

torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
os.makedirs(RESULTS, exist_ok=True)


# ------------------------------------------------------------------------------------------------ the field


class _CountVJP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, field):
        ctx.field = field
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        ctx.field.vjps += 1
        return g, None


class Field(torch.nn.Module):
    """Base: ``forward(t, y)`` = ``self.f(y)``, with optional counting of evaluations and VJPs."""

    def __init__(self):
        super().__init__()
        self.counting = False
        self.evals = 0
        self.vjps = 0

    def reset(self):
        self.evals = 0
        self.vjps = 0

    def forward(self, t, y):
        out = self.f(y)
        if self.counting:
            self.evals += 1
            if torch.is_grad_enabled() and out.requires_grad:
                out = _CountVJP.apply(out, self)
        return out


class LinearField(Field):
    """``f(y) = y @ A.T`` (``y`` may carry a batch dimension)."""

    def __init__(self, a: np.ndarray):
        super().__init__()
        self.A = torch.nn.Parameter(torch.tensor(a, dtype=torch.float64))

    def f(self, y):
        return y @ self.A.T

    def flat_grad(self):
        return self.A.grad.detach().reshape(-1).numpy().copy()


class TanhLinearField(Field):
    """``f(y) = tanh(y @ A.T)`` (mali.md §11 memory setup)."""

    def __init__(self, a: np.ndarray):
        super().__init__()
        self.A = torch.nn.Parameter(torch.tensor(a, dtype=torch.float64))

    def f(self, y):
        return torch.tanh(y @ self.A.T)


class MLPField(Field):
    """The zoo ``mlp`` field ``W2 tanh(W1 y + b1) + b2`` with the problem's weights; flat grads in crossode's layout."""

    def __init__(self, rhs: co.MLPRHS, params: np.ndarray):
        super().__init__()
        if rhs.activation != "tanh" or len(rhs.shapes) != 2:
            raise ValueError("only the one-hidden-layer tanh MLP is wired here")
        (h, n), (n2, h2) = rhs.shapes
        p = np.asarray(params, dtype=np.float64)
        i = 0
        w1 = p[i:i + h * n].reshape(h, n); i += h * n  # noqa: E702
        b1 = p[i:i + h]; i += h  # noqa: E702
        w2 = p[i:i + n2 * h2].reshape(n2, h2); i += n2 * h2  # noqa: E702
        b2 = p[i:i + n2]; i += n2  # noqa: E702
        assert i == p.size
        self.l1 = torch.nn.Linear(n, h)
        self.l2 = torch.nn.Linear(h2, n2)
        with torch.no_grad():
            self.l1.weight.copy_(torch.tensor(w1)); self.l1.bias.copy_(torch.tensor(b1))  # noqa: E702
            self.l2.weight.copy_(torch.tensor(w2)); self.l2.bias.copy_(torch.tensor(b2))  # noqa: E702

    def f(self, y):
        return self.l2(torch.tanh(self.l1(y)))

    def flat_grad(self):
        parts = [self.l1.weight, self.l1.bias, self.l2.weight, self.l2.bias]
        return torch.cat([p.grad.detach().reshape(-1) for p in parts]).numpy().copy()


# ------------------------------------------------------------------------------------------------ problems


def make_problem(name: str):
    """``(problem, field)``: the crossode zoo problem (end-time loss only) and the same field as an nn.Module."""
    if name == "linear":
        p = co.get_problem("linear")  # 10x10, A = randn/sqrt(10) - 0.5 I (seed 0), T = 2, saveat [T]
        field = LinearField(p.params.reshape(p.n_states, p.n_states))
    elif name == "mlp":
        p = co.get_problem("mlp")  # 2-32-2 tanh, seed 0, y0 [1, 0], T = 1
        p = p.remake(saveat=[p.t1])
        field = MLPField(p.rhs, p.params)
    else:
        raise ValueError(name)
    assert p.loss.kind == "sum_squares" and list(p.saveat) == [p.t1]
    return p, field


def field_check(problem, field) -> float:
    """Max relative difference between the module and the problem's own RHS at y0 (same-field sanity check)."""
    with torch.no_grad():
        a = field(torch.tensor(0.0), torch.tensor(problem.y0)).numpy()
    b = problem.rhs.f(problem.t0, problem.y0, problem.params)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


# ------------------------------------------------------------------------------------------------ methods

# (label, library, solver, gradient) ; the runner is chosen by label
METHODS = [
    ("crossode ALF+MALI", "crossode", "alf", "mali"),
    ("crossode ALF+Direct", "crossode", "alf", "direct"),
    ("TorchDiffEqPack MALI (sym12async)", "TorchDiffEqPack", "sym12async", "mali"),
    ("crossode dopri5+Direct", "crossode", "dopri5", "direct"),
    ("crossode dopri5+Checkpointed", "crossode", "dopri5", "checkpointed"),
    ("crossode dopri5+Backsolve", "crossode", "dopri5", "backsolve"),
    ("torchdiffeq odeint (dopri5)", "torchdiffeq", "dopri5", "direct"),
    ("torchdiffeq odeint_adjoint (dopri5)", "torchdiffeq", "dopri5", "adjoint"),
]


def _crossode_sens(grad):
    return {"mali": co.MALI(), "direct": co.Direct(), "checkpointed": co.Checkpointed(),
            "backsolve": co.Backsolve()}[grad]


def make_forward(lib, solver, grad, field, y0, t0, t1, rtol, atol, stats_box):
    """A zero-argument function returning ``y(T)`` (with a graph to y0 and the field's parameters)."""
    if lib == "crossode":
        sol = co.ALF() if solver == "alf" else co.Dopri5()
        sens = _crossode_sens(grad)
        step = co.Adaptive(rtol=rtol, atol=atol, max_steps=1_000_000)
        t = torch.tensor([t0, t1], dtype=torch.float64)

        def fwd():
            st = co.Stats()
            stats_box[0] = st
            return co_odeint(field, y0, t, solver=sol, sensitivity=sens, step=step, stats=st)[-1]

        return fwd
    if lib == "torchdiffeq":
        import torchdiffeq

        t = torch.tensor([t0, t1], dtype=torch.float64)
        fn = torchdiffeq.odeint if grad == "direct" else torchdiffeq.odeint_adjoint

        def fwd():
            return fn(field, y0, t, rtol=rtol, atol=atol, method="dopri5")[-1]

        return fwd
    if lib == "TorchDiffEqPack":
        from TorchDiffEqPack import odesolve_adjoint_sym12

        def fwd():
            opts = {"method": "sym12async", "h": None, "t0": t0, "t1": t1, "rtol": rtol, "atol": atol,
                    "print_neval": False, "neval_max": 5e5}
            return odesolve_adjoint_sym12(field, y0, options=opts)

        return fwd
    raise ValueError(lib)


def grads_of(field, y0):
    return field.flat_grad(), y0.grad.detach().reshape(-1).numpy().copy()


def one_gradient(fwd, field, y0):
    """Run forward + backward; returns (loss, dparams, dy0, forward seconds, backward seconds)."""
    field.zero_grad(set_to_none=True)
    y0.grad = None
    t_a = time.perf_counter()
    yT = fwd()
    loss = 0.5 * (yT * yT).sum()
    t_b = time.perf_counter()
    loss.backward()
    t_c = time.perf_counter()
    dp, dy0 = grads_of(field, y0)
    return float(loss.detach()), dp, dy0, t_b - t_a, t_c - t_b


def run_cell(problem, field, method, rtol, atol=None, repeats=3, reference=None):
    """One (method, rtol) cell: a counted run (also the warm-up), then ``repeats`` timed runs. Never raises."""
    label, lib, solver, grad = method
    atol = rtol if atol is None else atol
    ref = reference if reference is not None else co.reference(problem)
    rec = {"problem": problem.name, "method": label, "library": lib, "solver": solver, "gradient": grad,
           "rtol": rtol, "atol": atol, "status": "ok", "message": ""}
    y0 = torch.tensor(problem.y0, dtype=torch.float64, requires_grad=True)
    stats_box = [None]
    fwd = make_forward(lib, solver, grad, field, y0, problem.t0, problem.t1, rtol, atol, stats_box)
    counts = {}

    def counted_fwd():
        field.reset()
        y = fwd()
        counts["fwd_evals"], counts["fwd_vjps"] = field.evals, field.vjps
        field.reset()
        return y

    try:
        field.counting = True
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loss, dp, dy0, _, _ = one_gradient(counted_fwd, field, y0)
        counts["bwd_evals"], counts["bwd_vjps"] = field.evals, field.vjps
    except co.SolverFailure as e:
        rec.update(status=e.status, message=e.message)
        return rec
    except Exception as e:  # noqa: BLE001 - a failure is a status
        rec.update(status="crashed", message=f"{type(e).__name__}: {e}")
        return rec
    finally:
        field.counting = False
    if not (np.isfinite(loss) and np.all(np.isfinite(dp)) and np.all(np.isfinite(dy0))):
        rec.update(status="diverged", message="non-finite loss or gradient")
        return rec
    st = stats_box[0]
    rec.update(
        loss=loss,
        loss_error=abs(loss - ref.loss) / abs(ref.loss),
        grad_error=co.relative_error(np.concatenate([dp, dy0]), ref.grad),
        dparams_error=co.relative_error(dp, ref.dparams),
        dy0_error=co.relative_error(dy0, ref.dy0),
        fwd_evals=counts["fwd_evals"],
        bwd_evals=counts["bwd_evals"],
        bwd_vjps=counts["bwd_vjps"],
        co_nfe_forward=getattr(st, "nfe_forward", None),
        co_nfe_backward=getattr(st, "nfe_backward", None),
        steps_accepted=getattr(st, "steps_accepted", None),
        steps_rejected=getattr(st, "steps_rejected", None),
        grad=np.concatenate([dp, dy0]).tolist(),
    )
    fw, bw, tot = [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(repeats):
            _, _, _, a, b = one_gradient(fwd, field, y0)
            fw.append(a), bw.append(b), tot.append(a + b)
    rec.update(time_forward_s=statistics.median(fw), time_backward_s=statistics.median(bw),
               time_gradient_s=statistics.median(tot), repeats=repeats)
    return rec


def fmt(x, spec=".2e"):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return format(x, spec)
    return str(x)


def machine_info() -> dict:
    import platform

    import TorchDiffEqPack  # noqa: F401
    import torchdiffeq

    return {
        "python": platform.python_version(), "torch": torch.__version__, "torchdiffeq": torchdiffeq.__version__,
        "TorchDiffEqPack": "1.0.1 (PyPI)", "crossode": co.__version__, "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "dtype": "float64", "platform": platform.platform(),
    }
