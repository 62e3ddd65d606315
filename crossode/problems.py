"""The problem zoo: standard benchmark problems, each defined once with its source's standard values.

Every factory takes keyword overrides of its defining constants and returns a :class:`~crossode.Problem`.
``get_problem(name, **overrides)`` looks one up by name; ``PROBLEMS`` lists them.

=====================  ==============================================================  =========================
name                   equations (defaults)                                            source
=====================  ==============================================================  =========================
linear                 y' = A y, A = randn(n,n)/sqrt(n) - 0.5 I (seed 0), n = 10, T = 2  mali.md "rand10";
                       closed-form gradient via expm / Fréchet derivative               torchdiffeq tests
exponential_decay      y' = -k y, k = 0.5, y0 = 1, T = 5                                textbook
decay2                 y' = A y, A = [[-1, 0], [0.5, -3]], T = 5 (MALI failure case)   mali.md §8
lotka_volterra         x' = a x - b x y, y' = -c y + d x y; (1.5, 1, 3, 1), [1, 1], 10  SciMLBenchmarks
van_der_pol            x' = y, y' = mu((1 - x^2) y - x); mu = 1, [2, 0], T = 6.3        Hairer-Wanner
van_der_pol_stiff      same with mu = 1e3, [2, 0], T = 2 (stiff; SciMLBenchmarks uses  Hairer-Wanner
                       mu = 1e6, impractical for explicit baselines)
robertson              k1 0.04, k2 3e7, k3 1e4; [1, 0, 0]; (0, 100)                     Diffrax stiff_ode.py
fitzhugh_nagumo        v' = v - v^3/3 - w + l, w' = tau_inv (v + a - b w);              SciMLBenchmarks
                       a 0.7, b 0.8, tau_inv 1/12.5, l 0.5; [1, 1]; 10
cubic_spiral           y' = A^T y^3, A = [[-0.1, 2], [-2, -0.1]], [2, 0], (0, 1.5),    Onken & Ruthotto;
                       29 saves                                                        torchdiffeq ode_demo
error_norm_trap        u1' = p1 (u1 - u2), u2' = p2 (u2 - u1), p = (1, 1), [1, 1], 5    Sapienza et al. §4.1.2.4
mlp                    y' = MLP(y), widths [2, 32, 2], tanh, seed 0, y0 [1, 0], T = 1   Diffrax neural ODE style
mlp_fit                batch of 64 states in R^8, y' = MLP([y, t]) 8-64-64-8 tanh (time  neural-ODE practice
                       input), mse to a damped linear oscillator's trajectories at
                       4 saves, T = 1 (the scale benchmarks' problem: batch, widths)
spiral_fit             batch of 20 windows of the cubic spiral (10 points, dt 25/999),  Onken & Ruthotto;
                       y' = MLP(y^3) 2-50-2 tanh (cube features), mse to the true       torchdiffeq ode_demo
                       spiral
cnf_moons              continuous normalizing flow on 256 two-moons samples: state      FFJORD (Grathwohl et
                       [x, logp] in R^3, x' = MLP([x, t]) 2-64-64-64-2 softplus,        al. 2019) toy densities
                       logp' = -tr(dMLP/dx) exact, cnf_nll loss, t in [0, 1]
cnf_8gaussians         the same on 8 gaussians                                          FFJORD
cnf_checkerboard       the same on the checkerboard                                     FFJORD
=====================  ==============================================================  =========================

Batched problems (``mlp_fit``, ``spiral_fit``) accept ``batch``; ``mlp_fit`` also ``widths`` (e.g. ``[32, 128, 128,
32]``), ``time_input``, ``features`` and ``activation``: the sweep overrides ``{batch = 512, widths = [...]}``.
The CNF problems accept ``batch`` (samples), ``widths``, ``activation``, ``time_input``, ``seed`` (weights),
``data_seed`` (samples), ``scale`` and ``t1``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ._cnf import CNFRHS
from ._errors import InvalidInputError, fmt_choices
from ._limits import MAX_MLP_LAYERS, MAX_SAVES, MAX_STATE_ENTRIES, check_count, check_symbolic_size
from ._problem import Loss, Problem
from ._rhs import MLPRHS, SymbolicRHS

__all__ = ["PROBLEMS", "get_problem"]


def _matrix_problem(name: str, a: np.ndarray, y0, t1: float, description: str, saveat=None) -> Problem:
    """y' = A y with every entry of A a parameter ``a_i_j`` (row-major)."""
    n = a.shape[0]
    states = [f"y{i}" for i in range(n)]
    params = [f"a_{i}_{j}" for i in range(n) for j in range(n)]
    rhs = [" + ".join(f"a_{i}_{j}*y{j}" for j in range(n)) for i in range(n)]
    return Problem(
        SymbolicRHS(states, params, rhs), y0=y0, params=a.ravel(), tspan=(0.0, t1), saveat=saveat,
        name=name, description=description,
    )


