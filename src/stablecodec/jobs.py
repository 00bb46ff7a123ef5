"""One file's work -- bytes of an input file in, bytes of its output and a report row out --
shared by the command's own loop (:mod:`cli`) and the Ray Data workers (:mod:`raydata`),
so that both write the same bytes for the same inputs and options. No files, no printing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .api import Codec


@dataclasses.dataclass(frozen=True)
class EncodeOptions:
    alpha: str = "refuse"
    metadata: str = "none"
    max_bytes: int | None = None  # --target-size
    target_bpp: float | None = None  # --target-bpp
    family: str | None = None


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
    fmt: str | None = None  # --format


def encode_one(codec: "Codec", data: bytes, name: str, opt: EncodeOptions) -> tuple[bytes, dict[str, Any]]:
    from .container import peek
    from .imageio import load

    notes: list[str] = []
    img = load(data, alpha=opt.alpha, name=name, metadata=opt.metadata)
    extra: dict[str, Any] = {}
    if opt.max_bytes or opt.target_bpp:
        fit = codec.encode_to_size(img, opt.max_bytes, max_bpp=opt.target_bpp, family=opt.family, notes=notes)
        out = fit.data
        target = f"{opt.max_bytes:,} bytes" if opt.max_bytes else f"{opt.target_bpp:g} bpp"
        notes.append(f"target {target}: model {fit.model} ({len(out):,} bytes; "
                     f"{len(fit.tried)} encode{'s' * (len(fit.tried) > 1)})")
        extra = {"model": fit.model, "tried": [{"model": m, "size": v} for m, v in fit.tried]}
    else:
        out = codec.encode(img, notes=notes)
    meta = peek(out)[0].metadata_size
    return out, {"size": len(out), "bpp": round((len(out) - meta) * 8 / (img.width * img.height), 6),
                 "metadata_bytes": meta, "width": img.width, "height": img.height, "notes": notes, **extra}


def decode_format(dst: str, fmt: str | None) -> str:
    """The Pillow format of a decoded output: ``--format``, else the name's extension, else PNG."""
    from .imageio import format_for

    if dst == "-" or not Path(dst).suffix:
        return {"jpg": "JPEG"}.get(fmt, (fmt or "png").upper())
    return format_for(dst)


def decode_one(codec: "Codec", data: bytes, dst: str, opt: DecodeOptions) -> tuple[bytes, dict[str, Any]]:
    from .imageio import encode_image

    img = codec.decode(data)
    target = decode_format(dst, opt.fmt)
    meta = {k: img.info[n] for k, n in (("exif", "exif"), ("xmp", "xmp"), ("icc", "original_icc_profile"))
            if n in img.info}
    notes: list[str] = []
    out = encode_image(img, target, metadata=meta, notes=notes)
    return out, {"size": len(data), "bpp": round(len(data) * 8 / (img.width * img.height), 6),
                 "width": img.width, "height": img.height, "format": target, "metadata": sorted(meta), "notes": notes}
