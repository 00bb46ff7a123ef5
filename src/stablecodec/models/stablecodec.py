"""The full StableCodec model on the released weights (paper Fig. 2, Eq. 1-3).

Encoding: x in [-1, 1] -> SD-Turbo VAE encoder with LoRA (l_sd, 4 channels at 1/8) and
ELIC's analysis (l_aux, 320 channels at 1/16) -> the latent codec -> a payload.
Decoding: payload -> ŷ -> g_s (l_T) and the auxiliary decoder (r) -> one UNet step
(Eq. 3) -> the VAE decoder -> x̂, clamped to [-1, 1].

A composition of :class:`~stablecodec.models.onestep.OneStepModel`'s stages: the analysis
(:class:`SDTurboAnalysis`), the latent codec, the synthesis (:class:`TwoHeadSynthesis`), the
epsilon step (:class:`~stablecodec.models.denoiser.OneStepDenoiser`, built on first decode,
so encoding never loads its 865M parameters) and the decoder (:class:`VAEDecoderStage`).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..tiling import MemoryPlan, plan_stablecodec, run_windows
from .denoiser import OneStepDenoiser
from .encoder import ElicAnalysis
from .latent_codec import LatentCodec
from .onestep import Lazy, OneStepModel
from .vae import TiledVAE, VAEPlan


def vae_plan(plan: MemoryPlan, decoder: bool) -> VAEPlan:
    if decoder:
        return VAEPlan(band_elems=plan.vae_dec_band, spill=plan.vae_dec_spill, attn_tile=plan.attn_tile)
    return VAEPlan(band_elems=plan.vae_enc_band, spill=plan.vae_enc_spill, attn_tile=plan.attn_tile)


class SDTurboAnalysis(nn.Module):
    """x in [0, 1] -> (l_sd, l_aux): the VAE encoder's latent (scaled) and ELIC's features."""

    def __init__(self, vae: TiledVAE, elic: ElicAnalysis, scaling_factor: float):
        super().__init__()
        self.vae, self.elic, self.scaling_factor = vae, elic, scaling_factor

    def float32_modules(self) -> list[nn.Module]:
        return self.vae.float32_modules()  # the VAE is shared with the decoder stage: placed alike

    def forward(self, x01: torch.Tensor, m: OneStepModel):
        with m.timed("VAE encoder"):
            l_sd = self.vae.encode(x01 * 2 - 1, vae_plan(m.plan, False), progress=m.progress) * self.scaling_factor
        with m.timed("ELIC encoder"):
            l_aux = self.elic(x01, tile=m.plan.encoder_window, progress=m.progress)
        return l_sd, l_aux


class TwoHeadSynthesis(nn.Module):
    """ŷ -> (l_T, r): g_s and the auxiliary decoder, in exact windows when the plan says so."""

    label = "g_s + auxiliary decoder"

    def __init__(self, codec: LatentCodec):
        super().__init__()
        self.g_s, self.aux, self.up = codec.g_s, codec.aux, codec.cfg.stride

    def run(self, module: nn.Module, y: torch.Tensor, plan: MemoryPlan) -> torch.Tensor:
        w = plan.synthesis_window
        # Both are convolutional: 16 y px of context make windowed outputs exact.
        return module(y) if w is None else run_windows(module, y, w, 16, up=self.up)

    def forward(self, y: torch.Tensor, m: OneStepModel):
        return self.run(self.g_s, y, m.plan), self.run(self.aux, y, m.plan)


class VAEDecoderStage(nn.Module):
    """(l_0 - r, r) -> image in about [-1, 1]: l_0 = UNet part + r (Eq. 3) in float32, scaled
    for the VAE with one rounding to its dtype, then SD-Turbo's VAE decoder."""

    label = "VAE decoder"

    def __init__(self, vae: TiledVAE, scaling_factor: float):
        super().__init__()
        self.vae, self.scaling_factor = vae, scaling_factor

    def vae_input(self, l0_minus_r: torch.Tensor, r: torch.Tensor, m: OneStepModel) -> torch.Tensor:
        return m.layout(((l0_minus_r + r.float()) / self.scaling_factor).to(m.dtype))

    def forward(self, l0_minus_r: torch.Tensor, r: torch.Tensor, m: OneStepModel) -> torch.Tensor:
        return self.vae.decode(self.vae_input(l0_minus_r, r, m), vae_plan(m.plan, True), progress=m.progress)

    def float32_modules(self) -> list[nn.Module]:
        return self.vae.float32_modules()