def linear(n: int = 10, t1: float = 2.0, seed: int = 0) -> Problem:
    """Random stable linear system with a closed-form gradient (matrix exponential)."""
    check_symbolic_size(n, n * n)  # before n*n strings and numbers exist
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n)) / np.sqrt(n) - 0.5 * np.eye(n)
    y0 = rng.standard_normal(n)
    return _matrix_problem("linear", a, y0, t1, f"y' = A y, {n}x{n} random stable A, closed-form gradient")


def exponential_decay(k: float = 0.5, y0: float = 1.0, t1: float = 5.0) -> Problem:
    """Scalar exponential decay y' = -k y."""
    return Problem(
        SymbolicRHS(["y"], ["k"], ["-k*y"]), y0=[y0], params={"k": k}, tspan=(0.0, t1),
        saveat=np.linspace(t1 / 5, t1, 5), name="exponential_decay", description="y' = -k y",
    )


def decay2(t1: float = 5.0) -> Problem:
    """Dissipative 2x2 system on which undamped ALF is unstable (TorchDiffEqPack's silent failure case)."""
    a = np.array([[-1.0, 0.0], [0.5, -3.0]])
    return _matrix_problem("decay2", a, [1.0, 1.0], t1, "y' = A y, eigenvalues -1, -3 (ALF-unstable)")


def lotka_volterra(a=1.5, b=1.0, c=3.0, d=1.0, t1: float = 10.0) -> Problem:
    """Lotka-Volterra predator-prey (SciMLBenchmarks values)."""
    return Problem(
        SymbolicRHS(["x", "y"], ["a", "b", "c", "d"], ["a*x - b*x*y", "-c*y + d*x*y"]),
        y0=[1.0, 1.0], params={"a": a, "b": b, "c": c, "d": d}, tspan=(0.0, t1),
        saveat=np.linspace(t1 / 4, t1, 4), name="lotka_volterra", description="predator-prey",
    )


def _vdp(name: str, mu: float, t1: float, stiff: bool) -> Problem:
    return Problem(
        SymbolicRHS(["x", "y"], ["mu"], ["y", "mu*((1 - x**2)*y - x)"]),
        y0=[2.0, 0.0], params={"mu": mu}, tspan=(0.0, t1), saveat=np.linspace(t1 / 4, t1, 4),
        name=name, description=f"Van der Pol, mu = {mu:g}", stiff=stiff,
    )


def van_der_pol(mu: float = 1.0, t1: float = 6.3) -> Problem:
    """Non-stiff Van der Pol oscillator."""
    return _vdp("van_der_pol", mu, t1, stiff=False)


def van_der_pol_stiff(mu: float = 1e3, t1: float = 2.0) -> Problem:
    """Stiff Van der Pol oscillator."""
    return _vdp("van_der_pol_stiff", mu, t1, stiff=True)


