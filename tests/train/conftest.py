"""Helpers of the training tests: write a training TOML, run ``crossode train`` in a subprocess, read records."""

import json
import pathlib
import subprocess
import sys
import textwrap

import pytest


@pytest.fixture
def write_train(tmp_path):
    """Write a training TOML (dedented) into tmp_path and return its path."""

    def write(text: str, name: str = "train.toml") -> pathlib.Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


def crossode(*args, timeout=600):
    """``python -m crossode ARGS`` in a subprocess (real worker processes, as a user runs it)."""
    return subprocess.run([sys.executable, "-m", "crossode", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def records(path):
    return [json.loads(x) for x in pathlib.Path(path).read_text().splitlines()]


SPIRAL = """
name = "spiral-test"
[workload]
kind = "spiral"
[optimizer]
lr = 0.1
[training]
iterations = 8
eval_every = 4
target = 60.0
[[runs]]
backends = ["torch", "jax"]
methods = [["rk4", "direct"]]
dt = 0.05
[[runs]]
backends = ["torch"]
methods = [["dopri5", "direct"]]
rtol = 1e-7
atol = 1e-9
max_steps = 3
"""


@pytest.fixture(scope="session")
def spiral_run(tmp_path_factory):
    """``crossode train`` of a small spiral config (torch and JAX RK4 Direct, and a torch run that fails with
    ``max_steps``) in real worker processes: ``(config path, results path, completed process)``."""
    d = tmp_path_factory.mktemp("spiral")
    cfg = d / "train.toml"
    cfg.write_text(SPIRAL)
    out = d / "s.jsonl"
    proc = crossode("train", cfg, "--out", out)
    return cfg, out, proc
