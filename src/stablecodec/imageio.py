"""Reading and writing images as users have them (Pillow only, no torch).

Input: anything Pillow reads (PNG, JPEG, WebP, TIFF, BMP, ...), as a path, bytes or a
PIL image. EXIF orientation is applied; palette, CMYK and 1-bit images become RGB or grey;
greyscale stays greyscale (encoded as RGB with R = G = B and decoded back to one channel,
the header says so); 16-bit input is used at full precision for the colour statistics
and reduced to 8 bits for coding (with a note); an alpha channel is refused unless the
caller asks to drop it; Pillow's decompression-bomb limit is respected.
Output: PNG unless the file name asks for another format.
"""

from __future__ import annotations

import dataclasses
import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

READ_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".ppm", ".pgm", ".pnm", ".avif"}
WRITE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF",
                 ".bmp": "BMP", ".ppm": "PPM", ".avif": "AVIF"}


@dataclasses.dataclass
class LoadedImage:
    pixels: np.ndarray  # float32 (H, W, C) in [0, 1], C = 3 or 1 (grey)
    notes: list[str]

    @property
    def grey(self) -> bool:
        return self.pixels.shape[2] == 1

    @property
    def width(self) -> int:
        return self.pixels.shape[1]

    @property
    def height(self) -> int:
        return self.pixels.shape[0]


def _open(src) -> Image.Image:
    name = src if isinstance(src, (str, os.PathLike)) else "input"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if isinstance(src, Image.Image):
                im = src
            elif isinstance(src, (bytes, bytearray, memoryview)):
                im = Image.open(io.BytesIO(bytes(src)))
            else:
                im = Image.open(Path(src))
            im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(
            f"{name}: image exceeds Pillow's decompression-bomb limit ({Image.MAX_IMAGE_PIXELS} px); "
            "if you trust it, downscale it first"
        ) from None
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{name}: is a directory") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name}: unreadable or truncated image ({str(e)[:120]})") from None
    return im


def load(src, alpha: str = "refuse") -> LoadedImage:
    """Read an image for encoding. ``alpha``: "refuse" (default) or "drop"."""
    if alpha not in ("refuse", "drop"):
        raise ValueError(f"alpha must be 'refuse' or 'drop', got {alpha!r}")
    im = _open(src)
    name = src if isinstance(src, (str, os.PathLike)) else "input"
    notes: list[str] = []
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # a broken EXIF block must not make the image unreadable
        notes.append("EXIF orientation unreadable; used as stored")
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa")
    if has_alpha:
        if alpha == "refuse":
            raise ImageError(f"{name}: image has an alpha channel, which stablecodec does not code; "
                             "pass --alpha=drop to encode the colours only")
        notes.append("alpha channel dropped")
        im = im.convert("LA" if mode in ("LA", "La") else "RGB")
        mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if arr.max(initial=0) > 255 or mode.startswith("I;16") else 255.0
        pix = np.clip(arr / peak, 0, 1)[..., None]
        notes.append("16-bit input reduced to 8 bits for coding")
    elif mode == "F":
        pix = np.clip(np.asarray(im, dtype=np.float64), 0, 1)[..., None]
        notes.append("floating-point input reduced to 8 bits for coding")
    elif mode in ("L", "LA", "1"):
        pix = np.asarray(im.convert("L"), dtype=np.float64)[..., None] / 255.0
        notes.append("greyscale: coded as grey (R = G = B), decoded to one channel")
    elif mode in ("RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        pix = np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0
    elif mode.startswith("I;16") or mode == "RGB;16":
        pix = np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0
    else:
        try:
            pix = np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0
        except Exception:
            raise ImageError(f"{name}: unsupported image mode {mode}") from None
    if pix.ndim != 3 or pix.shape[0] < 1 or pix.shape[1] < 1:
        raise ImageError(f"{name}: empty image")
    return LoadedImage(pix.astype(np.float32), notes)


def to_pil(pixels: np.ndarray) -> Image.Image:
    """(H, W, 3) or (H, W, 1) float in [0, 1] -> 8-bit PIL image."""
    arr = np.clip(np.round(pixels * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(arr[..., 0], "L") if arr.shape[2] == 1 else Image.fromarray(arr, "RGB")


def format_for(path: str | os.PathLike | None) -> str:
    """Pillow format for an output name: from its extension, PNG by default."""
    if path is None:
        return "PNG"
    return WRITE_FORMATS.get(Path(path).suffix.lower(), "PNG")


def encode_image(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    kwargs = {"quality": 95} if fmt in ("JPEG", "WEBP", "AVIF") else {}
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()
