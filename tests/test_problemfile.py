"""TOML problem files: the README example works as written; malformed and hostile files give clear errors."""

import numpy as np
import pytest

from crossode import InvalidInputError, UnsafeExpressionError, load_problem_file


def test_damped_linear_example(data_dir):
    p = load_problem_file(data_dir / "damped_linear.toml")
    assert p.name == "damped-linear" and p.param_names == ("a", "b", "c", "d")
    assert p.saveat.tolist() == [0.5, 1.0, 2.0] and p.params.tolist() == [-0.5, 2.0, -2.0, -0.5]
    assert p.rhs.linear_structure() is not None


def test_mlp_file(data_dir):
    p = load_problem_file(data_dir / "mlp_small.toml")
    assert p.n_params == 2 * 8 + 8 + 8 * 2 + 2 and p.loss.kind == "linear"


def test_hostile_file_executes_nothing(data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnsafeExpressionError, match="hostile_import.toml"):
        load_problem_file(data_dir / "hostile_import.toml")
    assert not (tmp_path / "CROSSODE_PWNED").exists()


@pytest.mark.parametrize(
    "text, match",
    [
        ("states = [", "not valid TOML"),
        ('states=["x"]\nrhs=["x"]\ny0=[1.0]\ntspan=[0,1]\nbogus=1', "unknown keys"),
        ('states=["x"]\nrhs=["x"]\ny0=[1.0]', "tspan"),
        ('states=["x"]\nrhs=["k*x"]\ny0=[1.0]\ntspan=[0,1]', "undeclared name 'k'"),
        ('states=["x"]\nrhs=["x"]\ny0=[1.0]\ntspan=[0,1]\n[loss]\nkind="l1"', "loss.kind"),
        ('y0=[1.0]\ntspan=[0,1]\n[mlp]\nwidths=[1,2,1]\nseed="a"', "mlp.seed"),
        ('y0=[1.0]\ntspan=[0,1]\nstates=["x"]\n[mlp]\nwidths=[1,2,1]', "either"),
    ],
)
def test_malformed(tmp_path, text, match):
    f = tmp_path / "p.toml"
    f.write_text(text)
    with pytest.raises(InvalidInputError, match=match):
        load_problem_file(f)


def test_missing_file(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_problem_file(tmp_path / "nope.toml")


def test_default_name_from_file(tmp_path):
    f = tmp_path / "my-problem.toml"
    f.write_text('states=["x"]\nrhs=["-x"]\ny0=[1.0]\ntspan=[0,1]')
    p = load_problem_file(f)
    assert p.name == "my-problem" and np.allclose(p.y0, [1.0])
