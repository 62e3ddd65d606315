"""The 2-D toy densities: shapes, seeding, the geometry of each density, and one-line errors on bad arguments."""

import numpy as np
import pytest

from crossode import InvalidInputError, datasets
from crossode._limits import MAX_STATE_ENTRIES


@pytest.mark.parametrize("name", list(datasets.DATASETS))
def test_shape_seeding_and_bounds(name):
    x = datasets.sample(name, 501, seed=3)
    assert x.shape == (501, 2) and x.dtype == np.float64 and np.all(np.isfinite(x))
    np.testing.assert_array_equal(x, datasets.sample(name, 501, seed=3))  # same seed, same samples
    assert not np.array_equal(x, datasets.sample(name, 501, seed=4))
    assert np.all(np.abs(x) < 6.0)  # FFJORD's scaling: the data fill about [-4, 4]^2
    np.testing.assert_array_equal(datasets.sample(name, 7), datasets.DATASETS[name](7))  # seed 0 by default


def test_two_moons_geometry():
    x = datasets.two_moons(4000, seed=0, noise=0.0)
    u = (x - np.array([-1.0, -0.2])) / 2.0  # back to make_moons' coordinates
    upper = np.abs(np.hypot(u[:, 0], u[:, 1]) - 1.0) < 1e-12
    lower = np.abs(np.hypot(u[:, 0] - 1.0, u[:, 1] - 0.5) - 1.0) < 1e-12
    assert np.all(upper | lower) and upper.sum() == 2000 and lower.sum() == 2000
    assert np.all(u[upper, 1] >= -1e-12) and np.all(u[lower, 1] <= 0.5 + 1e-12)
    noisy = datasets.two_moons(4000, seed=0)
    assert 0.15 < np.std(noisy - x) < 0.25  # noise 0.1, scaled by 2


def test_eight_gaussians_geometry():
    x = datasets.eight_gaussians(8000, seed=1) * 1.414
    angles = np.arange(8) * np.pi / 4
    centers = 4.0 * np.stack([np.cos(angles), np.sin(angles)], 1)
    nearest = np.argmin(((x[:, None, :] - centers[None]) ** 2).sum(-1), axis=1)
    counts = np.bincount(nearest, minlength=8)
    assert np.all(np.abs(counts - 1000) < 150)  # equal weights
    assert np.std(x - centers[nearest]) == pytest.approx(0.5, rel=0.05)


def test_checkerboard_only_dark_squares():
    x = datasets.checkerboard(8000, seed=2)
    assert np.all((x >= -4.0) & (x < 4.0))
    i, j = np.floor(x[:, 0] / 2.0), np.floor(x[:, 1] / 2.0)  # the 4 x 4 board of side-2 squares
    assert np.all((i + j) % 2 == 0)
    occupied = {(a, b) for a, b in zip(i, j)}
    assert len(occupied) == 8


@pytest.mark.parametrize("args, match", [
    (("spiral", 10), "dataset"),
    ((None, 10), "dataset"),
    (("two_moons", 0), "positive integer"),
    (("two_moons", -5), "positive integer"),
    (("two_moons", 2.5), "positive integer"),
    (("two_moons", True), "positive integer"),
    (("8gaussians", MAX_STATE_ENTRIES), "too many"),
    (("checkerboard", 10, 1.5), "seed"),
    (("checkerboard", 10, False), "seed"),
])
def test_bad_arguments(args, match):
    with pytest.raises(InvalidInputError, match=match):
        datasets.sample(*args)
