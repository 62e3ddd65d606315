"""The PyTorch contenders of the scale benchmark: crossode's ``odeint`` against torchdiffeq, torchode and
TorchDiffEqPack, on the same ``nn.Module`` vector field (same weights, same arithmetic).

Every contender integrates :func:`crossode.backends.torch.make_vector_field` (the problem's MLP as an ``nn.Module``
whose one parameter is the flat parameter vector; torchode gets the same MLP written for its per-sample times),
wrapped in the counting module of ``crossode check`` (one Python call per evaluation, for every contender alike),
from ``t0`` to ``T`` with ``rtol = atol`` as the cell says, and takes the gradient of the problem's own loss
(:meth:`crossode.Loss.apply` on ``y(T)``) w.r.t. the flat parameters and ``y0`` with ``torch.autograd.grad``, then
copies it to float64 NumPy. Methods, matched by what they compute:

- ``direct`` (backprop through the solver): crossode ``Dopri5() + Direct()``; torchdiffeq ``odeint(method="dopri5")``;
  torchode ``Dopri5`` + ``IntegralController`` (the I-controller torchdiffeq and crossode use) + ``AutoDiffAdjoint``.
  torchode steps every sample of the batch with its own step size (its design), the others the whole batch at once.
- ``backsolve`` (continuous adjoint, error control over the whole augmented state in both): crossode
  ``Dopri5() + Backsolve()``; torchdiffeq ``odeint_adjoint(method="dopri5")``.
- ``mali`` (reversible ALF): crossode ``ALF() + MALI()``; TorchDiffEqPack ``odesolve_adjoint_sym12`` with
  ``sym12async`` (the options of ``comparisons/mali/_common.py``).
- ``alf-direct`` (memory cell only): crossode ``ALF() + Direct()``, backprop through the same ALF steps as MALI.

torchode's ``BacksolveAdjoint`` is left out: it integrates a per-sample copy of every parameter adjoint,
``(batch, n_params)`` (400 MB in float32 at batch 4096 with 25k parameters), so it is not the same method as a
batched adjoint.
"""

from __future__ import annotations

import importlib.util
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import crossode as co  # noqa: E402
from crossode.backends.torch import make_vector_field  # noqa: E402
from crossode.check._torch import _Counting  # noqa: E402
from crossode.torch import odeint as co_odeint  # noqa: E402

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

MODULES = {"torchdiffeq": "torchdiffeq", "torchode": "torchode", "TorchDiffEqPack": "TorchDiffEqPack"}
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def missing(library: str) -> str | None:
    """Why ``library`` cannot run here, or ``None``."""
    mod = MODULES.get(library)
    if mod is not None and importlib.util.find_spec(mod) is None:
        return f"{library} is not installed here"
    return None


def versions() -> dict:
    out = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    for lib, mod in MODULES.items():
        if importlib.util.find_spec(mod) is not None:
            m = __import__(mod)
            out[lib] = getattr(m, "__version__", "?") if lib != "TorchDiffEqPack" else "1.0.1 (PyPI)"
    return out


class _PerSampleTime(torch.nn.Module):
    """The problem's MLP for torchode, whose ``t`` holds one time per sample: ``W1 [y, t_i] + b1`` row by row."""

    def __init__(self, field: torch.nn.Module):
        super().__init__()
        self.field = field
        self.rhs = field.problem.rhs
        if self.rhs.features != "identity" or self.rhs.activation != "tanh":
            raise ValueError("only tanh MLPs with identity features are wired for torchode here")

    def forward(self, t, y):
        layers = self.rhs.unflatten(self.field.params)
        n = self.rhs.n_states
        w, b = layers[0]
        h = F.linear(y, w[:, :n], b)
        if self.rhs.time_input:
            h = h + t.to(y.dtype)[:, None] * w[:, n]
        for w, b in layers[1:]:
            h = F.linear(torch.tanh(h), w, b)
        return h


