"""Fréchet audio distance (mufm/eval/fad.py) against its closed forms."""
import numpy as np
import pytest

from mufm.eval.fad import Gaussian, fad, fit_gaussian, frechet_distance


def test_closed_form_for_known_gaussians():
    rng = np.random.default_rng(0)
    d = 6
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    s_a = q @ np.diag(np.arange(1.0, d + 1)) @ q.T  # the same eigenvectors: commuting
    s_b = q @ np.diag(np.arange(1.0, d + 1) ** 2) @ q.T
    mu_a, mu_b = np.zeros(d), np.full(d, 0.5)
    # Commuting covariances: tr(S_a + S_b - 2 sqrt(S_a S_b)) = sum (sqrt(l_a) - sqrt(l_b))^2.
    expected = d * 0.25 + np.sum((np.sqrt(np.arange(1.0, d + 1)) - np.arange(1.0, d + 1)) ** 2)
    got = frechet_distance(Gaussian(mu_a, s_a, 0), Gaussian(mu_b, s_b, 0))
    assert got == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(Gaussian(mu_a, s_a, 0), Gaussian(mu_a, s_a, 0)) == pytest.approx(0, abs=1e-9)


def test_sample_fad_of_a_set_against_itself_and_a_shifted_set():
    rng = np.random.default_rng(1)
    n, d = 20_000, 8
    x = rng.standard_normal((n, d))
    assert fad(x, x) == pytest.approx(0, abs=1e-9)
    # N(0, I) against N(m, I): ||m||^2 = 8 x 0.25 = 2. Each sample mean is off by ~1/sqrt(n)
    # per dimension and each covariance entry by ~1/sqrt(n); the estimate's error is
    # dominated by 2 m . (error of the means difference), std ~ 2 sqrt(2 ||m||^2 / n) = 0.028,
    # plus a positive bias of order d^2 / n from the covariance noise (~0.003): 0.15 is > 5 sigma.
    y = rng.standard_normal((n, d)) + 0.5
    assert fad(x, y) == pytest.approx(2.0, abs=0.15)


def test_fewer_clips_than_dimensions_stays_real_and_bad_input_is_refused():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((5, 32)), rng.standard_normal((7, 32))
    value = fad(a, b)
    assert np.isfinite(value) and value > 0
    with pytest.raises(ValueError, match="n >= 2"):
        fit_gaussian(a[:1])
    with pytest.raises(ValueError, match="NaN"):
        fit_gaussian(np.full((3, 2), np.nan))
    with pytest.raises(ValueError, match="width"):
        fad(a, b[:, :16])
