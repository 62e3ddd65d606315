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


# --------------------------------------------------------------------------------- batches, mse, .npz arrays

import os  # noqa: E402
import zipfile  # noqa: E402

from crossode import get_problem  # noqa: E402
from crossode._problemfile import MAX_NPZ_BYTES  # noqa: E402

BATCHED = """y0_file = "x.npz"
tspan = [0.0, 1.0]
saveat = [0.5, 1.0]
[mlp]
widths = [2, 4, 2]
time_input = true
features = "cube"
[loss]
kind = "mse"
targets_file = "x.npz"
"""


def test_done_when_file_is_the_batched_zoo_problem(data_dir):
    p = load_problem_file(data_dir / "batched_mlp.toml")
    z = get_problem("mlp_fit")
    assert p.batch == 64 and p.rhs.widths == (8, 64, 64, 8) and p.rhs.time_input and p.loss.kind == "mse"
    assert p.loss.targets.shape == (4, 64, 8) and p.n_params == z.n_params
    np.testing.assert_allclose(p.loss.targets, z.loss.targets, rtol=1e-12)
    np.testing.assert_array_equal(p.y0, z.y0)
    np.testing.assert_array_equal(p.params, z.params)


def test_npz_arrays_and_inline_batch(tmp_path):
    y0 = np.array([[1.0, 0.5], [0.0, -1.0], [0.2, 0.3]])
    targets = np.ones((2, 3, 2))
    np.savez_compressed(tmp_path / "x.npz", y0=y0, targets=targets)
    (tmp_path / "p.toml").write_text(BATCHED)
    p = load_problem_file(tmp_path / "p.toml")
    assert p.rhs.time_input and p.rhs.features == "cube" and p.rhs.shapes[0] == (4, 3)
    np.testing.assert_array_equal(p.y0, y0)
    np.testing.assert_array_equal(p.loss.targets, targets)
    inline = ('y0 = [[1.0, 0.5], [0.0, -1.0], [0.2, 0.3]]\ntspan = [0.0, 1.0]\nsaveat = [0.5, 1.0]\n'
              '[mlp]\nwidths = [2, 4, 2]\n[loss]\nkind = "mse"\ntargets = [[1.0, 1.0], [0.0, 2.0]]\n')
    (tmp_path / "q.toml").write_text(inline)
    q = load_problem_file(tmp_path / "q.toml")
    assert q.batch == 3 and q.loss_data.shape == (2, 1, 2)