class Contender:
    """One (library, method) on one problem: :meth:`gradient` recomputes everything and returns NumPy results."""

    def __init__(self, key: str, library: str, method: str, label: str, problem, dtype: str, device: str,
                 rtol: float, atol: float, max_steps: int):
        self.key, self.library, self.method, self.label = key, library, method, label
        self.problem = problem
        self.device = torch.device(device)
        self.dtype = _DTYPES[dtype]
        kw = {"dtype": self.dtype, "device": self.device}
        self.field = make_vector_field(problem, dtype=self.dtype, device=self.device)
        inner = _PerSampleTime(self.field) if library == "torchode" else self.field
        self.func = _Counting(inner)
        self.y0 = torch.tensor(problem.y0, **kw).requires_grad_(True)
        data = problem.loss_data
        self.data = None if data is None else torch.tensor(np.ascontiguousarray(data), **kw)
        self.t0, self.t1 = problem.tspan
        self.rtol, self.atol, self.max_steps = rtol, atol, max_steps
        self.stats = None
        self._run = getattr(self, "_run_" + library.lower())

    # -- forward solves: saved states (1, batch, n) ---------------------------------------------------------

    def _run_crossode(self, y0):
        solver, sens = {"direct": (co.Dopri5(), co.Direct()), "backsolve": (co.Dopri5(), co.Backsolve()),
                        "mali": (co.ALF(), co.MALI()), "alf-direct": (co.ALF(), co.Direct())}[self.method]
        self.stats = co.Stats()
        t = torch.tensor([self.t0, self.t1], dtype=torch.float64)
        step = co.Adaptive(rtol=self.rtol, atol=self.atol, max_steps=self.max_steps)
        return co_odeint(self.func, y0, t, solver=solver, sensitivity=sens, step=step, stats=self.stats)[1:]

    def _run_torchdiffeq(self, y0):
        import torchdiffeq

        fn = torchdiffeq.odeint if self.method == "direct" else torchdiffeq.odeint_adjoint
        t = torch.tensor([self.t0, self.t1], dtype=self.dtype, device=self.device)
        return fn(self.func, y0, t, rtol=self.rtol, atol=self.atol, method="dopri5")[1:]

    def _run_torchode(self, y0):
        import torchode as to

        term = to.ODETerm(self.func)
        solver = to.AutoDiffAdjoint(to.Dopri5(term=term), to.IntegralController(atol=self.atol, rtol=self.rtol,
                                                                                term=term), max_steps=self.max_steps)
        t_eval = torch.tensor([self.t0, self.t1], dtype=self.dtype, device=self.device).expand(y0.shape[0], 2)
        sol = solver.solve(to.InitialValueProblem(y0=y0, t_eval=t_eval))
        if bool((sol.status != 0).any()):
            raise co.SolverFailure("solver_error", f"torchode status {sorted(set(sol.status.tolist()))}")
        self.stats = sol.stats
        return sol.ys[:, 1:].transpose(0, 1)

    def _run_torchdiffeqpack(self, y0):
        from TorchDiffEqPack import odesolve_adjoint_sym12

        opts = {"method": "sym12async", "h": None, "t0": self.t0, "t1": self.t1, "rtol": self.rtol,
                "atol": self.atol, "print_neval": False, "neval_max": 5e5}
        return odesolve_adjoint_sym12(self.func, y0, options=opts)[None]

    # -- one gradient ----------------------------------------------------------------------------------------

    def gradient(self):
        """``(loss, dparams, dy0)`` as float64 NumPy (the copy to host included, as in crossode's backend)."""
        ys = self._run(self.y0)
        loss = self.problem.loss.apply(ys, self.data)
        dp, dy0 = torch.autograd.grad(loss, (self.field.params, self.y0))
        return (float(loss.detach()), dp.detach().to("cpu", torch.float64).numpy(),
                dy0.detach().to("cpu", torch.float64).numpy())

    def counted(self):
        """One gradient with its counts: ``f`` calls in the forward solve and in the backward pass, steps."""
        self.func.calls = 0
        ys = self._run(self.y0)
        fwd = self.func.calls
        loss = self.problem.loss.apply(ys, self.data)
        dp, dy0 = torch.autograd.grad(loss, (self.field.params, self.y0))
        info = {"fwd_calls": fwd, "bwd_calls": self.func.calls - fwd}
        st = self.stats
        if isinstance(st, co.Stats):
            info.update(steps=st.steps_accepted, steps_rejected=st.steps_rejected, nfe_forward=st.nfe_forward,
                        nfe_backward=st.nfe_backward)
        elif isinstance(st, dict) and "n_steps" in st:  # torchode: per sample
            info.update(steps=int(st["n_accepted"].max()), steps_mean=float(st["n_accepted"].float().mean()),
                        steps_rejected=int((st["n_steps"] - st["n_accepted"]).max()))
        out = (float(loss.detach()), dp.detach().to("cpu", torch.float64).numpy(),
               dy0.detach().to("cpu", torch.float64).numpy())
        return out, info

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def build(spec, problem, dtype, device, rtol, atol, max_steps) -> Contender:
    return Contender(*spec, problem, dtype, device, rtol, atol, max_steps)
