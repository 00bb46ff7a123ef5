"""AEIC's pixel codec (Zhang, Liu, Chen, arXiv 2512.12229; ``../shared/reference/aeic-network.md``).

Pixels in [-1, 1] go straight into a shallow analysis transform (SE: five StarBlock
levels, 0.94 M parameters; ME: two blocks per level) to y, M channels at 1/32; the
hyperprior (h_a/h_s, z at 1/128 in CompressAI's ``EntropyBottleneck``) and the four-step
quadtree context model of StableCodec without its latent residual prediction code y;
``g_s`` returns 576 channels at 1/8, of which the first 320 go into the UNet (l_T) and the
other 256 are the residual r added to its output (l_0 = UNet(l_T) + r). The rest of the
decoder (the UNet, AdcSR's halfDecoder) is in :mod:`stablecodec.models.aeic_model`.

Where AEIC's own entropy rules differ from StableCodec's they are followed
(:data:`AEIC_STEPS`): no LRP; the table index is the largest table scale at or below the
predicted scale (a floor, not CompressAI's ceiling), and an element whose scale is below
0.08 is not coded (its symbol is 0, ŷ = mean). Two choices are made where the official code
is not self-consistent (docs/aeic.md):

* its encoder updates its context with the true round(y - mean) of a skipped element
  while its decoder uses 0; here the encoder uses 0 too, so both sides always agree;
* its fast path pads y to a multiple of 4 with zeros before h_a, its bitstream path by
  reflection; here by reflection (the bitstream path, which its published files come
  from). Only the encoder sees this padding: the decoder reads ẑ.

The parameter path (h_s, adapters, g_c) runs in the same exact fixed point as StableCodec's
(:mod:`fixedpoint`, numerics V2), so a file decodes to the encoder's ŷ on any machine.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from ..errors import FormatError
from ._compressai import entropy_bottleneck, gaussian_conditional
from .blocks import FLOAT, Adapter, ShuffleDown, ShuffleUp, Stack, StarBlock
from .entropy import StreamReader, StreamWriter, Table
from .fixedpoint import ExactOps
from .latent_codec import (RULES, CodingRules, Compressed, ExactEntropyPath, SpatialContext, StepRules, Y_LIMIT,
                           code_quadtree, quadtree_masks)

AEIC_STEPS = StepRules(index="floor", lrp=False, skip_below=0.08)


@dataclasses.dataclass(frozen=True)
class AEICConfig:
    """Widths of one variant; :func:`se` and :func:`me` are the released ones."""

    variant: str  # "SE" or "ME"
    analysis: tuple[int, ...]  # g_a level widths; last = M
    blocks: int  # StarBlocks per g_a level
    context: int  # width of the shared context blocks g_c
    context_depth: int
    synthesis: tuple[int, ...] = (1024, 768, 512)  # g_s level widths
    unet_in: int = 320  # l_T: the channels g_s hands to the UNet
    decoder_in: int = 256  # r, and the UNet's output: the halfDecoder's input

    @property
    def M(self) -> int:
        return self.analysis[-1]

    @property
    def stride(self) -> int:
        """y's stride relative to the image."""
        return 2 ** len(self.analysis)

    def __post_init__(self) -> None:
        if self.M % 16 or any(c % 8 for c in self.analysis):
            raise ValueError("widths must be multiples of 8 (InceptionDW splits), M of 16 (quadtree groups)")
        if len(self.synthesis) != len(self.analysis) - 2:
            raise ValueError("g_s upsamples y (1/32) to the UNet's latent (1/8): one level fewer than g_a's minus one")


def se() -> AEICConfig:
    return AEICConfig("SE", (32, 64, 128, 192, 256), blocks=1, context=512, context_depth=3)


def me() -> AEICConfig:
    return AEICConfig("ME", (64, 128, 192, 256, 320), blocks=2, context=960, context_depth=4)


