"""crossode: one ODE problem, solved and differentiated in PyTorch, JAX (Diffrax) and Julia (SciML), measured.

``import crossode`` imports no framework: torch, jax and juliacall are loaded by their backends on first use.
"""

from ._cnf import CNFRHS as CNFRHS
from ._errors import (
    BackendUnavailableError as BackendUnavailableError,
    CrossODEError as CrossODEError,
    InvalidInputError as InvalidInputError,
    UnsafeExpressionError as UnsafeExpressionError,
    UnsupportedError as UnsupportedError,
)
from ._problem import Loss as Loss, Problem as Problem
from ._record import (
    STATUSES as STATUSES,
    GradientOutput as GradientOutput,
    Record as Record,
    SolveOutput as SolveOutput,
    SolverFailure as SolverFailure,
    Stats as Stats,
    error_limit as error_limit,
)
from ._rhs import MLPRHS as MLPRHS, SymbolicRHS as SymbolicRHS
from ._sensitivity import (
    MALI as MALI,
    AbstractSensitivity as AbstractSensitivity,
    Backsolve as Backsolve,
    Checkpointed as Checkpointed,
    Direct as Direct,
    Forward as Forward,
    GaussAdjoint as GaussAdjoint,
    InterpolatingAdjoint as InterpolatingAdjoint,
    QuadratureAdjoint as QuadratureAdjoint,
    check_pair as check_pair,
    sensitivity_from_name as sensitivity_from_name,
)
from ._solvers import (
    ALF as ALF,
    RK4 as RK4,
    AbstractSolver as AbstractSolver,
    AbstractStepControl as AbstractStepControl,
    Adaptive as Adaptive,
    Bosh3 as Bosh3,
    Dopri5 as Dopri5,
    Dopri8 as Dopri8,
    Euler as Euler,
    Fixed as Fixed,
    Heun as Heun,
    ImplicitEuler as ImplicitEuler,
    Kvaerno5 as Kvaerno5,
    Midpoint as Midpoint,
    Tsit5 as Tsit5,
    fixed_grid as fixed_grid,
    solver_from_name as solver_from_name,
)

__version__ = "0.1.0"

from ._harness import gradient as gradient, measure as measure, solve as solve  # noqa: E402
from ._problemfile import load_problem_file as load_problem_file  # noqa: E402
from ._reference import reference as reference, relative_error as relative_error  # noqa: E402
from ._registry import get_backend as get_backend, unavailable_reason as unavailable_reason  # noqa: E402
from .problems import PROBLEMS as PROBLEMS, get_problem as get_problem  # noqa: E402
