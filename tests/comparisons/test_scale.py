"""comparisons/scale (issue 14 §4) and comparisons/gpu/run.sh (§6): the grid, the target arithmetic, the fair-timing
and memory helpers, a tiny real run, and clean skips without a GPU."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCALE = ROOT / "comparisons" / "scale"
sys.path.insert(0, str(SCALE))

import _cells  # noqa: E402
import _measure  # noqa: E402
import _report  # noqa: E402


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def test_default_grid_covers_the_issue_axes_in_both_dtypes():
    cells = _cells.scan_cells("full", ["float32", "float64"])
    ids = [c["id"] for c in cells]
    assert len(ids) == len(set(ids)) == 14  # shared base cells run once
    for dtype in ("float32", "float64"):
        mine = [c for c in cells if c["dtype"] == dtype]
        batches = sorted(c["batch"] for c in mine if "batch" in c["scans"])
        widths = sorted(c["width"] for c in mine if "width" in c["scans"])
        ts = sorted(c["T"] for c in mine if "T" in c["scans"])
        assert (batches[0], batches[-1]) == (64, 4096) and (widths[0], widths[-1]) == (128 if dtype == "float64"
                                                                                       else 64, 512)
        assert (ts[0], ts[-1]) == (1.0, 16.0)
    mem = _cells.memory_cells("full")
    assert [(c["batch"], _cells.widths_of(c), c["T"]) for c in mem] == [(2048, [64, 256, 64], 1.0),
                                                                     (2048, [64, 256, 64], 16.0)]
    p = _cells.make_problem(mem[1])
    assert p.y0.shape == (2048, 64) and p.tspan == (0.0, 16.0)


def _row(cell, key, method, t=None, peak=None, T=1.0, scans=("batch",), status="ok", fw="torch"):
    lib = "crossode" if key.startswith("co-") else "peer"
    return {"cell": cell, "framework": fw, "key": key, "library": lib, "method": method, "label": key,
            "scans": list(scans), "batch": 64, "width": 16, "T": T, "dtype": "float32", "status": status,
            "time_min_s": t, "time_median_s": None if t is None else 1.1 * t, "peak_bytes": peak, "grad_error": 1e-7}


def test_time_target_is_judged_per_method_and_peer_at_every_cell():
    rows = [_row("a", "co-direct", "direct", 1.0), _row("a", "tdq-odeint", "direct", 2.0),
            _row("b", "co-direct", "direct", 3.0), _row("b", "tdq-odeint", "direct", 2.0),
            _row("a", "co-mali", "mali", 1.0), _row("a", "tdep-mali", "mali", 4.0),
            _row("b", "co-mali", "mali", None, status="crashed"), _row("b", "tdep-mali", "mali", 4.0)]
    ratios = _report.ratio_rows(rows)
    assert {(e["cell"], e["method"]): round(e.get("ratio_min", -1), 3) for e in ratios} == {
        ("a", "direct"): 0.5, ("b", "direct"): 1.5, ("a", "mali"): 0.25, ("b", "mali"): -1}
    tg = {t["method"]: t for t in _report.targets(rows, ratios)["time"]}
    assert tg["direct"]["status"] == "missed" and tg["direct"]["missed_cells"] == [("b", 1.5, 1.5)]
    assert tg["mali"]["status"] == "met" and tg["mali"]["untimed_cells"] == [("b", "crashed", "ok")]


def test_memory_target_is_mali_growth_over_direct_growth():
    m = ("memory_T",)
    rows = [_row("m1", "co-mali", "mali", peak=100, T=1.0, scans=m), _row("m16", "co-mali", "mali", peak=104, T=16.0,
                                                                           scans=m),
            _row("m1", "co-alf-direct", "alf-direct", peak=100, T=1.0, scans=m),
            _row("m16", "co-alf-direct", "alf-direct", peak=1100, T=16.0, scans=m),
            _row("m1", "co-direct", "direct", peak=100, T=1.0, scans=m),
            _row("m16", "co-direct", "direct", peak=150, T=16.0, scans=m)]
    mem = {e["direct"]: e for e in _report.targets(rows, [])["memory"] if "direct" in e}
    assert mem["co-alf-direct"]["ratio"] == pytest.approx(0.004) and mem["co-alf-direct"]["status"] == "met"
    assert mem["co-direct"]["ratio"] == pytest.approx(0.08) and mem["co-direct"]["status"] == "missed"


def test_interleaved_rounds_rotate_and_sample_fast_contenders_more():
    calls = []
    fns = {k: (lambda k=k: calls.append(k)) for k in "abc"}
    times = _measure.interleaved(fns, {"a": 1.0, "b": 1.0, "c": 0.01}, rounds=3, round_s=0.05)
    assert [len(times[k]) for k in "abc"] == [3, 3, 15]
    # 7 calls a round (c 5 times back to back); round r starts with the r-th key
    assert (calls[0], calls[7], calls[14]) == ("a", "b", "c") and calls[8:13] == ["c"] * 5, calls


def test_memory_child_failures_are_statuses():
    assert _measure.in_fork(lambda: {"x": 1}, 30) == {"x": 1}
    out = _measure.in_fork(lambda: 1 / 0, 30)
    assert out["status"] == "crashed" and "ZeroDivisionError" in out["message"]
    out = _measure.in_fork(lambda: os._exit(3), 30)
    assert out["status"] == "crashed" and "code 3" in out["message"]


def test_bad_arguments_exit_2_with_one_line(capsys):
    import bench

    for args, word in ((["--frameworks", "tensorflow"], "--frameworks"), (["--dtypes", "float16"], "--dtypes"),
                       (["--max-minutes", "0"], "--max-minutes"), (["--timeout", "-1"], "--timeout")):
        with pytest.raises(SystemExit) as e:
            bench.main(args)
        err = capsys.readouterr().err
        assert e.value.code == 2 and word in err.splitlines()[-1] and "Traceback" not in err, err


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.slow
def test_cuda_run_without_a_gpu_skips_every_framework_in_one_line(tmp_path):
    if _has_gpu():
        pytest.skip("a CUDA device is present here")
    out = subprocess.run([sys.executable, str(SCALE / "bench.py"), "--quick", "--device", "cuda", "--out",
                          str(tmp_path / "o")], capture_output=True, text=True, timeout=300, env=_env())
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 1 and len(lines) == 1, out.stdout + out.stderr
    assert "skipping torch" in lines[0] and "jax (" in lines[0] and "cuda" in lines[0].lower()
    assert not (tmp_path / "o").exists() and "Traceback" not in out.stderr


@pytest.mark.slow
def test_gpu_script_on_a_cpu_machine_says_why_in_one_line(tmp_path):
    if _has_gpu():
        pytest.skip("a CUDA device is present here")
    out = subprocess.run(["bash", str(ROOT / "comparisons" / "gpu" / "run.sh"), str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=300,
                         env=dict(_env(), PYTHON=sys.executable))
    assert out.returncode == 1 and out.stdout == "", (out.stdout, out.stderr)
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and "cannot run" in err[0] and "GPU" in err[0], err
    assert not (tmp_path / "o").exists()
    usage = subprocess.run(["bash", str(ROOT / "comparisons" / "gpu" / "run.sh")], capture_output=True, text=True,
                           timeout=30)
    assert usage.returncode == 2 and "usage" in usage.stderr


@pytest.mark.slow
def test_tiny_torch_run_checks_every_gradient_and_writes_tables_and_figures(tmp_path):
    """A real quick run (torch side only, no memory cells): every contender's gradient is checked against the
    reference and timed; the tables and the figure come out."""
    out = subprocess.run([sys.executable, str(SCALE / "bench.py"), "--quick", "--frameworks", "torch",
                          "--no-memory-cell", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600,
                         env=_env())
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    data = json.loads((tmp_path / "results.json").read_text())
    rows = [r for r in data["rows"] if r["status"] != "unavailable"]
    assert {r["key"] for r in rows} >= {"co-direct", "co-backsolve", "co-mali", "tdq-odeint"}
    for r in rows:
        assert r["status"] == "ok", r
        assert r["grad_error"] < 1e-3 and r["reference"].startswith(("adjoint", "forward")), r
        assert r["time_min_s"] > 0 and r["n_times"] >= 2 and r["peak_bytes"] is not None
    # a peer not installed here (torchode, TorchDiffEqPack: the `bench` extra, not in CI) has no time to divide by
    timed = [e for e in data["ratios"] if e["peer_status"] != "unavailable"]
    assert {e["peer"] for e in timed} >= {"tdq-odeint"} and all("ratio_min" in e for e in timed)
    assert {t["method"] for t in data["targets"]["time"]} >= {"direct", "backsolve", "mali"}
    assert (tmp_path / "scan_batch_float32.png").stat().st_size > 10_000
    assert "## Time target" in (tmp_path / "results.md").read_text()


@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_script_on_a_gpu(tmp_path):
    if not _has_gpu():
        pytest.skip("no CUDA device here")
    out = subprocess.run(["bash", str(ROOT / "comparisons" / "gpu" / "run.sh"), str(tmp_path)], capture_output=True,
                         text=True, timeout=660, env=dict(_env(), PYTHON=sys.executable))
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "compare_report").is_dir() and (tmp_path / "scale" / "results.md").exists()
