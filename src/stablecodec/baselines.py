"""The classic baselines of ``stablecodec eval`` (Pillow's JPEG, WebP and AVIF) and the
matched-rate search that puts each at its best setting under a bit budget, downscaling
when even its lowest setting is too large (docs/evaluation.md).
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from .metrics import as_uint8_rgb, psnr

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


