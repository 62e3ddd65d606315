"""Sweep configurations: a TOML file that expands into a list of :class:`Cell` (one measurement each).

Schema (every key optional unless marked; unknown keys are errors naming the key)::

    name = "mali_memory"                 # sweep name (default: the file's stem); stored in each record's tags
    description = "..."                  # free text
    output = "results.jsonl"             # JSONL results file, relative to this file (--out overrides)
    jobs = 1                             # cells run in parallel (--jobs overrides; 1 for timing fidelity)
    max_cells = 100000                   # refuse a sweep that expands to more cells (--max-cells overrides)

    [executor]                           # where cells run (--executor/--scheduler/--workers override)
    kind = "dask"                        # "local" (default: this machine, `jobs` at a time) or "dask"
    address = "tcp://head:8786"          # dask: an existing cluster's scheduler ...
    workers = 4                          # ... or a LocalCluster of this many worker processes
    start = "auto"                       # "auto": fork torch/jax/reference cells from a pre-imported template;
                                         #   "spawn": a fresh interpreter for every cell

    # ---- grid keys: allowed at the top level (defaults for every [[grid]]) and inside each [[grid]] ----
    problems = ["lotka_volterra",        # zoo names, or tables:
                { name = "mlp", overrides = { width = 64 }, scan = { t1 = [1, 4, 16] } },
                { file = "my_problem.toml", scan = { t1 = [1, 2] } }]   # relative to this file
    backends = ["torch", "jax"]          # default: ["reference"]
    solvers = ["dopri5", { name = "alf", eta = 1.0 }]        # product with `sensitivities`; pairs that
    sensitivities = ["direct", "backsolve"]                  # make no sense (check_pair) are dropped
    methods = [["alf", "mali"],          # explicit (solver, sensitivity) pairs instead of the product;
               { solver = "alf", sensitivity = "mali", solver_options = { eta = 1.0 },
                 sensitivity_options = { reconstruction_rtol = 1e-6 } }]
    rtol = [1e-3, 1e-6]                  # adaptive tolerances (one cell each) ...
    atol = 1e-8                          # ... with one atol for all, or a list zipped with rtol (default: = rtol)
    dt = [0.1, 0.01]                     # fixed steps (one cell each; every solver). Neither rtol nor dt:
                                         #   Adaptive() defaults (rtol 1e-6, atol 1e-8). rtol/atol and dt
                                         #   in one table is an error (two [[grid]] tables for both kinds);
                                         #   a [[grid]]'s step kind replaces the top level's
    dt0 = 0.01                           # first step of adaptive solves (default: automatic)
    max_steps = 10000                    # step budget (default: Adaptive/Fixed defaults)
    batch_steps = ["shared", "per_sample"]  # adaptive steps of a batched problem: one sequence for the batch
                                         #   (default "shared") or each sample its own (one cell each)
    devices = ["cpu"]
    dtypes = ["float64"]                 # "float64" / "float32"
    repeats = 3                          # timed repeats inside a cell (median reported)
    replicates = 1                       # independent fresh-process runs of each cell (repeat index 0..n-1)
    timeout = 300                        # seconds per cell before it is killed (status "timeout")
    threads = 1                          # threads pinned in each worker (OMP/MKL/XLA/torch)
    with_reference = true                # compare with the independent reference
    save_gradients = false               # store dparams/dy0 in the records
    taylor = false                       # add the Taylor test of each gradient (taylor_slope, ...; ~21 solves)
    tags = { study = "x" }               # extra tags copied into every record
    resources = { gpu = 1 }              # Dask worker resources a cell needs (default: gpu = 1 for cuda/gpu
                                         #   devices, julia = 1 for the julia backend; `false` drops one)

    [[grid]]                             # optional: several sub-grids; cells = union of their products
    problems = [...]                     # (each inherits the top-level grid keys and may override them)

Expansion is bounded: the number of cells is counted from the list lengths before anything is built and refused
above ``max_cells`` (default :data:`crossode._limits.MAX_CELLS`); each problem is built once in the sweep process
(so a bad or oversized override fails at once, with its size limit), and reading plus expanding the whole config is
stopped after :data:`crossode._limits.PARSE_SECONDS`. Duplicate entries (the same cell twice, from repeated list
entries or overlapping grids) run once: cells are deduplicated by :attr:`Cell.key`, in file order.

Problem ``overrides`` go to the zoo factory (``get_problem(name, **overrides)``, e.g. ``t1``, ``n``, ``width``,
``mu``) and may also be ``tspan = [t0, t1]``; for problem files only ``t1`` (rescales ``saveat`` in proportion)
and ``tspan`` (``saveat`` must fit) are allowed. ``scan`` maps an override to a list of values: one problem per
value (e.g. integration lengths for memory-vs-length studies).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import math
import os
from typing import Any

from .._errors import InvalidInputError, UnsupportedError, fmt_choices
from .._harness import DTYPES
from .._limits import MAX_CELLS, PARSE_SECONDS, time_limit
from .._problem import Problem
from .._problemfile import read_toml
from .._registry import BACKENDS
from .._sensitivity import check_pair, sensitivity_from_name
from .._solvers import BATCH_STEPS, Adaptive, Fixed, solver_from_name

__all__ = ["Cell", "SweepConfig", "load_config", "config_from_dict", "build_problem", "build_step", "cell_resources"]

_TOP_ONLY = {"name", "description", "output", "jobs", "max_cells", "grid", "executor"}
_GRID = {
    "problems", "backends", "solvers", "sensitivities", "methods", "rtol", "atol", "dt", "dt0", "max_steps",
    "batch_steps", "devices", "dtypes", "repeats", "replicates", "timeout", "threads", "with_reference",
    "save_gradients", "tags", "resources", "taylor",
}
_EXECUTOR_KEYS = {"kind", "address", "workers", "start"}
EXECUTOR_KINDS = ("local", "dask")
_PROBLEM_KEYS = {"name", "file", "overrides", "scan"}
_METHOD_KEYS = {"solver", "sensitivity", "solver_options", "sensitivity_options"}
_FILE_OVERRIDES = {"t1", "tspan"}
_ADAPTIVE_KEYS = {"rtol", "atol"}
DEFAULT_TIMEOUT = 300.0


# ---------------------------------------------------------------------------------------------------- cells


def _canon(x):
    """Canonical JSON-able form for cell keys: numbers as floats, dicts sorted (so 4 and 4.0 are one key)."""
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return x
    if isinstance(x, (int, float)):
        return float(x)
    if isinstance(x, dict):
        return {str(k): _canon(v) for k, v in sorted(x.items())}
    if isinstance(x, (list, tuple)):
        return [_canon(v) for v in x]
    return str(x)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One measurement of a sweep: everything the worker needs, as plain JSON-able data.

    ``problem`` is ``{"name": zoo_name}`` or ``{"file": absolute_path}`` plus ``"overrides"``; ``solver`` and
    ``sensitivity`` are ``{"name": ..., "options": {...}}`` with every option filled in; ``step`` is
    ``{"kind": "adaptive", "rtol", "atol", "dt0", "max_steps"}`` (plus ``"batch_steps": "per_sample"`` for
    per-sample steps; absent for the default, so keys of older results stay valid) or
    ``{"kind": "fixed", "dt", "max_steps"}``.
    :attr:`key` identifies the cell across runs (resume), independent of repeats, timeout, threads and
    ``resources`` (the Dask worker resources the cell needs, see :func:`cell_resources`).
    """

    problem: dict
    problem_name: str
    problem_fingerprint: str
    t1: float
    backend: str
    solver: dict
    sensitivity: dict
    step: dict
    device: str = "cpu"
    dtype: str = "float64"
    replicate: int = 0
    repeats: int = 3
    timeout: float = DEFAULT_TIMEOUT
    threads: int = 1
    with_reference: bool = True
    save_gradients: bool = False
    tags: dict = dataclasses.field(default_factory=dict)
    resources: dict = dataclasses.field(default_factory=dict)
    taylor: bool = False

    @functools.cached_property
    def key(self) -> str:
        """Stable 16-hex-digit identity over problem (+overrides, fingerprint), backend, solver (+options),
        sensitivity (+options), step, device, dtype and replicate index (and ``taylor`` when set: a cell measured
        without the Taylor test is not the same as one with it)."""
        ident = {
            "problem": {k: v for k, v in self.problem.items() if k != "file"},
            "fingerprint": self.problem_fingerprint,
            "backend": self.backend,
            "solver": self.solver,
            "sensitivity": self.sensitivity,
            "step": self.step,
            "device": self.device,
            "dtype": self.dtype,
            "replicate": self.replicate,
        }
        if self.taylor:
            ident["taylor"] = True
        text = json.dumps(_canon(ident), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        """Short human-readable name, e.g. ``linear[t1=4]/torch/alf+mali/dt=0.01``."""
        ov = self.problem.get("overrides") or {}
        prob = self.problem_name + (f"[{','.join(f'{k}={_short(v)}' for k, v in ov.items())}]" if ov else "")
        st = self.step
        step = f"dt={st['dt']:g}" if st["kind"] == "fixed" else f"rtol={st['rtol']:g}"
        if st.get("batch_steps") == "per_sample":
            step += ",per_sample"
        extra = "" if (self.device, self.dtype) == ("cpu", "float64") else f"/{self.device}/{self.dtype}"
        rep = f"#{self.replicate}" if self.replicate else ""
        return f"{prob}/{self.backend}/{self.solver['name']}+{self.sensitivity['name']}/{step}{extra}{rep}"

    def to_json(self) -> dict:
        """Plain dict (what the worker receives)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Cell:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise InvalidInputError(f"cell has unknown keys {sorted(unknown)}.")
        return cls(**data)

    def record_tags(self) -> dict:
        """The tags every record of this cell carries (``cell`` is the resume key)."""
        tags = dict(self.tags)
        tags.update(cell=self.key, label=self.label, t1=self.t1, replicate=self.replicate,
                    overrides=dict(self.problem.get("overrides") or {}))
        if "file" in self.problem:
            tags["problem_file"] = self.problem["file"]
        return tags

    def blank_record(self, status: str, message: str):
        """A :class:`~crossode.Record` for this cell that carries only a failure (crashed, timeout, ...)."""
        from .._record import Record

        st = self.step
        return Record(
            problem=self.problem_name, backend=self.backend, solver=self.solver["name"],
            sensitivity=self.sensitivity["name"], rtol=st.get("rtol"), atol=st.get("atol"), dt=st.get("dt"),
            device=self.device, dtype=self.dtype, status=status, message=message, threads=self.threads,
            solver_options=dict(self.solver["options"]), sensitivity_options=dict(self.sensitivity["options"]),
            tags=self.record_tags(),
        )


def cell_resources(backend: str, device: str, override: dict | None = None) -> dict[str, float]:
    """The Dask worker resources a cell needs: ``gpu = 1`` on a ``cuda``/``gpu`` device, ``julia = 1`` for the
    Julia backend, then ``override`` (a number sets one, ``true`` means 1, ``false`` drops it)."""
    res = {}
    if device.startswith(("cuda", "gpu")):
        res["gpu"] = 1.0
    if backend == "julia":
        res["julia"] = 1.0
    for k, v in (override or {}).items():
        if v is False:
            res.pop(k, None)
        else:
            res[k] = 1.0 if v is True else float(v)
    return res


def _short(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


# ------------------------------------------------------------------------------------------- build helpers


def build_problem(spec: dict) -> Problem:
    """The :class:`~crossode.Problem` of a cell's ``problem`` entry (zoo name or file, plus overrides)."""
    from .._problemfile import load_problem_file
    from ..problems import get_problem

    overrides = dict(spec.get("overrides") or {})
    tspan = overrides.pop("tspan", None)
    if "file" in spec:
        unknown = set(overrides) - _FILE_OVERRIDES
        if unknown:
            raise InvalidInputError(
                f"problem file {spec['file']!r}: unknown override(s) {sorted(unknown)}; allowed: t1, tspan."
            )
        problem = load_problem_file(spec["file"])
        if "t1" in overrides:
            t0, t1_old = problem.tspan
            t1 = _number("t1", overrides["t1"])
            scale = (t1 - t0) / (t1_old - t0)
            problem = problem.remake(tspan=(t0, t1), saveat=t0 + (problem.saveat - t0) * scale)
    else:
        problem = get_problem(spec["name"], **overrides)
    if tspan is not None:
        if not isinstance(tspan, (list, tuple)) or len(tspan) != 2:
            raise InvalidInputError(f"override `tspan` must be [t0, t1]; got {tspan!r}.")
        problem = problem.remake(tspan=(_number("tspan", tspan[0]), _number("tspan", tspan[1])))
    return problem


def build_step(spec: dict):
    """The step control of a cell's ``step`` entry."""
    if spec["kind"] == "fixed":
        return Fixed(dt=spec["dt"], max_steps=spec["max_steps"])
    return Adaptive(rtol=spec["rtol"], atol=spec["atol"], dt0=spec["dt0"], max_steps=spec["max_steps"],
                    batch_steps=spec.get("batch_steps", "shared"))


def _number(key, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise InvalidInputError(f"`{key}` must be a finite number; got {v!r}.")
    return float(v)


# ------------------------------------------------------------------------------------------------- config


@dataclasses.dataclass
class SweepConfig:
    """A parsed sweep: its ``cells`` (deduplicated, in file order), output path and defaults."""

    name: str
    description: str
    cells: list[Cell]
    output: str | None
    jobs: int
    path: str | None = None
    dropped: list[str] = dataclasses.field(default_factory=list)
    """(solver, sensitivity, step) combinations of solver x sensitivity products left out, with the reason."""
    executor: dict = dataclasses.field(default_factory=dict)
    """The ``[executor]`` table: ``kind`` (``"local"``/``"dask"``), ``start`` (``"auto"``/``"spawn"``) and, for Dask,
    ``address`` or ``workers``."""


def _combos(pairs, steps: list[dict], explicit: bool, dropped: list[str]) -> list[tuple]:
    """``(solver, sensitivity, step)`` for every pair and every step control it can use. A product (``explicit``
    false) drops what does not combine, with the reason appended to ``dropped``; explicit ``runs`` raise instead."""
    combos = []
    for solver, sens in pairs:
        if not explicit:
            try:
                check_pair(solver, sens)
            except UnsupportedError as e:
                dropped.append(f"{solver.name}+{sens.name}: {e}")
                continue
        usable = [s for s in steps if s["kind"] == "fixed" or solver.adaptive]
        if not usable:
            msg = f"solver {solver.name!r} has no error estimate: give `dt` (fixed steps) for it"
            if explicit:
                raise InvalidInputError(msg + ".")
            dropped.append(f"{solver.name}+{sens.name}: {msg}")
            continue
        combos += [(solver, sens, s) for s in usable]
    return combos


def load_config(path: str | os.PathLike, *, max_cells: int | None = None,
                timeout: float | None = PARSE_SECONDS) -> SweepConfig:
    """Read and validate a sweep TOML file; raises :class:`InvalidInputError` naming the file and the bad key.

    ``max_cells`` overrides the config's own ``max_cells``; reading and expanding stop after ``timeout`` seconds
    (the sweep process runs this outside every cell's time limit).
    """
    path = os.fspath(path)
    with time_limit(timeout, f"reading and expanding sweep config {path!r}"):
        data = read_toml(path, "sweep config")
        try:
            return config_from_dict(data, base_dir=os.path.dirname(os.path.abspath(path)),
                                    default_name=os.path.splitext(os.path.basename(path))[0], path=path,
                                    max_cells=max_cells)
        except InvalidInputError as e:
            raise InvalidInputError(f"sweep config {path!r}: {e}") from None


def config_from_dict(data: dict, *, base_dir: str = ".", default_name: str = "sweep",
                     path: str | None = None, max_cells: int | None = None) -> SweepConfig:
    """Validate a sweep given as a dict (the parsed TOML) and expand it into cells.

    ``max_cells`` (default: the config's ``max_cells``, else :data:`crossode._limits.MAX_CELLS`) bounds the number
    of cells, counted before any is built.
    """
    if not isinstance(data, dict):
        raise InvalidInputError("a sweep config must be a table.")
    unknown = set(data) - _TOP_ONLY - _GRID
    if unknown:
        raise InvalidInputError(f"unknown key(s) {sorted(unknown)}; allowed: {', '.join(sorted(_TOP_ONLY | _GRID))}.")
    name = _str(data, "name", default_name)
    description = _str(data, "description", "")
    output = data.get("output")
    if output is not None:
        output = os.path.join(base_dir, _str(data, "output", ""))
    jobs = _posint(data, "jobs", 1)
    executor = _executor(data.get("executor", {}))
    if max_cells is None:
        max_cells = _posint(data, "max_cells", MAX_CELLS)
    budget = [max_cells]
    defaults = {k: v for k, v in data.items() if k in _GRID}
    grids = data.get("grid", [{}])
    if not isinstance(grids, list) or not grids or not all(isinstance(g, dict) for g in grids):
        raise InvalidInputError("`grid` must be an array of tables ([[grid]] sections).")
    plans = []
    dropped: list[str] = []
    for i, grid in enumerate(grids):
        where = f"[[grid]] #{i + 1}: " if "grid" in data else ""
        unknown = set(grid) - _GRID
        if unknown:
            raise InvalidInputError(f"{where}unknown key(s) {sorted(unknown)}; allowed: {', '.join(sorted(_GRID))}.")
        merged = {**defaults, **grid}
        if "dt" in grid and not _ADAPTIVE_KEYS & set(grid):  # a grid's step kind replaces the top level's
            merged = {k: v for k, v in merged.items() if k not in _ADAPTIVE_KEYS}
        elif _ADAPTIVE_KEYS & set(grid) and "dt" not in grid:
            merged.pop("dt", None)
        try:
            plans.append((where, _plan(merged, base_dir, name, dropped, budget, max_cells)))
        except InvalidInputError as e:
            raise InvalidInputError(f"{where}{e}") from None
    cells: list[Cell] = []  # every grid is counted (above) before any grid's problems and cells are built
    seen: set[str] = set()
    for where, plan in plans:
        try:
            new = _build(plan)
        except InvalidInputError as e:
            raise InvalidInputError(f"{where}{e}") from None
        for c in new:
            if c.key not in seen:
                seen.add(c.key)
                cells.append(c)
    if not cells:
        raise InvalidInputError("the sweep has no cells (every solver/sensitivity/step combination was dropped).")
    return SweepConfig(name, description, cells, output, jobs, path, dropped, executor)


def _executor(table) -> dict:
    """Validate the ``[executor]`` table; ``kind`` is ``"dask"`` when ``address`` or ``workers`` is given."""
    if not isinstance(table, dict):
        raise InvalidInputError(f"`executor` must be a table ([executor]); got {table!r}.")
    unknown = set(table) - _EXECUTOR_KEYS
    if unknown:
        raise InvalidInputError(f"[executor]: unknown key(s) {sorted(unknown)}; allowed: "
                                f"{', '.join(sorted(_EXECUTOR_KEYS))}.")
    out = {}
    if "address" in table:
        out["address"] = _str(table, "address", "").strip()
        if not out["address"]:
            raise InvalidInputError("[executor] `address` must be a scheduler address such as 'tcp://head:8786'.")
    if "workers" in table:
        out["workers"] = _posint(table, "workers", 1)
    if "address" in out and "workers" in out:
        raise InvalidInputError("[executor]: give `address` (an existing cluster) or `workers` (a local cluster), "
                                "not both.")
    start = table.get("start", "auto")
    if start not in ("auto", "spawn"):
        raise InvalidInputError(f"[executor] `start` must be \"auto\" or \"spawn\"; got {start!r}.")
    kind = table.get("kind", "dask" if out else "local")
    if kind not in EXECUTOR_KINDS:
        raise InvalidInputError(f"[executor] `kind` must be one of {fmt_choices(EXECUTOR_KINDS)}; got {kind!r}.")
    if kind == "local" and out:
        raise InvalidInputError("[executor]: `address` and `workers` need kind = \"dask\".")
    return {"kind": kind, **out, "start": start}


def _resources(g) -> dict:
    v = g.get("resources", {})
    if not isinstance(v, dict):
        raise InvalidInputError(f"`resources` must be a table such as {{ gpu = 1, julia = true }}; got {v!r}.")
    for k, x in v.items():
        ok = isinstance(x, bool) or (isinstance(x, (int, float)) and math.isfinite(x) and x > 0)
        if not k or not ok:
            raise InvalidInputError(f"`resources.{k}` must be true, false or a positive number; got {x!r}.")
    return v


def _str(d, key, default):
    v = d.get(key, default)
    if not isinstance(v, str):
        raise InvalidInputError(f"`{key}` must be a string; got {v!r}.")
    return v


def _posint(d, key, default):
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise InvalidInputError(f"`{key}` must be a positive integer; got {v!r}.")
    return v


def _bool(d, key, default):
    v = d.get(key, default)
    if not isinstance(v, bool):
        raise InvalidInputError(f"`{key}` must be true or false; got {v!r}.")
    return v


def _list(d, key, default, *, item=None):
    v = d.get(key, default)
    if not isinstance(v, list) or not v:
        raise InvalidInputError(f"`{key}` must be a non-empty list; got {v!r}.")
    if item is not None:
        for x in v:
            if not item(x):
                raise InvalidInputError(f"`{key}` has an invalid entry {x!r}.")
    return v


def _numbers(d, key) -> list[float] | None:
    """A number or a non-empty list of numbers as a list (``None`` when the key is absent)."""
    v = d.get(key)
    if v is None:
        return None
    if isinstance(v, list) and not v:
        raise InvalidInputError(f"`{key}` must be a number or a non-empty list of numbers; got [].")
    return [_number(key, x) for x in (v if isinstance(v, list) else [v])]


def _too_many(count: int, max_cells: int) -> InvalidInputError:
    return InvalidInputError(
        f"the sweep expands to more than {max_cells:,} cells (at least {count:,}); split it, or raise the limit with "
        "`max_cells = N` in the config or --max-cells N."
    )


def _problems(g, base_dir, budget: int, max_cells: int) -> list[dict]:
    out = []
    count = 0
    for entry in _list(g, "problems", None):
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict):
            raise InvalidInputError(f"`problems` entries must be names or tables; got {entry!r}.")
        unknown = set(entry) - _PROBLEM_KEYS
        if unknown:
            raise InvalidInputError(
                f"problem entry {entry!r}: unknown key(s) {sorted(unknown)}; allowed: {', '.join(sorted(_PROBLEM_KEYS))} "
                "(put factory options under `overrides`)."
            )
        if ("name" in entry) == ("file" in entry):
            raise InvalidInputError(f"problem entry {entry!r} needs exactly one of `name` (zoo) or `file`.")
        base = {"name": _str(entry, "name", "")} if "name" in entry else {
            "file": os.path.normpath(os.path.join(base_dir, _str(entry, "file", "")))}
        overrides = entry.get("overrides", {})
        scan = entry.get("scan", {})
        for key, v in (("overrides", overrides), ("scan", scan)):
            if not isinstance(v, dict):
                raise InvalidInputError(f"problem `{key}` must be a table; got {v!r}.")
        for k, v in scan.items():
            if not isinstance(v, list) or not v:
                raise InvalidInputError(f"problem `scan.{k}` must be a non-empty list; got {v!r}.")
            if k in overrides:
                raise InvalidInputError(f"problem key {k!r} is both in `overrides` and `scan`.")
        keys = list(scan)
        count += math.prod(len(scan[k]) for k in keys)  # counted before the product is built
        if count > budget:
            raise _too_many(count, max_cells)
        for values in itertools.product(*(scan[k] for k in keys)) if keys else [()]:
            out.append({**base, "overrides": {**overrides, **dict(zip(keys, values))}})
    return out


def _descr(entry, what: str) -> tuple[str, dict]:
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, dict) and isinstance(entry.get("name"), str):
        return entry["name"], {k: v for k, v in entry.items() if k != "name"}
    raise InvalidInputError(f"`{what}` entries must be names or tables with `name`; got {entry!r}.")


