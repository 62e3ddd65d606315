"""``crossode train``: every run in its own worker, one record per iteration, the same start and data for all runs,
torch and JAX Direct on one grid agree to round-off, failures are statuses, resume and time limits."""

import numpy as np
import pytest

from crossode.sweep import InlineExecutor
from crossode.train import load_train_config, train, train_config_from_dict
from crossode.train._records import latest_attempts
from crossode.train._worker import RUNNER, minibatches

from .conftest import crossode, records

pytestmark = [pytest.mark.torch, pytest.mark.jax]

ITERATION_FIELDS = ("run", "backend", "solver", "sensitivity", "rtol", "atol", "dt", "dtype", "device", "iteration",
                    "loss", "grad_norm", "wall_s", "nfe_forward", "nfe_backward", "peak_memory_bytes", "status")


def by_run(recs):
    runs, iters = latest_attempts(recs)
    return {r["run"]: (r, iters[r["tags"]["cell"]]) for r in runs}


@pytest.mark.slow  # ~30 s: three worker processes, one JAX compilation
def test_torch_and_jax_direct_loss_curves_agree_to_round_off(spiral_run):
    _, out, proc = spiral_run
    assert proc.returncode == 0, proc.stderr
    runs = by_run(records(out))
    (rt, it_t), (rj, it_j) = runs["spiral/torch/rk4+direct/dt=0.05"], runs["spiral/jax/rk4+direct/dt=0.05"]
    assert rt["status"] == rj["status"] == "ok" and rt["iterations"] == rj["iterations"] == 8
    assert rt["init_params"] == rj["init_params"]  # the same starting point
    lt = np.array([r["loss"] for r in it_t[1:]])
    lj = np.array([r["loss"] for r in it_j[1:]])
    assert lt[-1] < 0.7 * lt[0]  # it trains
    np.testing.assert_allclose(lj, lt, rtol=1e-12)  # float64, the same grid: the same gradients and Adam steps
    np.testing.assert_allclose([r["grad_norm"] for r in it_j[1:]], [r["grad_norm"] for r in it_t[1:]], rtol=1e-10)
    assert rt["loss"] == lt[-1] and rj["nfe_forward"] == rt["nfe_forward"] == 4 * 58  # 2 RK4 steps per save interval of 1.5/29


@pytest.mark.slow
def test_one_record_per_iteration_with_the_issue_fields(spiral_run):
    _, out, proc = spiral_run
    assert proc.returncode == 0, proc.stderr
    for name, (run, its) in by_run(records(out)).items():
        if run["status"] != "ok":
            continue
        assert [r["iteration"] for r in its] == list(range(9)), name
        for r in its[1:]:
            missing = [f for f in ITERATION_FIELDS if f not in r or (r[f] is None and f not in ("rtol", "atol"))]
            assert not missing, (name, missing)
            assert r["status"] == "ok" and r["dtype"] == "float64" and r["device"] == "cpu"
        walls = [r["wall_s"] for r in its]
        assert walls[0] == 0.0 and all(b > a for a, b in zip(walls, walls[1:]))  # cumulative training time
        assert run["wall_s"] == pytest.approx(walls[-1])
        assert [r["iteration"] for r in its if r["eval"]] == [0, 4, 8]  # eval_every = 4, and the start
        assert its[8]["eval"] == run["eval"] and set(run["eval"]) == {"eval_loss", "extrapolation_error"}
        assert run["eval"]["eval_loss"] < its[0]["eval"]["eval_loss"]
        assert run["artifacts"]["trajectory"]["y"] is not None


@pytest.mark.slow
def test_a_failing_run_records_its_status_and_the_rest_go_on(spiral_run):
    _, out, proc = spiral_run
    runs = by_run(records(out))
    run, its = runs["spiral/torch/dopri5+direct/rtol=1e-07"]
    assert run["status"] == "max_steps" and "iteration 1" in run["message"] and run["iterations"] == 0
    assert [r["status"] for r in its] == ["ok", "max_steps"] and its[1]["loss"] is None
    assert sum(r["status"] == "ok" for r, _ in runs.values()) == 2
    assert "max_steps" in proc.stdout  # the summary table


