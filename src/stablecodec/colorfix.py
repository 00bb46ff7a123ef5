"""AdaIN colour correction with statistics carried in the file (paper supp. A, Eq. 9-11).

At encode time the per-channel mean mu and standard deviation sigma of the original
image in [0, 1] (unbiased variance + 1e-5, then the square root) are quantized to 16 bits,
v_hat = round(v * (2**16 - 1)) / (2**16 - 1) (Eq. 10-11): 6 x 16 = 96 bits in the file,
computed from the true original (the research code recomputed them at decode time from
the original image, which a decoder does not have). At decode time (Eq. 9):

    x_c = (x_hat - mu(x_hat)) / sigma(x_hat) * sigma_hat + mu_hat

No torch import: this runs on the decoded image as a NumPy array.
"""

from __future__ import annotations

import numpy as np

LEVELS = (1 << 16) - 1
EPS = 1e-5


def _moments(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and sqrt(unbiased variance + eps) of an (H, W, C) array."""
    flat = img.reshape(-1, img.shape[-1]).astype(np.float64)
    mean = flat.mean(axis=0)
    var = flat.var(axis=0, ddof=1) if flat.shape[0] > 1 else np.zeros_like(mean)
    return mean, np.sqrt(var + EPS)


def statistics(img: np.ndarray) -> tuple[int, ...]:
    """Quantized (mu_1..mu_C, sigma_1..sigma_C) of an (H, W, C) image in [0, 1], as uint16 ints."""
    if img.ndim != 3:
        raise ValueError(f"img must be (H, W, C), got shape {img.shape}")
    mean, std = _moments(img)
    q = np.clip(np.round(np.concatenate([mean, std]) * LEVELS), 0, LEVELS).astype(np.int64)
    return tuple(int(v) for v in q)


def dequantize(stats: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(stats, dtype=np.float64) / LEVELS
    c = len(v) // 2
    return v[:c], v[c:]


def apply(img: np.ndarray, stats: tuple[int, ...]) -> np.ndarray:
    """Eq. 9 on a decoded (H, W, C) image in [0, 1]; returns float32, clipped to [0, 1]."""
    mu_t, sigma_t = dequantize(stats)
    if img.ndim != 3 or img.shape[-1] != len(mu_t):
        raise ValueError(f"img has shape {img.shape}, the statistics are for {len(mu_t)} channels")
    mean, std = _moments(img)
    out = (img.astype(np.float64) - mean) / std * sigma_t + mu_t
    return np.clip(out, 0.0, 1.0).astype(np.float32)
