"""Overhead of crossode's JAX backend vs a hand-written ``diffrax.diffeqsolve`` + ``jax.grad`` on the same problem.

Both sides use the same solver, step controller, ``dt0`` (crossode's Hairer value), ``max_steps``, adjoint,
``SaveAt(ts=saveat)`` and loss. Two raw programs per cell: ``raw_same`` uses crossode's generated vector field
(isolates the backend's wrapping: ``throw=False`` + status/stat outputs, packing, NumPy conversion, checks) and
``raw_hand`` a hand-written one (``A @ y`` instead of the expanded SymPy sum, etc.: adds the code-generation
difference). Reported per cell: steady-state time of ``Prepared.gradient()`` against
``jax.block_until_ready(jitted_grad(y0, p))``, median and minimum over interleaved batches (the machine is shared:
the minimum is the less noisy statistic), their ratios (target <= 1.10), and the largest gradient difference
(0 expected against ``raw_same``: the same arithmetic).

Run: ``OMP_NUM_THREADS=1 python comparisons/jax_overhead.py`` (writes ``comparisons/results/jax_overhead.json``).
"""

from __future__ import annotations

import gc
import json
import os
import pathlib
import platform
import statistics
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import crossode as cx  # noqa: E402
from crossode.backends.jax import DiffraxBackend  # noqa: E402  (enables float64)
from crossode._stepping import error_order  # noqa: E402
from crossode.backends.jax._control import make_landing_controller  # noqa: E402
from crossode.backends.jax._field import make_vector_field  # noqa: E402
from crossode.problems import get_problem  # noqa: E402

import diffrax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

RESULTS = pathlib.Path(__file__).parent / "results" / "jax_overhead.json"


# -------------------------------------------------------------------------------- hand-written vector fields


def lv_field(t, y, p):
    a, b, c, d = p[0], p[1], p[2], p[3]
    return jnp.stack([a * y[0] - b * y[0] * y[1], -c * y[1] + d * y[0] * y[1]])


def linear_field(n):
    return lambda t, y, p: p.reshape(n, n) @ y


def mlp_field(shapes):
    def f(t, y, p):
        k, h = 0, y
        for layer, (o, i) in enumerate(shapes):
            w = p[k : k + o * i].reshape(o, i)
            k += o * i
            b = p[k : k + o]
            k += o
            h = w @ h + b
            if layer < len(shapes) - 1:
                h = jnp.tanh(h)
        return h

    return f


def raw_grad_fn(problem, field, solver, dsolver, step, adjoint, dt0, max_steps):
    """The hand-written program a Diffrax user would write (same settings as crossode's cell)."""
    t0, t1 = problem.tspan
    saveat = diffrax.SaveAt(ts=jnp.asarray(problem.saveat))
    if isinstance(step, cx.Fixed):
        controller = diffrax.StepTo(ts=jnp.asarray(cx.fixed_grid(t0, t1, step.dt, problem.saveat)))
        dt0 = None
    else:
        # crossode's controller (PyTorch's step control as a Diffrax controller, landing on every save time): the
        # same steps as the backend, so the timings compare the same work
        controller = make_landing_controller(step.rtol, step.atol, t0, t1, problem.saveat, error_order(solver))
    term = diffrax.ODETerm(field)

    def loss(y0, p):
        sol = diffrax.diffeqsolve(term, dsolver, t0, t1, dt0, y0, args=p, saveat=saveat,
                                  stepsize_controller=controller, adjoint=adjoint, max_steps=max_steps)
        return 0.5 * jnp.sum(sol.ys * sol.ys)

    return jax.jit(jax.grad(loss, argnums=(0, 1)))


def cells():
    lv = get_problem("lotka_volterra", t1=10.0)
    lin = get_problem("linear", n=10, t1=2.0)
    mlp = get_problem("mlp", n=4, width=32, depth=2, t1=1.0)
    ms = 4096
    yield ("lotka_volterra", lv, lv_field, cx.Tsit5(), diffrax.Tsit5(), cx.Direct(),
           cx.Adaptive(rtol=1e-8, atol=1e-8, max_steps=ms), diffrax.RecursiveCheckpointAdjoint())
    yield ("linear10", lin, linear_field(10), cx.Dopri5(), diffrax.Dopri5(), cx.Checkpointed(),
           cx.Adaptive(rtol=1e-6, atol=1e-6, max_steps=ms), diffrax.RecursiveCheckpointAdjoint(checkpoints=None))
    yield ("lotka_volterra", lv, lv_field, cx.Heun(), diffrax.Heun(), cx.Direct(), cx.Fixed(dt=0.01),
           "rca_full")
    yield ("mlp_4_32x2", mlp, mlp_field(mlp.rhs.shapes), cx.Tsit5(), diffrax.Tsit5(), cx.Backsolve(),
           cx.Adaptive(rtol=1e-6, atol=1e-6, max_steps=ms), "backend")


