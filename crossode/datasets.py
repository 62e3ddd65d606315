"""Seeded NumPy generators of FFJORD's 2-D toy densities (no scikit-learn needed).

Each generator returns ``(n, 2)`` float64 samples drawn with ``numpy.random.default_rng(seed)``, scaled as in
FFJORD's ``lib/toy_data.py`` (Grathwohl et al. 2019), so the data roughly fill ``[-4, 4]^2``:

- :func:`two_moons`: scikit-learn's ``make_moons`` construction (half of the points on the upper unit half-circle,
  the other half on the lower one shifted by ``(1, -0.5)``, evenly spaced in angle, shuffled), Gaussian noise of
  standard deviation ``noise`` (0.1), then ``2 x + (-1, -0.2)``;
- :func:`eight_gaussians`: a mixture of 8 equal Gaussians of standard deviation 0.5 centred on the circle of radius
  4 (angles ``k pi / 4``), divided by 1.414;
- :func:`checkerboard`: uniform on the 8 dark squares of a 4 x 4 checkerboard of side-2 squares on ``[-4, 4]^2``.

:data:`DATASETS` maps the names ``"two_moons"``, ``"8gaussians"``, ``"checkerboard"`` to them; :func:`sample` draws
by name with the limits checked.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ._errors import InvalidInputError, fmt_choices
from ._limits import MAX_STATE_ENTRIES

__all__ = ["two_moons", "eight_gaussians", "checkerboard", "DATASETS", "sample"]


def _count(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InvalidInputError(f"`n` (the number of samples) must be a positive integer; got {n!r}.")
    if 2 * n > MAX_STATE_ENTRIES:
        raise InvalidInputError(f"`n` = {n} samples is too many; at most {MAX_STATE_ENTRIES // 2} are allowed.")
    return int(n)


def two_moons(n: int, seed: int = 0, noise: float = 0.1) -> np.ndarray:
    """``n`` samples of two interleaved half-circles (``make_moons`` with ``noise``, then ``2 x + (-1, -0.2)``)."""
    n = _count(n)
    rng = np.random.default_rng(seed)
    n_out = n // 2
    n_in = n - n_out
    a_out, a_in = np.linspace(0.0, np.pi, n_out), np.linspace(0.0, np.pi, n_in)
    x = np.concatenate([np.stack([np.cos(a_out), np.sin(a_out)], 1),
                        np.stack([1.0 - np.cos(a_in), 0.5 - np.sin(a_in)], 1)])
    x = x[rng.permutation(n)] + float(noise) * rng.standard_normal((n, 2))
    return 2.0 * x + np.array([-1.0, -0.2])


def eight_gaussians(n: int, seed: int = 0) -> np.ndarray:
    """``n`` samples of 8 Gaussians (std 0.5) on the circle of radius 4, divided by 1.414 (FFJORD's scaling)."""
    n = _count(n)
    rng = np.random.default_rng(seed)
    angles = np.arange(8) * (np.pi / 4)
    centers = 4.0 * np.stack([np.cos(angles), np.sin(angles)], 1)
    x = 0.5 * rng.standard_normal((n, 2)) + centers[rng.integers(0, 8, size=n)]
    return x / 1.414


def checkerboard(n: int, seed: int = 0) -> np.ndarray:
    """``n`` samples uniform on the dark squares of a checkerboard on ``[-4, 4]^2`` (8 squares of side 2)."""
    n = _count(n)
    rng = np.random.default_rng(seed)
    x1 = rng.uniform(-2.0, 2.0, size=n)
    x2 = rng.uniform(0.0, 1.0, size=n) - 2.0 * rng.integers(0, 2, size=n) + np.floor(x1) % 2
    return 2.0 * np.stack([x1, x2], 1)


DATASETS: dict[str, Callable[..., np.ndarray]] = {
    "two_moons": two_moons,
    "8gaussians": eight_gaussians,
    "checkerboard": checkerboard,
}
"""The toy densities by name."""


def sample(name: str, n: int, seed: int = 0) -> np.ndarray:
    """``n`` samples ``(n, 2)`` of the toy density ``name`` (one of :data:`DATASETS`) with ``seed``."""
    if not isinstance(name, str) or name not in DATASETS:
        raise InvalidInputError(f"`dataset` must be one of {fmt_choices(DATASETS)}; got {name!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InvalidInputError(f"`seed` must be an integer; got {seed!r}.")
    return DATASETS[name](n, seed=seed)
