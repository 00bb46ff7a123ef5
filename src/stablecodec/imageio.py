"""Reading and writing images as users have them (Pillow only, no torch).

Input: anything Pillow reads (PNG, JPEG, WebP, TIFF, BMP, AVIF, ...), and HEIC/HEIF
through the ``heif`` extra (``pillow-heif``), as a path, bytes or a PIL image.

* Colour: an embedded ICC profile (RGB, CMYK or grey) is converted to sRGB with
  LittleCMS (Pillow's ImageCms, perceptual intent), with a note naming the profile; a
  profile that is sRGB in effect (every colour within one level of itself) is left
  alone. The codec works on sRGB and decoded files say so (PNG ``sRGB`` chunk, an sRGB
  ICC profile in JPEG, WebP, AVIF and TIFF).
* EXIF orientation is applied (with a note; HEIF files are turned upright by libheif);
  palette, CMYK and 1-bit images become RGB or grey; greyscale stays greyscale (encoded
  as RGB with R = G = B and decoded back to one channel, the header says so, and a note
  says it); 16-bit greyscale is used at full precision for the colour statistics and
  reduced to 8 bits for coding (with a note); 16-bit colour and 10/12-bit HEIF are read at
  8 bits (with a note); an alpha channel is refused unless the caller asks to drop it;
  of an animated or multi-page file only the first frame is coded (with a note).
* Metadata is dropped unless asked for (``metadata="exif"``: EXIF with the orientation
  set upright and the embedded thumbnail removed; ``"all"``: also XMP and the original
  ICC profile), to be stored in the file (:mod:`container`) and written back on decode.
* Pillow's decompression-bomb limit is respected (an image above
  ``PIL.Image.MAX_IMAGE_PIXELS`` is refused) and the codec's size limit
  (:func:`stablecodec.container.check_size`) is checked before any pixel is decoded.
  Pixels go straight to float32: a 16384 x 8192 RGB image takes 1.6 GB, with no float64
  temporary.

Output: PNG unless the file name asks for another format.
"""

from __future__ import annotations

import dataclasses
import functools
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

READ_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".ppm", ".pgm", ".pnm", ".avif",
                   ".heic", ".heif", ".hif"}
# What a folder walk codes (named directly, anything in READ_EXTENSIONS is read).
FOLDER_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".avif", ".heic", ".heif", ".hif")
METADATA_LEVELS = ("none", "exif", "all")
HEIF_EXTRA = "pip install 'stablecodec[heif]'"
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
    metadata: dict[str, bytes] = dataclasses.field(default_factory=dict)  # "exif", "xmp", "icc" (as asked)

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


# ISO-BMFF brands of HEIF images (HEVC-coded and generic); AVIF Pillow reads itself.
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"}
_heif_registered = False


def _is_heif(head: bytes) -> bool:
    return len(head) >= 12 and head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS


def _head(src: ImageSource) -> bytes:
    if isinstance(src, (bytes, bytearray, memoryview)):
        return bytes(src[:12])
    if isinstance(src, Image.Image):
        return b""
    try:
        with open(src, "rb") as f:
            return f.read(12)
    except OSError:
        return b""  # Image.open reports it


def _require_heif(name: str) -> None:
    """Register pillow-heif's opener (once), or say which extra reads this file."""
    global _heif_registered
    if _heif_registered:
        return
    try:
        import pillow_heif
    except ImportError:
        raise ImageError(f"{name}: HEIC/HEIF images need the heif extra: {HEIF_EXTRA}") from None
    pillow_heif.register_heif_opener()
    _heif_registered = True


def _open(src: ImageSource, name: str) -> tuple[Image.Image, list[str]]:
    """Open and decode, refusing bombs and over-large images before their pixels are decoded."""
    notes: list[str] = []
    im: Image.Image | None = None
    if _is_heif(_head(src)):
        _require_heif(name)
    try:
        # Pillow's own warnings (a corrupt EXIF block: two lines on stderr) become notes.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
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
            depth = im.info.get("bit_depth")
            if isinstance(depth, int) and depth > 8:  # HEIF/AVIF: libheif delivers 8 bits
                notes.append(f"{depth}-bit input reduced to 8 bits per channel")
            frames = getattr(im, "n_frames", 1)
            if isinstance(frames, int) and frames > 1:
                notes.append(f"only the first of {frames} frames coded")
            im.load()
        if any("EXIF" in str(w.message) for w in caught):
            notes.append("EXIF block is corrupt; ignored")
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