def _methods(g, budget: int, max_cells: int) -> tuple[list[tuple], bool]:
    """(solver, sensitivity) descriptor pairs and whether they were given explicitly."""
    if "methods" in g:
        if "solvers" in g or "sensitivities" in g:
            raise InvalidInputError("give `methods` or `solvers` x `sensitivities`, not both.")
        pairs = []
        for m in _list(g, "methods", None):
            if isinstance(m, list) and len(m) == 2 and all(isinstance(x, str) for x in m):
                pairs.append((solver_from_name(m[0]), sensitivity_from_name(m[1])))
            elif isinstance(m, dict):
                unknown = set(m) - _METHOD_KEYS
                if unknown:
                    raise InvalidInputError(
                        f"method {m!r}: unknown key(s) {sorted(unknown)}; allowed: {', '.join(sorted(_METHOD_KEYS))}.")
                if not (isinstance(m.get("solver"), str) and isinstance(m.get("sensitivity"), str)):
                    raise InvalidInputError(f"method {m!r} needs string `solver` and `sensitivity`.")
                so, se = m.get("solver_options", {}), m.get("sensitivity_options", {})
                if not isinstance(so, dict) or not isinstance(se, dict):
                    raise InvalidInputError(f"method {m!r}: options must be tables.")
                pairs.append((solver_from_name(m["solver"], **so), sensitivity_from_name(m["sensitivity"], **se)))
            else:
                raise InvalidInputError(f"`methods` entries must be [solver, sensitivity] or tables; got {m!r}.")
        for s, g_ in pairs:
            try:
                check_pair(s, g_)  # explicit pairs must make sense
            except UnsupportedError as e:
                raise InvalidInputError(f"method [{s.name!r}, {g_.name!r}]: {e}") from None
        return pairs, True
    n_pairs = len(_list(g, "solvers", ["dopri5"])) * len(_list(g, "sensitivities", ["direct"]))
    if n_pairs > budget:
        raise _too_many(n_pairs, max_cells)
    solvers = [solver_from_name(n, **o) for n, o in map(lambda e: _descr(e, "solvers"),
                                                            _list(g, "solvers", ["dopri5"]))]
    sens = [sensitivity_from_name(n, **o) for n, o in map(lambda e: _descr(e, "sensitivities"),
                                                           _list(g, "sensitivities", ["direct"]))]
    return [(s, x) for s in solvers for x in sens], False


