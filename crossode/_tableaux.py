"""Butcher tableaux of the explicit Runge-Kutta descriptors, as plain Python floats (no framework import).

Every backend that implements its own explicit RK stepping (PyTorch; a NumPy reference could too) reads the
coefficients from here, so "Dopri5" is the same arithmetic everywhere. Coefficients are copied from Diffrax
(``diffrax/_solver/*.py``, commit 5ea5fcb); Midpoint and Heun use the explicit Euler method as their embedded
estimate, and Dopri8 is the Prince-Dormand 8(7) 13-stage pair Diffrax uses (its 14th, FSAL-only stage is not
needed: the error estimate uses stages 1..13 only, so crossode evaluates 13 stages per attempt).

A tableau with ``s`` stages is stored as

- ``a``: lower-triangular rows ``a[i]`` of length ``i`` (``a[0] = ()``), stage ``i`` uses stages ``0..i-1``;
- ``b``: solution weights (length ``s``), ``c``: nodes (length ``s``, ``c[0] = 0``);
- ``b_err``: ``b - b_hat`` where ``b_hat`` are the weights of the embedded lower-order method (``None`` for
  methods without an error estimate); the local error estimate is ``h * sum_i b_err[i] * k_i``;
- ``fsal``: the last stage is evaluated at the new solution (``a[-1] == b`` and ``c[-1] == 1``), so it is the
  first stage of the next step;
- ``order``: order of the solution; ``error_order``: order of the local error estimate (embedded order + 1),
  the ``q`` in the step-size controller's exponent ``-1/q`` and in Hairer's initial-step formula.
"""

from __future__ import annotations

import dataclasses

from ._errors import UnsupportedError
from ._solvers import RK4, AbstractSolver, Bosh3, Dopri5, Dopri8, Euler, Heun, Midpoint, Tsit5

__all__ = ["ButcherTableau", "TABLEAUX", "tableau_for", "RK4_38_TABLEAU"]


@dataclasses.dataclass(frozen=True)
class ButcherTableau:
    """Coefficients of an explicit (embedded) Runge-Kutta method; see the module docstring for the layout."""

    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]
    b_err: tuple[float, ...] | None
    order: int
    error_order: int | None
    fsal: bool = False

    def __post_init__(self):
        s = len(self.b)
        # Structural invariants; violated only by a typo in this file, hence ValueError (not user input).
        if len(self.a) != s or len(self.c) != s or any(len(row) != i for i, row in enumerate(self.a)):
            raise ValueError("malformed Butcher tableau: `a` must be strictly lower triangular with len(b) rows")
        if self.b_err is not None and len(self.b_err) != s:
            raise ValueError("malformed Butcher tableau: `b_err` must have len(b) entries")
        if self.fsal and (tuple(self.a[-1]) != tuple(self.b[:-1]) or self.b[-1] != 0.0 or self.c[-1] != 1.0):
            raise ValueError("an FSAL tableau needs a[-1] == b[:-1], b[-1] == 0 and c[-1] == 1")

    @property
    def stages(self) -> int:
        """Number of stages ``s`` (for FSAL methods the last one is reused as the next step's first)."""
        return len(self.b)

    @property
    def solution_stages(self) -> int:
        """Stages the new solution depends on (through ``b`` and, transitively, ``a``), ``k1`` included; for FSAL
        tableaux the last stage is the next step's ``k1`` and not counted here. With reverse-mode autograd through
        the steps this is the number of VJPs of ``f`` per accepted step (the other stages only feed the error
        estimate)."""
        live = {i for i, bi in enumerate(self.b) if bi != 0.0}
        for i in range(len(self.b) - 1, 0, -1):
            if i in live:
                live.update(j for j, aij in enumerate(self.a[i]) if aij != 0.0)
        return len(live)

    @property
    def adaptive(self) -> bool:
        """Whether the tableau has an embedded error estimate."""
        return self.b_err is not None

    @property
    def b_hat(self) -> tuple[float, ...] | None:
        """Weights of the embedded method, ``b - b_err``."""
        return None if self.b_err is None else tuple(b - e for b, e in zip(self.b, self.b_err))


def _lower(rows) -> tuple[tuple[float, ...], ...]:
    return ((),) + tuple(tuple(float(x) for x in r) for r in rows)


def _f(xs) -> tuple[float, ...]:
    return tuple(float(x) for x in xs)


EULER = ButcherTableau(a=_lower([]), b=(1.0,), c=(0.0,), b_err=None, order=1, error_order=None)

# Explicit midpoint with embedded Euler (b_hat = (1, 0)).
MIDPOINT = ButcherTableau(
    a=_lower([[1 / 2]]), b=(0.0, 1.0), c=(0.0, 0.5), b_err=(0.0 - 1.0, 1.0 - 0.0), order=2, error_order=2
)

