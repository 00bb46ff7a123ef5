"""Rate-distortion evaluation: what ``stablecodec eval`` measures and how.

This module owns

* the metrics: PSNR and MS-SSIM (always), LPIPS, DISTS and FID/KID on 256x256 patches
  (only when those packages *and their weights* are already on this machine -- nothing
  is ever downloaded);
* the classic baselines (Pillow's JPEG, WebP and AVIF) and the matched-rate search that
  puts each of them at its best setting under a bit budget, downscaling when even its
  lowest setting is too large;
* the evaluation loop, which codes every image with :class:`stablecodec.api.Codec` (the
  library's own pipeline, so the rate is the real ``.scdc`` file size, header included);
* the reports: a terminal table, CSV, JSON and rate-distortion plots.

Click, exit codes and progress bars are :mod:`stablecodec.cli_eval`'s business; every
failure a user can cause is raised as a :class:`~stablecodec.errors.StableCodecError`.
See ``docs/evaluation.md`` for the procedures in prose.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import gc
import io
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import imageio, registry, tiling
from .errors import ConfigError, StableCodecError, WeightsError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")

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


# ---------------------------------------------------------------------------------------
# Classic codecs and the matched-rate search


@dataclasses.dataclass(frozen=True)
class Baseline:
    """A Pillow codec with an integer quality knob (higher = larger file, better image)."""

    name: str
    format: str
    qmin: int
    qmax: int
    options: tuple[tuple[str, Any], ...] = ()

    def supported(self) -> bool:
        from PIL import features

        return bool(features.check({"JPEG": "jpg", "WEBP": "webp", "AVIF": "avif"}[self.format]))

    def encode(self, image: Image.Image, quality: int) -> bytes:
        buf = io.BytesIO()
        image.save(buf, format=self.format, quality=quality, **dict(self.options))
        return buf.getvalue()

    def decode(self, data: bytes, mode: str) -> Image.Image:
        with Image.open(io.BytesIO(data)) as im:
            return im.convert(mode)


# Encoder effort: optimised Huffman tables for JPEG and the slowest, smallest WebP method;
# AVIF at Pillow's default speed. Metadata is never written, so a file is all image.
BASELINES: dict[str, Baseline] = {
    "jpeg": Baseline("jpeg", "JPEG", 1, 95, (("optimize", True),)),
    "webp": Baseline("webp", "WEBP", 0, 100, (("method", 6),)),
    "avif": Baseline("avif", "AVIF", 0, 100),
}

# Downscale factors tried when a codec's lowest setting exceeds the budget at full size.
SCALES: tuple[tuple[str, float], ...] = tuple(
    ("1" if d == 1 else f"1/{d:g}", 1.0 / d)
    for d in (1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32)
)
MIN_SIDE = 8  # no smaller downscaled image is tried: a few pixels say nothing about the photo
SEARCH_WINDOW = 4  # settings tried above the binary search's boundary, for non-monotone sizes


def bpp_of(nbytes: int, pixels: int) -> float:
    return nbytes * 8 / pixels


def best_setting(size_of: Callable[[int], int], lo: int, hi: int, fits: Callable[[int], bool],
                 window: int = SEARCH_WINDOW) -> int | None:
    """The highest quality in [lo, hi] whose file fits, or None if not even ``lo`` does.

    File size grows with quality almost always; a binary search finds the boundary, then
    the next ``window`` settings above it are tried too (and the scan goes on after every
    hit), because encoders are not strictly monotone. ``size_of`` should be cached by the
    caller; ``fits(nbytes)`` is the budget test.
    """
    if not fits(size_of(lo)):
        return None
    if fits(size_of(hi)):
        return hi
    a, b = lo, hi  # fits at a, not at b
    while b - a > 1:
        m = (a + b) // 2
        if fits(size_of(m)):
            a = m
        else:
            b = m
    best, misses, q = a, 0, a + 1
    while q <= hi and misses < window:
        if fits(size_of(q)):
            best, misses = q, 0
        else:
            misses += 1
        q += 1
    return best


@dataclasses.dataclass
class Candidate:
    scale: str
    quality: int
    bytes: int
    bpp: float
    psnr: float


@dataclasses.dataclass
class Match:
    """A baseline's answer for one image and target: what it chose and what it decoded to."""

    codec: str
    target_bpp: float
    quality: int | None  # None: unreachable
    scale: str  # "1", "1/2", ...
    scale_factor: float
    bytes: int | None
    bpp: float | None
    reconstruction: np.ndarray | None  # (H, W, 3) uint8 at the original size
    candidates: list[Candidate]  # the downscaled options that fit, when downscaling was needed
    note: str = ""

    @property
    def setting(self) -> str:
        if self.quality is None:
            return ""
        return f"q={self.quality}" + ("" if self.scale == "1" else f" @{self.scale}")


