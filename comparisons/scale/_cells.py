"""The cells of the scale benchmark: one base point, scans that vary one axis at a time, and the memory-target cell.

Every cell is the zoo's ``mlp_fit`` problem (a batch of states in R^n, ``y' = MLP([y, t])`` with tanh hidden layers
and a time input, mse loss to a damped linear oscillator's trajectories) with ``n_save = 1``: the loss is on
``y(T)`` only, because TorchDiffEqPack's MALI returns the end state only (``comparisons/mali``; mali.md §8 item 5).
Step control for every contender: ``rtol = atol = 1e-5``, ``max_steps = 4096`` (Diffrax's default, so the JAX
checkpoint buffers of crossode and of the hand-written Diffrax program have the same size).
"""

from __future__ import annotations

import crossode as co

N_STATES = 32
RTOL = ATOL = 1e-5
MAX_STEPS = 4096
BASE = {"batch": 256, "width": 128, "T": 1.0, "dtype": "float32"}
SCANS = {"batch": [64, 256, 1024, 4096], "width": [64, 128, 256, 512], "T": [1.0, 4.0, 16.0]}
FLOAT64_SCANS = {"batch": [64, 256, 4096], "width": [128, 512], "T": [1.0, 16.0]}
"""The float64 scans (the base dtype is float32): the ends of every axis, so the default run fits ~30 minutes on
2 shared cores (9 float32 cells + 5 float64 cells)."""

MEMORY_CELL = {"batch": 2048, "widths": [64, 256, 64], "Ts": [1.0, 16.0], "dtype": "float32"}
"""The memory target (issue 14 §4): MALI's peak-memory growth from T = 1 to 16 <= 5 % of Direct's."""

QUICK_BASE = {"batch": 16, "width": 16, "T": 1.0, "dtype": "float32"}
QUICK_SCANS = {"batch": [16, 32]}
QUICK_MEMORY_CELL = {"batch": 64, "widths": [8, 16, 8], "Ts": [1.0, 2.0], "dtype": "float32"}

GPU_BASE = {"batch": 256, "width": 128, "T": 1.0, "dtype": "float32"}
GPU_SCANS = {"batch": [256, 4096, 16384]}
GPU_MEMORY_CELL = {"batch": 2048, "widths": [64, 256, 64], "Ts": [1.0, 16.0], "dtype": "float32"}


def widths_of(cell: dict) -> list[int]:
    """``[n, w, w, n]`` for a scan cell, the explicit widths for the memory cell."""
    return list(cell["widths"]) if "widths" in cell else [N_STATES, cell["width"], cell["width"], N_STATES]


def cell_id(cell: dict) -> str:
    w = "-".join(map(str, widths_of(cell)))
    return f"b{cell['batch']}_w{w}_T{cell['T']:g}_{cell['dtype']}"


def scan_cells(preset: str, dtypes: list[str]) -> list[dict]:
    """The timing cells, each once, in run order; ``cell['scans']`` lists the scans it belongs to."""
    base, scans = {"quick": (QUICK_BASE, QUICK_SCANS), "gpu": (GPU_BASE, GPU_SCANS)}.get(preset, (BASE, SCANS))
    cells: dict[str, dict] = {}
    for dtype in dtypes:
        by_dtype = FLOAT64_SCANS if preset == "full" and dtype != base["dtype"] else scans
        for axis, values in by_dtype.items():
            for v in values:
                c = dict(base, dtype=dtype, **{axis: v})
                key = cell_id(c)
                cells.setdefault(key, dict(c, id=key, scans=[]))["scans"].append(axis)
    return list(cells.values())


def memory_cells(preset: str) -> list[dict]:
    """The memory-target cells (one per T)."""
    m = {"quick": QUICK_MEMORY_CELL, "gpu": GPU_MEMORY_CELL}.get(preset, MEMORY_CELL)
    out = []
    for t in m["Ts"]:
        c = {"batch": m["batch"], "widths": m["widths"], "T": t, "dtype": m["dtype"], "scans": ["memory_T"]}
        out.append(dict(c, id=cell_id(c)))
    return out


def make_problem(cell: dict) -> co.Problem:
    """The cell's ``mlp_fit`` problem (loss on ``y(T)``)."""
    return co.get_problem("mlp_fit", batch=cell["batch"], widths=widths_of(cell), t1=float(cell["T"]), n_save=1)


# (key, library, method, label) of every contender; crossode's key for a method is "co-<method>"
TORCH_CONTENDERS = [
    ("co-direct", "crossode", "direct", "crossode dopri5 + Direct"),
    ("tdq-odeint", "torchdiffeq", "direct", "torchdiffeq odeint (dopri5)"),
    ("tode-direct", "torchode", "direct", "torchode dopri5 + AutoDiffAdjoint"),
    ("co-backsolve", "crossode", "backsolve", "crossode dopri5 + Backsolve"),
    ("tdq-adjoint", "torchdiffeq", "backsolve", "torchdiffeq odeint_adjoint (dopri5)"),
    ("co-mali", "crossode", "mali", "crossode ALF + MALI"),
    ("tdep-mali", "TorchDiffEqPack", "mali", "TorchDiffEqPack MALI (sym12async)"),
]
JAX_CONTENDERS = [
    ("co-direct", "crossode", "direct", "crossode dopri5 + Direct"),
    ("dfx-rca", "diffrax", "direct", "Diffrax RecursiveCheckpointAdjoint()"),
    ("co-backsolve", "crossode", "backsolve", "crossode dopri5 + Backsolve"),
    ("dfx-backsolve", "diffrax", "backsolve", "Diffrax BacksolveAdjoint()"),
    ("co-mali", "crossode", "mali", "crossode ALF + MALI (no Diffrax peer)"),
]
ALF_DIRECT = ("co-alf-direct", "crossode", "alf-direct", "crossode ALF + Direct")
MEMORY_KEYS = {
    "torch": ["co-mali", "co-alf-direct", "co-direct", "tdep-mali", "tdq-odeint", "co-backsolve", "tdq-adjoint"],
    "jax": ["co-mali", "co-alf-direct", "co-direct", "dfx-rca"],
}
"""Contenders measured in the memory-target cells (MALI, the Direct methods it is judged against, the peers)."""


def contenders(framework: str, memory: bool = False) -> list[tuple[str, str, str, str]]:
    """The contender table of ``framework``; ``memory``: those of the memory-target cells."""
    specs = (TORCH_CONTENDERS if framework == "torch" else JAX_CONTENDERS) + [ALF_DIRECT]
    if memory:
        return [s for k in MEMORY_KEYS[framework] for s in specs if s[0] == k]
    return specs[:-1]