def load(src: ImageSource, alpha: str = "refuse", name: str | None = None, metadata: str = "none") -> LoadedImage:
    """Read an image for encoding: float32 sRGB pixels in [0, 1], notes for the user, metadata.

    ``alpha``: "refuse" (default: :class:`ImageError` naming ``--alpha=drop``) or "drop".
    ``metadata``: "none" (default), "exif" or "all" (see the module docstring).
    ``name`` is used in messages (default: the path, or "input" for bytes and images).
    Raises :class:`ImageError` (unreadable, alpha, bomb) or :class:`LimitError` (too large).
    """
    if alpha not in ("refuse", "drop"):
        raise ValueError(f"alpha must be 'refuse' or 'drop', got {alpha!r}")
    if metadata not in METADATA_LEVELS:
        raise ValueError(f"metadata must be one of {', '.join(METADATA_LEVELS)}, got {metadata!r}")
    name = name or _name_of(src)
    im, notes = _open(src, name)
    icc = im.info.get("icc_profile") or None
    xmp = im.info.get("xmp") or None
    with warnings.catch_warnings():  # Pillow warns (two lines) about a corrupt EXIF block: a note instead
        warnings.simplefilter("ignore")
        try:
            exif = im.getexif()
            orientation = exif.get(_ORIENTATION, 1)
        except Exception:
            exif, orientation = None, 1
            notes.append("EXIF unreadable; ignored")
        heif_orientation = im.info.get("original_orientation")
        if heif_orientation not in (None, 1):  # libheif applied it when decoding
            notes.append(f"orientation {heif_orientation} applied: coded upright, {im.width}x{im.height}")
        elif orientation not in (None, 1):
            try:
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
    if icc:
        im = _to_srgb(im, icc, notes)
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
    meta: dict[str, bytes] = {}
    if metadata != "none":
        if exif is not None and len(exif):
            meta["exif"] = _upright_exif(exif)
        if metadata == "all":
            if xmp:
                meta["xmp"] = xmp.encode("utf-8") if isinstance(xmp, str) else bytes(xmp)
            if icc:
                meta["icc"] = bytes(icc)
    return LoadedImage(pix, notes, meta)


# ---------------------------------------------------------------------------------------
# Colour management (LittleCMS through Pillow's ImageCms)

_ICC_MODES = {"RGB": ("RGB",), "GRAY": ("L",), "CMYK": ("CMYK",)}


@functools.lru_cache(maxsize=1)
def srgb_profile_bytes() -> bytes:
    """LittleCMS's built-in sRGB profile (588 bytes), embedded in decoded JPEG/WebP/AVIF/TIFF."""
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _srgb():
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _profile(icc: bytes):
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(io.BytesIO(icc))


def profile_name(icc: bytes) -> str:
    """An ICC profile's description, or "unnamed"."""
    from PIL import ImageCms

    try:
        return (ImageCms.getProfileDescription(_profile(icc)) or "").strip() or "unnamed"
    except Exception:
        return "unreadable"


@functools.lru_cache(maxsize=64)
def _transform(icc: bytes, in_mode: str):
    """(LittleCMS transform to sRGB, profile name), or (None, name) when it is sRGB in effect."""
    from PIL import ImageCms

    src = _profile(icc)
    name = profile_name(icc)
    out_mode = "RGB"
    t = ImageCms.buildTransform(src, _srgb(), in_mode, out_mode, renderingIntent=ImageCms.Intent.PERCEPTUAL)
    if in_mode == "RGB":  # an sRGB profile by another name: converting would only add rounding
        g = np.linspace(0, 255, 17).round().astype(np.uint8)
        grid = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(1, -1, 3)
        out = np.asarray(ImageCms.applyTransform(Image.fromarray(grid, "RGB"), t)).astype(int)
        if int(np.abs(out - grid.astype(int)).max()) <= 1:
            return None, name
    return t, name