def _steps(g) -> list[dict]:
    rtol, atol, dt = _numbers(g, "rtol"), _numbers(g, "atol"), _numbers(g, "dt")
    dt0 = _numbers(g, "dt0")
    if dt0 is not None and len(dt0) != 1:
        raise InvalidInputError("`dt0` must be one number.")
    max_steps = g.get("max_steps")
    batch_steps = g.get("batch_steps", ["shared"])
    if isinstance(batch_steps, str):
        batch_steps = [batch_steps]
    if not isinstance(batch_steps, list) or not batch_steps or any(b not in BATCH_STEPS for b in batch_steps):
        raise InvalidInputError(f"`batch_steps` must be one of {fmt_choices(BATCH_STEPS)} or a non-empty list of "
                                f"them; got {g.get('batch_steps')!r}.")
    batch_steps = list(dict.fromkeys(batch_steps))
    steps = []
    if dt is not None and "batch_steps" in g and rtol is None:
        raise InvalidInputError("`batch_steps` chooses how adaptive steps are shared; it does not apply to `dt` "
                                "(fixed steps).")
    if dt is not None and rtol is not None:
        raise InvalidInputError(
            "give `rtol`/`atol` (adaptive steps) or `dt` (fixed steps), not both in one table (the command line "
            "refuses --rtol with --dt too); use one [[grid]] table for each kind."
        )
    if rtol is None and atol is not None:
        raise InvalidInputError("`atol` needs `rtol`.")
    if rtol is None and dt is None:
        rtol, atol = [Adaptive().rtol], [Adaptive().atol]
    if rtol is not None:
        if atol is None:
            atol = list(rtol)
        elif len(atol) == 1:
            atol = atol * len(rtol)
        elif len(atol) != len(rtol):
            raise InvalidInputError(f"`atol` must be one number or a list as long as `rtol` ({len(rtol)}).")
        for r, a in zip(rtol, atol):
            kw = {} if max_steps is None else {"max_steps": max_steps}
            for bs in batch_steps:
                s = Adaptive(rtol=r, atol=a, dt0=dt0[0] if dt0 else None, batch_steps=bs, **kw)
                spec = {"kind": "adaptive", "rtol": s.rtol, "atol": s.atol, "dt0": s.dt0, "max_steps": s.max_steps}
                if s.per_sample:
                    spec["batch_steps"] = s.batch_steps
                steps.append(spec)
    for d in dt or []:
        s = Fixed(dt=d, **({} if max_steps is None else {"max_steps": max_steps}))
        steps.append({"kind": "fixed", "dt": s.dt, "max_steps": s.max_steps})
    return steps


