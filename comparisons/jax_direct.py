"""Which Diffrax adjoint should crossode's JAX ``Direct`` be? (issue 14 §3)

Contenders, each a hand-written ``diffrax.diffeqsolve`` + ``jax.value_and_grad`` with crossode's vector field,
step controller (``_control.LandingController``), ``dt0`` (crossode's Hairer value), ``SaveAt(ts=saveat)`` and
``max_steps``, so all of them compute the same discrete gradient:

- ``rca_max_steps``: ``RecursiveCheckpointAdjoint(checkpoints=max_steps)``, the old mapping (a checkpoint slot for
  every step that *could* be taken);
- ``rca_default``: ``RecursiveCheckpointAdjoint()``, what a Diffrax user writes (Equinox's default
  ``floor(-1.5 + sqrt(2 max_steps + 0.25)) + 1`` checkpoints: every step stored while the solve takes no more
  steps than that, binomial recomputation beyond);
- ``direct_adjoint``: ``DirectAdjoint()``.

Per cell and contender: steps taken, XLA temporary memory of the compiled value-and-grad program
(``memory_analysis().temp_size_in_bytes``), lower + compile time, gradient time (min and median over interleaved
batches: every batch runs every contender in turn, so machine noise is shared), primal vector-field evaluations
during one value-and-grad call (counted with ``jax.debug.callback`` in a separately compiled copy), and the largest
gradient difference to ``rca_max_steps`` relative to the largest gradient entry. Cells: the zoo ``mlp`` (2-32-2
tanh, T = 1) at crossode's default ``max_steps`` (100000) and at Diffrax's (4096); a wide MLP 16-256-256-16 tanh
(weights scaled x4 for non-trivial dynamics) at T = 64 (~300 steps, fewer than RCA's 446 default checkpoints at
max_steps 100000) and T = 256 (~1200 steps, more than that: RCA recomputes).

Run: ``OMP_NUM_THREADS=1 python comparisons/jax_direct.py [--quick]`` (writes
``comparisons/results/jax_direct.json`` and prints a markdown table; ``--quick``: the zoo cells only).
"""

from __future__ import annotations

import argparse
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
from crossode._rhs import MLPRHS  # noqa: E402
from crossode._stepping import error_order  # noqa: E402
from crossode.backends.jax._control import make_landing_controller  # noqa: E402
from crossode.backends.jax._field import make_vector_field  # noqa: E402

import diffrax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

RESULTS = pathlib.Path(__file__).parent / "results" / "jax_direct.json"

CONTENDERS = {
    "rca_max_steps": lambda max_steps: diffrax.RecursiveCheckpointAdjoint(checkpoints=max_steps),
    "rca_default": lambda max_steps: diffrax.RecursiveCheckpointAdjoint(),
    "direct_adjoint": lambda max_steps: diffrax.DirectAdjoint(),
}


def cells(quick: bool):
    zoo = cx.get_problem("mlp")
    yield "mlp 2-32-2, T=1", zoo, 100_000
    yield "mlp 2-32-2, T=1", zoo, 4096
    if quick:
        return
    y0 = np.random.default_rng(0).uniform(-1.0, 1.0, 16)
    rhs = MLPRHS([16, 256, 256, 16], "tanh", seed=0, scale=4.0)
    for t1 in (64.0, 256.0):
        yield f"mlp 16-256-256-16, T={t1:g}", cx.Problem(rhs, y0=y0, tspan=(0.0, t1), saveat=[t1], name="wide"), \
            100_000


def program(problem, field, dt0, rtol, max_steps, adjoint):
    """``(y0, p) -> (loss, (dy0, dp), num_steps)`` for one adjoint, crossode's settings otherwise."""
    t0, t1 = problem.tspan
    controller = make_landing_controller(rtol, rtol, t0, t1, problem.saveat, error_order(cx.Tsit5()))
    saveat = diffrax.SaveAt(ts=jnp.asarray(problem.saveat))

    def loss(y0, p):
        sol = diffrax.diffeqsolve(diffrax.ODETerm(field), diffrax.Tsit5(), t0, t1, dt0, y0, args=p, saveat=saveat,
                                  stepsize_controller=controller, adjoint=adjoint, max_steps=max_steps,
                                  throw=False)
        return 0.5 * jnp.sum(sol.ys * sol.ys), sol.stats["num_steps"]

    def grad(y0, p):
        (value, steps), g = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(y0, p)
        return value, g, steps

    return grad


