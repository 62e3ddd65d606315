"""Problem files: a user's own problem as TOML (read with :mod:`tomllib`; expressions parsed without ``eval``).

Schema (see the README for examples)::

    name = "damped-linear"            # optional, default: the file name
    description = "..."               # optional
    states = ["x", "y"]               # symbolic fields: state names ...
    rhs = ["a*x + b*y", "c*x + d*y"]  # ... and one expression per state
    y0 = [1.0, 0.0]                   # one state, or a batch [[...], [...], ...] (batch, n_states)
    # y0_file = "x.npz"               # instead of y0: array "y0" of an .npz next to this file
    tspan = [0.0, 2.0]
    saveat = [0.5, 1.0, 2.0]          # optional, default [t1]
    stiff = false                     # optional hint (reference uses Radau when true)

    [params]                          # symbolic fields: name = value, in layout order
    a = -0.5

    [mlp]                             # neural fields instead of states/rhs/params
    widths = [2, 16, 2]
    activation = "tanh"               # tanh, relu, softplus, sigmoid, identity
    time_input = false                # true: f(t, y) = MLP([phi(y), t]) (W1 gets an extra last column for t)
    features = "identity"             # or "cube": phi(y) = y**3 elementwise (Onken & Ruthotto's spiral model)
    seed = 0                          # seeded initialisation (or give weights/biases)
    scale = 1.0
    weights = [[[...]], ...]          # optional: one (out, in) matrix per layer
    biases = [[...], ...]             # optional: one (out,) vector per layer

    [cnf]                             # a continuous normalizing flow instead (state [x, logp], see crossode._cnf)
    widths = [2, 64, 64, 64, 2]       # the network g: [d, hidden..., d]
    activation = "softplus"           # tanh, softplus, sigmoid, identity (relu is refused)
    time_input = true                 # g(t, x) = MLP([x, t])
    seed = 0                          # seeded initialisation (or give weights/biases); scale = 1.0
    dataset = "two_moons"             # the samples x: a toy density (two_moons, 8gaussians, checkerboard) ...
    samples = 256                     # ... with this many samples
    data_seed = 0                     # ... drawn with this seed; or give y0 / y0_file = the samples (batch, d)
                                      # y0 holds x only: the log-density state logp(t0) = 0 is appended

    [loss]
    kind = "sum_squares"              # default ("cnf_nll" with [cnf]); or "linear" with weights = [[...], ...]
                                      # (len(saveat) x n_states)
                                      # or "mse" with targets = [[...], ...] (len(saveat) x n_states, or
                                      # len(saveat) x batch x n_states)
    # targets_file = "d.npz"          # instead of targets: array "targets" (weights_file: array "weights")

Array files (``y0_file``, ``targets_file``, ``weights_file``) are ``.npz`` archives (``numpy.savez``) holding an
array under the documented key (``y0``, ``targets``, ``weights``), paths relative to the problem file. They are read
with bounds: regular files only, at most :data:`MAX_NPZ_BYTES` on disk, the entry's declared size and shape checked
before its data is read (at most :data:`~crossode._limits.MAX_STATE_ENTRIES` numbers), no pickles.

Unknown keys are errors (typos must not silently change an experiment).
"""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np

from ._cnf import CNFRHS
from ._errors import InvalidInputError
from ._limits import MAX_ARRAY_FILE_BYTES, MAX_STATE_ENTRIES, read_bounded
from ._problem import Loss, Problem
from ._rhs import MLPRHS, SymbolicRHS

__all__ = ["load_problem_file", "problem_from_dict", "read_toml", "read_npz_array", "MAX_NPZ_BYTES"]

MAX_NPZ_BYTES = MAX_ARRAY_FILE_BYTES
"""Largest ``.npz`` file (on disk, and each entry uncompressed) a problem file may refer to (``_limits``)."""
_TOP = {"name", "description", "states", "rhs", "y0", "y0_file", "tspan", "saveat", "stiff", "params", "mlp", "cnf",
        "loss"}
