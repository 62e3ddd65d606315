"""MALI in JAX: a ``jax.custom_vjp`` around the ALF loop with constant-memory reverse reconstruction.

Forward (``lax.while_loop``, no autodiff residuals): one evaluation of ``f`` per step (accepted or rejected).
Stored for the backward pass: the end state ``(z_N, v_N)``, the accepted step times (a ``max_steps + 1``-sized
float64 buffer for adaptive steps, the fixed grid itself for fixed steps), the accepted-step index of each save,
and ``(z0, v0)`` for the drift check. No intermediate states.

Backward (``lax.while_loop`` over the accepted steps in reverse): per step ONE evaluation ``u = f(s + h/2, k)``
at the step's midpoint ``k = z' - (h/2) v'``, made with ``jax.vjp`` of ``k -> f(s + h/2, k, p)``; its primal
output gives the exact inverse step (``v = (v' - 2 eta u) / (1 - 2 eta)``, ``z = k - (h/2) v``) and its VJP the
step's chain rule, written out by hand as in the PyTorch backend (``crossode/backends/torch/_mali.py``): 1
evaluation + 1 VJP per step. The cotangent of each saved state is injected into the ``z``-adjoint when the sweep
reaches its step. The gradient through ``v0 = f(t0, z0)`` is ordinary autodiff outside the custom VJP.

Status reporting from inside a VJP: the custom VJP takes a dummy input ``probe`` (zeros, length
:data:`PROBE_SIZE`) that does not affect the output; its "cotangent" carries to the host the six mean squares of
``(z0_rec - z0, z0, z_N, v0_rec - v0, v0, v_N)`` and the backward evaluation count. The backend passes the mean
squares to :func:`crossode._sensitivity.mali_reconstruction`, the rule the PyTorch backend uses too, and raises
status ``reconstruction_error`` when the drift exceeds its limit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._alf import ALFConfig, alf_loop

__all__ = ["make_mali_solve", "PROBE_SIZE"]

PROBE_SIZE = 7  # six mean squares for the reconstruction test + backward evaluations


def make_mali_solve(f, cfg: ALFConfig):
    """``solve(z0, v0, p, probe) -> (ys, info)`` with MALI's VJP; ``info = [code, n_acc, n_rej]`` (float64)."""
    eta = cfg.eta

    def _forward(z0, v0, p):
        r = alf_loop(f, cfg, z0, v0, p, kind="lax", record_times=True)
        info = jnp.stack([r.code, r.n_acc, r.n_rej]).astype(z0.dtype)
        return r, info

    @jax.custom_vjp
    def solve(z0, v0, p, probe):
        r, info = _forward(z0, v0, p)
        return r.ys, info

    def fwd(z0, v0, p, probe):
        r, info = _forward(z0, v0, p)
        res = (r.z, r.v, r.ts, r.save_steps, r.n_acc, p, z0, v0)
        return (r.ys, info), res

    def bwd(res, cts):
        zN, vN, ts, save_steps, n_acc, p, z0, v0 = res
        ys_bar, _ = cts
        n_save = ys_bar.shape[0]
        dtype = zN.dtype

        def inject(k, j, az):
            hit = (j >= 0) & (save_steps[jnp.maximum(j, 0)] == k)
            az = az + jnp.where(hit, ys_bar[jnp.maximum(j, 0)], 0.0)
            return jnp.where(hit, j - 1, j), az

        j0, az0 = inject(n_acc, jnp.asarray(n_save - 1, jnp.int32), jnp.zeros_like(zN))
        init = (n_acc, zN, vN, az0, jnp.zeros_like(vN), jnp.zeros_like(p), j0)

        def cond(c):
            return c[0] > 0

        two_eta, one_m = 2.0 * eta, 1.0 - 2.0 * eta

        def body(c):
            k, z, v, az, av, ap, j = c
            s, s1 = ts[k - 1], ts[k]
            h = s1 - s
            half = 0.5 * h
            # ONE evaluation of f, at the step's midpoint k = z' - (h/2) v' (the forward's k, up to round-off),
            # with its VJP: u serves both the exact inverse and the chain rule of the step
            kmid = z - half * v
            u, vjp_u = jax.vjp(lambda k_, p_: f(s + half, k_, p_), kmid, p)
            # inverse (Algorithm 3, as alf_inverse): v = (v' - 2 eta u) / (1 - 2 eta), z = k - (h/2) v
            vp = (v - two_eta * u) / one_m
            zp = kmid - half * vp
            # VJP of z' = k + (h/2) v', v' = (1 - 2 eta) v + 2 eta u, u = f(k), k = z + (h/2) v
            b = av + half * az  # total cotangent of v'
            gk, dp = vjp_u(two_eta * b)
            ak = az + gk
            az, av = ak, one_m * b + half * ak
            k = k - 1
            j, az = inject(k, j, az)
            return k, zp, vp, az, av, ap + dp, j

        _, z0r, v0r, az, av, ap, _ = jax.lax.while_loop(cond, body, init)
        means = [jnp.mean(jnp.square(x)) for x in (z0r - z0, z0, zN, v0r - v0, v0, vN)]
        probe_bar = jnp.stack([*means, 2.0 * n_acc.astype(dtype)])
        return az, av, ap, probe_bar

    solve.defvjp(fwd, bwd)
    return solve