def _plan(g: dict, base_dir: str, sweep_name: str, dropped: list[str], budget: list[int],
          max_cells: int) -> dict:
    """Validate one grid and count its cells from the list lengths, building nothing expensive; ``budget[0]`` (cells
    still allowed) is checked and decreased. :func:`_build` makes the cells."""
    problems = _problems(g, base_dir, budget[0], max_cells)
    backends = _list(g, "backends", ["reference"], item=lambda x: isinstance(x, str))
    for b in backends:
        if b not in BACKENDS:
            raise InvalidInputError(f"unknown backend {b!r}; expected one of {fmt_choices(BACKENDS)}.")
    pairs, explicit = _methods(g, budget[0], max_cells)
    steps = _steps(g)
    devices = _list(g, "devices", ["cpu"], item=lambda x: isinstance(x, str) and x)
    dtypes = _list(g, "dtypes", ["float64"], item=lambda x: x in DTYPES)
    repeats = _posint(g, "repeats", 3)
    replicates = _posint(g, "replicates", 1)
    threads = _posint(g, "threads", 1)
    timeout = g.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise InvalidInputError(f"`timeout` must be a positive number of seconds; got {timeout!r}.")
    with_reference = _bool(g, "with_reference", True)
    save_gradients = _bool(g, "save_gradients", False)
    taylor = _bool(g, "taylor", False)
    tags = g.get("tags", {})
    if not isinstance(tags, dict):
        raise InvalidInputError(f"`tags` must be a table; got {tags!r}.")
    tags = {**tags, "sweep": sweep_name}
    resources = _resources(g)

    combos = _combos(pairs, steps, explicit, dropped)

    count = len(problems) * len(backends) * len(combos) * len(devices) * len(dtypes) * replicates
    if count > budget[0]:
        raise _too_many(max_cells - budget[0] + count, max_cells)
    budget[0] -= count
    return {"problems": problems, "backends": backends, "combos": combos, "devices": devices, "dtypes": dtypes,
            "replicates": replicates, "repeats": repeats, "timeout": float(timeout), "threads": threads,
            "with_reference": with_reference, "save_gradients": save_gradients, "tags": tags, "resources": resources,
            "taylor": taylor}