def timed(fn, n):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main(repeats: int = 300, min_seconds: float = 3.0):
    backend = DiffraxBackend(count_nfe=False)
    rows = []
    for name, problem, field, solver, dsolver, sens, step, adjoint in cells():
        prepared = backend.prepare(problem, solver, sens, step)
        max_steps = prepared.max_steps
        if adjoint == "rca_full":
            adjoint = diffrax.RecursiveCheckpointAdjoint(checkpoints=max_steps)
        elif adjoint == "backend":  # the backend's own adjoint object (BacksolveAdjoint with its settings)
            adjoint = prepared.adjoint
        dt0 = prepared.dt0 if prepared.dt0 is not None else None
        raw = raw_grad_fn(problem, field, solver, dsolver, step, adjoint, dt0, max_steps)
        raw_same = raw_grad_fn(problem, make_vector_field(problem), solver, dsolver, step, adjoint, dt0, max_steps)
        y0, p = jnp.asarray(problem.y0), jnp.asarray(problem.params)
        t = time.perf_counter()
        jax.block_until_ready(raw(y0, p))
        raw_first = time.perf_counter() - t
        jax.block_until_ready(raw_same(y0, p))
        g = prepared.gradient()

        def gdiff(fn):
            rdy0, rdp = (np.asarray(x) for x in fn(y0, p))
            return float(max(np.max(np.abs(g.dparams - rdp)), np.max(np.abs(g.dy0 - rdy0))))

        diff, diff_same = gdiff(raw), gdiff(raw_same)
        scale = float(max(np.max(np.abs(g.dparams)), np.max(np.abs(g.dy0))))

        def run_cx():
            prepared.gradient()

        def run_raw():
            jax.block_until_ready(raw(y0, p))

        def run_same():
            jax.block_until_ready(raw_same(y0, p))

        # pick a batch size so that each side gets >= min_seconds in total; interleave to share machine noise
        single = min(timed(run_raw, 5))
        n = max(repeats, int(min_seconds / max(single, 1e-6)))
        batches = 20
        tc, tr, ts = [], [], []
        gc.disable()
        try:
            for _ in range(batches):
                tc += timed(run_cx, n // batches)
                ts += timed(run_same, n // batches)
                tr += timed(run_raw, n // batches)
        finally:
            gc.enable()
        row = {
            "problem": name, "solver": solver.name, "sensitivity": sens.name, "step": step.label,
            "max_steps": max_steps, "checkpoints": prepared.checkpoints, "dt0": prepared.dt0,
            "steps_accepted": g.stats.steps_accepted, "steps_rejected": g.stats.steps_rejected,
            "nfe_forward": g.stats.nfe_forward, "nfe_backward": g.stats.nfe_backward,
            "crossode_median_s": statistics.median(tc), "crossode_min_s": min(tc),
            "raw_same_median_s": statistics.median(ts), "raw_same_min_s": min(ts),
            "raw_hand_median_s": statistics.median(tr), "raw_hand_min_s": min(tr),
            "ratio_same_median": statistics.median(tc) / statistics.median(ts), "ratio_same_min": min(tc) / min(ts),
            "ratio_hand_median": statistics.median(tc) / statistics.median(tr), "ratio_hand_min": min(tc) / min(tr),
            "max_abs_grad_diff_same": diff_same, "max_abs_grad_diff_hand": diff, "max_abs_grad": scale,
            "crossode_compile_s": prepared.compile_s, "raw_first_call_s": raw_first,
            "xla_temp_bytes": prepared.peak_memory()[0], "repeats": len(tc),
        }
        rows.append(row)
        print(f"{name:15s} {solver.name:7s} {sens.name:12s} {step.label:22s} steps={row['steps_accepted']:4d} "
              f"cx={row['crossode_min_s'] * 1e3:.3f}ms same={row['raw_same_min_s'] * 1e3:.3f}ms "
              f"hand={row['raw_hand_min_s'] * 1e3:.3f}ms ratio_same(min/med)={row['ratio_same_min']:.3f}/"
              f"{row['ratio_same_median']:.3f} ratio_hand(min/med)={row['ratio_hand_min']:.3f}/"
              f"{row['ratio_hand_median']:.3f} dgrad same/hand={diff_same:.1e}/{diff:.1e}", flush=True)
    import jaxlib

    env = {"python": platform.python_version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
           "diffrax": diffrax.__version__, "numpy": np.__version__, "platform": platform.platform(),
           "cpu_count": os.cpu_count(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
           "device": str(jax.devices()[0])}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"environment": env, "cells": rows}, indent=2))
    print(f"\nwrote {RESULTS}")
    print("\n| problem | solver | sensitivity | step | steps | crossode ms min (med) | raw same-field ms min (med) "
          "| raw hand ms min (med) | ratio vs same min (med) | ratio vs hand min (med) | max abs dgrad same / hand |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['problem']} | {r['solver']} | {r['sensitivity']} | {r['step']} | {r['steps_accepted']} | "
              f"{r['crossode_min_s'] * 1e3:.3f} ({r['crossode_median_s'] * 1e3:.3f}) | "
              f"{r['raw_same_min_s'] * 1e3:.3f} ({r['raw_same_median_s'] * 1e3:.3f}) | "
              f"{r['raw_hand_min_s'] * 1e3:.3f} ({r['raw_hand_median_s'] * 1e3:.3f}) | "
              f"{r['ratio_same_min']:.3f} ({r['ratio_same_median']:.3f}) | "
              f"{r['ratio_hand_min']:.3f} ({r['ratio_hand_median']:.3f}) | "
              f"{r['max_abs_grad_diff_same']:.1e} / {r['max_abs_grad_diff_hand']:.1e} |")


if __name__ == "__main__":
    main()