class MatchedRate:
    """One image's baseline searches; file sizes and decodes are cached across targets."""

    def __init__(self, original: Image.Image) -> None:
        self.original = original  # 8-bit RGB or L
        self.width, self.height = original.size
        self.pixels = self.width * self.height
        self.reference = as_uint8_rgb(np.asarray(original))
        self._scaled: dict[str, Image.Image] = {}
        self._data: dict[tuple[str, str, int], bytes] = {}
        # Only PSNRs are kept: full-size reconstructions of every scale tried would take
        # gigabytes on 2K images; the chosen one is decoded again.
        self._psnr: dict[tuple[str, str, int], float] = {}

    def _image_at(self, scale: str, factor: float) -> Image.Image | None:
        if scale == "1":
            return self.original
        if scale not in self._scaled:
            w, h = max(1, round(self.width * factor)), max(1, round(self.height * factor))
            if min(w, h) < MIN_SIDE:
                return None
            self._scaled[scale] = self.original.resize((w, h), Image.LANCZOS)
        return self._scaled[scale]

    def _encode(self, codec: Baseline, scale: str, image: Image.Image, q: int) -> bytes:
        key = (codec.name, scale, q)
        if key not in self._data:
            self._data[key] = codec.encode(image, q)
        return self._data[key]

    def _reconstruct(self, codec: Baseline, scale: str, q: int) -> np.ndarray:
        img = codec.decode(self._data[(codec.name, scale, q)], self.original.mode)
        if img.size != self.original.size:
            img = img.resize(self.original.size, Image.LANCZOS)
        return as_uint8_rgb(np.asarray(img))

    def _psnr_of(self, codec: Baseline, scale: str, q: int) -> float:
        key = (codec.name, scale, q)
        if key not in self._psnr:
            self._psnr[key] = psnr(self.reference, self._reconstruct(codec, scale, q))
        return self._psnr[key]

    def search(self, codec: Baseline, target_bpp: float) -> Match:
        """The codec at its best setting with bpp <= target (see docs/evaluation.md)."""

        def fits(nbytes: int) -> bool:
            return bpp_of(nbytes, self.pixels) <= target_bpp

        smallest: tuple[int, str] | None = None
        candidates: list[Candidate] = []
        last = "1"
        for scale, factor in SCALES:
            image = self._image_at(scale, factor)
            if image is None:
                break
            last = scale

            def size_of(q: int, scale: str = scale, image: Image.Image = image) -> int:
                return len(self._encode(codec, scale, image, q))

            q = best_setting(size_of, codec.qmin, codec.qmax, fits)
            low = size_of(codec.qmin)
            if smallest is None or low < smallest[0]:
                smallest = (low, scale)
            if q is None:
                continue
            nbytes = size_of(q)
            # Downscaled options compete with full size even where full size is reachable:
            # near a codec's lowest rate a user gets more from a smaller image at a higher
            # quality (JPEG on the kodak crops near 0.09 bpp: 28.2 dB at full size, q=3-12;
            # 33.0 dB at 1/3-1/2.5 of the size).
            candidates.append(Candidate(scale, q, nbytes, bpp_of(nbytes, self.pixels), self._psnr_of(codec, scale, q)))
        if not candidates:
            lowest = (f"; its smallest file ({codec.name} q={codec.qmin} at scale {smallest[1]}) is "
                      f"{bpp_of(smallest[0], self.pixels):.4g} bpp") if smallest else ""
            return Match(codec.name, target_bpp, None, "", math.nan, None, None, None, [],
                         note=f"unreachable: no setting at any scale down to {last} fits {target_bpp:g} bpp{lowest}")
        # Highest PSNR; on a tie the larger scale (earlier in the list) wins.
        best = max(candidates, key=lambda c: (c.psnr, -candidates.index(c)))
        rec = self._reconstruct(codec, best.scale, best.quality)
        note = "" if best.scale == "1" else f"downscaled {best.scale} (Lanczos), coded, upscaled back (Lanczos)"
        return Match(codec.name, target_bpp, best.quality, best.scale, dict(SCALES)[best.scale], best.bytes, best.bpp,
                     rec, candidates, note=note)


