"""Long horizons and dissipative/chaotic dynamics: crossode MALI vs TorchDiffEqPack MALI (issue 15, "ALF runs out
of steps on Lorenz").

Problems (loss ``1/2 ||y(T)||^2`` on ``saveat = [T]``, because TorchDiffEqPack's MALI returns the end state only):

- ``spiral5`` / ``spiral25``: torchdiffeq's cubic spiral ``y' = A^T y^3``, ``A = [[-0.1, 2], [-2, -0.1]]``,
  ``y0 = [2, 0]``, over ``[0, 5]`` and ``[0, 25]``;
- ``lorenz``: SciMLSensitivity's Lorenz test problem (``test/Core3/adjoint.jl``, sigma 10, rho 28, beta 8/3,
  ``u0 = [1, 0, 0]``, ``[0, 10]``);
- ``tdlv``: SciMLSensitivity's time-dependent Lotka-Volterra (``x' = a x - b x y t``, ``y' = -c y + t d x y``,
  ``(1.5, 1, 3, 1)``, ``[1, 1]``, ``[0, 10]``).

Methods at rtol 1e-6 / atol 1e-8: crossode ALF+MALI (default ``max_steps = 100000``); the same with the previous
ALF step controller (an accepted step never shrinks the next one, ``_alf.ACCEPT_FACTOR_MIN = 1``), to show what
the controller change did; TorchDiffEqPack ``odesolve_adjoint_sym12`` with its default budget ``neval_max = 5e5``
(it counts *steps*; when the budget runs out it jumps to ``t1`` in one uncontrolled step and returns that, mali.md
§8 item 1); crossode dopri5+Checkpointed for scale. Errors: relative L2 against :func:`crossode.reference`
(forward sensitivities, DOP853 at rtol 1e-12).

Run:  OMP_NUM_THREADS=1 .venv/bin/python comparisons/mali/long_horizon.py [--tdep-budget N] [--only NAME,...]
(about 1.5 h, most of it TorchDiffEqPack spending its 5e5-step budget on lorenz and tdlv).
Writes results/long_horizon.{csv,json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from _common import RESULTS, Field, co, co_odeint, fmt, machine_info, one_gradient  # noqa: E402

from crossode.backends.torch import _alf  # noqa: E402

RTOL, ATOL = 1e-6, 1e-8

# name: (states, params, rhs expressions (may use t), y0, T)
SPECS = {
    "spiral5": (["x", "y"], {"a11": -0.1, "a12": 2.0, "a21": -2.0, "a22": -0.1},
                ["a11*x**3 + a21*y**3", "a12*x**3 + a22*y**3"], [2.0, 0.0], 5.0),
    "spiral25": (["x", "y"], {"a11": -0.1, "a12": 2.0, "a21": -2.0, "a22": -0.1},
                 ["a11*x**3 + a21*y**3", "a12*x**3 + a22*y**3"], [2.0, 0.0], 25.0),
    "lorenz": (["x", "y", "z"], {"sigma": 10.0, "rho": 28.0, "beta": 8 / 3},
               ["sigma*(y - x)", "x*(rho - z) - y", "x*y - beta*z"], [1.0, 0.0, 0.0], 10.0),
    "tdlv": (["x", "y"], {"a": 1.5, "b": 1.0, "c": 3.0, "d": 1.0}, ["a*x - b*x*y*t", "-c*y + t*d*x*y"],
             [1.0, 1.0], 10.0),
}


class ProblemField(Field):
    """The problem's right-hand side as an ``nn.Module`` with its parameters as one ``nn.Parameter``."""

    def __init__(self, name, params):
        super().__init__()
        self.name = name
        self.p = torch.nn.Parameter(torch.tensor(list(params.values()), dtype=torch.float64))

    def forward(self, t, y):
        self.t = torch.as_tensor(t, dtype=torch.float64)  # TorchDiffEqPack passes float32 or Python times
        return super().forward(t, y)

    def f(self, u):
        p, t = self.p, self.t
        if self.name == "lorenz":
            x, y, z = u[..., 0], u[..., 1], u[..., 2]
            return torch.stack([p[0] * (y - x), x * (p[1] - z) - y, x * y - p[2] * z], -1)
        if self.name == "tdlv":
            x, y = u[..., 0], u[..., 1]
            return torch.stack([p[0] * x - p[1] * x * y * t, -p[2] * y + t * p[3] * x * y], -1)
        x3, y3 = u[..., 0] ** 3, u[..., 1] ** 3
        return torch.stack([p[0] * x3 + p[2] * y3, p[1] * x3 + p[3] * y3], -1)

    def flat_grad(self):
        return self.p.grad.detach().numpy().copy()


def make(name):
    states, params, rhs, y0, T = SPECS[name]
    problem = co.Problem(co.SymbolicRHS(states, list(params), rhs), y0=y0, params=params, tspan=(0.0, T),
                         saveat=[T], name=name)
    return problem, ProblemField(name, params)


METHODS = ["crossode ALF+MALI", "crossode ALF+MALI, previous controller", "TorchDiffEqPack MALI (sym12async)",
           "crossode dopri5+Checkpointed"]