_MLP = {"widths", "activation", "seed", "scale", "weights", "biases", "time_input", "features"}
_CNF = {"widths", "activation", "seed", "scale", "weights", "biases", "time_input", "dataset", "samples", "data_seed"}
_LOSS = {"kind", "weights", "weights_file", "targets", "targets_file"}


def read_toml(path: str | os.PathLike, what: str = "problem file") -> dict:
    """Parse a TOML file of at most :data:`~crossode._limits.MAX_FILE_BYTES` (a regular file: devices, FIFOs and
    directories are refused without blocking); every failure is an :class:`InvalidInputError` naming ``what``."""
    import tomllib  # ~8 ms: paid when a file is read, not by `import crossode`

    path = os.fspath(path)
    data = read_bounded(path, what)
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise InvalidInputError(
            f"{what} {path!r} is not valid TOML: not UTF-8 text ({e.reason} at byte {e.start})."
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise InvalidInputError(f"{what} {path!r} is not valid TOML: {e}.") from None
    except RecursionError:
        raise InvalidInputError(f"{what} {path!r} is not valid TOML: nested too deeply.") from None


def read_npz_array(path: str | os.PathLike, key: str, what: str) -> np.ndarray:
    """The numeric array ``key`` of the ``.npz`` file ``path``, read with bounds (see the module docstring).

    The file is read with :func:`crossode._limits.read_bounded` (regular files only, at most :data:`MAX_NPZ_BYTES`);
    every failure is one :class:`InvalidInputError` naming ``what`` (e.g. ``"`y0_file`"``) and the file.
    """
    path = os.fspath(path)
    data = read_bounded(path, what, MAX_NPZ_BYTES)
    return _npz_entry(io.BytesIO(data), key, f"{what} {path!r}")


def _npz_entry(fh, key: str, where: str) -> np.ndarray:
    try:
        archive = zipfile.ZipFile(fh)
    except (zipfile.BadZipFile, OSError, ValueError):
        raise InvalidInputError(f"{where} is not an .npz file (numpy.savez).") from None
    with archive:
        names = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
        if key not in names:
            raise InvalidInputError(f"{where} has no array {key!r}; it holds {sorted(names)[:10]}.")
        info = archive.getinfo(key + ".npy")
        if info.file_size > MAX_NPZ_BYTES:
            raise InvalidInputError(f"{where}: array {key!r} is {info.file_size} bytes uncompressed; at most "
                                    f"{MAX_NPZ_BYTES} are allowed.")
        try:
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
                if version not in readers:
                    raise InvalidInputError(f"{where}: array {key!r} has an unsupported .npy format {version}.")
                shape, fortran, dtype = readers[version](member)
                if dtype.kind not in "iuf" or dtype.hasobject:
                    raise InvalidInputError(f"{where}: array {key!r} must be numeric; got dtype {dtype}.")
                count = int(np.prod(shape, dtype=np.int64)) if shape else 1
                if count > MAX_STATE_ENTRIES:
                    raise InvalidInputError(f"{where}: array {key!r} has {count} entries; at most "
                                            f"{MAX_STATE_ENTRIES} are allowed.")
                if count * dtype.itemsize > info.file_size:
                    raise InvalidInputError(f"{where}: array {key!r} is truncated.")
                data = member.read(count * dtype.itemsize)
        except InvalidInputError:
            raise
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, NotImplementedError) as e:
            raise InvalidInputError(f"{where}: array {key!r} cannot be read ({e}).") from None
    if len(data) != count * dtype.itemsize:
        raise InvalidInputError(f"{where}: array {key!r} is truncated.")
    arr = np.frombuffer(data, dtype=dtype)
    arr = arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)
    return arr.astype(np.float64)


def _array(data: dict, key: str, file_key: str, base_dir: str, what: str | None = None):
    """``data[key]`` inline, or the array ``key`` of the .npz named by ``data[file_key]`` (not both)."""
    what = what or key
    if file_key not in data:
        return data.get(key)
    if key in data:
        raise InvalidInputError(f"give `{what}` or `{file_key}`, not both.")
    name = data[file_key]
    if not isinstance(name, str) or not name:
        raise InvalidInputError(f"`{file_key}` must be a file name (an .npz next to the problem file); got {name!r}.")
    return read_npz_array(os.path.join(base_dir, name), key, f"`{file_key}`")