class PixelAnalysis(nn.Module):
    """g_a: ShuffleDown + StarBlocks per level, pixels in [-1, 1] -> y (M channels at 1/32)."""

    def __init__(self, cfg: AEICConfig):
        super().__init__()
        # Receptive radius in image px: the 3x3 convolutions (1 + 2 + 4 + 8 + 16) and each
        # level's StarBlocks (radius 5 at strides 2 .. 32): 341 px with one block per level
        # (SE), 651 with two (ME); windows of g_a with this much context are exact.
        self.HALO = 32 * -(-(31 + 5 * 62 * cfg.blocks) // 32)
        layers: list[nn.Module] = []
        for cin, cout in zip((3, *cfg.analysis[:-1]), cfg.analysis):
            layers += [ShuffleDown(cin, cout), *[StarBlock(cout) for _ in range(cfg.blocks)]]
        self.analysis_transform = Stack(*layers)

    def forward(self, x):
        return self.analysis_transform(x)


class HyperAnalysis(nn.Module):
    def __init__(self, M: int):
        super().__init__()
        self.reduction = Stack(ShuffleDown(M, M // 2), StarBlock(M // 2), StarBlock(M // 2), ShuffleDown(M // 2, M // 2))

    def forward(self, x):
        return self.reduction(x)


class HyperSynthesis(nn.Module):
    def __init__(self, M: int):
        super().__init__()
        self.increase = Stack(ShuffleUp(M // 2, M // 2), StarBlock(M // 2), StarBlock(M // 2), ShuffleUp(M // 2, M))

    def forward(self, x, ops=FLOAT):
        return self.increase(x, ops)


class Synthesis(nn.Module):
    """g_s: y -> 576 channels at 1/8 (l_T, then r)."""

    # Receptive radius in y px: the first level's 5x5 adapter, two 11-tap StarBlocks and the
    # 3x3 upsampling (13), then 11 and 12 px at 2x and 4x resolution: 21.5, rounded up.
    HALO = 24

    def __init__(self, cfg: AEICConfig):
        super().__init__()
        w = cfg.synthesis
        layers: list[nn.Module] = [Adapter(cfg.M, w[0])]
        for i, c in enumerate(w):
            layers += [StarBlock(c), StarBlock(c)]
            if i + 1 < len(w):
                layers.append(ShuffleUp(c, w[i + 1]))
        layers.append(Adapter(w[-1], cfg.unet_in + cfg.decoder_in))
        self.synthesis_transform = Stack(*layers)

    def forward(self, x):
        return self.synthesis_transform(x)


def _pad_reflect(x: torch.Tensor, multiple: int) -> torch.Tensor:
    from ..tiling import pad_to_multiple

    return pad_to_multiple(x, multiple)


class AEICCodec(ExactEntropyPath, nn.Module):
    """The sender's half of AEIC's codec -- g_a, h_a, h_s, the context model and the
    hyper-latent's density -- with the exact entropy path. g_s is a separate module
    (:class:`Synthesis`), loaded only to decode."""

    def __init__(self, cfg: AEICConfig):
        super().__init__()
        self.cfg = cfg
        M = cfg.M
        self.g_a = PixelAnalysis(cfg)
        self.h_a = HyperAnalysis(M)
        self.h_s = HyperSynthesis(M)
        self.adapter_in = nn.ModuleList(Adapter(M, cfg.context) for _ in range(4))
        self.g_c = SpatialContext(cfg.context, cfg.context_depth)  # StableCodec's g_c, at AEIC's widths
        self.adapter_out = nn.ModuleList(Adapter(cfg.context, 2 * M) for _ in range(4))
        self.entropy_bottleneck = entropy_bottleneck(M // 2)
        self.gaussian_conditional = gaussian_conditional()
        self._exact: dict[str, ExactOps] = {}
        self._tables: tuple[list[Table], list[Table], torch.Tensor] | None = None
        self.exact_device = "cpu"  # where the parameter path runs (the model's device: placed with it)

    # -- the entropy path (ExactEntropyPath: parameter network, exact numerics, tables) ----

    def parameter_modules(self) -> list[nn.Module]:
        """The modules whose outputs choose probability tables; kept in float32, run exactly."""
        return [self.h_s, self.g_c, self.entropy_bottleneck, *self.adapter_in, *self.adapter_out]

    def y_shape(self, padded_hw: tuple[int, int]) -> tuple[int, int]:
        s = self.cfg.stride
        return padded_hw[0] // s, padded_hw[1] // s

    # -- coding --------------------------------------------------------------------------

    @torch.no_grad()
    def analyse(self, x: torch.Tensor) -> torch.Tensor:
        """y = g_a(x) for pixels in [-1, 1], as float32 on the CPU."""
        return self.g_a(x).to("cpu", torch.float32)

    @torch.no_grad()
    def compress(self, y: torch.Tensor, rules: CodingRules = RULES) -> Compressed:
        """Entropy-code y = g_a(x) (the analysis stage's output; the hyper-analysis runs here)."""
        return self.compress_y(y.to("cpu", torch.float32).clamp(-Y_LIMIT, Y_LIMIT), rules)

    @torch.no_grad()
    def compress_y(self, y: torch.Tensor, rules: CodingRules = RULES) -> Compressed:
        if y.shape[0] != 1:
            raise ValueError("compress codes one image at a time")
        h, w = y.shape[2:]
        p = next(self.h_a.parameters())
        z = self.h_a(_pad_reflect(y, 4).to(p.device, p.dtype)).to("cpu", torch.float64)
        gaussian, z_tables, medians = self.tables()
        med = medians.to(torch.float64)[None, :, None, None]
        z_sym = torch.round(z - med).clamp(-(1 << 20), 1 << 20)
        writer = StreamWriter()
        writer.write(z_sym.numpy().astype(np.int32), np.repeat(np.arange(z_sym.shape[1]), z_sym[0, 0].numel()), z_tables)
        y_hat = self._code_y(z_sym + med, (h, w), rules, writer=writer, y=y.to(torch.float64).clamp(-Y_LIMIT, Y_LIMIT))
        return Compressed(writer.finish(), writer.crc, y_hat, (h, w))

    @torch.no_grad()
    def decompress(self, payload: bytes, symbol_crc: int, y_shape: tuple[int, int],
                   rules: CodingRules = RULES) -> torch.Tensor:
        h, w = y_shape
        if h % 2 or w % 2 or h < 2 or w < 2:
            raise FormatError(f"latent shape {y_shape} is not one AEIC codes")
        gaussian, z_tables, medians = self.tables()
        reader = StreamReader(payload)
        zc, zh, zw = self.cfg.M // 2, -(-h // 4), -(-w // 4)
        z_sym = torch.from_numpy(reader.read(np.repeat(np.arange(zc), zh * zw), z_tables).astype(np.float64))
        z_hat = z_sym.view(1, zc, zh, zw) + medians.to(torch.float64)[None, :, None, None]
        y_hat = self._code_y(z_hat, (h, w), rules, reader=reader)
        reader.check(symbol_crc)
        return y_hat

    def _code_y(self, z_hat, y_hw, rules: CodingRules, *, writer=None, reader=None, y=None) -> torch.Tensor:
        ops = self.exact_ops(rules.numerics)
        gaussian, _, _ = self.tables()
        base = self.h_s(ops.to_fixed(z_hat.to(self.exact_device)), ops)[:, :, : y_hw[0], : y_hw[1]].contiguous()
        return code_quadtree(base, lambda b, i: self._step_params(b, i, ops), rules, ops, gaussian, AEIC_STEPS,
                             writer=writer, reader=reader, y=y)


__all__ = ["AEICConfig", "AEICCodec", "AEIC_STEPS", "PixelAnalysis", "Synthesis", "se", "me", "quadtree_masks"]