def robertson(k1=0.04, k2=3e7, k3=1e4, t1: float = 100.0) -> Problem:
    """Robertson's stiff chemical kinetics (Diffrax's stiff example span)."""
    return Problem(
        SymbolicRHS(
            ["y1", "y2", "y3"], ["k1", "k2", "k3"],
            ["-k1*y1 + k3*y2*y3", "k1*y1 - k2*y2**2 - k3*y2*y3", "k2*y2**2"],
        ),
        y0=[1.0, 0.0, 0.0], params={"k1": k1, "k2": k2, "k3": k3}, tspan=(0.0, t1),
        saveat=[t1 / 100, t1 / 10, t1], name="robertson", description="stiff kinetics", stiff=True,
    )


def fitzhugh_nagumo(a=0.7, b=0.8, tau_inv=1 / 12.5, l=0.5, t1: float = 10.0) -> Problem:  # noqa: E741
    """FitzHugh-Nagumo neuron model (SciMLBenchmarks values)."""
    return Problem(
        SymbolicRHS(["v", "w"], ["a", "b", "tau_inv", "l"], ["v - v**3/3 - w + l", "tau_inv*(v + a - b*w)"]),
        y0=[1.0, 1.0], params={"a": a, "b": b, "tau_inv": tau_inv, "l": l}, tspan=(0.0, t1),
        saveat=np.linspace(t1 / 4, t1, 4), name="fitzhugh_nagumo", description="excitable neuron",
    )


def cubic_spiral(t1: float = 1.5, n_save: int = 30) -> Problem:
    """The cubic spiral of torchdiffeq's demo and Onken & Ruthotto: y' = A^T (y^3), saved at 29 times."""
    check_count("n_save", n_save, MAX_SAVES)
    a = {"a11": -0.1, "a12": 2.0, "a21": -2.0, "a22": -0.1}
    return Problem(
        SymbolicRHS(["x", "y"], list(a), ["a11*x**3 + a21*y**3", "a12*x**3 + a22*y**3"]),
        y0=[2.0, 0.0], params=a, tspan=(0.0, t1), saveat=np.linspace(0.0, t1, n_save)[1:],
        name="cubic_spiral", description="y' = A^T y^3",
    )


def error_norm_trap(p1: float = 1.0, p2: float = 1.0, t1: float = 5.0) -> Problem:
    """Sapienza et al.'s case where reverse-mode through adaptive solvers has been reported wrong; loss = u1(t1)."""
    return Problem(
        SymbolicRHS(["u1", "u2"], ["p1", "p2"], ["p1*(u1 - u2)", "p2*(u2 - u1)"]),
        y0=[1.0, 1.0], params={"p1": p1, "p2": p2}, tspan=(0.0, t1),
        loss=Loss("linear", [[1.0, 0.0]]), name="error_norm_trap", description="du1(T)/du0 trap",
    )


def mlp(n: int = 2, width: int = 32, depth: int = 1, activation: str = "tanh", seed: int = 0,
        t1: float = 1.0) -> Problem:
    """A neural ODE y' = MLP(y) of configurable size (depth = number of hidden layers)."""
    if depth < 1 or width < 1 or n < 1:
        raise InvalidInputError(f"`n`, `width`, `depth` must be >= 1; got n={n}, width={width}, depth={depth}.")
    check_count("depth", depth, MAX_MLP_LAYERS - 1)  # before a list of `depth` widths exists
    rhs = MLPRHS([n] + [width] * depth + [n], activation, seed=seed)
    y0 = np.zeros(n)
    y0[0] = 1.0
    return Problem(rhs, y0=y0, tspan=(0.0, t1), saveat=[t1 / 2, t1], name="mlp", description=rhs.describe())


