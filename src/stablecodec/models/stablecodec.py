"""The full StableCodec model on the released weights (paper Fig. 2, Eq. 1-3).

Encoding: x in [-1, 1] -> SD-Turbo VAE encoder with LoRA (l_sd, 4 channels at 1/8) and
ELIC's analysis (l_aux, 320 channels at 1/16) -> the latent codec -> a payload.
Decoding: payload -> ŷ -> g_s (l_T) and the auxiliary decoder (r) -> one UNet step
(Eq. 3) -> the VAE decoder -> x̂, clamped to [-1, 1].

The same contract as the default model (:mod:`lite`): ``compress(x01)`` and
``decompress(payload, symbol_crc, padded_hw)`` with images in [0, 1]; padding, cropping,
colour correction and the container are the API's business.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .denoiser import OneStepDenoiser
from .encoder import ElicAnalysis
from .latent_codec import Compressed, LatentCodec
from .vae import TiledVAE


@dataclasses.dataclass
class TilePlan:
    """Tile sizes for each stage (None: the whole image at once)."""

    vae_encoder: int | None = None  # image px
    unet: int | None = None  # latent px
    unet_overlap: int = 32
    unet_batch: int = 1
    vae_decoder: int | None = None  # latent px


class StableCodecModel(nn.Module):
    def __init__(self, vae, unet, elic: ElicAnalysis, codec: LatentCodec, prompt_embedding: torch.Tensor,
                 abar: float, scaling_factor: float):
        super().__init__()
        self.vae = TiledVAE(vae)
        self.elic = elic
        self.codec = codec
        self.denoiser = OneStepDenoiser(unet, prompt_embedding, abar)
        self.scaling_factor = scaling_factor
        self.tiles = TilePlan()
        self.progress = None

    @property
    def stride(self) -> int:
        """Image sizes are padded to a multiple of this (the hyper-latent's stride, 256)."""
        return 8 * self.codec.cfg.stride * 4

    @property
    def device(self) -> torch.device:
        return self.elic.analysis_transform[0].weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.elic.analysis_transform[0].weight.dtype

    def float_modules(self) -> list[nn.Module]:
        """Modules that may run at reduced precision and on an accelerator."""
        c = self.codec
        mods = [self.vae, self.elic, self.denoiser, c.g_a, c.g_s, c.h_a]
        return mods + ([c.aux] if c.aux is not None else [])

    @torch.no_grad()
    def compress(self, x01: torch.Tensor) -> Compressed:
        x01 = x01.to(self.device, self.dtype)
        l_sd = self.vae.encode(x01 * 2 - 1, tile=self.tiles.vae_encoder, progress=self.progress) * self.scaling_factor
        l_aux = self.elic(x01)
        return self.codec.compress(l_sd, l_aux)

    @torch.no_grad()
    def decompress(self, payload: bytes, symbol_crc: int, padded_hw: tuple[int, int]) -> torch.Tensor:
        y_shape = self.codec.y_shape((padded_hw[0] // 8, padded_hw[1] // 8))
        y_hat = self.codec.decompress(payload, symbol_crc, y_shape)
        return self.reconstruct(y_hat)

    @torch.no_grad()
    def reconstruct(self, y_hat: torch.Tensor) -> torch.Tensor:
        """ŷ -> image in [0, 1] (Eq. 3 and the VAE decoder)."""
        y = y_hat.to(self.device, self.dtype)
        l_t = self.codec.g_s(y)
        r = self.codec.aux(y)
        del y
        t = self.tiles
        l0 = self.denoiser(l_t, tile=t.unet, overlap=t.unet_overlap, batch=t.unet_batch, progress=self.progress)
        del l_t
        l0 = l0 + r
        x = self.vae.decode(l0 / self.scaling_factor, tile=t.vae_decoder, progress=self.progress)
        return ((x.clamp(-1, 1) + 1) / 2).float()