def main(quick: bool = False, rtol: float = 1e-6, batches: int = 20, min_seconds: float = 4.0):
    rows = []
    for name, problem, max_steps in cells(quick):
        field = make_vector_field(problem)
        prepared = DiffraxBackend(aot=False, count_nfe=False).prepare(
            problem, cx.Tsit5(), cx.Direct(), cx.Adaptive(rtol=rtol, atol=rtol, max_steps=max_steps))
        dt0 = prepared.dt0
        y0, p = jnp.asarray(problem.y0), jnp.asarray(problem.params)
        compiled, info = {}, {}
        for key, make in CONTENDERS.items():
            fn = jax.jit(program(problem, field, dt0, rtol, max_steps, make(max_steps)))
            t = time.perf_counter()
            lowered = fn.lower(y0, p)
            t_lower = time.perf_counter() - t
            c = lowered.compile()
            t_compile = time.perf_counter() - t - t_lower
            value, (gy0, gp), steps = jax.block_until_ready(c(y0, p))
            counter = [0]

            def counting(t, y, args, _c=counter):
                jax.debug.callback(lambda _t: _c.__setitem__(0, _c[0] + 1), t)
                return field(t, y, args)

            jax.block_until_ready(jax.jit(program(problem, counting, dt0, rtol, max_steps, make(max_steps)))(y0, p))
            jax.effects_barrier()
            compiled[key] = c
            info[key] = dict(grad=np.r_[np.asarray(gp), np.asarray(gy0)], steps=int(steps),
                             temp=int(c.memory_analysis().temp_size_in_bytes), lower_s=t_lower,
                             compile_s=t_compile, evals=counter[0])
        g_ref = info["rca_max_steps"]["grad"]

        def once(c):
            t = time.perf_counter()
            jax.block_until_ready(c(y0, p))
            return time.perf_counter() - t

        single = min(once(c) for c in compiled.values())
        per_batch = max(1, int(min_seconds / batches / max(single, 1e-6)))
        times = {k: [] for k in compiled}
        gc.disable()
        try:
            for _ in range(batches):
                for key, c in compiled.items():
                    times[key] += [once(c) for _ in range(per_batch)]
        finally:
            gc.enable()
        base = info["rca_max_steps"]
        for key, d in info.items():
            row = {
                "cell": name, "max_steps": max_steps, "adjoint": key, "steps": d["steps"],
                "default_checkpoints": int(np.floor(-1.5 + np.sqrt(2 * max_steps + 0.25))) + 1,
                "xla_temp_bytes": d["temp"], "lower_s": d["lower_s"], "compile_s": d["compile_s"],
                "grad_min_s": min(times[key]), "grad_median_s": statistics.median(times[key]),
                "repeats": len(times[key]), "primal_evals_per_grad": d["evals"],
                "max_rel_grad_diff_vs_rca_max_steps": float(np.max(np.abs(d["grad"] - g_ref)) / np.max(np.abs(g_ref))),
            }
            row["time_ratio_min_vs_rca_max_steps"] = row["grad_min_s"] / min(times["rca_max_steps"])
            row["temp_ratio_vs_rca_max_steps"] = d["temp"] / base["temp"]
            rows.append(row)
            print(f"{name:28s} max_steps={max_steps:6d} {key:15s} steps={d['steps']:5d} temp={d['temp'] / 1e6:9.3f} MB "
                  f"compile={d['compile_s']:.2f}s grad min/med={row['grad_min_s'] * 1e3:.3f}/"
                  f"{row['grad_median_s'] * 1e3:.3f} ms evals={d['evals']} dgrad={row['max_rel_grad_diff_vs_rca_max_steps']:.1e}",
                  flush=True)
    import jaxlib

    env = {"python": platform.python_version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
           "diffrax": diffrax.__version__, "numpy": np.__version__, "platform": platform.platform(),
           "cpu_count": os.cpu_count(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
           "device": str(jax.devices()[0]), "rtol": rtol, "solver": "tsit5"}
    if not quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps({"environment": env, "rows": rows}, indent=2))
        print(f"\nwrote {RESULTS}")
    print("\n| cell | max_steps | adjoint | steps | XLA temp MB | compile s | grad ms min (median) | time / old "
          "| temp / old | primal evals per grad | max rel. grad diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['cell']} | {r['max_steps']} | `{r['adjoint']}` | {r['steps']} | {r['xla_temp_bytes'] / 1e6:.3f} | "
              f"{r['compile_s']:.2f} | {r['grad_min_s'] * 1e3:.3f} ({r['grad_median_s'] * 1e3:.3f}) | "
              f"{r['time_ratio_min_vs_rca_max_steps']:.2f} | {r['temp_ratio_vs_rca_max_steps']:.3f} | "
              f"{r['primal_evals_per_grad']} | {r['max_rel_grad_diff_vs_rca_max_steps']:.1e} |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the zoo cells only; nothing written")
    main(quick=ap.parse_args().quick)
