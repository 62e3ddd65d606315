"""Sweep configs: expansion into cells, stable cell keys, strict validation (unknown keys name the key, exit 2)."""

import subprocess
import sys
import time

import numpy as np
import pytest

from crossode import InvalidInputError
from crossode.sweep import config_from_dict, load_config
from crossode.sweep._config import build_problem


def cells(data, **kw):
    return config_from_dict(data, **kw).cells


def test_product_and_dropped_pairs():
    cfg = config_from_dict({
        "backends": ["reference", "torch"],
        "problems": ["exponential_decay", "lotka_volterra"],
        "solvers": ["dopri5", "alf", "rk4"],
        "sensitivities": ["direct", "mali"],
        "rtol": [1e-3, 1e-6],
    })
    # dopri5+direct, alf+direct, alf+mali (rk4 has no error estimate; mali needs alf)
    assert len(cfg.cells) == 2 * 2 * 3 * 2
    assert any("rk4" in d for d in cfg.dropped) and any("dopri5+mali" in d for d in cfg.dropped)
    assert {(c.solver["name"], c.sensitivity["name"]) for c in cfg.cells} == {
        ("dopri5", "direct"), ("alf", "direct"), ("alf", "mali")}
    assert len({c.key for c in cfg.cells}) == len(cfg.cells)


def test_grids_scan_methods_fixed_steps_and_replicates():
    cfg = config_from_dict({
        "backends": ["reference"],
        "repeats": 1,
        "grid": [
            {"problems": [{"name": "linear", "overrides": {"n": 3}, "scan": {"t1": [1, 4, 16]}}],
             "methods": [["alf", "mali"], {"solver": "alf", "sensitivity": "direct", "solver_options": {"eta": 0.9}}],
             "dt": [0.1], "replicates": 2},
            {"problems": ["exponential_decay"], "methods": [["rk4", "direct"]], "dt": [0.1, 0.05]},
        ],
    })
    first = [c for c in cfg.cells if c.problem_name == "linear"]
    assert len(first) == 3 * 2 * 2
    assert sorted({c.t1 for c in first}) == [1.0, 4.0, 16.0]
    assert {c.replicate for c in first} == {0, 1}
    assert {c.solver["options"]["eta"] for c in first} == {1.0, 0.9}
    assert all(c.step == {"kind": "fixed", "dt": 0.1, "max_steps": 1_000_000} for c in first)
    assert len([c for c in cfg.cells if c.problem_name == "exponential_decay"]) == 2
    assert all(c.repeats == 1 for c in cfg.cells)  # top-level keys are every grid's defaults


def test_atol_zip_default_and_mismatch():
    cs = cells({"rtol": [1e-3, 1e-6], "atol": [1e-5, 1e-8], "problems": ["exponential_decay"]})
    assert [(c.step["rtol"], c.step["atol"]) for c in cs] == [(1e-3, 1e-5), (1e-6, 1e-8)]
    cs = cells({"rtol": [1e-4], "problems": ["exponential_decay"]})
    assert cs[0].step["atol"] == 1e-4  # atol defaults to rtol
    with pytest.raises(InvalidInputError, match="as long as `rtol`"):
        cells({"rtol": [1e-3, 1e-6], "atol": [1, 2, 3], "problems": ["exponential_decay"]})


def test_cell_key_is_stable_and_ignores_run_settings():
    base = {"problems": [{"name": "linear", "overrides": {"t1": 4}}], "rtol": [1e-6]}
    k = cells(base)[0].key
    assert cells(base)[0].key == k
    assert cells({**base, "problems": [{"name": "linear", "overrides": {"t1": 4.0}}]})[0].key == k
    assert cells({**base, "repeats": 7, "timeout": 5, "threads": 2})[0].key == k
    assert cells({**base, "rtol": [1e-7]})[0].key != k
    assert cells({**base, "replicates": 2})[1].key != k
    assert cells({**base, "problems": [{"name": "linear", "overrides": {"t1": 8}}]})[0].key != k
    assert cells({**base, "solvers": ["tsit5"]})[0].key != k
    assert cells({**base, "dtypes": ["float32"]})[0].key != k
    assert cells({**base, "taylor": False})[0].key == k  # keys of sweeps without the Taylor test stay as they were
    assert cells({**base, "taylor": True})[0].key != k  # --resume with the Taylor test runs the cells again