# Heun (explicit trapezoid) with embedded Euler (b_hat = (1, 0)).
HEUN = ButcherTableau(
    a=_lower([[1.0]]), b=(0.5, 0.5), c=(0.0, 1.0), b_err=(0.5 - 1.0, 0.5 - 0.0), order=2, error_order=2
)

RK4_TABLEAU = ButcherTableau(
    a=_lower([[1 / 2], [0.0, 1 / 2], [0.0, 0.0, 1.0]]),
    b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
    c=(0.0, 0.5, 0.5, 1.0),
    b_err=None,
    order=4,
    error_order=None,
)

# Kutta's 3/8 rule, the fourth-order method torchdiffeq calls "rk4" (its `rk4_alt_step_func`). Not a crossode
# descriptor of its own: `crossode.torch.odeint(..., method="rk4")` steps with it so that torchdiffeq's calls give
# torchdiffeq's numbers; `solver=RK4()` is the classical tableau above everywhere.
RK4_38_TABLEAU = ButcherTableau(
    a=_lower([[1 / 3], [-1 / 3, 1.0], [1.0, -1.0, 1.0]]),
    b=(1 / 8, 3 / 8, 3 / 8, 1 / 8),
    c=(0.0, 1 / 3, 2 / 3, 1.0),
    b_err=None,
    order=4,
    error_order=None,
)

BOSH3 = ButcherTableau(
    a=_lower([[1 / 2], [0.0, 3 / 4], [2 / 9, 1 / 3, 4 / 9]]),
    b=(2 / 9, 1 / 3, 4 / 9, 0.0),
    c=(0.0, 1 / 2, 3 / 4, 1.0),
    b_err=(2 / 9 - 7 / 24, 1 / 3 - 1 / 4, 4 / 9 - 1 / 3, -1 / 8),
    order=3,
    error_order=3,
    fsal=True,
)