def _to_srgb(im: Image.Image, icc: bytes, notes: list[str]) -> Image.Image:
    """The image in sRGB (8-bit RGB or L), converted from its embedded ICC profile."""
    from PIL import ImageCms

    try:
        space = _profile(icc).profile.xcolor_space.strip()
    except Exception:
        notes.append("embedded ICC profile unreadable; colours used as stored (as sRGB)")
        return im
    modes = _ICC_MODES.get(space)
    if modes is None or im.mode not in modes:
        notes.append(f"embedded ICC profile ({space or 'unknown'} colour space) does not fit the {im.mode} pixels; "
                     "colours used as stored")
        return im
    try:
        t, name = _transform(bytes(icc), im.mode)
        if t is None:
            return im
        out = ImageCms.applyTransform(im, t)
    except Exception as e:  # ImageCms.PyCMSError and LittleCMS's own complaints
        notes.append(f"ICC profile could not be applied ({str(e)[:80]}); colours used as stored")
        return im
    notes.append(f"colours converted from ICC profile '{name}' to sRGB")
    if im.mode == "L":
        arr = np.asarray(out)
        return Image.fromarray(np.round(arr.mean(axis=2)).astype(np.uint8), "L")  # neutral: R = G = B +-1
    return out


# ---------------------------------------------------------------------------------------
# Metadata

_IFD1 = -1  # PIL.ExifTags.IFD.IFD1: the thumbnail's IFD