def test_taylor_key_reaches_the_cells():
    base = {"problems": ["linear"], "rtol": [1e-6], "grid": [{"taylor": True}, {"solvers": ["tsit5"]}]}
    got = cells(base)
    assert [c.taylor for c in got] == [True, False]
    with pytest.raises(InvalidInputError, match="`taylor` must be true or false"):
        cells({"problems": ["linear"], "taylor": "yes"})


@pytest.mark.parametrize("data, match", [
    ({"problemz": ["linear"]}, "problemz"),
    ({"grid": [{"rtoll": [1e-3]}]}, "rtoll"),
    ({"problems": [{"name": "linear", "t1": 3}]}, "'t1'"),
    ({"problems": [{"name": "linear", "overrides": {"width": 3}}]}, "does not accept"),
    ({"problems": ["nope"]}, "Unknown problem"),
    ({"backends": ["tensorflow"]}, "tensorflow"),
    ({"solvers": ["rk45"]}, "Unknown solver"),
    ({"methods": [["dopri5", "mali"]]}, "reversible solver"),
    ({"methods": [{"solver": "alf", "sensitivity": "mali", "solver_option": {}}]}, "solver_option"),
    ({"methods": [["rk4", "direct"]], "rtol": [1e-3]}, "no error estimate"),
    ({"methods": [["alf", "mali"]], "solvers": ["alf"]}, "not both"),
    ({"solvers": [{"name": "alf", "etta": 1.0}]}, "etta"),
    ({"rtol": [-1.0]}, "rtol"),
    ({"repeats": 0}, "repeats"),
    ({"dtypes": ["float16"]}, "float16"),
    ({"timeout": "1h"}, "timeout"),
    ({"problems": [{"name": "linear", "scan": {"t1": 4}}]}, "scan.t1"),
    ({"problems": [{"name": "linear", "overrides": {"t1": 4}, "scan": {"t1": [1]}}]}, "both"),
])
def test_strict_validation_names_the_key(data, match):
    with pytest.raises(InvalidInputError, match=match):
        config_from_dict({"problems": ["exponential_decay"], **data})


def test_problem_file_overrides(tmp_path, write_config):
    (tmp_path / "p.toml").write_text(
        'states = ["y"]\nrhs = ["-k*y"]\ny0 = [1.0]\ntspan = [0.0, 2.0]\nsaveat = [1.0, 2.0]\n[params]\nk = 0.5\n')
    path = write_config("""
        output = "out.jsonl"
        problems = [{ file = "p.toml", scan = { t1 = [2, 8] } }]
    """)
    cfg = load_config(path)
    assert cfg.output == str(tmp_path / "out.jsonl")
    assert [c.t1 for c in cfg.cells] == [2.0, 8.0]
    p = build_problem(cfg.cells[1].problem)
    np.testing.assert_allclose(p.saveat, [4.0, 8.0])  # saveat rescaled with t1
    with pytest.raises(InvalidInputError, match="unknown override"):
        config_from_dict({"problems": [{"file": str(tmp_path / "p.toml"), "overrides": {"k": 1}}]})


