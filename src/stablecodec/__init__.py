"""stablecodec: extreme image compression (0.005-0.1 bpp) with StableCodec (ICCV 2025).

    import stablecodec
    data = stablecodec.encode("photo.png")       # -> bytes (.scdc)
    image = stablecodec.decode(data)              # -> PIL.Image
    codec = stablecodec.Codec(model="lite-2")     # keeps the model loaded

Heavy libraries (torch, diffusers) are imported on first use, so importing this package
and ``stablecodec --help`` stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import ConfigError, DesyncError, FormatError, ImageError, LimitError, StableCodecError, WeightsError

__version__ = "0.1.0"

__all__ = [
    "Codec", "encode", "decode", "info", "StableCodecError", "FormatError", "DesyncError", "WeightsError",
    "ImageError", "LimitError", "ConfigError", "__version__",
]

if TYPE_CHECKING:  # pragma: no cover
    from .api import Codec, decode, encode, info


def __getattr__(name: str):
    if name in ("Codec", "encode", "decode", "info"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'stablecodec' has no attribute {name!r}")