# ---------------------------------------------------------------------------------------
# The evaluation


COLUMNS = ("image", "width", "height", "codec", "setting", "target_bpp", "bpp", "bytes", "psnr", "ms_ssim", "lpips",
           "dists", "scale", "quality", "note")
METRICS = ("psnr", "ms_ssim", "lpips", "dists", "fid", "kid")
METRIC_LABELS = {"psnr": "PSNR (dB)", "ms_ssim": "MS-SSIM", "lpips": "LPIPS", "dists": "DISTS", "fid": "FID",
                 "kid": "KID"}
HIGHER_IS_BETTER = {"psnr": True, "ms_ssim": True, "lpips": False, "dists": False, "fid": False, "kid": False}


@dataclasses.dataclass
class Result:
    """One image coded by one codec at one rate: a CSV row."""

    image: str
    width: int
    height: int
    codec: str  # "lite" / "stablecodec" (registry family) or "jpeg" / "webp" / "avif"
    setting: str  # model name, or the baseline's "q=N[ @1/s]"
    target_bpp: float | None
    bpp: float | None
    bytes: int | None
    psnr: float | None = None
    ms_ssim: float | None = None
    lpips: float | None = None
    dists: float | None = None
    scale: float | None = None  # 1.0, or the downscale factor a baseline needed
    quality: int | None = None
    note: str = ""
    group: str = dataclasses.field(default="", repr=False)  # summary key: model name or codec@target

    def row(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in COLUMNS}


@dataclasses.dataclass
class ModelRequest:
    name: str
    target_bpp: float | None  # the --bpp target that chose it
    explicit: bool  # named with --model: missing weights are then an error, not a note


@dataclasses.dataclass
class Report:
    images: list[str]
    results: list[Result]
    summary: list[dict[str, Any]]
    notes: list[str]
    errors: list[str]
    settings: dict[str, Any]
    available: dict[str, bool]
    interrupted: bool = False


def find_images(inputs: Sequence[str | os.PathLike], recursive: bool = False) -> list[tuple[Path, str]]:
    """(path, name for the report) for every image in the folders and files given."""
    found: list[tuple[Path, str]] = []
    for src in inputs:
        p = Path(src)
        if not p.exists():
            raise ConfigError(f"{src}: no such file or folder")
        if p.is_dir():
            it = p.rglob("*") if recursive else p.iterdir()
            for f in sorted(it):
                if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith("."):
                    found.append((f, f.relative_to(p).as_posix()))
        else:
            found.append((p, p.name))
    if not found:
        raise ConfigError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {', '.join(map(str, inputs))}"
                          + ("" if recursive else "; use -r for subfolders"))
    return found


def plan_models(names: Sequence[str], targets: Sequence[float], family: str = "lite") -> list[ModelRequest]:
    """--model names (``none`` for no model), else the model closest to each --bpp, else the default."""
    names = [n.strip() for name in names for n in name.split(",") if n.strip()]
    if "none" in names:
        if len(names) > 1:
            raise ConfigError("--model none cannot be combined with model names")
        return []
    if names:
        out = []
        for n in dict.fromkeys(names):
            registry.get(n)
            out.append(ModelRequest(n, None, True))
        return out
    if targets:
        chosen: dict[str, ModelRequest] = {}
        for t in targets:
            spec = registry.closest(t, family=family)
            if spec.name == "base":
                # "base" (before fine-tuning) ties with ft2 at 0.035 bpp; the fine-tuned model is the one meant.
                spec = min((m for m in registry.MODELS if m.family == family),
                           key=lambda m: (abs(math.log(m.bpp / t)), m.name == "base"))
            chosen.setdefault(spec.name, ModelRequest(spec.name, t, False))
        return list(chosen.values())
    return [ModelRequest(registry.default_name(), None, False)]


