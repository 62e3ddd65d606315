"""Reports: DataFrame columns, Markdown/CSV tables, figures, failures shown (not dropped), the CLI, light imports."""

import json
import subprocess
import sys

import pytest

pd = pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

from crossode import Record  # noqa: E402
from crossode.sweep import load_records, write_report  # noqa: E402


def make(backend, solver, sens, *, status="ok", rtol=None, dt=None, t1=1.0, err=None, time_s=None, mem=None,
         nfe=(10, 20), message=""):
    ok = status == "ok"
    r = Record(problem="linear", backend=backend, solver=solver, sensitivity=sens, rtol=rtol,
               atol=rtol, dt=dt, status=status, message=message, threads=1,
               grad_error=err if ok else None, time_gradient_s=time_s if ok else None,
               peak_memory_bytes=mem if ok else None, memory_kind="cpu_rss" if ok else None,
               nfe_forward=nfe[0] if ok else None, nfe_backward=nfe[1] if ok else None,
               versions={"numpy": "2", backend: "1.0"}, reference="closed_form",
               tags={"cell": f"{backend}{solver}{sens}{rtol}{dt}{t1}", "t1": t1, "sweep": "demo",
                     "git_commit": "abc123", "worker_wall_s": 0.5,
                     "machine": {"cpu": "Test CPU", "cores": 2, "gpu": None, "os": "Linux"}})
    return r.to_dict()


@pytest.fixture
def results(tmp_path):
    recs = []
    for i, rtol in enumerate([1e-3, 1e-5, 1e-7]):
        for b in ("torch", "jax"):
            recs.append(make(b, "dopri5", "direct", rtol=rtol, err=rtol / 3, time_s=0.01 * (i + 1)))
            recs.append(make(b, "dopri5", "backsolve", rtol=rtol, err=rtol * 5, time_s=0.02 * (i + 1)))
    recs.append(make("torch", "dopri5", "backsolve", rtol=1e-9, status="max_steps", message="hit max_steps=100"))
    recs.append(make("julia", "dopri5", "direct", rtol=1e-3, status="unavailable", message="no Julia"))
    for t1 in (1.0, 4.0, 16.0):
        recs.append(make("torch", "alf", "mali", dt=0.1, t1=t1, err=1e-4, time_s=0.01 * t1, mem=2e6))
        recs.append(make("torch", "alf", "direct", dt=0.1, t1=t1, err=1e-4, time_s=0.01 * t1, mem=2e6 * t1))
    recs.append(make("torch", "dopri5", "checkpointed", dt=0.1, t1=64.0, status="timeout",
                     message="ran past 5 s"))
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def test_load_records_frame(results):
    df = load_records(results)
    assert len(df) == 21
    for col in ("problem", "backend", "method", "series", "step", "t1", "cell", "status", "grad_error", "failed",
                "not_run", "peak_memory_mb", "time_gradient_ms"):
        assert col in df.columns
    assert df["failed"].sum() == 2 and df["not_run"].sum() == 1
    assert set(df["step"]) >= {"rtol=0.001", "dt=0.1"}


def test_write_report_tables_figures_and_failures(results, tmp_path):
    out = tmp_path / "rep"
    md = write_report(results, out)
    text = open(md).read()
    for fig in ("work_precision", "error_vs_rtol", "memory_vs_length", "nfe"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 10_000
        assert f"figures/{fig}.png" in text
    for table in ("summary", "agreement", "nfe", "failures", "records"):
        assert (out / "tables" / f"{table}.csv").exists()
    failures = pd.read_csv(out / "tables" / "failures.csv")
    assert set(failures["status"]) == {"**max_steps**", "**timeout**", "**unavailable**"}
    agreement = pd.read_csv(out / "tables" / "agreement.csv", dtype=str, keep_default_na=False)
    assert "**max steps**" in agreement["torch"].tolist() and "julia" in agreement.columns
    assert "Test CPU" in text and "abc123" in text and "threads per cell" in text
    html = (out / "report.html").read_text()
    assert "<img src='figures/work_precision.png'" in html and "class='fail'" in html


def test_report_cli(results, tmp_path):
    out = subprocess.run([sys.executable, "-m", "crossode", "report", str(results), "--out", str(tmp_path / "r")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "r" / "report.md").exists() and (tmp_path / "r" / "report.html").exists()
    missing = subprocess.run([sys.executable, "-m", "crossode", "report", str(tmp_path / "nope.jsonl")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_import_sweep_is_light():
    code = ("import sys, crossode.sweep, crossode.cli\ncrossode.cli.build_parser()\n"
            "print([m for m in ('pandas', 'matplotlib', 'torch', 'jax') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def test_report_cli_one_line_errors(results, tmp_path):
    """`crossode report DIR` said "does not exist"; `--out` on an existing file gave a traceback (issue 15)."""
    def report(*args):
        return subprocess.run([sys.executable, "-m", "crossode", "report", *map(str, args)], capture_output=True,
                              text=True, timeout=120)

    d = report(tmp_path)
    assert d.returncode == 2 and "is a directory" in d.stderr and len(d.stderr.strip().splitlines()) == 1
    existing = tmp_path / "existing.txt"
    existing.write_text("keep me")
    f = report(results, "--out", existing)
    assert f.returncode == 2 and "not a directory" in f.stderr and "Traceback" not in f.stderr
    assert len(f.stderr.strip().splitlines()) == 1 and existing.read_text() == "keep me"


def test_report_on_non_utf8_and_garbage_lines_warns_with_line_numbers(results, tmp_path):
    """A non-UTF8 JSONL gave a UnicodeDecodeError traceback; garbage lines were skipped silently (issue 15)."""
    lines = results.read_bytes().splitlines(keepends=True)
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"".join(lines[:3]) + b"caf\xe9 \xff\n" + b"{not json\n" + b"".join(lines[3:]))
    out = subprocess.run([sys.executable, "-m", "crossode", "report", str(bad), "--out", str(tmp_path / "r")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "bad.jsonl:4: not UTF-8 text" in out.stderr and "bad.jsonl:5: not a JSON record" in out.stderr
    assert "Traceback" not in out.stderr
    assert len(pd.read_csv(tmp_path / "r" / "tables" / "records.csv")) == len(lines)


def test_report_header_names_each_reference_method(tmp_path):
    """Records mixing the closed form and DOP853 named only the most common one (issue 15)."""
    a = make("torch", "dopri5", "direct", rtol=1e-6, err=1e-7, time_s=0.01)
    b = make("torch", "dopri5", "backsolve", rtol=1e-6, err=1e-7, time_s=0.01)
    b.update(problem="lotka_volterra", reference="sensitivity(DOP853, rtol=1e-12)")
    b["tags"]["cell"] = "other"
    path = tmp_path / "mixed.jsonl"
    path.write_text(json.dumps(a) + "\n" + json.dumps(b) + "\n")
    text = open(write_report(path, tmp_path / "rep")).read()
    assert "closed_form for linear" in text and "sensitivity(DOP853, rtol=1e-12) for lotka_volterra" in text
