"""Training workloads: built in NumPy identically everywhere, evaluated backend-free (or the same way for all runs)."""

import numpy as np
import pytest

from crossode import RK4, Fixed, InvalidInputError
from crossode.train import build_workload


def test_spiral_data_is_the_true_system_and_metrics_are_exact():
    w = build_workload({"kind": "spiral"})
    p = w.problem
    assert p.saveat.shape == (30,) and p.saveat[0] == 0.0 and p.saveat[-1] == 1.5
    assert p.n_params == 2 * 50 + 50 + 50 * 2 + 2 and np.allclose(p.y0, [2.0, 0.0])
    assert np.allclose(p.loss.targets[0], [2.0, 0.0])  # the data start at u0
    ev = w.evaluate(p.params)
    assert set(ev) == {"eval_loss", "extrapolation_error"} and ev["eval_loss"] > 1
    again = build_workload({"kind": "spiral"})
    np.testing.assert_array_equal(again.problem.params, p.params)  # the same start in every worker
    tr = w.artifacts(p.params)["trajectory"]
    assert len(tr["t"]) == 120 and tr["t"][-1] == 6.0 and np.asarray(tr["y"]).shape == (120, 2)


@pytest.mark.parametrize("spec, match", [
    ({"kind": "spiral", "n_samples": 1}, "at least 2"),
    ({"kind": "spiral", "activation": "relu6"}, "activation"),
    ({"kind": "spiral", "t1": -1}, "positive"),
    ({"kind": "cnf2d", "dataset": "swiss_roll"}, "dataset"),
    ({"kind": "cnf2d", "n_test": 10, "n_invertibility": 20}, "n_invertibility"),
    ({"kind": "cnf2d", "widht": 3}, "unknown option"),
])
def test_bad_workload_options_name_the_option(spec, match):
    with pytest.raises(InvalidInputError, match=match):
        build_workload(spec)


@pytest.mark.torch
def test_cnf2d_metrics_are_evaluated_the_same_way_and_with_the_runs_method():
    pytest.importorskip("torch")
    w = build_workload({"kind": "cnf2d", "n_train": 64, "n_test": 32, "n_invertibility": 16, "width": 8,
                        "depth": 1, "grid": 8})
    p = w.problem
    assert p.y0.shape == (64, 3) and p.loss.kind == "cnf_nll" and w.target_metric == "test_nll"
    ev = w.evaluate(p.params, (RK4(), Fixed(dt=0.5)))
    assert set(ev) == {"test_nll", "invertibility_error", "invertibility_error_train"}
    assert 1.0 < ev["test_nll"] < 10.0
    assert ev["invertibility_error"] < 1e-6  # tight dopri5: the continuous flow is invertible
    assert ev["invertibility_error_train"] > 0 and "invertibility_error_train" not in w.evaluate(p.params)
    d = w.artifacts(p.params)["density"]
    assert np.asarray(d["p"]).shape == (8, 8) and np.asarray(d["data"]).shape == (8, 8)
