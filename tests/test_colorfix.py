"""Colour statistics and AdaIN correction against the paper's equations (supp. A, Eq. 9-11)."""

from __future__ import annotations

import numpy as np
import pytest

from stablecodec import colorfix


def test_statistics_follow_eq_10_11():
    rng = np.random.default_rng(0)
    img = rng.random((37, 53, 3)).astype(np.float32)
    stats = colorfix.statistics(img)
    for c in range(3):
        x = img[..., c].astype(np.float64).ravel()
        mu = x.sum() / x.size
        var = ((x - mu) ** 2).sum() / (x.size - 1)  # unbiased
        sigma = np.sqrt(var + 1e-5)
        assert stats[c] == round(mu * 65535)
        assert stats[3 + c] == round(sigma * 65535)


def test_quantization_error_is_below_half_a_level():
    img = np.random.default_rng(1).random((20, 20, 3))
    mu, sigma = colorfix.dequantize(colorfix.statistics(img))
    assert np.abs(mu - img.reshape(-1, 3).mean(0)).max() <= 0.5 / 65535 + 1e-12


def test_apply_gives_the_target_moments_eq_9():
    rng = np.random.default_rng(2)
    target = np.clip(0.5 + 0.1 * rng.standard_normal((64, 64, 3)), 0, 1)
    decoded = np.clip(0.3 + 0.05 * rng.standard_normal((64, 64, 3)), 0, 1).astype(np.float32)
    stats = colorfix.statistics(target)
    out = colorfix.apply(decoded, stats)
    mu_t, sigma_t = colorfix.dequantize(stats)
    got_mu = out.reshape(-1, 3).mean(0)
    got_sigma = np.sqrt(out.reshape(-1, 3).astype(np.float64).var(0, ddof=1) + 1e-5)
    np.testing.assert_allclose(got_mu, mu_t, atol=2e-4)
    np.testing.assert_allclose(got_sigma, sigma_t, atol=2e-4)


def test_single_pixel_and_grey_images():
    one = np.full((1, 1, 1), 0.25, np.float32)
    stats = colorfix.statistics(one)
    assert len(stats) == 2 and stats[0] == round(0.25 * 65535)
    out = colorfix.apply(np.full((1, 1, 1), 0.9, np.float32), stats)
    assert out[0, 0, 0] == pytest.approx(0.25, abs=1e-4)