def _nan_to_none(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


class Evaluation:
    """Everything ``stablecodec eval`` runs, configured once; :meth:`run` does the work.

    ``note`` receives one-line notes (missing weights of an implicit model, metrics that
    are not installed, an unsupported default baseline) as soon as they are known.
    """

    def __init__(self, *, models: Sequence[str] = (), targets: Sequence[float] = (),
                 baselines: Sequence[str] | None = None, family: str = "lite",
                 weights_dir: str | os.PathLike | None = None, device: str = "auto", precision: str = "auto",
                 max_memory: str | int | None = None, alpha: str = "refuse", learned_metrics: bool = True,
                 note: Callable[[str], None] | None = None) -> None:
        from . import api

        self.notes: list[str] = []
        self._note_cb = note
        for t in targets:
            if not (t > 0 and math.isfinite(t)):
                raise ConfigError(f"--bpp targets must be positive, got {t}")
        self.requests = plan_models(models, targets, family)
        self.weights_dir = weights_dir
        self.device = api.resolve_device(device)
        if precision not in api.PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(api.PRECISIONS)}, got {precision!r}")
        try:
            tiling.parse_size(max_memory)
        except ValueError as e:
            raise ConfigError(f"--max-memory: {e}") from None
        self.precision, self.max_memory, self.alpha = precision, max_memory, alpha
        if alpha not in ("refuse", "drop"):
            raise ConfigError(f"alpha must be 'refuse' or 'drop', got {alpha!r}")
        self.models: list[ModelRequest] = []
        wd = registry.weights_dir(weights_dir)
        for req in self.requests:
            where = registry.locate(registry.get(req.name), wd)
            if where.present:
                self.models.append(req)
            elif req.explicit:
                raise WeightsError(f"weights of model {req.name} not found: {where.where}; "
                                   "put them there or pass --weights-dir")
            else:
                self._note(f"model {req.name} skipped: its weights are not installed ({where.where})")
        self.baselines = self._plan_baselines(baselines)
        # Baselines are matched to --bpp, else to the typical rates of the models asked for.
        self.targets = sorted(set(targets)) if targets else sorted({registry.get(r.name).bpp for r in self.requests})
        if self.baselines and not self.targets:
            raise ConfigError("baselines need target rates: give --bpp (or a --model)")
        self.metrics = LearnedMetrics(self.device, enabled=learned_metrics)
        for n in self.metrics.notes:
            self._note(n)

    def _note(self, msg: str) -> None:
        self.notes.append(msg)
        if self._note_cb:
            self._note_cb(msg)

    def _plan_baselines(self, names: Sequence[str] | None) -> list[Baseline]:
        explicit = names is not None
        names = list(BASELINES) if names is None else [n.strip().lower() for n in names if n.strip()]
        if names == ["none"]:
            return []
        out = []
        for n in dict.fromkeys(names):
            if n not in BASELINES:
                raise ConfigError(f"unknown baseline {n!r}; known: {', '.join(BASELINES)}, or none")
            b = BASELINES[n]
            if b.supported():
                out.append(b)
            elif explicit:
                raise ConfigError(f"this Pillow has no {b.format} support (PIL.features); drop {n} from --baselines")
            else:
                self._note(f"baseline {n} skipped: this Pillow has no {b.format} support")
        return out

    @property
    def settings(self) -> dict[str, Any]:
        return {"models": [r.name for r in self.models], "skipped_models": [r.name for r in self.requests
                                                                           if r not in self.models],
                "targets_bpp": self.targets, "baselines": [b.name for b in self.baselines],
                "device": self.device, "precision": self.precision,
                "scales": [s for s, _ in SCALES], "baseline_options": {b.name: dict(b.options) for b in self.baselines}}

    def units(self, n_images: int) -> int:
        """Progress units: one per image x (model or baseline x target)."""
        return n_images * (len(self.models) + len(self.baselines) * len(self.targets))

    # -- running -------------------------------------------------------------------------

    def run(self, images: Sequence[tuple[Path, str]], *, advance: Callable[[int], Any] | None = None,
            error: Callable[[str], None] | None = None) -> Report:
        """Code every image with every model and baseline; never raises for one bad image.

        Per-image failures go to ``error`` (and the report); Ctrl-C stops early with
        ``interrupted`` set and what was measured so far.
        """
        advance = advance or (lambda n: None)
        errors: list[str] = []
        failed_images: set[str] = set()
        results: list[Result] = []
        # FID/KID are dataset-level: Inception features of every patch, per codec and rate.
        real_feats: dict[str, np.ndarray] = {}
        fake_feats: dict[str, list[np.ndarray]] = {}

        def fail(msg: str) -> None:
            errors.append(msg)
            if error:
                error(msg)

        def load(path: Path, name: str) -> imageio.LoadedImage | None:
            if name in failed_images:
                return None
            try:
                return imageio.load(path, alpha=self.alpha)
            except StableCodecError as e:
                failed_images.add(name)
                fail(str(e) if str(e).startswith(str(path)) else f"{path}: {e}")
                return None

        def measure(res: Result, name: str, reference: np.ndarray, rec: np.ndarray) -> None:
            res.psnr = psnr(reference, rec)
            res.ms_ssim = ms_ssim(reference, rec)
            if math.isnan(res.ms_ssim):
                res.note = "; ".join(filter(None, [res.note, "MS-SSIM undefined below 11 px"]))
            if self.metrics.lpips:
                res.lpips = self.metrics.lpips(reference, rec)
            if self.metrics.dists:
                res.dists = self.metrics.dists(reference, rec)
            if self.metrics.features:
                if name not in real_feats:
                    real_feats[name] = self.metrics.features(extract_patches(reference))
                fake_feats.setdefault(res.group, []).append(self.metrics.features(extract_patches(rec)))

        interrupted = False
        try:
            for req in self.models:
                # Rows are appended as they are measured, so Ctrl-C keeps everything done so far.
                self._run_model(req, images, load, measure, fail, advance, results)
            if self.baselines and self.targets:
                for path, name in images:
                    img = load(path, name)
                    if img is None:
                        advance(len(self.baselines) * len(self.targets))
                        continue
                    self._run_baselines(img, name, measure, fail, advance, results)
        except KeyboardInterrupt:
            interrupted = True
        dataset: dict[str, dict[str, float]] = {}
        if self.metrics.features and real_feats:
            real = np.concatenate(list(real_feats.values()))
            for group, feats in fake_feats.items():
                fake = np.concatenate(feats)
                kid, kid_std = kernel_inception_distance(real, fake)
                dataset[group] = {"fid": frechet_distance(real, fake), "kid": kid, "kid_std": kid_std,
                                  "patches": len(fake)}
            if len(real) == 0:
                self._note("FID/KID: no image has a 256x256 patch; not computed")
        return Report([n for _, n in images], results, summarize(results, dataset), list(self.notes), errors,
                      self.settings, self.metrics.available, interrupted)

    def _run_model(self, req: ModelRequest, images: Sequence[tuple[Path, str]], load: Callable, measure: Callable,
                   fail: Callable[[str], None], advance: Callable[[int], Any], out: list[Result]) -> None:
        from .api import Codec

        spec = registry.get(req.name)
        try:
            codec = Codec(req.name, weights_dir=self.weights_dir, device=self.device, precision=self.precision,
                          max_memory=self.max_memory, alpha=self.alpha, progress=False)
            codec.get_model()
        except StableCodecError as e:
            fail(f"model {req.name}: {e}")
            advance(len(images))
            return
        except MemoryError:
            fail(f"model {req.name}: out of memory while loading; lower --max-memory or use a smaller model")
            advance(len(images))
            return
        try:
            for path, name in images:
                img = load(path, name)
                if img is not None:
                    try:
                        data = codec.encode(img)
                        rec = codec.decode_array(data)
                    except StableCodecError as e:
                        fail(f"{path}: model {req.name}: {e}")
                    except MemoryError:
                        fail(f"{path}: model {req.name}: out of memory; lower --max-memory or downscale the image")
                    else:
                        res = Result(name, img.width, img.height, spec.family, req.name, req.target_bpp,
                                     bpp_of(len(data), img.width * img.height), len(data), scale=1.0,
                                     group=req.name)
                        measure(res, name, as_uint8_rgb(img.pixels), as_uint8_rgb(rec))
                        out.append(res)
                advance(1)
        finally:
            # A StableCodec model holds gigabytes: release it before the next one loads.
            del codec
            gc.collect()
            if self.device == "cuda":
                import torch

                torch.cuda.empty_cache()

    def _run_baselines(self, img: imageio.LoadedImage, name: str, measure: Callable, fail: Callable[[str], None],
                       advance: Callable[[int], Any], out: list[Result]) -> None:
        search = MatchedRate(imageio.to_pil(img.pixels))
        for codec in self.baselines:
            for target in self.targets:
                try:
                    m = search.search(codec, target)
                except (OSError, ValueError) as e:  # Pillow refusing an image it cannot encode
                    fail(f"{name}: {codec.name} at {target:g} bpp: {str(e)[:120]}")
                    advance(1)
                    continue
                res = Result(name, img.width, img.height, codec.name, m.setting, target, m.bpp, m.bytes,
                             scale=_nan_to_none(m.scale_factor), quality=m.quality, note=m.note,
                             group=f"{codec.name}@{target:g}")
                if m.reconstruction is not None:
                    measure(res, name, search.reference, m.reconstruction)
                out.append(res)
                advance(1)


