"""Reading and writing images as users have them (Pillow only, no torch).

Input: anything Pillow reads (PNG, JPEG, WebP, TIFF, BMP, ...), as a path, bytes or a
PIL image. EXIF orientation is applied (with a note); palette, CMYK and 1-bit images
become RGB or grey; greyscale stays greyscale (encoded as RGB with R = G = B and decoded
back to one channel, the header says so, and a note says it); 16-bit greyscale is used at
full precision for the colour statistics and reduced to 8 bits for coding (with a note);
16-bit colour is read by Pillow at 8 bits (with a note); an alpha channel is refused
unless the caller asks to drop it; of an animated or multi-page file only the first frame
is coded (with a note). Pillow's decompression-bomb limit is respected (an image above
``PIL.Image.MAX_IMAGE_PIXELS`` is refused) and the codec's size limit
(:func:`stablecodec.container.check_size`) is checked before any pixel is decoded.
Pixels go straight to float32: a 16384 x 8192 RGB image takes 1.6 GB, with no float64
temporary.
Output: PNG unless the file name asks for another format.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .container import check_size
from .errors import ImageError, LimitError

READ_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".ppm", ".pgm", ".pnm", ".avif"}
WRITE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF",
                 ".bmp": "BMP", ".ppm": "PPM", ".avif": "AVIF"}

#: What :func:`load` accepts: a path, the encoded file's bytes, or a PIL image.
ImageSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, Image.Image]

_ORIENTATION = 0x0112
_GREY_NOTE = "greyscale: coded as grey (R = G = B), decoded to one channel"


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


def _name_of(src: ImageSource) -> str:
    return os.fspath(src) if isinstance(src, (str, os.PathLike)) else "input"


def _rawmode(im: Image.Image) -> str:
    """The decoder's raw mode of the first tile (before ``load``), e.g. ``RGB;16B``."""
    try:
        args = im.tile[0][3]
    except (AttributeError, IndexError, TypeError):
        return ""
    if isinstance(args, tuple):
        args = next((a for a in args if isinstance(a, str)), "")
    return args if isinstance(args, str) else ""


def _open(src: ImageSource, name: str) -> tuple[Image.Image, list[str]]:
    """Open and decode, refusing bombs and over-large images before their pixels are decoded."""
    notes: list[str] = []
    im: Image.Image | None = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if isinstance(src, Image.Image):
                im = src
            elif isinstance(src, (bytes, bytearray, memoryview)):
                im = Image.open(io.BytesIO(bytes(src)))
            else:
                im = Image.open(Path(src))
            try:
                check_size(*im.size)
            except LimitError as e:
                raise LimitError(f"{name}: {e}") from None
            if im.mode in ("RGB", "RGBA") and ";16" in _rawmode(im):
                notes.append("16-bit colour input read at 8 bits per channel")
            frames = getattr(im, "n_frames", 1)
            if isinstance(frames, int) and frames > 1:
                notes.append(f"only the first of {frames} frames coded")
            im.load()
        return im, notes
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        m = re.search(r"\((\d+) pixels\)", str(e))
        size = f" ({int(m.group(1)):,} px)" if m else ""
        err: Exception = ImageError(
            f"{name}: image{size} is above Pillow's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS:,} px; "
            "if you trust the file, split or downscale it first"
        )
    except FileNotFoundError:
        err = ImageError(f"{name}: no such file")
    except IsADirectoryError:
        err = ImageError(f"{name}: is a directory")
    except PermissionError:
        err = ImageError(f"{name}: permission denied")
    except UnidentifiedImageError:
        err = ImageError(f"{name}: not an image Pillow can read")
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        err = ImageError(f"{name}: unreadable or truncated image ({str(e)[:120]})")
    except BaseException:
        if im is not None and im is not src:
            im.close()
        raise
    if im is not None and im is not src:
        im.close()  # release the file now, not at garbage collection (batches of broken files)
    raise err


def _to_float(im: Image.Image, channels: str) -> np.ndarray:
    """8-bit PIL image -> float32 (H, W, C) in [0, 1] without a float64 temporary."""
    if im.mode != channels:
        im = im.convert(channels)
    arr = np.array(im, dtype=np.float32)
    arr /= 255.0
    return arr if arr.ndim == 3 else arr[..., None]


def load(src: ImageSource, alpha: str = "refuse", name: str | None = None) -> LoadedImage:
    """Read an image for encoding: float32 pixels in [0, 1] and notes for the user.

    ``alpha``: "refuse" (default: :class:`ImageError` naming ``--alpha=drop``) or "drop".
    ``name`` is used in messages (default: the path, or "input" for bytes and images).
    Raises :class:`ImageError` (unreadable, alpha, bomb) or :class:`LimitError` (too large).
    """
    if alpha not in ("refuse", "drop"):
        raise ValueError(f"alpha must be 'refuse' or 'drop', got {alpha!r}")
    name = name or _name_of(src)
    im, notes = _open(src, name)
    try:  # a broken EXIF block must not make the image unreadable
        orientation = im.getexif().get(_ORIENTATION, 1)
        if orientation not in (None, 1):
            im = ImageOps.exif_transpose(im)
            notes.append(f"EXIF orientation {orientation} applied: coded upright, {im.width}x{im.height}")
    except Exception:
        notes.append("EXIF orientation unreadable; used as stored")
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa")
    if has_alpha:
        if alpha == "refuse":
            raise ImageError(f"{name}: image has an alpha channel, which stablecodec does not code; "
                             "pass --alpha=drop (alpha=\"drop\") to encode the colours only")
        notes.append("alpha channel dropped")
        im = im.convert("L" if mode in ("LA", "La") else "RGB")
        mode = im.mode
    try:
        if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
            pix = np.array(im, dtype=np.float32)
            sixteen = mode.startswith("I;16") or float(pix.max(initial=0)) > 255
            pix /= 65535.0 if sixteen else 255.0
            np.clip(pix, 0, 1, out=pix)
            pix = pix[..., None]
            notes.append("16-bit input reduced to 8 bits for coding" if sixteen else "integer input read as 8-bit")
            notes.append(_GREY_NOTE)
        elif mode == "F":
            pix = np.array(im, dtype=np.float32)
            np.clip(pix, 0, 1, out=pix)
            pix = pix[..., None]
            notes.append("floating-point input reduced to 8 bits for coding")
            notes.append(_GREY_NOTE)
        elif mode in ("L", "1"):
            pix = _to_float(im, "L")
            notes.append(_GREY_NOTE)
        else:  # RGB, RGBX, CMYK, YCbCr, LAB, HSV, ...
            pix = _to_float(im, "RGB")
    except (ValueError, OSError):
        raise ImageError(f"{name}: unsupported image mode {mode}; convert it to RGB first") from None
    if pix.ndim != 3 or pix.shape[0] < 1 or pix.shape[1] < 1:
        raise ImageError(f"{name}: empty image")
    return LoadedImage(pix, notes)


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
    """The image as a file of Pillow format ``fmt`` (JPEG, WebP and AVIF at quality 95)."""
    buf = io.BytesIO()
    kwargs = {"quality": 95} if fmt in ("JPEG", "WEBP", "AVIF") else {}
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()