@pytest.mark.slow  # ~20 s: two torch runs, then one again
def test_resume_skips_finished_runs_and_reruns_a_killed_one(write_train, tmp_path):
    cfg = write_train("""
        [workload]
        kind = "spiral"
        [training]
        iterations = 3
        [[runs]]
        backends = ["torch"]
        methods = [["rk4", "direct"], ["rk4", "checkpointed"]]
        dt = 0.1
    """)
    out = tmp_path / "r.jsonl"
    assert crossode("train", cfg, "--out", out).returncode == 0
    again = crossode("train", cfg, "--out", out)
    assert again.returncode == 2 and "--resume" in again.stderr
    first = records(out)
    assert len(first) == 2 * 4 + 2
    p = crossode("train", cfg, "--out", out, "--resume")
    assert p.returncode == 0 and "2 finished" in p.stderr and "0 to run" in p.stderr
    assert records(out) == first
    # the second run was killed mid-way: its run record never written
    killed = [r for r in first if not (r["kind"] == "train_run" and r["sensitivity"] == "checkpointed")]
    out.write_text("".join(__import__("json").dumps(r) + "\n" for r in killed))
    p = crossode("train", cfg, "--out", out, "--resume")
    assert p.returncode == 0 and "1 killed mid-run" in p.stderr, p.stderr
    recs = records(out)
    runs = by_run(recs)
    run, its = runs["spiral/torch/rk4+checkpointed/dt=0.1"]
    old = next(r for r in first if r["kind"] == "train_run" and r["sensitivity"] == "checkpointed")
    assert run["tags"]["attempt"] != old["tags"]["attempt"] and [r["iteration"] for r in its] == [0, 1, 2, 3]
    assert len(recs) == len(killed) + 5  # the old attempt's iterations stay; readers use the latest
    np.testing.assert_allclose([r["loss"] for r in its[1:]],
                               [r["loss"] for r in first if r["kind"] == "train_iteration" and r["iteration"]
                                and r["sensitivity"] == "checkpointed"], rtol=1e-13)  # deterministic


@pytest.mark.slow  # ~10 s
def test_a_run_past_its_time_limit_is_recorded_timeout_with_what_it_streamed(write_train, tmp_path):
    cfg = write_train("""
        [workload]
        kind = "spiral"
        [training]
        iterations = 100000
        [[runs]]
        backends = ["torch"]
        methods = [["rk4", "direct"]]
        dt = 0.05
    """)
    out = tmp_path / "r.jsonl"
    p = crossode("train", cfg, "--out", out, "--timeout", "4")
    assert p.returncode == 1, p.stderr
    run, its = next(iter(by_run(records(out)).values()))
    assert run["status"] == "timeout" and "4 s limit" in run["message"]
    assert run["iterations"] == its[-1]["iteration"] > 0 and run["loss"] == its[-1]["loss"]


def test_minibatches_are_the_same_for_every_run_and_differ_per_step(tmp_path):
    """In-process (InlineExecutor) on a batched problem: both runs see the same mini-batch sequence."""
    cfg = train_config_from_dict({
        "workload": {"kind": "problem", "problem": {"name": "mlp_fit", "overrides": {"batch": 12, "n": 2,
                                                                                     "width": 4, "n_save": 2}}},
        "training": {"iterations": 4, "batch_size": 5, "seed": 3, "eval_every": 2},
        "runs": [{"backends": ["torch"], "methods": [["rk4", "direct"], ["rk4", "checkpointed"]], "dt": 0.25}]})
    rows = train(cfg, tmp_path / "r.jsonl", executor=InlineExecutor(runner=RUNNER), progress=False, summary=False)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    runs = by_run(records(tmp_path / "r.jsonl"))
    (a, ia), (b, ib) = runs.values()
    assert [r["batch"] for r in ia[1:]] == [r["batch"] for r in ib[1:]]
    assert len({r["batch"] for r in ia[1:]}) == 4
    np.testing.assert_allclose([r["loss"] for r in ia[1:]], [r["loss"] for r in ib[1:]], rtol=1e-12)
    sets = minibatches(3, 12, 5, 4)
    assert all(len(set(s)) == 5 and s.max() < 12 for s in sets)
    assert all((x == y).all() for x, y in zip(sets, minibatches(3, 12, 5, 4)))


def test_julia_runs_are_recorded_unavailable_without_a_process(tmp_path, monkeypatch):
    from crossode import _registry

    if _registry.unavailable_reason("julia") is None:
        pytest.skip("Julia is available here")
    cfg = train_config_from_dict({"workload": {"kind": "spiral"}, "training": {"iterations": 2},
                                  "runs": [{"backends": ["julia"], "methods": [["rk4", "direct"]], "dt": 0.1}]})
    rows = train(cfg, tmp_path / "r.jsonl", progress=False, summary=False)
    assert rows[0]["status"] == "unavailable" and "julia" in rows[0]["message"].lower()


@pytest.mark.slow  # ~20 s: a one-worker Dask cluster
def test_training_on_a_dask_cluster_streams_every_iteration(write_train, tmp_path):
    pytest.importorskip("distributed")
    cfg = write_train("""
        [workload]
        kind = "spiral"
        [training]
        iterations = 4
        [[runs]]
        backends = ["torch"]
        methods = [["rk4", "direct"], ["rk4", "checkpointed"]]
        dt = 0.1
    """)
    local, dask_ = tmp_path / "local.jsonl", tmp_path / "dask.jsonl"
    assert crossode("train", cfg, "--out", local).returncode == 0
    p = crossode("train", cfg, "--out", dask_, "--executor", "dask", "--workers", "1")
    assert p.returncode == 0, p.stderr
    a, b = by_run(records(local)), by_run(records(dask_))
    assert a.keys() == b.keys()
    for name in a:
        (ra, ia), (rb, ib) = a[name], b[name]
        assert rb["status"] == "ok" and [r["iteration"] for r in ib] == [0, 1, 2, 3, 4]
        assert [r["loss"] for r in ib] == [r["loss"] for r in ia]  # the same arithmetic, every line once
        assert rb["tags"]["dask_worker"]