# ---------------------------------------------------------------------------------------
# Summaries and reports


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else None


def _range(prefix: str, values: list[int]) -> str:
    if not values:
        return ""
    lo, hi = min(values), max(values)
    return f"{prefix}{lo}" if lo == hi else f"{prefix}{lo}..{hi}"


def summarize(results: Sequence[Result], dataset: dict[str, dict[str, float]] | None = None) -> list[dict[str, Any]]:
    """Per codec x rate: means over the images it reached (unreachable rows are counted, not averaged)."""
    dataset = dataset or {}
    groups: dict[str, list[Result]] = {}
    for r in results:
        groups.setdefault(r.group, []).append(r)
    out = []
    for group, rows in groups.items():
        reached = [r for r in rows if r.bpp is not None]
        first = rows[0]
        model = first.codec in registry.FAMILIES
        qualities = [r.quality for r in reached if r.quality is not None]
        scales = sorted({r.scale for r in reached if r.scale is not None})
        labels = {f: s for s, f in SCALES}
        entry: dict[str, Any] = {
            "codec": first.codec,
            "setting": first.setting if model else _range("q=", qualities),
            "target_bpp": first.target_bpp,
            "images": len(rows),
            "reached": len(reached),
            "bpp": _mean([r.bpp for r in reached]),
            **{m: _mean([getattr(r, m) for r in reached]) for m in ("psnr", "ms_ssim", "lpips", "dists")},
            "fid": dataset.get(group, {}).get("fid"),
            "kid": dataset.get(group, {}).get("kid"),
            "kid_std": dataset.get(group, {}).get("kid_std"),
            "patches": dataset.get(group, {}).get("patches"),
            "scales": [labels.get(s, f"{s:g}") for s in reversed(scales)],
        }
        if any(r.psnr == math.inf for r in reached):
            entry["note"] = "some reconstructions are identical to the original (PSNR inf)"
        out.append(entry)
    return out