DOPRI5 = ButcherTableau(
    a=_lower(
        [
            [1 / 5],
            [3 / 40, 9 / 40],
            [44 / 45, -56 / 15, 32 / 9],
            [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
            [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
            [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84],
        ]
    ),
    b=_f([35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0]),
    c=_f([0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0]),
    b_err=_f(
        [
            35 / 384 - 1951 / 21600,
            0.0,
            500 / 1113 - 22642 / 50085,
            125 / 192 - 451 / 720,
            -2187 / 6784 - -12231 / 42400,
            11 / 84 - 649 / 6300,
            -1.0 / 60.0,
        ]
    ),
    order=5,
    error_order=5,
    fsal=True,
)

# Tsitouras (2011) 5(4); the long decimals are Diffrax's (more digits than a double holds; Python rounds).
_T_B = (
    0.9646076681806522951816731316512876333711995238157997181903319145764851595234062815396e-1,
    1 / 100,
    0.4798896504144995747752495322905965199130404621990332488332634944254542060153074523509,
    1.379008574103741893192274821856872770756462643091360525934940067397245698027561293331,
    -3.290069515436080679901047585711363850115683290894936158531296799594813811049925401677,
    2.324710524099773982415355918398765796109060233222962411944060046314465391054716027841,
)
_T_BHAT = (
    0.9468075576583945807478876255758922856117527357724631226139574065785592789071067303271e-1,
    0.9183565540343253096776363936645313759813746240984095238905939532922955247253608687270e-2,
    0.4877705284247615707855642599631228241516691959761363774365216240304071651579571959813,
    1.234297566930478985655109673884237654035539930748192848315425833500484878378061439761,
    -2.707712349983525454881109975059321670689605166938197378763992255714444407154902012702,
    1.866628418170587035753719399566211498666255505244122593996591602841258328965767580089,
)
TSIT5 = ButcherTableau(
    a=_lower(
        [
            [161 / 1000],
            [
                -0.8480655492356988544426874250230774675121177393430391537369234245294192976164141156943e-2,
                0.3354806554923569885444268742502307746751211773934303915373692342452941929761641411569,
            ],
            [
                2.897153057105493432130432594192938764924887287701866490314866693455023795137503079289,
                -6.359448489975074843148159912383825625952700647415626703305928850207288721235210244366,
                4.362295432869581411017727318190886861027813359713760212991062156752264926097707165077,
            ],
            [
                5.325864828439256604428877920840511317836476253097040101202360397727981648835607691791,
                -11.74888356406282787774717033978577296188744178259862899288666928009020615663593781589,
                7.495539342889836208304604784564358155658679161518186721010132816213648793440552049753,
                -0.9249506636175524925650207933207191611349983406029535244034750452930469056411389539635e-1,
            ],
            [
                5.861455442946420028659251486982647890394337666164814434818157239052507339770711679748,
                -12.92096931784710929170611868178335939541780751955743459166312250439928519268343184452,
                8.159367898576158643180400794539253485181918321135053305748355423955009222648673734986,
                -0.7158497328140099722453054252582973869127213147363544882721139659546372402303777878835e-1,
                -0.2826905039406838290900305721271224146717633626879770007617876201276764571291579142206e-1,
            ],
            list(_T_B),
        ]
    ),
    b=_T_B + (0.0,),
    c=(
        0.0,
        161 / 1000,
        327 / 1000,
        9 / 10,
        0.9800255409045096857298102862870245954942137979563024768854764293221195950761080302604,
        1.0,
        1.0,
    ),
    b_err=tuple(b - bh for b, bh in zip(_T_B, _T_BHAT)) + (-1 / 66,),
    order=5,
    error_order=5,
    fsal=True,
)

# Prince & Dormand (1981) RK8(7)13M, rational approximations as in Diffrax.
_D8_B = (
    14005451 / 335480064,
    0.0,
    0.0,
    0.0,
    0.0,
    -59238493 / 1068277825,
    181606767 / 758867731,
    561292985 / 797845732,
    -1041891430 / 1371343529,
    760417239 / 1151165299,
    118820643 / 751138087,
    -528747749 / 2220607170,
    1 / 4,
)
_D8_BHAT = (
    13451932 / 455176623,
    0.0,
    0.0,
    0.0,
    0.0,
    -808719846 / 976000145,
    1757004468 / 5645159321,
    656045339 / 265891186,
    -3867574721 / 1518517206,
    465885868 / 322736535,
    53011238 / 667516719,
    2 / 45,
    0.0,
)
DOPRI8 = ButcherTableau(
    a=_lower(
        [
            [1 / 18],
            [1 / 48, 1 / 16],
            [1 / 32, 0, 3 / 32],
            [5 / 16, 0, -75 / 64, 75 / 64],
            [3 / 80, 0, 0, 3 / 16, 3 / 20],
            [29443841 / 614563906, 0, 0, 77736538 / 692538347, -28693883 / 1125000000, 23124283 / 1800000000],
            [
                16016141 / 946692911,
                0,
                0,
                61564180 / 158732637,
                22789713 / 633445777,
                545815736 / 2771057229,
                -180193667 / 1043307555,
            ],
            [
                39632708 / 573591083,
                0,
                0,
                -433636366 / 683701615,
                -421739975 / 2616292301,
                100302831 / 723423059,
                790204164 / 839813087,
                800635310 / 3783071287,
            ],
            [
                246121993 / 1340847787,
                0,
                0,
                -37695042795 / 15268766246,
                -309121744 / 1061227803,
                -12992083 / 490766935,
                6005943493 / 2108947869,
                393006217 / 1396673457,
                123872331 / 1001029789,
            ],
            [
                -1028468189 / 846180014,
                0,
                0,
                8478235783 / 508512852,
                1311729495 / 1432422823,
                -10304129995 / 1701304382,
                -48777925059 / 3047939560,
                15336726248 / 1032824649,
                -45442868181 / 3398467696,
                3065993473 / 597172653,
            ],
            [
                185892177 / 718116043,
                0,
                0,
                -3185094517 / 667107341,
                -477755414 / 1098053517,
                -703635378 / 230739211,
                5731566787 / 1027545527,
                5232866602 / 850066563,
                -4093664535 / 808688257,
                3962137247 / 1805957418,
                65686358 / 487910083,
            ],
            [
                403863854 / 491063109,
                0,
                0,
                -5068492393 / 434740067,
                -411421997 / 543043805,
                652783627 / 914296604,
                11173962825 / 925320556,
                -13158990841 / 6184727034,
                3936647629 / 1978049680,
                -160528059 / 685178525,
                248638103 / 1413531060,
                0,
            ],
        ]
    ),
    b=_f(_D8_B),
    c=_f(
        [
            0.0,
            1 / 18,
            1 / 12,
            1 / 8,
            5 / 16,
            3 / 8,
            59 / 400,
            93 / 200,
            5490023248 / 9719169821,
            13 / 20,
            1201146811 / 1299019798,
            1,
            1,
        ]
    ),
    b_err=tuple(b - bh for b, bh in zip(_D8_B, _D8_BHAT)),
    order=8,
    error_order=8,
)

TABLEAUX: dict[type[AbstractSolver], ButcherTableau] = {
    Euler: EULER,
    Midpoint: MIDPOINT,
    Heun: HEUN,
    RK4: RK4_TABLEAU,
    Bosh3: BOSH3,
    Dopri5: DOPRI5,
    Tsit5: TSIT5,
    Dopri8: DOPRI8,
}
"""Tableau of each explicit RK descriptor class; a missing key means "not an explicit RK method"."""


def tableau_for(solver: AbstractSolver) -> ButcherTableau:
    """The tableau of an explicit RK descriptor; raises :class:`UnsupportedError` for other solvers."""
    tab = TABLEAUX.get(type(solver))
    if tab is None:
        raise UnsupportedError(f"`solver={solver!r}` is not an explicit Runge-Kutta method with a tableau.")
    return tab
