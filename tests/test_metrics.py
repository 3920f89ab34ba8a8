import numpy as np
import pytest

from migm.evaluation.metrics import frechet_distance


def test_fd_identical_is_zero_and_mean_shift_adds_squared_norm():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2000, 8))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = np.array([1.0, 2.0] + [0.0] * 6)
    # same covariance, shifted mean: FD = |shift|^2
    assert frechet_distance(a, a + shift) == pytest.approx(5.0, rel=1e-6)


def test_fd_scaled_covariance():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(50000, 4))
    b = 2 * rng.normal(size=(50000, 4))
    # N(0, I) vs N(0, 4I) in 4-d: 4 * (1 + 4 - 2*2) = 4
    assert frechet_distance(a, b) == pytest.approx(4.0, rel=0.05)
