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

import contextlib
import dataclasses
import time
from typing import Callable

import torch
from torch import nn

from ..tiling import MemoryPlan, run_windows
from . import precision
from .precision import channels_last
from .denoiser import OneStepDenoiser
from .encoder import ElicAnalysis
from .latent_codec import RULES, CodingRules, Compressed, LatentCodec
from .vae import TiledVAE, VAEPlan


def _place(m: nn.Module, device: str, dtype: torch.dtype) -> None:
    keep = m.float32_modules() if hasattr(m, "float32_modules") else []
    reduced = m.reduced_modules() if hasattr(m, "reduced_modules") else []
    precision.place(m, device, dtype, keep, channels_last(dtype, device), reduced)


class StableCodecModel(nn.Module):
    """The composite model. The UNet (with the prompt embedding) is built by ``denoiser_loader``
    on first decode, so encoding never loads its 865M parameters."""

    def __init__(self, vae, elic: ElicAnalysis, codec: LatentCodec, denoiser_loader: Callable[[], OneStepDenoiser],
                 scaling_factor: float, denoiser_bytes: int = 0, unet_width: int | None = None):
        super().__init__()
        self.denoiser_bytes = denoiser_bytes  # the UNet's weights (+ a transient text encoder), before loading
        self._unet_width = unet_width  # the UNet's first block width, known from its config before loading
        self.vae = TiledVAE(vae)
        self.elic = elic
        self.codec = codec
        self._denoiser_loader = denoiser_loader
        self._denoiser: OneStepDenoiser | None = None
        self._placement: tuple[str, torch.dtype] | None = None
        self._compile = False
        self.scaling_factor = scaling_factor
        self.plan = MemoryPlan()  # whole image at once; the API sets one per image
        self.progress = None
        self.last_timings: dict[str, float] = {}  # seconds per stage of the last compress or decompress

    @contextlib.contextmanager
    def _timed(self, stage: str):
        """Wall time of one stage into ``last_timings`` (what benchmarks/full_size.py reports)."""
        t = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":  # kernels are asynchronous: count them in their stage
                torch.cuda.synchronize(self.device)
            self.last_timings[stage] = round(self.last_timings.get(stage, 0.0) + time.perf_counter() - t, 3)

    @property
    def denoiser(self) -> OneStepDenoiser:
        if self._denoiser is None:
            den = self._denoiser_loader().eval()
            if self._placement is not None:
                _place(den, *self._placement)
            if self._compile:
                den.unet = torch.compile(den.unet, dynamic=True)
            self._denoiser = den  # nn.Module registers it as a submodule
        return self._denoiser

    @property
    def denoiser_loaded(self) -> bool:
        return self._denoiser is not None

    def resident_bytes(self, decoding: bool) -> int:
        """Bytes of weights in memory while encoding or decoding (UNet estimated until loaded)."""
        own = sum(t.numel() * t.element_size() for t in list(self.parameters()) + list(self.buffers()))
        exact = 8 * sum(p.numel() for m in self.codec.parameter_modules() for p in m.parameters())  # float64 copies
        if not decoding:
            return own + exact
        if self._denoiser is None:
            return own + exact + self.denoiser_bytes
        return own + exact  # the denoiser is a registered submodule once loaded

    def activation_widths(self) -> dict[str, float]:
        """Each stage's width relative to the released model (the memory planner scales by it)."""
        vae_ch = self.vae.vae.config.block_out_channels
        elic_n = self.elic.analysis_transform[0].out_channels
        unet = {"unet": self._unet_width / 320.0} if self._unet_width else {}
        return {"vae": vae_ch[0] / 128.0, "elic": elic_n / 192.0, "codec": self.codec.cfg.M / 320.0, **unet}

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

    def place(self, device: str, dtype: torch.dtype) -> None:
        """Image-path modules to ``device``/``dtype``; the entropy-parameter path stays exact on CPU.

        Convolutions run channels-last (NHWC): oneDNN's and cuDNN's fast kernels for
        reduced precision want that layout (2-3x on this project's CPU, docs/performance.md).
        """
        self._placement = (device, dtype)
        c = self.codec
        for m in [self.vae, self.elic, c.g_a, c.g_s, c.h_a] + ([c.aux] if c.aux is not None else []):
            _place(m, device, dtype)
        if self._denoiser is not None:
            _place(self._denoiser, device, dtype)

    def enable_compile(self) -> None:
        """torch.compile the UNet when it loads (its shape varies only with the tile plan)."""
        self._compile = True

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if channels_last(x.dtype, x.device.type) else x

    # -- the stages under the current plan (also what benchmarks/stages.py times) --------

    def vae_plan(self, decoder: bool) -> VAEPlan:
        p = self.plan
        if decoder:
            return VAEPlan(band_elems=p.vae_dec_band, spill=p.vae_dec_spill, attn_tile=p.attn_tile)
        return VAEPlan(band_elems=p.vae_enc_band, spill=p.vae_enc_spill, attn_tile=p.attn_tile)

    def synthesis(self, module: nn.Module, y: torch.Tensor) -> torch.Tensor:
        """g_s or the auxiliary decoder on ŷ, in exact windows when the plan says so."""
        w = self.plan.synthesis_window
        # Both are convolutional: 16 y px of context make windowed outputs exact.
        return module(y) if w is None else run_windows(module, y, w, 16, up=self.codec.cfg.stride)

    def denoise(self, l_t: torch.Tensor) -> torch.Tensor:
        """l_0 - r (Eq. 3) from the UNet, in the plan's tiles."""
        p = self.plan
        return self.denoiser(l_t, tile=p.unet_tile, overlap=p.unet_overlap, batch=p.unet_batch, progress=self.progress)

    def vae_input(self, l0_minus_r: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """l_0 = UNet part + r (Eq. 3) in float32, scaled for the VAE: one rounding to its dtype."""
        return self._layout(((l0_minus_r + r.float()) / self.scaling_factor).to(self.dtype))

    @torch.no_grad()
    def compress(self, x01: torch.Tensor) -> Compressed:
        x01 = self._layout(x01.to(self.device, self.dtype))
        self.last_timings = {}
        with self._timed("VAE encoder"):
            l_sd = self.vae.encode(x01 * 2 - 1, self.vae_plan(False), progress=self.progress) * self.scaling_factor
        with self._timed("ELIC encoder"):
            l_aux = self.elic(x01, tile=self.plan.encoder_window, progress=self.progress)
        del x01
        with self._timed("latent codec (g_a, h_a, entropy encoding)"):
            return self.codec.compress(l_sd, l_aux)

    @torch.no_grad()
    def decompress(self, payload: bytes, symbol_crc: int, padded_hw: tuple[int, int],
                   rules: CodingRules = RULES) -> torch.Tensor:
        y_shape = self.codec.y_shape((padded_hw[0] // 8, padded_hw[1] // 8))
        self.last_timings = {}
        with self._timed("entropy decoding"):
            y_hat = self.codec.decompress(payload, symbol_crc, y_shape, rules=rules)
        return self._reconstruct(y_hat)

    @torch.no_grad()
    def reconstruct(self, y_hat: torch.Tensor) -> torch.Tensor:
        """ŷ -> image in [0, 1] (Eq. 3 and the VAE decoder)."""
        self.last_timings = {}
        return self._reconstruct(y_hat)

    def _reconstruct(self, y_hat: torch.Tensor) -> torch.Tensor:
        y = self._layout(y_hat.to(self.device, self.dtype))
        with self._timed("g_s + auxiliary decoder"):
            l_t = self.synthesis(self.codec.g_s, y)
            r = self.synthesis(self.codec.aux, y)
        del y
        self.denoiser  # noqa: B018 -- loaded on first use; the load is not the UNet's time
        with self._timed("UNet"):
            l0 = self.denoise(l_t)
        del l_t
        l0 = self.vae_input(l0, r)
        with self._timed("VAE decoder"):
            x = self.vae.decode(l0, self.vae_plan(True), progress=self.progress)
        del l0
        return (x.float().clamp_(-1, 1) + 1) / 2  # in bf16, x + 1 would round to steps of 1/128
