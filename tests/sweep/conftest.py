"""Helpers shared by the sweep tests: tiny configs on the always-available ``reference`` backend."""

import pathlib
import textwrap

import pytest


@pytest.fixture
def write_config(tmp_path):
    """Write a sweep TOML (dedented) into tmp_path and return its path."""

    def write(text: str, name: str = "sweep.toml") -> pathlib.Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write



@pytest.fixture
def runners(monkeypatch):
    """Put ``_runners.py`` (beside this file) on the workers' path; returns ``"module:function"`` of its runner."""
    import os

    here = str(pathlib.Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", here + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return "_runners:act"