def load_problem_file(path: str | os.PathLike) -> Problem:
    """Read a TOML problem file; raises :class:`InvalidInputError` naming the file and the bad entry."""
    path = os.fspath(path)
    data = read_toml(path)
    default_name = os.path.splitext(os.path.basename(path))[0]
    try:
        return problem_from_dict(data, default_name=default_name, base_dir=os.path.dirname(os.path.abspath(path)))
    except InvalidInputError as e:
        raise type(e)(f"problem file {path!r}: {e}") from None


def _table(data, key, allowed):
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise InvalidInputError(f"`{key}` must be a table ([{key}]); got {type(value).__name__}.")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise InvalidInputError(f"unknown keys in [{key}]: {unknown}; allowed: {sorted(allowed)}.")
    return value


def _no_booleans(value, where: str) -> None:
    """TOML ``true``/``false`` are not numbers: refuse them wherever a number is expected (``y0 = [true]``)."""
    if isinstance(value, bool):
        raise InvalidInputError(f"`{where}` must hold numbers; got the boolean {str(value).lower()}.")
    if isinstance(value, dict):
        for k, v in value.items():
            _no_booleans(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _no_booleans(v, f"{where}[{i}]")


def _integer(table: dict, key: str, default, where: str):
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"`{where}.{key}` must be an integer; got {value!r}.")
    return value


def _cnf(data: dict, y0):
    """The [cnf] table: ``(CNFRHS, y0 with the log-density column)``; the samples come from ``y0`` or ``dataset``."""
    from . import datasets

    clash = sorted({"states", "rhs", "params", "mlp"} & set(data))
    if clash:
        raise InvalidInputError(f"give either [cnf] or [mlp]/states/rhs/params, not both; found {clash} with [cnf].")
    c = _table(data, "cnf", _CNF)
    if "widths" not in c:
        raise InvalidInputError("`cnf.widths` is required.")
    time_input = c.get("time_input", True)
    if not isinstance(time_input, bool):
        raise InvalidInputError(f"`cnf.time_input` must be true or false; got {time_input!r}.")
    rhs = CNFRHS(c["widths"], c.get("activation", "softplus"), time_input=time_input, weights=c.get("weights"),
                 biases=c.get("biases"), seed=_integer(c, "seed", 0, "cnf"), scale=c.get("scale", 1.0))
    given = sorted({"samples", "data_seed"} & set(c))
    if "dataset" in c:
        if y0 is not None:
            raise InvalidInputError("give `y0` (or `y0_file`) or `cnf.dataset`, not both.")
        if rhs.dims != 2:
            raise InvalidInputError(f"`cnf.dataset` densities are 2-D: `cnf.widths` must start with 2; got {rhs.dims}.")
        samples = _integer(c, "samples", 256, "cnf")
        if not 1 <= samples <= MAX_STATE_ENTRIES // rhs.n_states:
            raise InvalidInputError(f"`cnf.samples` must be in [1, {MAX_STATE_ENTRIES // rhs.n_states}] (each sample "
                                    f"is a state of {rhs.n_states} numbers); got {samples}.")
        x = datasets.sample(c["dataset"], samples, _integer(c, "data_seed", 0, "cnf"))
    elif given:
        raise InvalidInputError(f"{', '.join(f'`cnf.{k}`' for k in given)} need `cnf.dataset`.")
    else:
        try:
            x = np.array(y0, dtype=np.float64)
        except (TypeError, ValueError):
            raise InvalidInputError(f"with [cnf], `y0` must hold the samples x as numbers (batch, {rhs.dims}).") \
                from None
        if x.ndim not in (1, 2) or x.shape[-1] != rhs.dims:
            raise InvalidInputError(f"with [cnf], `y0` holds the samples x: shape ({rhs.dims},) or (batch, "
                                    f"{rhs.dims}) for widths starting with {rhs.dims}; got shape {x.shape}.")
    if x.size // rhs.dims * rhs.n_states > MAX_STATE_ENTRIES:
        raise InvalidInputError(f"`y0` holds {x.size // rhs.dims} samples; with the log-density entry at most "
                                f"{MAX_STATE_ENTRIES // rhs.n_states} are allowed.")
    return rhs, np.concatenate([x, np.zeros((*x.shape[:-1], 1))], axis=-1)