def _fmt(x: Any, digits: int) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return f"{x:.{digits}f}"


def format_table(report: Report) -> str:
    """The terminal table: one line per codec x rate, averages over the images reached."""
    cols = [("codec", 11, None), ("setting", 11, None), ("target_bpp", 7, 4), ("n", 5, None), ("bpp", 7, 4),
            ("psnr", 6, 2), ("ms_ssim", 7, 4)]
    for m, digits in (("lpips", 4), ("dists", 4), ("fid", 2), ("kid", 4)):
        if report.available.get(m):
            cols.append((m, 7, digits))
    cols.append(("scale", 12, None))
    head = {"target_bpp": "target", "n": "n", "psnr": "PSNR", "ms_ssim": "MS-SSIM", "lpips": "LPIPS", "dists": "DISTS",
            "fid": "FID", "kid": "KID", "scale": "scale"}
    lines = ["  ".join(f"{head.get(c, c):<{w}}" if d is None else f"{head.get(c, c):>{w}}" for c, w, d in cols)]
    order = {name: i for i, name in enumerate((*registry.FAMILIES, *BASELINES))}

    def key(e: dict[str, Any]) -> tuple:
        # Models first (by rate), then each baseline in the usual order, by target.
        return order.get(e["codec"], len(order)), e["target_bpp"] or 0, e["bpp"] or 0

    for s in sorted(report.summary, key=key):
        cells = []
        for c, w, d in cols:
            if c == "n":
                v = f"{s['reached']}/{s['images']}"
            elif c == "scale":
                sc = s["scales"]
                v = "-" if not sc else sc[0] if len(sc) == 1 else f"{sc[-1]}..{sc[0]}"
            elif d is None:
                v = str(s[c]) or "-"
            else:
                v = _fmt(s[c], d)
            cells.append(f"{v:<{w}}" if d is None and c != "n" else f"{v:>{w}}")
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _csv_value(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.6g}" if abs(v) >= 1e4 else f"{round(v, 6)}"
    return str(v)