def forward_fn(method, field, y0, T, budget, box):
    t = torch.tensor([0.0, T], dtype=torch.float64)
    if method.startswith("crossode"):
        solver = co.Dopri5() if "dopri5" in method else co.ALF()
        sens = co.Checkpointed() if "Checkpointed" in method else co.MALI()

        def fwd():
            box["stats"] = co.Stats()
            return co_odeint(field, y0, t, solver=solver, sensitivity=sens, step=co.Adaptive(rtol=RTOL, atol=ATOL),
                             stats=box["stats"])[-1]

        return fwd
    from TorchDiffEqPack import odesolve_adjoint_sym12

    def fwd():
        return odesolve_adjoint_sym12(field, y0, options={"method": "sym12async", "h": None, "t0": 0.0, "t1": T,
                                                          "rtol": RTOL, "atol": ATOL, "neval_max": budget})

    return fwd


def run(name, method, budget, ref):
    problem, field = make(name)
    y0 = torch.tensor(problem.y0, dtype=torch.float64, requires_grad=True)
    box = {}
    fwd = forward_fn(method, field, y0, problem.t1, budget, box)
    rec = {"problem": name, "T": problem.t1, "method": method, "rtol": RTOL, "atol": ATOL, "status": "ok",
           "message": ""}
    counts = {}

    def counted():
        field.reset()
        y = fwd()
        counts["fwd_evals"] = field.evals
        field.reset()
        rec["end_error"] = co.relative_error(y.detach().numpy(), ref.ys[-1])
        return y

    old = _alf.ACCEPT_FACTOR_MIN
    if "previous controller" in method:
        _alf.ACCEPT_FACTOR_MIN = 1.0
    t0 = time.perf_counter()
    field.counting = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, dp, dy0, tf, tb = one_gradient(counted, field, y0)
        rec.update(grad_error=co.relative_error(np.concatenate([dp, dy0]), ref.grad), time_forward_s=tf,
                   time_backward_s=tb)
    except co.SolverFailure as e:
        rec.update(status=e.status, message=e.message)
    finally:
        field.counting = False
        _alf.ACCEPT_FACTOR_MIN = old
    rec["seconds"] = time.perf_counter() - t0
    rec["fwd_evals"] = counts.get("fwd_evals", field.evals)
    st = box.get("stats")
    if st is not None:
        rec.update(steps_accepted=st.steps_accepted, steps_rejected=st.steps_rejected)
    elif method.startswith("TorchDiffEqPack"):
        # 2 evaluations per accepted step (trial + recomputation) + rejections + v0 + initial step: steps >= budget
        # means the budget ran out and the last step jumped to t1 without error control
        rec["steps_accepted"] = None
        rec["budget_exhausted"] = rec["fwd_evals"] >= 2 * budget
        if rec["budget_exhausted"]:
            rec["message"] = (f"neval_max={budget:g} steps spent before t1: the last step jumped to t1 uncontrolled "
                              "and was returned without a warning")
    return rec


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tdep-budget", type=float, default=5e5, help="TorchDiffEqPack neval_max (steps)")
    ap.add_argument("--only", default=",".join(SPECS), help="comma list of problems")
    args = ap.parse_args()
    rows = []
    for name in args.only.split(","):
        problem, _ = make(name)
        ref = co.reference(problem)
        for method in METHODS:
            rec = run(name, method, int(args.tdep_budget), ref)
            rows.append(rec)
            print(json.dumps({k: rec.get(k) for k in ("problem", "method", "status", "steps_accepted",
                                                       "steps_rejected", "fwd_evals", "end_error", "grad_error",
                                                       "seconds")}), flush=True)
    df = pd.DataFrame(rows)
    df.to_csv(os.path.join(RESULTS, "long_horizon.csv"), index=False)
    with open(os.path.join(RESULTS, "long_horizon.json"), "w") as fh:
        json.dump({"machine": machine_info(), "tdep_budget": args.tdep_budget, "rows": rows}, fh, indent=1)
    lines = ["| problem | method | status | accepted / rejected steps (TDEP: forward evaluations) | "
             "end-state error | gradient error | s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        steps = (f"{r['steps_accepted']} / {r['steps_rejected']}" if r.get("steps_accepted") is not None
                 else f"{r['fwd_evals']} evals")
        status = r["status"] + (" (budget exhausted: uncontrolled jump to t1)" if r.get("budget_exhausted") else "")
        lines.append(f"| {r['problem']} | {r['method']} | {status} | {steps} | {fmt(r.get('end_error'))} | "
                     f"{fmt(r.get('grad_error'))} | {r['seconds']:.0f} |")
    notes = [f"- {r['problem']} / {r['method']}: {r['message'][:200]}" for r in rows if r["message"]]
    with open(os.path.join(RESULTS, "long_horizon.md"), "w") as fh:
        fh.write("\n".join(lines + [""] + notes) + "\n")
    print("\n".join(lines + notes))


if __name__ == "__main__":
    main()
