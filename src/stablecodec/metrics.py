"""Image-quality metrics for ``stablecodec eval``: PSNR and MS-SSIM (always), LPIPS,
DISTS and FID/KID on 256x256 patches (only when those packages *and their weights* are
already on this machine -- nothing is ever downloaded).

MS-SSIM is Wang et al. 2003 (Eq. 7 there, the weights of pytorch_msssim); FID/KID on
patches as the StableCodec paper reports them (docs/evaluation.md).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

METRICS = ("psnr", "ms_ssim", "lpips", "dists", "fid", "kid")
METRIC_LABELS = {"psnr": "PSNR (dB)", "ms_ssim": "MS-SSIM", "lpips": "LPIPS", "dists": "DISTS", "fid": "FID",
                 "kid": "KID"}
HIGHER_IS_BETTER = {"psnr": True, "ms_ssim": True, "lpips": False, "dists": False, "fid": False, "kid": False}


# ---------------------------------------------------------------------------------------
# Pixel metrics

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, as pytorch_msssim
MS_SSIM_WIN = 11


def as_uint8_rgb(pixels: np.ndarray) -> np.ndarray:
    """(H, W, 1|3) float in [0, 1] or uint8 -> (H, W, 3) uint8; grey is repeated to RGB.

    Rounded exactly as :func:`stablecodec.imageio.to_pil` does, so a metric sees the
    8-bit image a user would get from ``stablecodec decode``.
    """
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.dtype != np.uint8:
        pixels = np.clip(np.round(pixels.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return np.ascontiguousarray(pixels)


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """PSNR in dB of two 8-bit RGB images (peak 255, MSE over all pixels and channels).

    Identical images give ``math.inf`` (no cap): averages that include one are infinite,
    which is the honest answer for a lossless result.
    """
    _same_shape(reference, test)
    mse = float(np.mean((reference.astype(np.float64) - test.astype(np.float64)) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(255.0**2 / mse)


def ms_ssim_scales(height: int, width: int) -> int:
    """How many MS-SSIM scales an image of this size supports (5 at >= 161 px, 0 below 11 px).

    Each scale halves the image and the 11-tap window must still fit at the coarsest one:
    ``min(h, w) > 10 * 2 ** (scales - 1)``, the condition pytorch_msssim asserts for 5.
    """
    side = min(height, width)
    for scales in range(len(MS_SSIM_WEIGHTS), 0, -1):
        if side > (MS_SSIM_WIN - 1) * 2 ** (scales - 1):
            return scales
    return 0


def ms_ssim(reference: np.ndarray, test: np.ndarray) -> float:
    """MS-SSIM of two 8-bit RGB images, computed on [0, 1] floats with data_range=1.

    Images of at least 161 px on the short side use ``pytorch_msssim.ms_ssim`` with its
    standard five scales. Smaller ones use as many scales as fit (see
    :func:`ms_ssim_scales`) with the first weights renormalised to sum to 1; below 11 px
    there is no SSIM window at all and the result is NaN.
    """
    import torch
    from pytorch_msssim import ms_ssim as _ms_ssim

    _same_shape(reference, test)
    scales = ms_ssim_scales(reference.shape[0], reference.shape[1])
    if scales == 0:
        return math.nan
    x = torch.from_numpy(reference.transpose(2, 0, 1)[None].astype(np.float64) / 255.0)
    y = torch.from_numpy(test.transpose(2, 0, 1)[None].astype(np.float64) / 255.0)
    with torch.no_grad():
        if scales == len(MS_SSIM_WEIGHTS):
            return float(_ms_ssim(x, y, data_range=1.0))
        return _ms_ssim_fewer_scales(x, y, scales)


def _ms_ssim_fewer_scales(x, y, scales: int) -> float:
    # pytorch_msssim asserts 161 px whatever its ``weights`` say, so the multi-scale loop
    # is repeated here on its own SSIM kernel; for 5 scales it equals ms_ssim exactly.
    import torch
    import torch.nn.functional as F
    from pytorch_msssim.ssim import _fspecial_gauss_1d, _ssim

    w = torch.tensor(MS_SSIM_WEIGHTS[:scales], dtype=x.dtype)
    if scales < len(MS_SSIM_WEIGHTS):
        w = w / w.sum()  # the standard five already sum to 1 (to 1e-4): kept as published
    win = _fspecial_gauss_1d(MS_SSIM_WIN, 1.5).repeat([x.shape[1], 1, 1, 1])
    mcs = []
    for i in range(scales):
        ssim_pc, cs = _ssim(x, y, data_range=1.0, win=win, size_average=False, K=(0.01, 0.03))
        if i < scales - 1:
            mcs.append(torch.relu(cs))
            pad = [s % 2 for s in x.shape[2:]]
            x = F.avg_pool2d(x, kernel_size=2, padding=pad)
            y = F.avg_pool2d(y, kernel_size=2, padding=pad)
    stack = torch.stack(mcs + [torch.relu(ssim_pc)], dim=0)
    return float(torch.prod(stack ** w.view(-1, 1, 1), dim=0).mean())


def _same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")


# ---------------------------------------------------------------------------------------
# FID / KID on patches


def extract_patches(image: np.ndarray, size: int = 256, shift: int = 128) -> np.ndarray:
    """HiFiC's patches: the ``size`` grid from the top-left corner, then the grid shifted by ``shift``.

    Returns (N, size, size, C) uint8; an image smaller than ``size`` gives none. The
    shifted grid doubles the number of patches per image so that FID over a few dozen
    images has enough samples (Mentzer et al. 2020, as StableCodec follows it).
    """
    h, w = image.shape[:2]
    out = []
    for offset in (0, shift):
        for top in range(offset, h - size + 1, size):
            for left in range(offset, w - size + 1, size):
                out.append(image[top:top + size, left:left + size])
    if not out:
        return np.zeros((0, size, size, image.shape[2]), dtype=image.dtype)
    return np.stack(out)


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """FID between two feature sets (N, D): |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2)."""
    if len(real) < 2 or len(fake) < 2:
        return math.nan
    real, fake = real.astype(np.float64), fake.astype(np.float64)
    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    covmean = _sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        # Singular products (fewer samples than dimensions) need the usual ridge.
        eps = np.eye(s1.shape[0]) * 1e-6
        covmean = _sqrtm((s1 + eps) @ (s2 + eps))
    covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def _sqrtm(m: np.ndarray) -> np.ndarray:
    import scipy.linalg

    out = scipy.linalg.sqrtm(m)
    return out[0] if isinstance(out, tuple) else out  # older SciPy may return (sqrtm, error)


def kernel_inception_distance(real: np.ndarray, fake: np.ndarray, subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """KID (mean, std over subsets): unbiased MMD^2 with the kernel (x.y / d + 1)^3.

    The subset size is capped by the smaller set, as torchmetrics would require it.
    """
    m = min(subset_size, len(real), len(fake))
    if m < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    d = real.shape[1]
    values = []
    for _ in range(subsets):
        x = real[rng.choice(len(real), m, replace=False)].astype(np.float64)
        y = fake[rng.choice(len(fake), m, replace=False)].astype(np.float64)
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        mmd = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.mean()
        values.append(mmd)
    return float(np.mean(values)), float(np.std(values))


# ---------------------------------------------------------------------------------------
# Learned metrics: used only when installed with their weights already on disk


def _hub_file(name: str) -> Path | None:
    import torch

    p = Path(torch.hub.get_dir()) / "checkpoints" / name
    return p if p.is_file() else None


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Make any torch.hub download fail while metric networks are built.

    The files are checked beforehand; this is the guarantee that a package version that
    looks elsewhere still cannot reach the network.
    """
    import torch.hub

    original = torch.hub.download_url_to_file

    def refuse(url: str, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"not downloading {url}: evaluation uses local weights only")

    torch.hub.download_url_to_file = refuse
    try:
        yield
    finally:
        torch.hub.download_url_to_file = original


