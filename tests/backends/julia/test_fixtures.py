"""``julia/test/fixtures.jl`` (the cases of ``julia/test/runtests.jl``) is current and covers every supported cell."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from crossode import Adaptive, Fixed, InterpolatingAdjoint
from crossode._sensitivity import SENSITIVITIES, check_pair
from crossode._solvers import SOLVERS
from crossode.backends.julia import JuliaBackend

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("julia_fixtures", HERE / "julia_fixtures.py")
julia_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(julia_fixtures)


def _supported(problem) -> set[tuple[str, str, str]]:
    backend, out = JuliaBackend(), set()
    for solver_cls in SOLVERS.values():
        for sens in [cls() for cls in SENSITIVITIES.values()] + [InterpolatingAdjoint(checkpointing=True)]:
            solver = solver_cls()
            try:
                check_pair(solver, sens)
            except Exception:  # noqa: BLE001 - pairs no backend supports
                continue
            for step in (Adaptive(), Fixed(dt=0.1)):
                if backend.supports(problem, solver, sens, step) is None:
                    out.add((solver.name, repr(sens), type(step).__name__))
    return out


@pytest.mark.parametrize("group", ["linear", "mlp"])
def test_fixtures_cover_every_supported_combination(group):
    """Every (solver, sensitivity, step control) that JuliaBackend.supports() accepts has a Julia gradient test on
    the closed-form problem (both step controls) and on the MLP (one step control per solver)."""
    probs = julia_fixtures.problems()
    cells = {(s.name, repr(g), type(c).__name__) for grp, _, s, g, c, _ in julia_fixtures.gradient_cells()
             if grp == group}
    supported = _supported(probs[group])
    if group == "mlp":  # one step control per solver: Adaptive when the solver has an error estimate
        supported = {(s, g, c) for s, g, c in supported if (c == "Adaptive") == SOLVERS[s].adaptive}
    assert supported, "no supported combination?"
    assert supported == cells, (sorted(supported - cells), sorted(cells - supported))


def test_fixture_groups_exercise_each_issue_12_case():
    groups = {c[0] for c in julia_fixtures.gradient_cells()}
    assert {"linear", "mlp", "vjp", "noparams", "backward", "weights", "float32", "nan_guard", "cnf"} <= groups
    dtypes = {c[5] for c in julia_fixtures.gradient_cells()}
    assert dtypes == {"float64", "float32"}


@pytest.mark.torch
@pytest.mark.slow
def test_committed_fixtures_are_current():
    """Regenerate with `PYTHONPATH=. python tests/backends/julia/julia_fixtures.py --write` when this fails."""
    pytest.importorskip("torch")
    assert julia_fixtures.OUT.read_text(encoding="utf-8") == julia_fixtures.render(), (
        "julia/test/fixtures.jl is stale: run `PYTHONPATH=. python tests/backends/julia/julia_fixtures.py --write`"
    )
