"""Training configs: a TOML file naming one workload, the optimizer settings shared by all runs, and the runs.

Schema (unknown keys are errors naming the key; every key optional unless marked)::

    name = "spiral"                      # study name (default: the file's stem), in every record's tags
    description = "..."
    output = "results.jsonl"             # JSONL results file, relative to this file (--out overrides)
    jobs = 1                             # runs in parallel (--jobs overrides; 1 for timing fidelity)
    timeout = 1800                       # seconds per run before it is killed (status "timeout"; --timeout)
    threads = 1                          # threads pinned in each run's worker
    max_runs = 1000                      # refuse a config that expands to more runs

    [executor]                           # as in sweep configs: kind = "local" | "dask", address/workers, start

    [workload]                           # required: what is trained and how runs are evaluated
    kind = "spiral"                      # see crossode.train._workloads (spiral, problem, ...), plus its options

    [optimizer]                          # shared by every run
    name = "adam"                        # the only one: torch.optim.Adam / optax.adam with these settings
    lr = 0.1
    b1 = 0.9
    b2 = 0.999
    eps = 1e-8

    [training]                           # shared by every run
    iterations = 300                     # optimizer steps (--iterations overrides)
    batch_size = 0                       # trajectories per mini-batch; 0 or absent: the whole data every step
    seed = 0                             # the mini-batch sequence (drawn once in NumPy, the same for every run)
    eval_every = 10                      # evaluation metrics every this many iterations (and at 0 and the end)
    target = 1e-2                        # the report's time-to-target: first time the metric reaches this ...
    target_metric = "loss"               # ... "loss" (training loss) or one of the workload's metrics

    [[runs]]                             # required, one or more: run tables, each a product like a sweep grid
    backends = ["torch", "jax"]
    methods = [["rk4", "direct"]]        # or solvers = [...] x sensitivities = [...]
    dt = 0.05                            # or rtol = [...] (+ atol): as in sweep configs
    devices = ["cpu"]
    dtypes = ["float64"]
    # dt0, max_steps, timeout, threads, tags, resources: as in sweep grids

Each run is a :class:`~crossode.sweep.Cell` (its ``problem`` entry is the workload table, its tags carry the shared
training settings), so the sweep engine's executors, store and progress bar run it unchanged. A run's key (resume)
covers the workload's problem, the training settings (iterations included) and the run's own backend, method, step
control, device and dtype.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os

from .._errors import InvalidInputError
from .._harness import DTYPES
from .._limits import PARSE_SECONDS, time_limit
from .._problemfile import read_toml
from .._registry import BACKENDS
from ..sweep._config import (DEFAULT_TIMEOUT, Cell, _canon, _combos, _executor, _list, _methods, _numbers, _posint,
                             _resources, _steps, _str, cell_resources)
from .._training import Adam
from ._workloads import build_workload

__all__ = ["TrainConfig", "load_train_config", "train_config_from_dict", "MAX_RUNS"]

MAX_RUNS = 1000
"""Default limit on the runs of one training config (``max_runs``)."""

_TOP = {"name", "description", "output", "jobs", "timeout", "threads", "max_runs", "executor", "workload",
        "optimizer", "training", "runs", "tags"}
_OPTIMIZER = {"name", "lr", "b1", "b2", "eps"}
_TRAINING = {"iterations", "batch_size", "seed", "eval_every", "target", "target_metric"}
_RUN = {"backends", "methods", "solvers", "sensitivities", "rtol", "atol", "dt", "dt0", "max_steps", "devices",
        "dtypes", "timeout", "threads", "tags", "resources"}
DEFAULT_RUN_TIMEOUT = 1800.0


@dataclasses.dataclass
class TrainConfig:
    """A parsed training config: its ``runs`` (cells, deduplicated, in file order) and the shared settings."""

    name: str
    description: str
    runs: list[Cell]
    output: str | None
    jobs: int
    workload: dict
    optimizer: Adam
    iterations: int
    batch_size: int | None
    seed: int
    eval_every: int
    target: float | None
    target_metric: str
    path: str | None = None
    dropped: list[str] = dataclasses.field(default_factory=list)
    executor: dict = dataclasses.field(default_factory=dict)

    @property
    def settings(self) -> dict:
        """The training settings every run carries (``tags["train"]``)."""
        return {"iterations": self.iterations, "batch_size": self.batch_size, "seed": self.seed,
                "eval_every": self.eval_every, "optimizer": {"name": "adam", **dataclasses.asdict(self.optimizer)},
                "target": self.target, "target_metric": self.target_metric}


def load_train_config(path, *, iterations: int | None = None, timeout: float | None = PARSE_SECONDS) -> TrainConfig:
    """Read and validate a training TOML file (``iterations`` overrides ``[training] iterations``); raises
    :class:`InvalidInputError` naming the file and the bad key."""
    path = os.fspath(path)
    with time_limit(timeout, f"reading training config {path!r}"):
        data = read_toml(path, "training config")
        try:
            return train_config_from_dict(data, base_dir=os.path.dirname(os.path.abspath(path)),
                                          default_name=os.path.splitext(os.path.basename(path))[0], path=path,
                                          iterations=iterations)
        except InvalidInputError as e:
            raise InvalidInputError(f"training config {path!r}: {e}") from None


def _table(data, key, allowed, required=False) -> dict:
    v = data.get(key)
    if v is None:
        if required:
            raise InvalidInputError(f"[{key}] is required.")
        return {}
    if not isinstance(v, dict):
        raise InvalidInputError(f"`{key}` must be a table ([{key}]); got {v!r}.")
    if allowed is not None:
        unknown = set(v) - allowed
        if unknown:
            raise InvalidInputError(f"[{key}]: unknown key(s) {sorted(unknown)}; allowed: {', '.join(sorted(allowed))}.")
    return v


def _nonneg_int(d, key, default, where):
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise InvalidInputError(f"`{where}.{key}` must be a non-negative integer; got {v!r}.")
    return v


def _workload_spec(table: dict, base_dir: str) -> dict:
    """The workload table with problem-file paths made absolute (workers may run elsewhere in the tree)."""
    spec = json.loads(json.dumps(table))  # a plain copy (TOML values only)
    prob = spec.get("problem")
    if isinstance(prob, dict) and isinstance(prob.get("file"), str):
        prob["file"] = os.path.normpath(os.path.join(base_dir, prob["file"]))
    return spec


def train_config_from_dict(data: dict, *, base_dir: str = ".", default_name: str = "train", path: str | None = None,
                           iterations: int | None = None) -> TrainConfig:
    """Validate a training config given as a dict (the parsed TOML) and expand its runs (see the module
    docstring)."""
    if not isinstance(data, dict):
        raise InvalidInputError("a training config must be a table.")
    unknown = set(data) - _TOP
    if unknown:
        raise InvalidInputError(f"unknown key(s) {sorted(unknown)}; allowed: {', '.join(sorted(_TOP))}.")
    name = _str(data, "name", default_name)
    description = _str(data, "description", "")
    output = data.get("output")
    if output is not None:
        output = os.path.join(base_dir, _str(data, "output", ""))
    jobs = _posint(data, "jobs", 1)
    max_runs = _posint(data, "max_runs", MAX_RUNS)
    executor = _executor(data.get("executor", {}))
    tags = data.get("tags", {})
    if not isinstance(tags, dict):
        raise InvalidInputError(f"`tags` must be a table; got {tags!r}.")

    spec = _workload_spec(_table(data, "workload", None, required=True), base_dir)
    workload = build_workload(spec, base_dir)

    opt = _table(data, "optimizer", _OPTIMIZER)
    if opt.get("name", "adam") != "adam":
        raise InvalidInputError(f"`optimizer.name` must be \"adam\" (the only optimizer); got {opt.get('name')!r}.")
    optimizer = Adam(**{k: v for k, v in opt.items() if k != "name"})

    tr = _table(data, "training", _TRAINING)
    n_iter = _posint(tr, "iterations", 100) if iterations is None else iterations
    if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 1:
        raise InvalidInputError(f"--iterations must be a positive integer; got {n_iter!r}.")
    if n_iter > 10_000_000:
        raise InvalidInputError(f"`training.iterations` = {n_iter} is too large; at most 10,000,000.")
    batch_size = _nonneg_int(tr, "batch_size", 0, "training") or None
    problem = workload.problem
    if batch_size is not None:
        if problem.batch is None:
            raise InvalidInputError(f"`training.batch_size` needs a batched workload; {problem.name!r} has one "
                                    "trajectory (leave batch_size out).")
        if batch_size > problem.batch:
            raise InvalidInputError(f"`training.batch_size` = {batch_size} exceeds the {problem.batch} trajectories "
                                    "of the data.")
        if batch_size == problem.batch:
            batch_size = None
    seed = _nonneg_int(tr, "seed", 0, "training")
    eval_every = _posint(tr, "eval_every", 10)
    target = tr.get("target")
    if target is not None and (isinstance(target, bool) or not isinstance(target, (int, float))
                               or not math.isfinite(target)):
        raise InvalidInputError(f"`training.target` must be a number; got {target!r}.")
    target_metric = _str(tr, "target_metric", "loss")
    if target_metric != "loss" and target_metric not in workload.metrics:
        raise InvalidInputError(f"`training.target_metric` must be \"loss\" or one of the workload's metrics "
                                f"({', '.join(workload.metrics)}); got {target_metric!r}.")

    runs_tables = data.get("runs")
    if not isinstance(runs_tables, list) or not runs_tables or not all(isinstance(g, dict) for g in runs_tables):
        raise InvalidInputError("`runs` must be an array of tables ([[runs]] sections), at least one.")
    cfg = TrainConfig(name, description, [], output, jobs, spec, optimizer, n_iter, batch_size, seed, eval_every,
                      None if target is None else float(target), target_metric, path, [], executor)
    settings = cfg.settings
    fingerprint = hashlib.sha256(json.dumps(_canon({"problem": problem.digest(), "train": settings}),
                                            sort_keys=True).encode()).hexdigest()[:16]
    base_tags = {**tags, "sweep": name, "train": settings}
    top_timeout = data.get("timeout", DEFAULT_RUN_TIMEOUT)
    top_threads = _posint(data, "threads", 1)
    seen: set[str] = set()
    for i, table in enumerate(runs_tables):
        where = f"[[runs]] #{i + 1}: "
        try:
            cells = _run_cells(table, spec, workload, fingerprint, base_tags, top_timeout, top_threads,
                               cfg.dropped, max_runs - len(cfg.runs))
        except InvalidInputError as e:
            raise InvalidInputError(f"{where}{e}") from None
        for c in cells:
            if c.key not in seen:
                seen.add(c.key)
                cfg.runs.append(c)
    if not cfg.runs:
        raise InvalidInputError("the config has no runs (every solver/sensitivity/step combination was dropped).")
    return cfg


def _run_cells(g: dict, spec: dict, workload, fingerprint: str, base_tags: dict, top_timeout, top_threads: int,
               dropped: list[str], budget: int) -> list[Cell]:
    unknown = set(g) - _RUN
    if unknown:
        raise InvalidInputError(f"unknown key(s) {sorted(unknown)}; allowed: {', '.join(sorted(_RUN))}.")
    backends = _list(g, "backends", None, item=lambda x: isinstance(x, str))
    for b in backends:
        if b not in BACKENDS:
            raise InvalidInputError(f"unknown backend {b!r}; expected one of {', '.join(BACKENDS)}.")
    if "dt0" in g:
        _numbers(g, "dt0")
    pairs, explicit = _methods(g, budget, budget)
    steps = _steps(g)
    devices = _list(g, "devices", ["cpu"], item=lambda x: isinstance(x, str) and x)
    dtypes = _list(g, "dtypes", ["float64"], item=lambda x: x in DTYPES)
    threads = _posint(g, "threads", top_threads)
    timeout = g.get("timeout", top_timeout)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise InvalidInputError(f"`timeout` must be a positive number of seconds; got {timeout!r}.")
    tags = g.get("tags", {})
    if not isinstance(tags, dict):
        raise InvalidInputError(f"`tags` must be a table; got {tags!r}.")
    resources = _resources(g)
    combos = _combos(pairs, steps, explicit, dropped)
    count = len(backends) * len(combos) * len(devices) * len(dtypes)
    if count > budget:
        raise InvalidInputError(f"the config expands to more runs than allowed ({count} here, {budget} left); raise "
                                "`max_runs` or split it.")
    problem = workload.problem
    cells = []
    for backend, (solver, sens, step), device, dtype in itertools.product(backends, combos, devices, dtypes):
        cells.append(Cell(
            problem=dict(spec), problem_name=problem.name, problem_fingerprint=fingerprint, t1=float(problem.t1),
            backend=backend, solver={"name": solver.name, "options": dataclasses.asdict(solver)},
            sensitivity={"name": sens.name, "options": dataclasses.asdict(sens)}, step=step, device=device,
            dtype=dtype, replicate=0, repeats=1, timeout=float(timeout), threads=threads, with_reference=False,
            save_gradients=False, tags={**base_tags, **tags},
            resources=cell_resources(backend, device, resources),
        ))
    return cells
