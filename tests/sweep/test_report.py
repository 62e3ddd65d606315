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


# --------------------------------------------------------------------------- figures that read at a glance (issue 13)

from crossode.sweep import _report as R  # noqa: E402


def frame(recs, problem=None):
    for i, r in enumerate(recs):
        r["tags"]["cell"] = f"c{i}"
        if problem:
            r["problem"] = problem
    return R.records_frame(recs)


def _boxes(fig, ax):
    """Window extents of the visible texts and of every marker drawn in ``ax``."""
    import numpy as np
    from matplotlib.transforms import Bbox

    from matplotlib.text import Text

    renderer = fig.canvas.get_renderer()
    # Text's own extent: an Annotation's would include its leader line
    texts = [(t.get_text(), Text.get_window_extent(t, renderer)) for t in ax.texts if t.get_visible() and t.get_text()]
    markers = []
    for line in ax.lines:
        if line.get_marker() in (None, "", "None", "none"):
            continue
        r = line.get_markersize() * fig.dpi / 72 / 2
        for x, y in line.get_transform().transform(np.asarray(line.get_xydata(), float)):
            markers.append(Bbox([[x - r, y - r], [x + r, y + r]]))
    return texts, markers


def assert_nothing_overlaps(fig):
    """No two texts in a panel overlap, no text covers a marker, no two tick labels of an axis overlap."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        texts, markers = _boxes(fig, ax)
        for i, (ta, a) in enumerate(texts):
            for tb, b in texts[i + 1:]:
                assert not a.overlaps(b), f"{ax.get_title()}: {ta!r} overlaps {tb!r}"
            for m in markers:
                assert not a.overlaps(m), f"{ax.get_title()}: {ta!r} covers a marker"
        for axis in (ax.xaxis, ax.yaxis):
            labels = [t.get_window_extent(renderer) for t in shown_tick_labels(axis)]
            for i, a in enumerate(labels):
                for b in labels[i + 1:]:
                    assert not a.overlaps(b), f"{ax.get_title()}: tick labels overlap"


def shown_tick_labels(axis):
    """The major and minor tick labels with text whose tick lies inside the axis's view."""
    lo, hi = sorted(axis.get_view_interval())
    out = []
    for minor in (False, True):
        for loc, t in zip(axis.get_ticklocs(minor=minor), axis.get_ticklabels(minor=minor)):
            if t.get_visible() and t.get_text() and lo <= loc <= hi:
                out.append(t)
    return out


def tick_texts(axis):
    return [t.get_text() for t in shown_tick_labels(axis)]


@pytest.mark.parametrize("lo, hi", [(3.5, 7.5), (10.0, 15.0), (12.4, 12.9), (0.011, 0.05), (1.2e-5, 1.7e-5),
                                    (2e-3, 0.4), (1e-9, 1e-3), (1e-17, 10.0)])
def test_log_ticks_label_every_range(lo, hi):
    """Less than a decade gave no labels or overlapping minor ones (issue 13): always 2-6 round values inside."""
    vals = R._nice_log_ticks(lo, hi)
    assert 2 <= len(vals) <= 6 and all(lo <= v <= hi for v in vals), vals
    assert len(set(R._tick_texts(vals))) == len(vals)


def test_work_precision_narrow_time_range_has_readable_x_ticks():
    """Times spanning less than a decade labelled every minor tick, overlapping in a three-problem figure (issue 13)."""
    recs = []
    for problem in ("a", "b", "c"):
        for r in [make(b, "dopri5", s, rtol=rt, err=rt * k, time_s=t)
                  for b, k0 in (("torch", 1), ("jax", 1.3)) for s, k in (("direct", 0.3 * k0), ("backsolve", 3 * k0))
                  for rt, t in ((1e-3, 0.011), (1e-5, 0.03), (1e-7, 0.09))]:
            r["problem"] = problem
            recs.append(r)
    df = frame(recs)
    fig = R.fig_work_precision(df, None, R._Styles(df))
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert len(shown) == 3
    for ax in shown:
        assert ax.get_xscale() == "log" and len(tick_texts(ax.xaxis)) >= 2 and len(tick_texts(ax.yaxis)) >= 2
    assert_nothing_overlaps(fig)