def problem_from_dict(data: dict, *, default_name: str = "problem", base_dir: str = ".") -> Problem:
    """Build a :class:`Problem` from the parsed TOML mapping (schema in the module docstring); array files are
    read relative to ``base_dir``."""
    if not isinstance(data, dict):
        raise InvalidInputError("a problem definition must be a table.")
    unknown = sorted(set(data) - _TOP)
    if unknown:
        raise InvalidInputError(f"unknown keys {unknown}; allowed: {sorted(_TOP)}.")
    cnf_t = data.get("cnf")
    dataset = isinstance(cnf_t, dict) and "dataset" in cnf_t
    if "y0" not in data and "y0_file" not in data and not dataset:
        raise InvalidInputError("`y0` (or `y0_file`, or `cnf.dataset`) is required.")
    if "tspan" not in data:
        raise InvalidInputError("`tspan` is required.")
    for key in ("y0", "tspan", "saveat", "params", "loss"):
        _no_booleans(data.get(key), key)
    mlp_t = data.get("mlp")
    if isinstance(mlp_t, dict):  # time_input is the one boolean of [mlp]
        _no_booleans({k: v for k, v in mlp_t.items() if k != "time_input"}, "mlp")
    if isinstance(cnf_t, dict):
        _no_booleans({k: v for k, v in cnf_t.items() if k != "time_input"}, "cnf")
    loss_t = _table(data, "loss", _LOSS)
    loss = Loss(loss_t.get("kind", "cnf_nll" if "cnf" in data else "sum_squares"),
                _array(loss_t, "weights", "weights_file", base_dir, "loss.weights"),
                _array(loss_t, "targets", "targets_file", base_dir, "loss.targets"))
    y0 = _array(data, "y0", "y0_file", base_dir)
    if "cnf" in data:
        rhs, y0 = _cnf(data, y0)
        params = None
    elif "mlp" in data:
        clash = sorted({"states", "rhs", "params"} & set(data))
        if clash:
            raise InvalidInputError(f"give either [mlp] or states/rhs/params, not both; found {clash} with [mlp].")
        m = _table(data, "mlp", _MLP)
        if "widths" not in m:
            raise InvalidInputError("`mlp.widths` is required.")
        seed = m.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InvalidInputError(f"`mlp.seed` must be an integer; got {seed!r}.")
        time_input = m.get("time_input", False)
        if not isinstance(time_input, bool):
            raise InvalidInputError(f"`mlp.time_input` must be true or false; got {time_input!r}.")
        rhs = MLPRHS(m["widths"], m.get("activation", "tanh"), time_input=time_input,
                     features=m.get("features", "identity"), weights=m.get("weights"), biases=m.get("biases"),
                     seed=seed, scale=m.get("scale", 1.0))
        params = None
    else:
        for key in ("states", "rhs"):
            if key not in data:
                raise InvalidInputError(f"`{key}` is required (or an [mlp] table for a neural field).")
        params_t = data.get("params", {})
        if not isinstance(params_t, dict):
            raise InvalidInputError(f"`params` must be a table ([params]); got {type(params_t).__name__}.")
        rhs = SymbolicRHS(data["states"], list(params_t), data["rhs"])
        params = params_t
    stiff = data.get("stiff", False)
    if not isinstance(stiff, bool):
        raise InvalidInputError(f"`stiff` must be true or false; got {stiff!r}.")
    name = data.get("name", default_name)
    description = data.get("description", "")
    if not isinstance(description, str):
        raise InvalidInputError(f"`description` must be a string; got {description!r}.")
    return Problem(rhs, y0=y0, params=params, tspan=data["tspan"], saveat=data.get("saveat"), loss=loss,
                   name=name, description=description, stiff=stiff)
