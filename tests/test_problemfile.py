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


def _exits_quickly(path, what="problem file"):
    import time

    start = time.perf_counter()
    with pytest.raises(InvalidInputError, match="not a regular file") as e:
        load_problem_file(path)
    assert time.perf_counter() - start < 2.0 and what in str(e.value)


def test_devices_are_refused_without_reading():
    """/dev/zero grew the process to 12.6 GB in 30 s (issue 15): now refused from fstat, nothing read."""
    _exits_quickly("/dev/zero")


def test_fifo_is_refused_without_blocking(tmp_path):
    import os

    fifo = tmp_path / "p.toml"
    os.mkfifo(fifo)  # no writer: a blocking open would wait forever
    _exits_quickly(fifo)


def test_size_limit_holds_for_files_that_lie_about_their_size(tmp_path):
    from crossode._limits import MAX_FILE_BYTES, read_bounded

    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (MAX_FILE_BYTES + 10))
    with pytest.raises(InvalidInputError, match="at most 1000000"):
        load_problem_file(big)
    # /proc files report size 0 and are read with the same bound
    assert len(read_bounded("/proc/self/status", "file")) > 0
    with pytest.raises(InvalidInputError, match="more than 10 bytes"):
        read_bounded("/proc/self/status", "file", limit=10)


def test_directory_and_non_utf8(tmp_path):
    with pytest.raises(InvalidInputError, match="is a directory"):
        load_problem_file(tmp_path)
    f = tmp_path / "latin1.toml"
    f.write_bytes(b'name = "caf\xe9"\n')
    with pytest.raises(InvalidInputError, match="not UTF-8"):
        load_problem_file(f)
    f.write_text("a = " + "[" * 100_000)
    with pytest.raises(InvalidInputError, match="nested too deeply|not valid TOML"):
        load_problem_file(f)


@pytest.mark.parametrize("text, match", [
    ('states=["x"]\nrhs=["-x"]\ny0=[true]\ntspan=[0,1]', "y0"),
    ('states=["x"]\nrhs=["-k*x"]\ny0=[1.0]\ntspan=[0,1]\n[params]\nk=false', "params.k"),
    ('states=["x"]\nrhs=["-x"]\ny0=[1.0]\ntspan=[0,true]', "tspan"),
    ('y0=[1.0]\ntspan=[0,1]\n[mlp]\nwidths=[1,true,1]', "mlp.widths"),
])
def test_booleans_are_not_numbers(tmp_path, text, match):
    """`y0 = [true]` was accepted as 1.0 (issue 15)."""
    f = tmp_path / "p.toml"
    f.write_text(text)
    with pytest.raises(InvalidInputError, match=match):
        load_problem_file(f)


@pytest.mark.parametrize("text, match", [
    # 3000 states: 18 million symbolic Jacobian entries (SymPy would run for hours)
    ('states=[' + ",".join(f'"x{i}"' for i in range(3000)) + ']\nrhs=[' + ",".join(f'"-x{i}"' for i in range(3000))
     + ']\ny0=[' + ",".join("1.0" for _ in range(3000)) + ']\ntspan=[0,1]', "Jacobian entries"),
    ('y0=[1.0,0.0]\ntspan=[0,1]\n[mlp]\nwidths=[2,' + "32," * 3000 + '2]', "too deep"),
    ('y0=[1.0,0.0]\ntspan=[0,1]\n[mlp]\nwidths=[2,2000000000,2]', "parameters; at most"),
])
def test_huge_problems_are_refused_up_front(tmp_path, text, match):
    import time

    f = tmp_path / "p.toml"
    f.write_text(text)
    start = time.perf_counter()
    with pytest.raises(InvalidInputError, match=match):
        load_problem_file(f)
    assert time.perf_counter() - start < 5.0
