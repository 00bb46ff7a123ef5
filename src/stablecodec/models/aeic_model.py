"""AEIC as a composition of the one-step pipeline's stages (arXiv 2512.12229).

    compress:   x in [0, 1] -> 2x - 1 -> AEIC's codec (g_a, h_a, h_s, context model) -> payload
    decompress: payload -> ŷ -> g_s -> (l_T: 320 ch, r: 256 ch) -> e = UNet(l_T) -> halfDecoder(e + r)

Unlike StableCodec there is no timestep, prompt or scheduler step: the UNet is a plain
network and l_0 = e + r goes into AdcSR's channel-halved VAE decoder unscaled. The
sender holds only the codec (SE: 16.1 M parameters, g_a 0.94 M of them): g_s, the UNet
and the halfDecoder are lazy stages, built when the model first decodes.
"""

from __future__ import annotations

import torch
from torch import nn

from ..tiling import plan_aeic, run_windows
from .aeic import AEICCodec, Synthesis
from .denoiser import PlainUNet
from .onestep import Lazy, OneStepModel
from .vae import TiledVAE, VAEPlan

# AEIC's UNet tiles (latent px), set per variant by its compress script.
UNET_TILES = {"SE": (192, 64), "ME": (96, 32)}


class ShallowAnalysis(nn.Module):
    """x in [0, 1] -> (y,): g_a on the pixels themselves in [-1, 1] (AEIC has no VAE encoder),
    in exact windows when the plan says so."""

    def __init__(self, g_a: nn.Module, halo: int):
        super().__init__()
        self.g_a, self.halo = g_a, halo

    def forward(self, x01: torch.Tensor, m: OneStepModel):
        with m.timed("g_a"):
            x = x01 * 2 - 1
            w = m.plan.encoder_window
            y = self.g_a(x) if w is None else run_windows(self.g_a, x, w, self.halo, down=32, progress=m.progress)
            return (y.to("cpu", torch.float32),)


class SplitSynthesis(nn.Module):
    """ŷ -> (l_T, r): g_s's 576 channels at 1/8, the first ``unet_in`` for the UNet, the rest residual."""

    label = "g_s"

    def __init__(self, g_s: Synthesis, unet_in: int, up: int):
        super().__init__()
        self.g_s, self.unet_in, self.up = g_s, unet_in, up

    def forward(self, y: torch.Tensor, m: OneStepModel):
        w = m.plan.synthesis_window
        out = self.g_s(y) if w is None else run_windows(self.g_s, y, w, Synthesis.HALO, up=self.up)
        return out[:, : self.unet_in], out[:, self.unet_in :]


class HalfDecoderStage(nn.Module):
    """(e, r) -> image in about [-1, 1]: l_0 = e + r in float32, one rounding to the
    network's dtype, then the halfDecoder (exact bands and attention windows as the plan says)."""

    label = "halfDecoder"

    def __init__(self, vae: TiledVAE):
        super().__init__()
        self.vae = vae

    def float32_modules(self) -> list[nn.Module]:
        return self.vae.float32_modules()

    def forward(self, e: torch.Tensor, r: torch.Tensor, m: OneStepModel) -> torch.Tensor:
        l0 = m.layout((e + r.float()).to(m.dtype))
        p = m.plan
        plan = VAEPlan(band_elems=p.vae_dec_band, spill=p.vae_dec_spill, attn_tile=p.attn_tile)
        return self.vae.decode(l0, plan, progress=m.progress)


class AEICModel(OneStepModel):
    """AEIC-SE or -ME. ``synthesis``, ``unet`` and ``decoder`` build the decoder side's
    modules (g_s, the pruned UNet with its LoRA merged, the halfDecoder's TiledVAE); each
    is called at most once, on the first decode."""

    codec_label = "AEIC codec (h_a, entropy encoding)"

    def __init__(self, codec: AEICCodec, *, synthesis: Lazy, unet: Lazy, decoder: Lazy):
        cfg = codec.cfg
        up = cfg.stride // 8
        super().__init__(
            analysis=ShallowAnalysis(codec.g_a, codec.g_a.HALO), codec=codec,
            synthesis=Lazy(lambda: SplitSynthesis(synthesis.build(), cfg.unet_in, up), synthesis.nbytes),
            denoiser=Lazy(lambda: PlainUNet(unet.build()), unet.nbytes),
            decoder=Lazy(lambda: HalfDecoderStage(decoder.build()), decoder.nbytes),
            stride=cfg.stride * 2,  # y padded to a multiple of 4 before h_a only on the encoder: images to 64
            planner=lambda m, h, w, budget: plan_aeic(h, w, budget=budget, dtype_bytes=m.dtype.itemsize,
                                                      weights_encode=m.resident_bytes(False),
                                                      weights_decode=m.resident_bytes(True), variant=cfg.variant,
                                                      widths=cfg),
            codec_image_modules=lambda c: [c.g_a, c.h_a])
        self.variant = cfg.variant

    def _probe(self) -> torch.Tensor:
        return self.codec.g_a.analysis_transform[0].body[0].weight