def _plan(m: "StableCodecModel", height: int, width: int, budget: int) -> MemoryPlan:
    """The fastest tiles whose estimated peak fits ``budget`` (:func:`tiling.plan_stablecodec`)."""
    return plan_stablecodec(height, width, budget=budget, dtype_bytes=m.dtype.itemsize,
                            weights_encode=m.resident_bytes(False), weights_decode=m.resident_bytes(True),
                            widths=m.activation_widths())


class StableCodecModel(OneStepModel):
    """StableCodec as a composition of stages (see the module docstring)."""

    def __init__(self, vae, elic: ElicAnalysis, codec: LatentCodec, denoiser_loader: Callable[[], OneStepDenoiser],
                 scaling_factor: float, denoiser_bytes: int = 0, unet_width: int | None = None):
        tiled = TiledVAE(vae)
        c = codec
        super().__init__(
            analysis=SDTurboAnalysis(tiled, elic, scaling_factor), codec=codec, synthesis=TwoHeadSynthesis(codec),
            denoiser=Lazy(denoiser_loader, denoiser_bytes), decoder=VAEDecoderStage(tiled, scaling_factor),
            stride=8 * codec.cfg.stride * 4, planner=_plan,
            # the codec's image path (on the device); its parameter path stays exact on the CPU
            codec_image_modules=lambda _: [c.g_a, c.g_s, c.h_a] + ([c.aux] if c.aux is not None else []))
        self.denoiser_bytes = denoiser_bytes  # the UNet's weights (+ a transient text encoder), before loading
        self._unet_width = unet_width  # the UNet's first block width, known from its config before loading
        self.scaling_factor = scaling_factor

    # -- what the benchmarks and tests reach for -----------------------------------------

    @property
    def vae(self) -> TiledVAE:
        return self.analysis.vae

    @property
    def elic(self) -> ElicAnalysis:
        return self.analysis.elic

    def _probe(self) -> torch.Tensor:
        return self.analysis.elic.analysis_transform[0].weight

    def y_shape(self, padded_hw: tuple[int, int]) -> tuple[int, int]:
        return self.codec.y_shape((padded_hw[0] // 8, padded_hw[1] // 8))

    def activation_widths(self) -> dict[str, float]:
        """Each stage's width relative to the released model (the memory planner scales by it)."""
        vae_ch = self.vae.vae.config.block_out_channels
        elic_n = self.elic.analysis_transform[0].out_channels
        unet = {"unet": self._unet_width / 320.0} if self._unet_width else {}
        return {"vae": vae_ch[0] / 128.0, "elic": elic_n / 192.0, "codec": self.codec.cfg.M / 320.0, **unet}

    def vae_plan(self, decoder: bool) -> VAEPlan:
        return vae_plan(self.plan, decoder)

    def synthesis_of(self, module: nn.Module, y: torch.Tensor) -> torch.Tensor:
        return self.synthesis.run(module, y, self.plan)

    def denoise(self, l_t: torch.Tensor) -> torch.Tensor:
        """l_0 - r (Eq. 3) from the UNet, in the plan's tiles."""
        p = self.plan
        return self.denoiser(l_t, tile=p.unet_tile, overlap=p.unet_overlap, batch=p.unet_batch, progress=self.progress)

    def vae_input(self, l0_minus_r: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return self.decoder.vae_input(l0_minus_r, r, self)