def test_memory_vs_length_narrow_range_has_y_tick_labels():
    """Peak memory between 10 and 15 MB drew a log axis without a single y label (issue 13)."""
    recs = [make("torch", "alf", s, dt=0.05, t1=t1, err=1e-5, time_s=0.01, mem=m * 1e6)
            for t1 in (1.0, 4.0, 16.0, 64.0) for s, m in (("mali", 12.5 + t1 / 200), ("direct", 10 + t1 / 15))]
    df = frame(recs)
    fig = R.fig_memory_vs_length(df, None, R._Styles(df))
    ax = fig.axes[0]
    assert len(tick_texts(ax.yaxis)) >= 2, tick_texts(ax.yaxis)
    assert tick_texts(ax.xaxis) == ["1", "4", "16", "64"]
    assert_nothing_overlaps(fig)


def test_crowded_failures_labels_overlap_nothing():
    """Failures a few seconds apart (cross_backend's Robertson, pnode_stiff) had labels on top of each other and of
    the markers (issue 13); capped errors too. An all-failed panel says why it is empty."""
    stuck = []
    for k, (s, x) in enumerate((("mali", (3.2, 3.5)), ("backsolve", (5.7, 7.5)), ("direct", (7.5, 8.2)))):
        for b, wall in zip(("torch", "jax"), x):
            r = make(b, "dopri5" if s != "mali" else "alf", s, rtol=1e-6, status="max_steps", message="x")
            r["tags"]["worker_wall_s"] = wall
            stuck.append(r)
    mixed = []
    for i, (s, status) in enumerate((("mali", "max_steps"), ("backsolve", "diverged"), ("direct", "max_steps"))):
        for j, b in enumerate(("torch", "jax")):
            r = make(b, "dopri5" if s != "mali" else "alf", s, rtol=1e-6, status=status, message="x")
            r["tags"]["worker_wall_s"] = 3.5 + 1.5 * i + 0.4 * j
            mixed.append(r)
    for b in ("torch", "jax"):  # finished, with an exploded gradient (capped, labelled) and an ordinary one
        mixed.append(make(b, "kvaerno5", "direct", rtol=1e-6, err=1e44 if b == "jax" else 1e56, time_s=0.03))
        mixed.append(make(b, "kvaerno5", "direct", rtol=1e-4, err=1e-3, time_s=0.01))
    df = pd.concat([frame(stuck, "robertson"), frame(mixed, "stiff")], ignore_index=True)
    fig = R.fig_work_precision(df, None, R._Styles(df))
    empty, full = fig.axes[:2]
    assert any("no cell finished" in t.get_text() and "6 × max steps" in t.get_text() for t in empty.texts)
    labels = {t.get_text() for t in full.texts}
    assert {"jax 1e44", "torch 1e56", "failed"} <= labels and any("diverged" in t for t in labels), labels
    assert_nothing_overlaps(fig)


def test_nfe_bars_log_scale_and_empty_panel_says_why():
    """MALI's ~9000 evaluations hid every other bar on a linear scale; an all-failed panel was blank (issue 13)."""
    recs = [make("torch", "alf", "mali", rtol=1e-6, err=1e-7, time_s=1.0, nfe=(2987, 8860)),
            make("torch", "dopri5", "direct", rtol=1e-6, err=1e-7, time_s=0.01, nfe=(26, 24)),
            make("jax", "dopri5", "direct", rtol=1e-6, err=1e-7, time_s=0.01, nfe=(27, 75))]
    stuck = [make(b, "dopri5", "direct", rtol=1e-6, status="max_steps", message="x") for b in ("torch", "jax")]
    df = pd.concat([frame(recs), frame(stuck, "robertson")], ignore_index=True)
    fig = R.fig_nfe(df, None, R._Styles(df))
    full, empty = fig.axes[:2]
    assert full.get_yscale() == "log" and {"8860", "24", "26"} <= {t.get_text() for t in full.texts}
    assert any("no cell finished" in t.get_text() and "2 × max steps" in t.get_text() for t in empty.texts)
    assert_nothing_overlaps(fig)


def test_figures_fit_the_report_column_unscaled(results, tmp_path):
    """Large multi-panel figures were scaled down in the HTML until their text was unreadable (issue 13): any number
    of panels is laid out at most READ_WIDTH_PX wide (the HTML column), so the text is shown at its set size."""
    plt = R._plt()
    for n in (1, 2, 3, 7, 12):
        fig, axes = R._grid(plt, n)
        assert len(axes) == n and fig.get_figwidth() * fig.dpi <= R.READ_WIDTH_PX
        plt.close(fig)
    write_report(results, tmp_path / "rep")
    from PIL import Image

    pngs = sorted((tmp_path / "rep" / "figures").glob("*.png"))
    assert len(pngs) == 4 and all(Image.open(p).size[0] <= R.READ_WIDTH_PX for p in pngs)
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "max-width:1100px" in html and "img{max-width:100%" in html
