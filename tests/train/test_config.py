"""Training configs: runs expand like sweep grids, shared settings are validated, bad input is a one-line error."""

import pytest

from crossode import InvalidInputError
from crossode.train import load_train_config, train_config_from_dict

from .conftest import crossode

BASE = {"workload": {"kind": "spiral"}, "optimizer": {"lr": 0.1}, "training": {"iterations": 5},
        "runs": [{"backends": ["torch", "jax"], "methods": [["rk4", "direct"]], "dt": 0.05},
                 {"backends": ["torch"], "methods": [["tsit5", "backsolve"], ["dopri5", "checkpointed"]],
                  "rtol": 1e-7, "atol": 1e-9}]}


def cfg(**changes):
    data = {k: (dict(v) if isinstance(v, dict) else list(v)) for k, v in BASE.items()}
    for k, v in changes.items():
        if v is None:
            data.pop(k)
        elif isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k] = {**data[k], **v}
        else:
            data[k] = v
    return train_config_from_dict(data)


def test_runs_expand_and_share_the_training_settings():
    c = cfg()
    assert [r.label for r in c.runs] == ["spiral/torch/rk4+direct/dt=0.05", "spiral/jax/rk4+direct/dt=0.05",
                                         "spiral/torch/tsit5+backsolve/rtol=1e-07",
                                         "spiral/torch/dopri5+checkpointed/rtol=1e-07"]
    assert all(r.tags["train"] == c.settings for r in c.runs)
    assert c.settings["optimizer"] == {"name": "adam", "lr": 0.1, "b1": 0.9, "b2": 0.999, "eps": 1e-8}
    assert len({r.key for r in c.runs}) == 4 and len({r.problem_fingerprint for r in c.runs}) == 1


def test_iterations_change_the_run_keys():
    a, b = cfg(), cfg(training={"iterations": 6})
    assert not {r.key for r in a.runs} & {r.key for r in b.runs}  # a resumed file never mixes run lengths


@pytest.mark.parametrize("changes, match", [
    ({"bogus": 1}, r"unknown key\(s\) \['bogus'\]"),
    ({"workload": None}, r"\[workload\] is required"),
    ({"workload": {"kind": "spiral", "widht": 3}}, r"unknown option\(s\) \['widht'\]"),
    ({"workload": {"kind": "nope"}}, r"`workload.kind` must be one of"),
    ({"optimizer": {"lr": -1.0}}, r"`optimizer.lr`"),
    ({"optimizer": {"name": "sgd"}}, r"`optimizer.name` must be \"adam\""),
    ({"optimizer": {"beta": 0.9}}, r"\[optimizer\]: unknown key"),
    ({"training": {"iterations": 0}}, r"iterations"),
    ({"training": {"batch_size": 4}}, r"`training.batch_size` needs a batched workload"),
    ({"training": {"target_metric": "accuracy"}}, r"`training.target_metric` must be"),
    ({"runs": []}, r"`runs` must be an array of tables"),
    ({"runs": [{"backends": ["torch"], "methods": [["rk4", "direct"]]}]}, r"\[\[runs\]\] #1"),
    ({"runs": [{"backends": ["nope"], "methods": [["rk4", "direct"]], "dt": 0.1}]}, r"\[\[runs\]\] #1: .*nope"),
])
def test_bad_configs_name_the_key(changes, match):
    with pytest.raises(InvalidInputError, match=match):
        cfg(**changes)


def test_batched_workload_and_batch_size(tmp_path):
    c = train_config_from_dict({"workload": {"kind": "problem", "problem": {"name": "mlp_fit", "overrides": {
        "batch": 8, "n": 2, "width": 4}}}, "training": {"batch_size": 3},
        "runs": [{"backends": ["torch"], "methods": [["rk4", "direct"]], "dt": 0.25}]})
    assert c.batch_size == 3 and c.runs[0].tags["train"]["batch_size"] == 3
    with pytest.raises(InvalidInputError, match="exceeds the 8 trajectories"):
        train_config_from_dict({"workload": {"kind": "problem", "problem": {"name": "mlp_fit", "overrides": {
            "batch": 8, "n": 2, "width": 4}}}, "training": {"batch_size": 9},
            "runs": [{"backends": ["torch"], "methods": [["rk4", "direct"]], "dt": 0.25}]})


def test_a_problem_without_data_is_refused():
    with pytest.raises(InvalidInputError, match="training needs data"):
        train_config_from_dict({"workload": {"kind": "problem", "problem": "lotka_volterra"},
                                "runs": [{"backends": ["torch"], "methods": [["rk4", "direct"]], "dt": 0.1}]})


def test_iterations_override_and_file_errors(write_train, tmp_path):
    path = write_train("""
        [workload]
        kind = "spiral"
        [training]
        iterations = 300
        [[runs]]
        backends = ["torch"]
        methods = [["rk4", "direct"]]
        dt = 0.05
    """)
    assert load_train_config(path).iterations == 300
    assert load_train_config(path, iterations=7).iterations == 7
    (tmp_path / "broken.toml").write_text("[workload\n")
    with pytest.raises(InvalidInputError, match="broken.toml"):
        load_train_config(tmp_path / "broken.toml")


@pytest.mark.parametrize("body, args, match", [
    ('[workload]\nkind = "spiral"\n[optimizer]\nlr = "fast"\n[[runs]]\nbackends = ["torch"]\n'
     'methods = [["rk4", "direct"]]\ndt = 0.05\n', [], "`optimizer.lr` must be a number"),
    ('[workload]\nkind = "spiral"\n[[runs]]\nbackends = ["torch"]\nmethods = [["rk4", "direct"]]\ndt = 0.05\n',
     ["--iterations", "0"], "--iterations must be a positive integer"),
    ('[workload]\nkind = "spiral"\n[[runs]]\nbackends = ["torch"]\nmethods = [["rk4", "direct"]]\ndt = 0.05\n',
     [], "no results file"),
    ('[workload]\nkind = "spiral"\n[[runs]]\nbackends = ["torch"]\nmethods = [["rk4", "direct"]]\ndt = 0.05\n',
     ["--out", "x.jsonl", "--jobs", "0"], "--jobs must be a positive integer"),
])
def test_cli_bad_input_is_one_line_and_exit_2(write_train, body, args, match):
    path = write_train(body)
    p = crossode("train", path, *args, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], p.stderr
    assert "Traceback" not in p.stderr


def test_importing_and_loading_a_config_imports_no_framework(write_train):
    import subprocess
    import sys

    path = write_train('[workload]\nkind = "spiral"\n[[runs]]\nbackends = ["torch", "jax"]\n'
                       'methods = [["rk4", "direct"]]\ndt = 0.05\n')
    code = ("import sys, crossode.train as t; t.load_train_config(sys.argv[1]); "
            "print(sorted(m for m in ('torch', 'jax', 'optax', 'pandas', 'matplotlib') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"
