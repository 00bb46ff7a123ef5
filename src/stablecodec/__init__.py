"""stablecodec: extreme image compression (0.005-0.1 bpp) with StableCodec (ICCV 2025).

    import stablecodec
    data = stablecodec.encode("photo.png")       # -> bytes (.scdc)
    image = stablecodec.decode(data)              # -> PIL.Image
    codec = stablecodec.Codec(model="lite-2")     # keeps the model loaded

Heavy libraries (torch, diffusers) are imported on first use, so importing this package
and ``stablecodec --help`` stay fast.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

# Transparent huge pages for PyTorch's CPU tensors of 2 MB and more (c10 reads this once,
# at its first allocation, so it is set before any). Every large activation is fresh
# memory that the kernel faults in; in 4 KB pages that was a third of a decode's CPU time
# (768x512, full-size model: the bf16 VAE decoder 5.0 -> 4.45 s, peak memory unchanged;
# docs/performance.md). glibc still returns freed blocks to the system, so peak memory
# does not grow. THP_MEM_ALLOC_ENABLE=0 in the environment opts out.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

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