def _upright_exif(exif: "Image.Exif") -> bytes:
    """EXIF as stored for ``--metadata exif``: orientation 1 (the pixels are coded upright),
    no embedded thumbnail (IFD1), serialized by Pillow (TIFF, with the "Exif" prefix)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if _ORIENTATION in exif:
            exif[_ORIENTATION] = 1
        try:
            exif.get_ifd(_IFD1).clear()
        except Exception:
            pass
        raw = exif.tobytes()
    return raw if raw.startswith(b"Exif\x00\x00") else b"Exif\x00\x00" + raw


def metadata_summary(meta: dict[str, bytes]) -> dict[str, object]:
    """What a metadata section holds, for ``info``: sizes, and the EXIF fields people look for."""
    out: dict[str, object] = {k: len(v) for k, v in meta.items()}
    if "exif" in meta:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                exif = Image.Exif()
                exif.load(meta["exif"])
                ifd = exif.get_ifd(0x8769)
            fields = {"camera": " ".join(str(exif.get(t, "")).strip() for t in (0x010F, 0x0110)).strip(),
                      "date": str(ifd.get(0x9003) or exif.get(0x0132) or ""), "copyright": str(exif.get(0x8298) or ""),
                      "gps": bool(exif.get_ifd(0x8825))}
            out["exif_fields"] = {k: v for k, v in fields.items() if v}
        except Exception:
            out["exif_fields"] = {}
    if "icc" in meta:
        out["icc_name"] = profile_name(meta["icc"])
    return out


def resize(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """(H, W, C) float32 -> (height, width, C) float32, Lanczos-3, clipped to [0, 1].

    The resampling of a file coded at a reduced size (``container.coded_size``), down on
    the encoder's side and back up on the decoder's; Lanczos as the matched-rate baselines
    use it. Pillow's float mode keeps 16-bit precision and resamples a channel at a time.
    """
    if pixels.shape[1] == width and pixels.shape[0] == height:
        return pixels
    out = np.empty((height, width, pixels.shape[2]), dtype=np.float32)
    for c in range(pixels.shape[2]):
        out[..., c] = np.asarray(Image.fromarray(np.ascontiguousarray(pixels[..., c], dtype=np.float32), "F")
                                 .resize((width, height), Image.LANCZOS))
    return np.clip(out, 0.0, 1.0, out=out)


def to_pil(pixels: np.ndarray) -> Image.Image:
    """(H, W, 3) or (H, W, 1) float in [0, 1] -> 8-bit PIL image."""
    arr = np.clip(np.round(pixels * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(arr[..., 0], "L") if arr.shape[2] == 1 else Image.fromarray(arr, "RGB")


def format_for(path: str | os.PathLike | None) -> str:
    """Pillow format for an output name: from its extension, PNG by default."""
    if path is None:
        return "PNG"
    return WRITE_FORMATS.get(Path(path).suffix.lower(), "PNG")


def encode_image(img: Image.Image, fmt: str, metadata: dict[str, bytes] | None = None,
                 notes: list[str] | None = None) -> bytes:
    """The decoded image as a file of Pillow format ``fmt`` (JPEG, WebP and AVIF at quality 95),
    marked as sRGB, with the metadata the ``.scdc`` file carried (EXIF, XMP, ICC).

    With the original ICC profile in ``metadata`` the pixels are converted back from sRGB
    to it and it is embedded, so the file is in the colour encoding it came in; formats
    that cannot hold a piece of metadata leave it out (with a note).
    """
    from PIL import PngImagePlugin

    metadata = metadata or {}
    notes = notes if notes is not None else []
    kwargs: dict[str, object] = {"quality": 95} if fmt in ("JPEG", "WEBP", "AVIF") else {}
    icc = None
    if "icc" in metadata and img.mode in ("RGB", "L"):
        img, icc = _from_srgb(img, metadata["icc"], notes)
    if icc is None and img.mode == "RGB":
        icc = srgb_profile_bytes()
    pnginfo = PngImagePlugin.PngInfo() if fmt == "PNG" else None
    if fmt == "PNG":
        if icc is not None and icc != srgb_profile_bytes():
            kwargs["icc_profile"] = icc
        else:
            pnginfo.add(b"sRGB", b"\x00")  # perceptual; PNG's own way to say sRGB (also for grey)
    elif icc is not None and fmt in ("JPEG", "WEBP", "AVIF", "TIFF"):
        kwargs["icc_profile"] = icc
    if "exif" in metadata:
        if fmt in ("PNG", "JPEG", "WEBP", "AVIF", "TIFF"):
            kwargs["exif"] = metadata["exif"] if fmt != "TIFF" else metadata["exif"].removeprefix(b"Exif\x00\x00")
        else:
            notes.append(f"{fmt} cannot hold EXIF; left out")
    if "xmp" in metadata:
        if fmt == "PNG":
            pnginfo.add_itxt("XML:com.adobe.xmp", metadata["xmp"].decode("utf-8", "replace"))
        elif fmt in ("JPEG", "WEBP", "AVIF"):
            kwargs["xmp"] = metadata["xmp"]
        else:
            notes.append(f"{fmt} output: XMP left out")
    if pnginfo is not None:
        kwargs["pnginfo"] = pnginfo
    buf = io.BytesIO()
    if fmt == "TIFF" and "exif" in kwargs:  # Pillow's TIFF writer takes EXIF as an Exif object
        exif = Image.Exif()
        exif.load(metadata["exif"])
        kwargs["exif"] = exif
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _from_srgb(img: Image.Image, icc: bytes, notes: list[str]) -> tuple[Image.Image, bytes | None]:
    """Decoded sRGB pixels converted to the original's ICC profile, and that profile."""
    from PIL import ImageCms

    try:
        dst = _profile(icc)
        space = dst.profile.xcolor_space.strip()
        if space not in ("RGB", "GRAY") or (space == "GRAY") != (img.mode == "L"):
            notes.append(f"original ICC profile ({space}) not restored in an {img.mode} file; written as sRGB")
            return img, None
        if img.mode == "L":
            rgb = img.convert("RGB")
            out = ImageCms.profileToProfile(rgb, _srgb(), dst, renderingIntent=ImageCms.Intent.PERCEPTUAL, outputMode="L")
        else:
            out = ImageCms.profileToProfile(img, _srgb(), dst, renderingIntent=ImageCms.Intent.PERCEPTUAL,
                                            outputMode="RGB")
        return out, bytes(icc)
    except Exception as e:
        notes.append(f"original ICC profile could not be restored ({str(e)[:80]}); written as sRGB")
        return img, None
