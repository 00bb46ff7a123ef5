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


_ROWS = 256  # rows per chunk: float64 temporaries stay small for any image size


def _moments(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and sqrt(unbiased variance + eps) of an (H, W, C) array (two passes, float64)."""
    c = img.shape[-1]
    n = img.shape[0] * img.shape[1]
    total = np.zeros(c)
    for r in range(0, img.shape[0], _ROWS):
        total += img[r : r + _ROWS].reshape(-1, c).sum(axis=0, dtype=np.float64)
    mean = total / n
    sq = np.zeros(c)
    for r in range(0, img.shape[0], _ROWS):
        d = img[r : r + _ROWS].reshape(-1, c).astype(np.float64) - mean
        sq += (d * d).sum(axis=0)
    var = sq / (n - 1) if n > 1 else np.zeros(c)
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
    gain = (sigma_t / std).astype(np.float32)
    offset = (mu_t - mean * sigma_t / std).astype(np.float32)
    out = np.empty(img.shape, dtype=np.float32)
    for r in range(0, img.shape[0], _ROWS):
        np.clip(img[r : r + _ROWS] * gain + offset, 0.0, 1.0, out=out[r : r + _ROWS])
    return out
