"""The README's support matrix is exactly what the backends' supports() say (needs torch and jax for their columns)."""

import pathlib
import re

import pytest

from crossode.cli import support_matrix_markdown

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.torch
@pytest.mark.jax
def test_readme_support_matrix_is_current():
    pytest.importorskip("torch")
    pytest.importorskip("jax")
    text = README.read_text()
    m = re.search(r"<!-- support-matrix:begin -->\n(.*?)\n<!-- support-matrix:end -->", text, re.S)
    assert m, "support-matrix markers missing from README.md"
    assert m.group(1) == support_matrix_markdown(), "README support matrix is stale: paste `crossode list`'s table"