def _positive_int(name: str, value, limit: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidInputError(f"`{name}` must be a positive integer; got {value!r}.")
    if limit is not None and value > limit:
        raise InvalidInputError(f"`{name}` = {value} is too large; at most {limit} is allowed here.")
    return int(value)


def _check_batch(batch, n: int, n_save: int) -> int:
    batch = _positive_int("batch", batch)
    if batch * n * max(n_save, 1) > MAX_STATE_ENTRIES:
        raise InvalidInputError(
            f"`batch` = {batch} with {n} states and {n_save} saves needs {batch * n * n_save} target entries; at most "
            f"{MAX_STATE_ENTRIES} are allowed."
        )
    return batch


def mlp_fit(batch: int = 64, n: int = 8, width: int = 64, depth: int = 2, widths=None, activation: str = "tanh",
            time_input: bool = True, features: str = "identity", seed: int = 0, t1: float = 1.0,
            n_save: int = 4) -> Problem:
    """A batched neural ODE fitted (mse) to trajectories of a damped linear oscillator (scale benchmarks)."""
    if widths is None:
        n, width, depth = (_positive_int(k, v) for k, v in (("n", n), ("width", width), ("depth", depth)))
        check_count("depth", depth, MAX_MLP_LAYERS - 1)  # before a list of `depth` widths exists
        widths = [n] + [width] * depth + [n]
    elif isinstance(widths, (list, tuple)) and widths and not isinstance(widths[0], bool) and isinstance(
            widths[0], (int, np.integer)):
        n = int(widths[0])
    n_save = _positive_int("n_save", n_save, MAX_SAVES)
    rhs = MLPRHS(widths, activation, time_input=time_input, features=features, seed=seed)  # validates widths
    batch = _check_batch(batch, n, n_save)
    rng = np.random.default_rng(seed + 1)
    y0 = rng.standard_normal((batch, n))
    # teacher: y' = A y, A = (S - S^T) * 2/sqrt(n) - 0.1 I (rotations, slowly damped)
    s = rng.standard_normal((n, n))
    a = (s - s.T) * (2.0 / np.sqrt(n)) - 0.1 * np.eye(n)
    saveat = np.linspace(t1 / n_save, t1, n_save)
    targets = _linear_flow(a, y0, saveat)
    return Problem(rhs, y0=y0, tspan=(0.0, t1), saveat=saveat, loss=Loss("mse", targets=targets), name="mlp_fit",
                   description=f"batch {batch}, {rhs.describe()}, mse to a linear oscillator")


def _linear_flow(a: np.ndarray, y0: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """``y(t) = expm(t A) y0`` for each ``t`` (rows of ``y0`` are states): ``(len(ts), *y0.shape)``."""
    import scipy.linalg

    return np.stack([y0 @ scipy.linalg.expm(t * a).T for t in ts])


def spiral_fit(batch: int = 20, n_save: int = 9, width: int = 50, seed: int = 0) -> Problem:
    """Onken & Ruthotto's (torchdiffeq ode_demo's) spiral model MLP(y^3) fitted (mse) to batches of the true spiral."""
    import scipy.integrate

    n_save = _positive_int("n_save", n_save, 998)
    batch = _check_batch(batch, 2, n_save)
    if batch > 1000 - n_save - 1:
        raise InvalidInputError(f"`batch` must be at most {1000 - n_save - 1} (distinct windows); got {batch}.")
    width = _positive_int("width", width)
    # the data: torchdiffeq ode_demo's true spiral y' = A^T y^3 from [2, 0] on 1000 points of [0, 25]
    a = np.array([[-0.1, 2.0], [-2.0, -0.1]])
    t = np.linspace(0.0, 25.0, 1000)
    true = scipy.integrate.solve_ivp(lambda _t, y: (y**3) @ a, (0.0, 25.0), [2.0, 0.0], t_eval=t, method="DOP853",
                                     rtol=1e-12, atol=1e-12).y.T
    rng = np.random.default_rng(seed)
    starts = np.sort(rng.choice(1000 - n_save - 1, size=batch, replace=False))
    y0 = true[starts]
    saveat = t[1 : n_save + 1]
    targets = np.stack([true[starts + k] for k in range(1, n_save + 1)])
    rhs = MLPRHS([2, width, 2], "tanh", features="cube", seed=seed)
    return Problem(rhs, y0=y0, tspan=(0.0, float(saveat[-1])), saveat=saveat, loss=Loss("mse", targets=targets),
                   name="spiral_fit", description=f"batch {batch}, {rhs.describe()}, mse to the true cubic spiral")


def cnf_problem(dataset: str = "two_moons", batch: int = 256, widths=(2, 64, 64, 64, 2), activation: str = "softplus",
                time_input: bool = True, seed: int = 0, data_seed: int = 0, scale: float = 1.0, t1: float = 1.0,
                name: str | None = None) -> Problem:
    """An FFJORD-style CNF on ``batch`` samples of a 2-D toy density (:mod:`crossode.datasets`), ``cnf_nll`` loss.

    The state is ``[x, logp]`` with ``logp(0) = 0``; the flow runs from the data at ``t = 0`` to the base
    (standard normal) at ``t1``. ``seed`` initialises the weights, ``data_seed`` draws the samples.
    """
    from . import datasets

    batch = _check_batch(batch, 3, 1)
    if isinstance(widths, (list, tuple)) and widths and widths[0] != 2:
        raise InvalidInputError(f"`widths` must start and end with 2 for a 2-D toy density; got {list(widths)}.")
    rhs = CNFRHS(list(widths), activation, time_input=time_input, seed=seed, scale=scale)
    x = datasets.sample(dataset, batch, seed=data_seed)
    y0 = np.concatenate([x, np.zeros((batch, 1))], axis=1)
    label = name or f"cnf_{dataset}"
    return Problem(rhs, y0=y0, tspan=(0.0, float(t1)), loss=Loss("cnf_nll"), name=label,
                   description=f"batch {batch} of {dataset}, {rhs.describe()}, negative log-likelihood")


def cnf_moons(**overrides) -> Problem:
    """A continuous normalizing flow (FFJORD, exact trace) on 256 two-moons samples, negative log-likelihood."""
    return cnf_problem("two_moons", name="cnf_moons", **overrides)


def cnf_8gaussians(**overrides) -> Problem:
    """A continuous normalizing flow (FFJORD, exact trace) on 256 samples of 8 gaussians, negative log-likelihood."""
    return cnf_problem("8gaussians", name="cnf_8gaussians", **overrides)


def cnf_checkerboard(**overrides) -> Problem:
    """A continuous normalizing flow (FFJORD, exact trace) on 256 checkerboard samples, negative log-likelihood."""
    return cnf_problem("checkerboard", name="cnf_checkerboard", **overrides)


PROBLEMS: dict[str, Callable[..., Problem]] = {
    "linear": linear,
    "exponential_decay": exponential_decay,
    "decay2": decay2,
    "lotka_volterra": lotka_volterra,
    "van_der_pol": van_der_pol,
    "van_der_pol_stiff": van_der_pol_stiff,
    "robertson": robertson,
    "fitzhugh_nagumo": fitzhugh_nagumo,
    "cubic_spiral": cubic_spiral,
    "error_norm_trap": error_norm_trap,
    "mlp": mlp,
    "mlp_fit": mlp_fit,
    "spiral_fit": spiral_fit,
    "cnf_moons": cnf_moons,
    "cnf_8gaussians": cnf_8gaussians,
    "cnf_checkerboard": cnf_checkerboard,
}
"""Zoo problem factories by name."""


def get_problem(name: str, **overrides) -> Problem:
    """Build the zoo problem ``name`` with keyword overrides of its constants (see :data:`PROBLEMS`)."""
    factory = PROBLEMS.get(name)
    if factory is None:
        raise InvalidInputError(f"Unknown problem {name!r}; expected one of {fmt_choices(PROBLEMS)}.")
    try:
        return factory(**overrides)
    except TypeError as e:
        raise InvalidInputError(f"Problem {name!r} does not accept options {sorted(overrides)} ({e}).") from None