def _build(plan: dict) -> list[Cell]:
    """The cells of a :func:`_plan`: each problem built once (validating its overrides now, not in a worker an hour
    later), then the product."""
    built = []
    for spec in plan["problems"]:
        try:
            p = build_problem(spec)
        except InvalidInputError as e:
            what = spec.get("name") or spec.get("file")
            raise InvalidInputError(f"problem {what!r} with overrides {spec['overrides']}: {e}") from None
        built.append((spec, p, p.fingerprint()))  # once per problem, not once per cell

    combos = [(solver.name, dataclasses.asdict(solver), sens.name, dataclasses.asdict(sens), step)
              for solver, sens, step in plan["combos"]]
    cells = []
    for (spec, p, fingerprint), backend, (s_name, s_opts, g_name, g_opts, step), device, dtype, rep in \
            itertools.product(built, plan["backends"], combos, plan["devices"], plan["dtypes"],
                              range(plan["replicates"])):
        cells.append(Cell(
            problem=spec, problem_name=p.name, problem_fingerprint=fingerprint, t1=float(p.t1), backend=backend,
            solver={"name": s_name, "options": dict(s_opts)}, sensitivity={"name": g_name, "options": dict(g_opts)},
            step=step, device=device, dtype=dtype, replicate=rep, repeats=plan["repeats"], timeout=plan["timeout"],
            threads=plan["threads"], with_reference=plan["with_reference"], save_gradients=plan["save_gradients"],
            tags=dict(plan["tags"]), taylor=plan["taylor"],
            resources=cell_resources(backend, device, plan["resources"]),
        ))
    return cells


def cells_from_json(items: list[dict[str, Any]]) -> list[Cell]:
    """Cells back from :meth:`Cell.to_json` dicts."""
    return [Cell.from_json(x) for x in items]
