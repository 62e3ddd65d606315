"""Neural-ODE gradients at scale, crossode against its peers side by side (issue 14 §4 and §6).

For each cell (the zoo's ``mlp_fit``: a batch of states, ``y' = MLP([y, t])``, mse loss on ``y(T)``; see
``_cells.py``) and each framework, ONE fresh process builds every contender, checks its gradient against the
independent reference (:func:`crossode.reference`, disk-cached), and times all of them in interleaved rounds
(``_measure.py``): torch crossode Direct / Backsolve / MALI against torchdiffeq ``odeint`` / ``odeint_adjoint``,
torchode and TorchDiffEqPack's MALI (``_torch_side.py``); JAX crossode Direct / Backsolve / MALI against
hand-written Diffrax with ``RecursiveCheckpointAdjoint()`` / ``BacksolveAdjoint()`` (``_jax_side.py``; MALI has
no Diffrax peer). Peak memory: torch in forked children (peak RSS; CUDA: the allocator's peak), JAX the compiled
program's XLA temporary buffer; the memory-target cell (batch 2048, MLP 64-256-64, T = 1 and 16) measures peak RSS
for each contender in a process of its own in both frameworks.

Scans vary one axis at a time from the base point (batch 256, MLP 32-128-128-32, T = 1, float32): batch 64 ->
4096, width 64 -> 512, T 1 -> 16, each in float32 and float64.

Run (from the repository root; about 35 minutes on the shared 2-core machine, ``--quick`` about 2 minutes):

    OMP_NUM_THREADS=1 PYTHONPATH=. python comparisons/scale/bench.py [--quick] [--device cpu|cuda]
        [--frameworks torch,jax] [--dtypes float32,float64] [--out DIR]
    python comparisons/scale/bench.py --report DIR      # tables and figures again from DIR/results.json

Writes ``results.json`` (every row, the ratios, the targets), ``results.csv``, ``results.md`` and the figures into
``--out`` (default ``comparisons/scale/results``; ``--quick``: ``/tmp/crossode-scale-quick``). With
``--device cuda`` torch runs on CUDA and JAX on its GPU; a framework without that device is skipped with one line,
and the run exits with status 1 when nothing could run.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from _cells import ATOL, MAX_STEPS, RTOL, contenders, make_problem, memory_cells, scan_cells, widths_of  # noqa: E402

RESULT_MARK = "@@SCALE-RESULT "
FRAMEWORKS = ("torch", "jax")


# ------------------------------------------------------------------------------------------------ children


def _side(framework: str):
    if framework == "torch":
        import _torch_side as side
    else:
        import _jax_side as side
    return side


def _row(cell: dict, framework: str, spec, device: str) -> dict:
    key, library, method, label = spec
    return {"cell": cell["id"], "scans": cell["scans"], "batch": cell["batch"], "width": cell.get("width"),
            "widths": "-".join(map(str, widths_of(cell))), "T": cell["T"], "dtype": cell["dtype"],
            "device": device, "framework": framework, "key": key, "library": library, "method": method,
            "label": label, "status": "ok", "message": ""}


def _errors(row: dict, out, ref, dtype: str) -> None:
    import numpy as np

    import crossode as co

    loss, dp, dy0 = out
    g = np.concatenate([np.ravel(dp), np.ravel(dy0)])
    row.update(loss=float(loss), loss_error=abs(loss - ref.loss) / max(abs(ref.loss), 1e-300),
               grad_error=co.relative_error(g, ref.grad), dparams_error=co.relative_error(dp, ref.dparams),
               dy0_error=co.relative_error(dy0, ref.dy0), reference=ref.method)
    if not np.all(np.isfinite(g)):
        row.update(status="diverged", message="non-finite gradient")
    elif row["grad_error"] > co.error_limit(RTOL, dtype):
        row.update(status="inaccurate", message=f"gradient error {row['grad_error']:.3g} > the limit "
                                                f"{co.error_limit(RTOL, dtype):.3g} of rtol={RTOL:g}, {dtype}")


def _failed(row: dict, e: BaseException) -> None:
    import crossode as co

    if isinstance(e, co.SolverFailure):
        row.update(status=e.status, message=e.message)
    else:
        row.update(status="crashed", message=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300])


def _torch_memory(spec, cell: dict, problem, ref, device: str) -> dict:
    """Peak RSS of one gradient of ``spec`` (runs inside a forked child, see ``_measure.py``)."""
    import gc

    from crossode._harness import peak_rss_delta

    side = _side("torch")
    tiny = make_problem(dict(cell, batch=2, T=max(cell["T"] / 16, 0.05)))
    side.build(spec, tiny, cell["dtype"], device, RTOL, ATOL, MAX_STEPS).gradient()  # lazy initialisation
    c = side.build(spec, problem, cell["dtype"], device, RTOL, ATOL, MAX_STEPS)
    gc.collect()
    row = {}
    try:
        (out, info), peak = peak_rss_delta(c.counted)
    except Exception as e:  # noqa: BLE001 - a failure is a status
        _failed(row, e)
        return row
    row.update(info, peak_bytes=peak, memory_kind="cpu_rss")
    _errors(row, out, ref, cell["dtype"])
    return row


def child_time(framework: str, cell: dict, device: str, settings: dict) -> list[dict]:
    """Every contender of ``framework`` on ``cell``: errors, counts, interleaved timing, memory."""
    import crossode as co
    from _measure import in_fork, interleaved, rounds_for, summarise

    side = _side(framework)
    problem = make_problem(cell)
    ref = co.reference(problem)
    specs = contenders(framework, memory=settings.get("memory_cell", False))
    rows = {s[0]: _row(cell, framework, s, device) for s in specs}
    for s in specs:
        why = side.missing(s[1])
        if why:
            rows[s[0]].update(status="unavailable", message=why)
    live = [s for s in specs if rows[s[0]]["status"] == "ok"]
    if framework == "torch" and device == "cpu" and settings.get("memory", True):
        for s in live:  # forked before this process computes anything (clean heap)
            m = in_fork(lambda s=s: _torch_memory(s, cell, problem, ref, device), settings["memory_timeout"])
            if settings.get("memory_only"):
                rows[s[0]].update(m)
            else:
                rows[s[0]].update(peak_bytes=m.get("peak_bytes"), memory_kind=m.get("memory_kind"),
                                  memory_status=m.get("status", "ok"))
    if settings.get("memory_only"):
        return list(rows.values())
    built, single = {}, {}
    for s in live:
        row = rows[s[0]]
        try:
            c = side.build(s, problem, cell["dtype"], device, RTOL, ATOL, MAX_STEPS)
            out, info = c.counted()  # also the warm-up
            row.update(info)
            if getattr(c, "compile_s", None) is not None:
                row["compile_s"] = c.compile_s
            if getattr(c, "temp_bytes", None) is not None:
                row.update(peak_bytes=c.temp_bytes, memory_kind="xla_temp")
            _errors(row, out, ref, cell["dtype"])
            t = time.perf_counter()
            c.gradient()
            c.sync()
            single[s[0]] = time.perf_counter() - t
        except Exception as e:  # noqa: BLE001 - a failure is a status
            _failed(row, e)
            continue
        if row["status"] in ("ok", "inaccurate"):
            built[s[0]] = c
    if built:
        rounds = rounds_for({k: single[k] for k in built}, settings["budget_s"], settings["min_rounds"],
                            settings["max_rounds"])
        fns = {}
        for k, c in built.items():
            def fn(c=c):
                c.gradient()
                c.sync()
            fns[k] = fn
        try:
            times = interleaved(fns, {k: single[k] for k in built}, rounds, settings["round_s"])
        except Exception as e:  # noqa: BLE001 - a contender that fails only while timed
            for k in built:
                _failed(rows[k], e)
            times = {}
        for k, ts in times.items():
            rows[k].update(summarise(ts), rounds=rounds)
    if framework == "torch" and device == "cuda":
        import torch

        for k, c in built.items():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            c.gradient()
            torch.cuda.synchronize()
            rows[k].update(peak_bytes=torch.cuda.max_memory_allocated() - base, memory_kind="cuda_allocator")
    return list(rows.values())


def child_jax_memory(cell: dict, key: str, device: str) -> list[dict]:
    """Peak RSS of one JAX gradient (after compile and a warm-up call) in this fresh process."""
    import gc

    import crossode as co
    from crossode._harness import peak_rss_delta

    side = _side("jax")
    spec = next(s for s in contenders("jax", memory=True) if s[0] == key)
    problem = make_problem(cell)
    ref = co.reference(problem)
    row = _row(cell, "jax", spec, device)
    try:
        c = side.build(spec, problem, cell["dtype"], device, RTOL, ATOL, MAX_STEPS)
        c.gradient()
        gc.collect()
        (out, info), peak = peak_rss_delta(c.counted)
    except Exception as e:  # noqa: BLE001
        _failed(row, e)
        return [row]
    row.update(info, peak_bytes=peak, memory_kind="cpu_rss", xla_temp_bytes=c.temp_bytes, compile_s=c.compile_s)
    _errors(row, out, ref, cell["dtype"])
    return [row]


def child_main(argv) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", required=True)
    ap.add_argument("--framework", required=True)
    ap.add_argument("--cell", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--settings", default="{}")
    ap.add_argument("--key")
    a = ap.parse_args(argv)
    cell = json.loads(a.cell)
    if a.child == "time":
        rows = child_time(a.framework, cell, a.device, json.loads(a.settings))
    elif a.child == "jaxmem":
        rows = child_jax_memory(cell, a.key, a.device)
    elif a.child == "probe":
        rows = [{"framework": a.framework, "reason": _probe(a.framework, a.device)}]
    else:
        raise SystemExit(f"unknown child {a.child!r}")
    sys.stdout.write(RESULT_MARK + json.dumps(rows, default=float) + "\n")
    sys.stdout.flush()
    os._exit(0)  # skip the frameworks' teardown


def _probe(framework: str, device: str) -> str | None:
    """Why ``framework`` cannot run on ``device`` here, or ``None``."""
    import crossode as co

    reason = co.unavailable_reason(framework)
    if reason:
        return reason
    dev = {"torch": {"gpu": "cuda"}, "jax": {"cuda": "gpu"}}[framework].get(device, device)
    devices = co.get_backend(framework).devices()
    if dev not in devices:
        return f"{framework} sees no {dev} device here (devices: {', '.join(devices)})"
    return None


# ------------------------------------------------------------------------------------------------ driver


def _spawn(args: list[str], timeout: float) -> tuple[list[dict] | None, str]:
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), *args]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return None, f"timeout after {timeout:g} s"
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):]), ""
    tail = (proc.stderr or proc.stdout).strip().splitlines()
    return None, f"exit {proc.returncode}: " + (tail[-1] if tail else "no output")


def _blank_rows(cell, framework, device, status, message, memory=False) -> list[dict]:
    return [dict(_row(cell, framework, s, device), status=status, message=message)
            for s in contenders(framework, memory)]


def _say(text: str) -> None:
    print(text, flush=True)


def _fmt_ms(x) -> str:
    return "-" if x is None else f"{1e3 * x:.1f}"


def _progress(rows: list[dict]) -> None:
    for r in rows:
        err, mem = r.get("grad_error"), r.get("peak_bytes")
        err = "-" if err is None else f"{err:.1e}"
        mem = "-" if mem is None else f"{mem / 2**20:.1f}"
        _say(f"  {r['framework']:5s} {r['label']:42s} {r['status']:12s} err {err} min {_fmt_ms(r.get('time_min_s'))} "
             f"ms med {_fmt_ms(r.get('time_median_s'))} ms steps {r.get('steps')} mem {mem} MiB "
             f"{r.get('message', '')[:90]}")


def _environment(device: str) -> dict:
    env = {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "XLA_FLAGS": os.environ.get("XLA_FLAGS"),
           "device": device}
    try:
        with open("/proc/cpuinfo") as fh:
            env["cpu"] = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), None)
    except OSError:
        pass
    try:
        env["loadavg_start"] = os.getloadavg()
    except OSError:
        pass
    return env


def _versions(framework: str, device: str) -> dict:
    code = ("import json,sys; sys.path.insert(0, %r); sys.path.insert(0, %r); import _%s_side as s; "
            "v = s.versions(); print(json.dumps(v))") % (str(ROOT), str(HERE), framework)
    if framework == "torch" and device == "cuda":
        code += "; import torch; print(json.dumps({'gpu': torch.cuda.get_device_name(0)}))"
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300).stdout
        v = {}
        for line in out.splitlines():
            if line.startswith("{"):
                v.update(json.loads(line))
        return v
    except (subprocess.TimeoutExpired, json.JSONDecodeError):
        return {}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="crossode's scale benchmark (issue 14 §4): see the module docstring.")
    ap.add_argument("--quick", action="store_true", help="a smoke run: tiny cells, few rounds (~2 minutes)")
    ap.add_argument("--preset", choices=("full", "quick", "gpu"), default=None,
                    help="cell set (default full; --quick = quick; gpu: a small GPU scan)")
    ap.add_argument("--device", choices=("cpu", "cuda", "gpu"), default="cpu",
                    help="cpu, or cuda/gpu: torch on CUDA and JAX on its GPU")
    ap.add_argument("--frameworks", default="torch,jax")
    ap.add_argument("--dtypes", default=None, help="comma list (default float32,float64; quick: float32)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-memory-cell", action="store_true", help="skip the memory-target cells")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per child process")
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="start no new cell after this many minutes (the rest are rows with status 'skipped')")
    ap.add_argument("--cells", help="comma list of cell ids of the preset to run (default: all; see results.md)")
    ap.add_argument("--budget-s", type=float, help="timing seconds per cell and framework (default: the preset's)")
    ap.add_argument("--report", metavar="DIR", help="only redraw tables and figures from DIR/results.json")
    args = ap.parse_args(argv)
    if args.max_minutes is not None and not args.max_minutes > 0:
        ap.error(f"--max-minutes must be a positive number; got {args.max_minutes:g}")
    if args.timeout is not None and not args.timeout > 0:
        ap.error(f"--timeout must be a positive number of seconds; got {args.timeout:g}")
    if args.budget_s is not None and not args.budget_s > 0:
        ap.error(f"--budget-s must be a positive number of seconds; got {args.budget_s:g}")
    if args.report:
        from _report import write_report

        data = json.loads((pathlib.Path(args.report) / "results.json").read_text())
        write_report(data, pathlib.Path(args.report))
        return 0
    preset = args.preset or ("quick" if args.quick else "full")
    device = {"gpu": "cuda"}.get(args.device, args.device)
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    bad = [f for f in frameworks if f not in FRAMEWORKS]
    if bad or not frameworks:
        ap.error(f"--frameworks must be a comma list of {', '.join(FRAMEWORKS)}; got {args.frameworks!r}")
    dtypes = [d.strip() for d in (args.dtypes or ("float32" if preset != "full" else "float32,float64")).split(",")]
    if any(d not in ("float32", "float64") for d in dtypes):
        ap.error(f"--dtypes must be a comma list of float32, float64; got {args.dtypes!r}")
    out = pathlib.Path(args.out or (HERE / "results" if preset == "full" else f"/tmp/crossode-scale-{preset}"))
    timeout = args.timeout or {"quick": 240.0, "gpu": 150.0}.get(preset, 900.0)
    settings = {"quick": dict(budget_s=2.0, min_rounds=2, max_rounds=3, round_s=0.05, memory_timeout=60.0),
                "gpu": dict(budget_s=6.0, min_rounds=3, max_rounds=10, round_s=0.1, memory_timeout=60.0),
                }.get(preset, dict(budget_s=8.0, min_rounds=3, max_rounds=10, round_s=0.25, memory_timeout=300.0))
    dev_arg = "cuda" if device == "cuda" else "cpu"
    if args.budget_s is not None:
        settings.update(budget_s=args.budget_s, max_rounds=max(settings["max_rounds"], 30))
    cells = scan_cells(preset, dtypes)
    mcells = [] if args.no_memory_cell else memory_cells(preset)
    if args.cells:
        want = [c.strip() for c in args.cells.split(",") if c.strip()]
        known = {c["id"] for c in cells + mcells}
        unknown = [c for c in want if c not in known]
        if unknown:
            ap.error(f"--cells: unknown cell id(s) {', '.join(unknown)}; the {preset} preset has "
                     f"{', '.join(sorted(known))}")
        cells = [c for c in cells if c["id"] in want]
        mcells = [c for c in mcells if c["id"] in want]

    t_start = time.perf_counter()
    skipped = {}
    for fw in frameworks:
        res, err = _spawn(["--child", "probe", "--framework", fw, "--cell", "{}", "--device", dev_arg], 300)
        reason = err if res is None else res[0]["reason"]
        if reason:
            skipped[fw] = reason
    live = [f for f in frameworks if f not in skipped]
    if skipped:
        _say("scale benchmark: skipping " + "; ".join(f"{fw} ({why})" for fw, why in skipped.items()))
    if not live:
        return 1
    environment = _environment(device)
    environment["versions"] = {fw: _versions(fw, device) for fw in live}
    import crossode as co

    refs = {}
    for c in cells + mcells:  # the reference (NumPy/SciPy) once per cell, before any timing; disk-cached
        t = time.perf_counter()
        ref = co.reference(make_problem(c))
        refs[c["id"]] = {"method": ref.method, "seconds": time.perf_counter() - t}
    _say(f"scale benchmark: {len(cells)} timing cells, {len(mcells)} memory cells, frameworks {', '.join(live)}, "
         f"device {device}; references ready in {time.perf_counter() - t_start:.0f} s")
    rows = []
    out.mkdir(parents=True, exist_ok=True)
    partial = out / "results.partial.json"

    limit_s = None if args.max_minutes is None else 60.0 * args.max_minutes

    def late(c, fws) -> bool:  # past --max-minutes: the cell's rows say so instead of running
        if limit_s is None or time.perf_counter() - t_start < limit_s:
            return False
        for fw in fws:
            keep(_blank_rows(c, fw, device, "skipped", f"--max-minutes {args.max_minutes:g} reached",
                             memory="memory_T" in c["scans"]))
        return True

    def keep(res):  # every finished cell is on disk at once (a run cut short keeps what it measured)
        _progress(res)
        rows.extend(res)
        partial.write_text(json.dumps({"environment": environment, "preset": preset, "rows": rows}, default=float))

    for c in mcells:  # the memory target first: it is the costliest cell and the one the issue names
        _say(f"[memory] {c['id']}")
        if late(c, live):
            continue
        if "torch" in live:
            # CPU: peak RSS of each contender in a forked child; CUDA: the allocator's peak after one timing round
            s = dict(settings, memory_cell=True, memory_only=device == "cpu", budget_s=0.0, min_rounds=1,
                     max_rounds=1)
            res, err = _spawn(["--child", "time", "--framework", "torch", "--cell", json.dumps(c), "--device",
                               dev_arg, "--settings", json.dumps(s)], timeout)
            keep(res if res is not None else _blank_rows(c, "torch", device, "crashed", err, memory=True))
        if "jax" in live and device != "cpu":  # GPU: the compiled programs' XLA temporary buffers
            s = dict(settings, memory_cell=True, budget_s=0.0, min_rounds=1, max_rounds=1)
            res, err = _spawn(["--child", "time", "--framework", "jax", "--cell", json.dumps(c), "--device",
                               dev_arg, "--settings", json.dumps(s)], timeout)
            keep(res if res is not None else _blank_rows(c, "jax", device, "crashed", err, memory=True))
        if "jax" in live and device == "cpu":  # a fresh process per contender (XLA cannot be forked)
            for s in contenders("jax", memory=True):
                res, err = _spawn(["--child", "jaxmem", "--framework", "jax", "--cell", json.dumps(c), "--device",
                                   dev_arg, "--key", s[0]], timeout)
                keep(res if res is not None else [dict(_row(c, "jax", s, device), status="crashed", message=err)])
    for i, c in enumerate(cells):
        _say(f"[{i + 1}/{len(cells)}] {c['id']} (scans: {', '.join(c['scans'])}), {time.perf_counter() - t_start:.0f} s")
        if late(c, live):
            continue
        for fw in live:
            res, err = _spawn(["--child", "time", "--framework", fw, "--cell", json.dumps(c), "--device", dev_arg,
                               "--settings", json.dumps(settings)], timeout)
            keep(res if res is not None else _blank_rows(c, fw, device, "timeout" if "timeout" in err
                                                         else "crashed", err))
    for r in rows:
        r["reference_s"] = refs.get(r["cell"], {}).get("seconds")
    wall = time.perf_counter() - t_start
    try:
        environment["loadavg_end"] = os.getloadavg()
    except OSError:
        pass
    data = {"environment": environment, "preset": preset, "skipped": skipped,
            "settings": dict(settings, rtol=RTOL, atol=ATOL, max_steps=MAX_STEPS, dtypes=dtypes),
            "references": refs, "rows": rows, "wall_s": wall}
    from _report import write_report

    write_report(data, out)
    partial.unlink(missing_ok=True)
    _say(f"scale benchmark: {len(rows)} rows in {wall:.0f} s -> {out}")
    return 0 if any(r["status"] in ("ok", "inaccurate") for r in rows) else 1


if __name__ == "__main__":
    if "--child" in sys.argv[1:]:
        sys.exit(child_main(sys.argv[1:]))
    sys.exit(main())
