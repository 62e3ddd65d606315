"""A small third-party backend for the registry tests, loaded only through the ``crossode.backends`` entry point.

Explicit Euler in NumPy with discrete forward sensitivities ``S_{n+1} = S_n + h (J_y S_n + [J_p, 0])``: the exact
gradient of the computed Euler solution (discretise-then-optimise), from the neutral problem's exact Jacobians.
Fixed steps on :func:`crossode.fixed_grid`, CPU, float64; anything else is unsupported with a reason.
"""

import numpy as np

import crossode
from crossode import Direct, Euler, Fixed, Forward, GradientOutput, SolveOutput, SolverFailure, Stats
from crossode._backend import Prepared

IMPORTED = True


class _Prepared(Prepared):
    def __init__(self, problem, step):
        self.problem = problem
        self.grid = crossode.fixed_grid(problem.t0, problem.t1, step.dt, problem.saveat)

    def _run(self, sensitivities: bool):
        pr = self.problem
        rhs, p = pr.rhs, pr.params
        n, m = pr.n_states, pr.n_params
        y = pr.y0.copy()
        s = np.hstack([np.zeros((n, m)), np.eye(n)])
        saves = {float(t): k for k, t in enumerate(pr.saveat)}
        ys = np.zeros((len(pr.saveat), n))
        ss = np.zeros((len(pr.saveat), n, m + n))
        nfe = 0
        if pr.t0 in saves:
            ys[saves[pr.t0]], ss[saves[pr.t0]] = y, s
        for t, t_next in zip(self.grid[:-1], self.grid[1:]):
            h = t_next - t
            f = rhs.f(t, y, p)
            nfe += 1
            if sensitivities:
                ds = rhs.jac_y(t, y, p) @ s
                ds[:, :m] += rhs.jac_p(t, y, p)
                s = s + h * ds
            y = y + h * f
            if not np.all(np.isfinite(y)):
                raise SolverFailure("diverged", f"non-finite state at t={t_next:g}")
            if float(t_next) in saves:
                ys[saves[float(t_next)]], ss[saves[float(t_next)]] = y, s
        return ys, ss, nfe

    def solve(self):
        ys, _, nfe = self._run(False)
        return SolveOutput(ys, Stats(nfe_forward=nfe, steps_accepted=len(self.grid) - 1, steps_rejected=0))

    def gradient(self):
        ys, ss, nfe = self._run(True)
        g = self.problem.loss.cotangent(ys)
        grad = np.einsum("ki,kij->j", g, ss)
        m = self.problem.n_params
        stats = Stats(nfe_forward=nfe, nfe_backward=0, steps_accepted=len(self.grid) - 1, steps_rejected=0)
        return GradientOutput(self.problem.loss.value(ys), grad[:m], grad[m:], stats)


class ToyBackend:
    """Backend protocol: explicit Euler + Direct/Forward, fixed steps, CPU."""

    name = "toy"

    def versions(self):
        return {"numpy": np.__version__}

    def devices(self):
        return ["cpu"]

    def supports(self, problem, solver, sensitivity, step, device="cpu"):
        if device != "cpu":
            return f"the toy backend runs on the CPU only; got device={device!r}"
        if not isinstance(solver, Euler):
            return f"the toy backend implements Euler only; got {solver.name}"
        if not isinstance(sensitivity, (Direct, Forward)):
            return f"the toy backend differentiates with Direct or Forward only; got {sensitivity.name}"
        if not isinstance(step, Fixed):
            return "the toy backend needs Fixed(dt) steps"
        return None

    def prepare(self, problem, solver, sensitivity, step, *, device="cpu", dtype="float64"):
        reason = self.supports(problem, solver, sensitivity, step, device)
        if reason:
            raise crossode.UnsupportedError(reason)
        return _Prepared(problem, step)


class WrongName(ToyBackend):
    """Registered under another name than it declares."""

    name = "something_else"


class SlowDevices(ToyBackend):
    """Its ``devices()`` hangs (a GPU initialisation that never returns): ``crossode info --devices`` must not."""

    name = "slowdev"

    def devices(self):
        import time

        time.sleep(120)
        return ["cpu"]