def test_load_config_errors_name_the_file(tmp_path, write_config):
    bad = write_config("problems = [\n")
    with pytest.raises(InvalidInputError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_cli_unknown_key_exits_2(write_config):
    path = write_config('problems = ["exponential_decay"]\nbackendz = ["reference"]\n')
    out = subprocess.run([sys.executable, "-m", "crossode", "compare", "--config", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "backendz" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_cli_config_rejects_one_cell_flags(write_config):
    from crossode.cli import main

    path = write_config('problems = ["exponential_decay"]\n')
    assert main(["compare", "--config", str(path), "--problem", "linear"]) == 2
    assert main(["compare", "--resume"]) == 2


def test_batch_and_widths_overrides():
    cfg = config_from_dict({
        "backends": ["reference"],
        "problems": [{"name": "mlp_fit", "overrides": {"widths": [4, 16, 16, 4], "time_input": False},
                      "scan": {"batch": [8, 32]}}],
        "rtol": [1e-6],
    })
    problems = [build_problem(c.problem) for c in cfg.cells]
    assert [p.y0.shape for p in problems] == [(8, 4), (32, 4)]
    assert all(p.rhs.widths == (4, 16, 16, 4) and not p.rhs.time_input for p in problems)
    assert len({c.key for c in cfg.cells}) == 2 and cfg.cells[0].key != cfg.cells[1].key


@pytest.mark.parametrize("overrides, match", [
    ({"batch": 10**9}, "batch"),
    ({"batch": 8.5}, "batch"),
    ({"widths": [4, 10**5, 10**5, 4]}, "parameters"),
    ({"widths": [4, 16, 5]}, "widths"),
    ({"widths": "wide"}, "widths"),
])
def test_batch_and_widths_overrides_validated_at_load(overrides, match):
    with pytest.raises(InvalidInputError, match=match):
        config_from_dict({"backends": ["reference"], "problems": [{"name": "mlp_fit", "overrides": overrides}]})


def test_rtol_and_dt_in_one_table_is_an_error():
    """The sweep silently dropped rtol for fixed-step solvers when both were given (issue 15); the CLI refuses too."""
    with pytest.raises(InvalidInputError, match="not both in one table"):
        config_from_dict({"problems": ["exponential_decay"], "solvers": ["rk4", "dopri5"], "rtol": [1e-3],
                          "dt": [0.1]})


def test_a_grid_step_kind_replaces_the_top_level_one():
    cfg = config_from_dict({"problems": ["exponential_decay"], "rtol": [1e-3], "atol": [1e-5], "grid": [
        {"methods": [["rk4", "direct"]], "dt": [0.1]},
        {"methods": [["dopri5", "direct"]]},
        {"methods": [["dopri5", "direct"]], "rtol": [1e-6]},
    ]})
    assert [c.step["kind"] for c in cfg.cells] == ["fixed", "adaptive", "adaptive"]
    assert [c.step.get("rtol") for c in cfg.cells] == [None, 1e-3, 1e-6]
    assert cfg.cells[2].step["atol"] == 1e-5  # same-kind keys still merge


@pytest.mark.parametrize("data", [
    {"replicates": 100_000_000},
    {"problems": [{"name": "exponential_decay", "scan": {"t1": list(range(1, 2001)), "k": list(range(1, 20001))}}]},
    {"solvers": ["dopri5"] * 1000, "sensitivities": ["direct"] * 1000},
    {"grid": [{"replicates": 60_000}, {"replicates": 60_000, "rtol": [1e-3]}]},
])
def test_cell_count_is_capped_before_expansion(data):
    """replicates = 1e8 or a 40M-cell product grew the sweep process to GBs (issue 15): refused in well under a
    second from the list lengths, with the way to raise the limit."""
    import time

    start = time.perf_counter()
    with pytest.raises(InvalidInputError, match="more than 100,000 cells.*max_cells"):
        config_from_dict({"problems": ["exponential_decay"], **data})
    assert time.perf_counter() - start < 2.0


def test_cell_cap_is_overridable():
    data = {"problems": ["exponential_decay"], "replicates": 30}
    with pytest.raises(InvalidInputError, match="more than 20 cells"):
        config_from_dict({**data, "max_cells": 20})
    assert len(config_from_dict({**data, "max_cells": 20}, max_cells=30).cells) == 30  # --max-cells wins
    assert len(config_from_dict(data, max_cells=30).cells) == 30


@pytest.mark.parametrize("overrides, match", [
    ({"width": 1_000_000_000}, "parameters; at most"),
    ({"depth": 3000}, "at most 99"),
    ({"n": 3000}, "Jacobian entries"),
    ({"n_save": 10**9}, "n_save"),
])
def test_oversized_overrides_are_refused_before_building(overrides, match):
    import time

    name = {"n": "linear", "n_save": "cubic_spiral"}.get(next(iter(overrides)), "mlp")
    start = time.perf_counter()
    with pytest.raises(InvalidInputError, match=match):
        config_from_dict({"problems": [{"name": name, "overrides": overrides}]})
    assert time.perf_counter() - start < 2.0


def test_duplicate_entries_run_once():
    """Repeated list entries and overlapping grids give each cell once (deduplicated by key, file order kept)."""
    cfg = config_from_dict({"problems": ["exponential_decay", "exponential_decay"], "rtol": [1e-3, 1e-3, 1e-4],
                            "grid": [{}, {"rtol": [1e-4]}]})
    assert [c.step["rtol"] for c in cfg.cells] == [1e-3, 1e-4]


def test_config_from_dev_zero_and_fifo_exit_2_fast(tmp_path):
    """--config /dev/zero grew to 7 GB in 15 s and a FIFO blocked forever (issue 15)."""
    import os
    import time

    fifo = tmp_path / "sweep.toml"
    os.mkfifo(fifo)
    for path in ("/dev/zero", str(fifo)):
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "crossode", "compare", "--config", path],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and "not a regular file" in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and time.perf_counter() - start < 10.0


def test_batch_steps_expands_and_keeps_shared_keys():
    from crossode.sweep._config import build_step

    base = {"backends": ["torch"], "problems": ["exponential_decay"], "methods": [["dopri5", "direct"]],
            "rtol": [1e-6]}
    (shared,) = cells(base)
    both = cells({**base, "batch_steps": ["shared", "per_sample"]})
    assert len(both) == 2 and both[0].key == shared.key  # the default adds nothing to the key
    per = both[1]
    assert per.step["batch_steps"] == "per_sample" and "per_sample" in per.label and per.key != shared.key
    assert build_step(per.step).per_sample and not build_step(shared.step).per_sample
    assert len(cells({**base, "batch_steps": "per_sample"})) == 1
    with pytest.raises(InvalidInputError, match="batch_steps"):
        cells({**base, "batch_steps": ["each"]})
    with pytest.raises(InvalidInputError, match="batch_steps"):
        cells({**{k: v for k, v in base.items() if k != "rtol"}, "dt": [0.1], "batch_steps": "per_sample"})


def test_expansion_in_the_sweep_process_is_time_limited(tmp_path):
    """A config that is legal but slow to expand (96,000 cells, seconds of work) stops at ``load_config``'s time limit
    with one line naming the file: parsing runs in the sweep process, outside every cell's timeout."""
    path = tmp_path / "big.toml"
    path.write_text('problems = ["exponential_decay", "linear", "lotka_volterra", "van_der_pol"]\n'
                    'backends = ["torch", "jax"]\nsolvers = ["dopri5", "tsit5", "bosh3"]\n'
                    'sensitivities = ["direct", "backsolve"]\nrtol = [1e-3, 1e-4, 1e-5, 1e-6, 1e-7]\n'
                    'replicates = 400\n')
    start = time.perf_counter()
    with pytest.raises(InvalidInputError, match=r"reading and expanding sweep config .*big\.toml.* took longer than "
                                                r"0\.2 s"):
        load_config(path, timeout=0.2)
    assert time.perf_counter() - start < 5.0