def _write_npz_with_header(path, key, header_shape, data=b""):
    """An .npz whose entry declares ``header_shape`` but holds only ``data`` (a lying header)."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": header_shape})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(key + ".npy", buf.getvalue() + data)


@pytest.mark.parametrize("case, match", [
    ("missing_key", "no array 'targets'"),
    ("wrong_shape", "loss.targets"),
    ("wrong_y0_shape", "y0"),
    ("huge_file", "bytes; at most"),
    ("directory", "is a directory"),
    ("fifo", "not a regular file"),
    ("not_zip", "not an .npz file"),
    ("object_array", "must be numeric"),
    ("lying_header", "entries; at most"),
    ("truncated", "truncated"),
    ("missing_file", "does not exist"),
    ("both", "not both"),
])
def test_bad_npz_inputs_are_one_line_errors(tmp_path, case, match):
    y0 = np.zeros((3, 2))
    good = dict(y0=y0, targets=np.ones((2, 3, 2)))
    text = BATCHED
    npz = tmp_path / "x.npz"
    if case == "missing_key":
        np.savez(npz, y0=y0)
    elif case == "wrong_shape":
        np.savez(npz, y0=y0, targets=np.ones((2, 4, 2)))
    elif case == "wrong_y0_shape":
        np.savez(npz, y0=np.zeros((3, 5)), targets=np.ones((2, 3, 2)))
    elif case == "huge_file":
        with open(npz, "wb") as fh:
            fh.truncate(MAX_NPZ_BYTES + 1)  # sparse: nothing is written or read
    elif case == "directory":
        npz.mkdir()
    elif case == "fifo":
        os.mkfifo(npz)  # opening it must neither block nor be read
    elif case == "not_zip":
        npz.write_bytes(b"\x93NUMPY not a zip")
    elif case == "object_array":
        np.savez(npz, y0=np.array([{"a": 1}], dtype=object), targets=np.ones((2, 3, 2)))
    elif case == "lying_header":
        _write_npz_with_header(npz, "targets", (10**6, 10**6))
    elif case == "truncated":
        _write_npz_with_header(npz, "targets", (2, 3, 2), data=b"\x00" * 8)
    elif case == "missing_file":
        text = text.replace('y0_file = "x.npz"', 'y0_file = "nope.npz"')
        np.savez(npz, **good)
    elif case == "both":
        text = "y0 = [1.0, 2.0]\n" + text
        np.savez(npz, **good)
    (tmp_path / "p.toml").write_text(text)
    with pytest.raises(InvalidInputError, match=match) as err:
        load_problem_file(tmp_path / "p.toml")
    message = str(err.value)
    assert "\n" not in message and "p.toml" in message


@pytest.mark.parametrize("text, match", [
    ('y0=[1.0]\ntspan=[0,1]\n[mlp]\nwidths=[1,2,1]\ntime_input=1', "mlp.time_input"),
    ('y0=[1.0]\ntspan=[0,1]\n[mlp]\nwidths=[1,2,1]\nfeatures="square"', "features"),
    ('y0=[[1.0],[2.0]]\ntspan=[0,1]\n[mlp]\nwidths=[1,2,1]\n[loss]\nkind="mse"', "targets"),
    ('y0=[1.0]\ntspan=[0,1]\n[mlp]\nwidths=[1,2,1]\n[loss]\nkind="mse"\ntargets=[[1.0, 2.0]]', "loss.targets"),
    ('y0_file=3\ntspan=[0,1]\n[mlp]\nwidths=[1,2,1]', "y0_file"),
])
def test_malformed_batch_and_loss_keys(tmp_path, text, match):
    f = tmp_path / "p.toml"
    f.write_text(text)
    with pytest.raises(InvalidInputError, match=match):
        load_problem_file(f)


def test_cli_reports_a_bad_npz_in_one_line(tmp_path):
    import subprocess
    import sys

    np.savez(tmp_path / "x.npz", y0=np.zeros((3, 2)))  # no targets
    (tmp_path / "p.toml").write_text(BATCHED)
    out = subprocess.run([sys.executable, "-m", "crossode", "compare", "--problem-file", str(tmp_path / "p.toml"),
                          "--backend", "reference"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "no array 'targets'" in out.stderr and "Traceback" not in out.stderr


# ------------------------------------------------------------------------------------------------ [cnf] tables


def test_cnf_file_is_the_zoo_problem(data_dir):
    p = load_problem_file(data_dir / "cnf_moons.toml")
    z = get_problem("cnf_moons")
    assert p.digest() == z.digest() and p.loss.kind == "cnf_nll" and p.y0.shape == (256, 3)
    assert p.rhs.widths == (2, 64, 64, 64, 2) and p.rhs.activation == "softplus" and p.rhs.time_input
    np.testing.assert_array_equal(p.y0[:, 2], 0.0)  # logp(t0) = 0 appended


def test_cnf_samples_inline_and_from_npz(tmp_path):
    x = np.array([[0.5, -1.0], [1.5, 0.3], [-0.7, 0.9]])
    (tmp_path / "inline.toml").write_text(
        f"y0 = {x.tolist()}\ntspan = [0.0, 0.5]\n[cnf]\nwidths = [2, 4, 2]\nactivation = \"tanh\"\nseed = 2\n")
    p = load_problem_file(tmp_path / "inline.toml")
    np.testing.assert_array_equal(p.y0, np.concatenate([x, np.zeros((3, 1))], axis=1))
    assert p.loss.kind == "cnf_nll" and p.rhs.activation == "tanh" and p.n_params == 4 * 3 + 4 + 2 * 4 + 2
    np.savez(tmp_path / "x.npz", y0=x)
    (tmp_path / "npz.toml").write_text(
        'y0_file = "x.npz"\ntspan = [0.0, 0.5]\n[cnf]\nwidths = [2, 4, 2]\nactivation = "tanh"\nseed = 2\n')
    assert load_problem_file(tmp_path / "npz.toml").digest() == p.digest()
    one = tmp_path / "one.toml"
    one.write_text('y0 = [0.5, -1.0]\ntspan = [0.0, 0.5]\n[cnf]\nwidths = [2, 4, 2]\n')
    assert load_problem_file(one).y0.tolist() == [0.5, -1.0, 0.0]


@pytest.mark.parametrize("text, match", [
    ('tspan=[0,1]\n[cnf]\nwidths=[2,4,2]', r"`y0` \(or `y0_file`, or `cnf.dataset`\) is required"),
    ('tspan=[0,1]\n[cnf]\ndataset="two_moons"', "cnf.widths"),
    ('tspan=[0,1]\n[cnf]\nwidths=[2,4,2]\ndataset="spiral"', "dataset"),
    ('tspan=[0,1]\n[cnf]\nwidths=[2,4,2]\ndataset="two_moons"\nsamples=0', "cnf.samples"),
    ('tspan=[0,1]\n[cnf]\nwidths=[2,4,2]\ndataset="two_moons"\nsamples=10000000', "cnf.samples"),
    ('tspan=[0,1]\n[cnf]\nwidths=[2,4,2]\ndataset="two_moons"\nsamples=1.5', "cnf.samples"),
    ('tspan=[0,1]\n[cnf]\nwidths=[2,4,2]\ndataset="two_moons"\ndata_seed=true', "cnf"),
    ('tspan=[0,1]\n[cnf]\nwidths=[3,4,3]\ndataset="two_moons"', "2-D"),
    ('y0=[[1.0,2.0]]\ntspan=[0,1]\n[cnf]\nwidths=[2,4,2]\ndataset="two_moons"', "not both"),
    ('y0=[[1.0,2.0]]\ntspan=[0,1]\n[cnf]\nwidths=[2,4,2]\nsamples=4', "need `cnf.dataset`"),
    ('y0=[[1.0,2.0,0.0]]\ntspan=[0,1]\n[cnf]\nwidths=[2,4,2]', r"shape \(2,\) or \(batch, 2\)"),
    ('y0=[1.0,2.0]\ntspan=[0,1]\n[cnf]\nwidths=[2,4,2]\nactivation="relu"', "relu"),
    ('y0=[1.0,2.0]\ntspan=[0,1]\n[cnf]\nwidths=[2,4,2]\ntime_input=1', "cnf.time_input"),
    ('y0=[1.0,2.0]\ntspan=[0,1]\n[cnf]\nwidths=[2,4,2]\nbogus=1', "bogus"),
    ('y0=[1.0,2.0]\ntspan=[0,1]\n[cnf]\nwidths=[2,4,2]\n[mlp]\nwidths=[2,4,2]', "either"),
    ('y0=[1.0,2.0]\ntspan=[0,1]\nstates=["x"]\n[cnf]\nwidths=[2,4,2]', "either"),
    ('y0=[1.0,2.0]\ntspan=[0,1]\n[mlp]\nwidths=[2,4,2]\n[loss]\nkind="cnf_nll"', "CNF field"),
])
def test_malformed_cnf_tables(tmp_path, text, match):
    f = tmp_path / "p.toml"
    f.write_text(text)
    with pytest.raises(InvalidInputError, match=match) as err:
        load_problem_file(f)
    assert "\n" not in str(err.value)