def to_csv(results: Sequence[Result]) -> str:
    """One row per image x codec x rate; empty cells for metrics not computed or undefined."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in results:
        w.writerow([_csv_value(v) for v in r.row().values()])
    return buf.getvalue()


def _json_safe(x: Any) -> Any:
    # Strict JSON: NaN (undefined or not computed) becomes null, infinite PSNR the string "inf".
    if isinstance(x, float):
        if math.isnan(x):
            return None
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return x
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def to_json(report: Report) -> str:
    doc = {"images": report.images, "settings": report.settings, "metrics_available": report.available,
           "summary": report.summary, "results": [r.row() for r in report.results], "notes": report.notes,
           "errors": report.errors, "interrupted": report.interrupted}
    return json.dumps(_json_safe(doc), indent=2, allow_nan=False)


def plot_files(report: Report) -> dict[str, bytes]:
    """One PNG per metric that has values, bpp on a log x axis: ``{"rd_psnr.png": data, ...}``.

    Raises ImportError without matplotlib (``pip install 'stablecodec[eval]'``).
    """
    from matplotlib.figure import Figure

    out: dict[str, bytes] = {}
    for metric in METRICS:
        lines: dict[str, list[tuple[float, float, str]]] = {}
        for s in report.summary:
            y = s.get(metric)
            if s["bpp"] is None or y is None or not math.isfinite(y):
                continue
            label = s["setting"] if s["codec"] in registry.FAMILIES else ""
            if s["reached"] < s["images"]:
                # A mean over fewer images is not comparable with its neighbours: say so on the point.
                label = f"{label} ({s['reached']}/{s['images']} images)".strip()
            lines.setdefault(s["codec"], []).append((s["bpp"], y, label))
        if not lines:
            continue
        fig = Figure(figsize=(6, 4.2), dpi=120)
        ax = fig.subplots()
        for codec, pts in sorted(lines.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=codec)
            for x, y, label in pts:
                if label:
                    ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xscale("log")
        ax.set_title(f"{len(report.images)} images", fontsize=9)
        ax.set_xlabel("bits per pixel")
        better = "higher" if HIGHER_IS_BETTER[metric] else "lower"
        ax.set_ylabel(f"{METRIC_LABELS[metric]} ({better} is better)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        out[f"rd_{metric}.png"] = buf.getvalue()
    return out