ALEXNET = "alexnet-owt-7be5be79.pth"
VGG16 = "vgg16-397923af.pth"
PIQ_DISTS = "dists_weights.pt"
INCEPTION = "weights-inception-2015-12-05-6726825d.pth"


class LearnedMetrics:
    """LPIPS (AlexNet, v0.1, the ``lpips`` package), DISTS (``DISTS_pytorch`` or ``piq``) and
    Inception features for FID/KID (``torch_fidelity``, as torchmetrics uses it).

    Each is loaded only if its package imports and every weight file is already in the
    torch hub cache; otherwise :attr:`notes` says so in one line and the metric is None.
    """

    def __init__(self, device: str = "cpu", enabled: bool = True) -> None:
        self.device = device
        self.notes: list[str] = []
        self.lpips: Callable[[np.ndarray, np.ndarray], float] | None = None
        self.dists: Callable[[np.ndarray, np.ndarray], float] | None = None
        self.features: Callable[[np.ndarray], np.ndarray] | None = None
        if not enabled:
            return
        for metric, loader in (("LPIPS", self._load_lpips), ("DISTS", self._load_dists),
                               ("FID/KID", self._load_inception)):
            try:
                problem = loader()
            except Exception as e:  # a broken optional package must not stop the evaluation
                problem = f"could not be set up ({type(e).__name__}: {str(e)[:100]})"
            if problem:
                self.notes.append(f"{metric} not available: {problem}; skipped")

    @property
    def available(self) -> dict[str, bool]:
        return {"lpips": self.lpips is not None, "dists": self.dists is not None, "fid": self.features is not None,
                "kid": self.features is not None}

    def _tensor(self, img: np.ndarray):
        import torch

        return torch.from_numpy(img.transpose(2, 0, 1)[None].astype(np.float32) / 255.0).to(self.device)

    def _missing(self, *files: str) -> str | None:
        import torch

        absent = [f for f in files if _hub_file(f) is None]
        if absent:
            where = Path(torch.hub.get_dir()) / "checkpoints"
            return f"weights {', '.join(absent)} not in {where}"
        return None

    def _load_lpips(self) -> str | None:
        try:
            import lpips
        except ImportError:
            return f"pip install lpips, and put {ALEXNET} in the torch hub cache"
        if problem := self._missing(ALEXNET):
            return problem
        import torch

        with offline():
            net = lpips.LPIPS(net="alex", version="0.1", verbose=False).eval().to(self.device)

        def run(a: np.ndarray, b: np.ndarray) -> float:
            with torch.no_grad():
                return float(net(self._tensor(a), self._tensor(b), normalize=True).mean())

        self.lpips = run
        return None

    def _load_dists(self) -> str | None:
        import torch

        try:
            from DISTS_pytorch import DISTS

            if problem := self._missing(VGG16):
                return problem
            with offline():
                net = DISTS().eval().to(self.device)

            def run(a: np.ndarray, b: np.ndarray) -> float:
                with torch.no_grad():
                    return float(net(self._tensor(a), self._tensor(b), batch_average=True))
        except ImportError:
            try:
                import piq
            except ImportError:
                return f"pip install DISTS-pytorch (or piq), and put {VGG16} in the torch hub cache"
            if problem := self._missing(VGG16, PIQ_DISTS):
                return problem
            with offline():
                net = piq.DISTS(reduction="mean").eval().to(self.device)

            def run(a: np.ndarray, b: np.ndarray) -> float:
                with torch.no_grad():
                    return float(net(self._tensor(a), self._tensor(b)))

        self.dists = run
        return None

    def _load_inception(self) -> str | None:
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError:
            return f"pip install torchmetrics[image] (torch-fidelity), and put {INCEPTION} in the torch hub cache"
        path = _hub_file(INCEPTION)
        if path is None:
            return self._missing(INCEPTION)
        import torch

        with offline():
            net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                              feature_extractor_weights_path=str(path)).eval().to(self.device)

        def run(patches: np.ndarray) -> np.ndarray:
            out = []
            with torch.no_grad():
                for i in range(0, len(patches), 16):
                    x = torch.from_numpy(np.ascontiguousarray(patches[i:i + 16].transpose(0, 3, 1, 2))).to(self.device)
                    out.append(net(x)[0].reshape(len(x), -1).double().cpu().numpy())
            return np.concatenate(out) if out else np.zeros((0, 2048))

        self.features = run
        return None


