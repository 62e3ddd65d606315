"""``crossode report`` on a training results file: the training figures and the runs table."""

import pytest

from crossode.train import load_training
from crossode.train._report import is_training_file, time_to_target

from .conftest import crossode

pytestmark = [pytest.mark.torch, pytest.mark.jax]


@pytest.mark.slow  # shares the spiral run of test_run.py
def test_report_draws_the_training_figures_and_table(spiral_run, tmp_path):
    _, out, proc = spiral_run
    assert proc.returncode == 0, proc.stderr
    assert is_training_file(out)
    rep = tmp_path / "rep"
    p = crossode("report", out, "--out", rep, timeout=300)
    assert p.returncode == 0, p.stderr
    figs = {f.name for f in (rep / "figures").iterdir()}
    assert {"loss.png", "time_per_iteration.png", "nfe.png", "memory.png", "metrics.png",
            "trajectories.png"} <= figs
    md = (rep / "report.md").read_text()
    assert "## Failed runs (1)" in md and "max_steps" in md
    table = (rep / "tables" / "runs.md").read_text()
    assert "s to loss <= 60" in table and "rk4+direct" in table and "not reached" not in table.split("\n")[2]
    assert (rep / "tables" / "iterations.csv").exists()


@pytest.mark.slow
def test_time_to_target_and_loaded_frames(spiral_run):
    _, out, _ = spiral_run
    runs, its = load_training(out)
    assert len(runs) == 3 and set(runs["status"]) == {"ok", "max_steps"}
    g = its[its["run"] == "spiral/torch/rk4+direct/dt=0.05"]
    wall, k = time_to_target(g, "loss", 60.0)
    first = g[(g["loss"] <= 60.0)].sort_values("iteration").iloc[0]
    assert (wall, k) == (first["wall_s"], first["iteration"]) and 1 <= k <= 8
    assert time_to_target(g, "loss", -1.0) == (None, None)
    assert time_to_target(g, "extrapolation_error", 100.0)[1] == 0  # metrics are at the start too


def test_a_sweep_results_file_is_not_a_training_file(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"problem": "linear", "backend": "reference", "status": "ok"}\n')
    assert not is_training_file(path)


@pytest.mark.slow
def test_a_run_killed_mid_way_is_reported_incomplete(spiral_run, tmp_path):
    import json

    from .conftest import records

    _, out, _ = spiral_run
    recs = records(out)
    cut = [r for r in recs if not (r["kind"] == "train_run" and r["backend"] == "jax")]
    path = tmp_path / "killed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in cut))
    runs, _ = load_training(path)
    assert set(runs["status"]) == {"ok", "max_steps", "incomplete"}
    p = crossode("report", path, "--out", tmp_path / "rep", timeout=300)
    assert p.returncode == 0, p.stderr
    assert "incomplete" in (tmp_path / "rep" / "report.md").read_text()
