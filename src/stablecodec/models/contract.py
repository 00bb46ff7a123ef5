"""The contract every model family's composite model keeps (what ``api.Codec`` relies on).

CompressAI's zoo models share one ``compress``/``decompress`` pair; so do these, with
images in [0, 1] and padding, cropping, colour statistics and the container left to the
API. A family is added by writing a model that satisfies :class:`CodecModel`, a loader
module in ``weights/`` and a record in ``registry.FAMILIES``; ``tests/test_contract.py``
runs the same checks over every family in the registry.
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import torch

from ..tiling import MemoryPlan
from .latent_codec import CodingRules, Compressed


@runtime_checkable
class CodecModel(Protocol):
    stride: int  # image sizes are padded (by reflection, bottom/right) to multiples of this
    plan: MemoryPlan  # tiles for the current image, set by the API before each call
    last_plan: str
    progress: Callable[[int], None] | None  # ticks per tile on large images
    # The size it codes an image at, in sixteenths of each side (container.coded_size): 16,
    # or less for a low rate point that does better on a smaller image; the API resamples.
    coded_scale: int

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def compress(self, x01: torch.Tensor) -> Compressed:
        """A padded image (1, 3, H, W) in [0, 1] -> payload, symbol CRC and ŷ."""

    def decompress(self, payload: bytes, symbol_crc: int, padded_hw: tuple[int, int],
                   rules: CodingRules = ...) -> torch.Tensor:
        """-> the padded image (1, 3, H, W) in [0, 1]; DesyncError if the symbols fail their check.
        ``rules``: the payload's coding rules (its file's format version)."""

    def coding_rules(self, major: int) -> CodingRules:
        """The rules this model's payloads follow in a file of format ``major``.x (what
        ``compress`` writes under the current major, what ``decompress`` is given)."""

    def place(self, device: str, dtype: torch.dtype) -> None:
        """Image-path modules to ``device``/``dtype``; the entropy-parameter path stays exact."""

    def plan_memory(self, height: int, width: int, budget: int) -> MemoryPlan:
        """Tiles for a padded ``height`` x ``width`` image whose estimated peak fits ``budget``
        bytes (ValueError when none does)."""

    def resident_bytes(self, decoding: bool) -> int:
        """Bytes of weights held while encoding (False) or decoding (True)."""
