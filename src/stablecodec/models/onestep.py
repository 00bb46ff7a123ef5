"""The one-step diffusion codecs' shared pipeline, composed from stage objects.

    compress:   x in [0, 1] -> analysis -> latent codec (exact entropy path) -> payload
    decompress: payload -> ŷ -> synthesis -> (l_T, r) -> denoiser -> l_0 - r -> decoder(l_0 - r, r) -> x̂

StableCodec (:mod:`.stablecodec`: SD-Turbo's VAE encoder and ELIC in, g_s and the
auxiliary decoder, the epsilon step at t = 999, SD-Turbo's VAE decoder) and AEIC
(:mod:`.aeic_model`: pixels in, g_s split in two, the plain UNet call, AdcSR's
halfDecoder) are two compositions of this class; a third family is a third. The class
owns what is common: the memory plan and progress ticks set by the API, per-stage wall
times (``last_timings``), placement on a device and dtype (the entropy-parameter path stays
exact on the CPU), lazy stages (built on first use, so an encoder never loads the decoder
side), ``torch.compile`` of the denoiser, and resident-memory accounting.

Each stage is an ``nn.Module`` whose ``forward`` takes its input and this model (for the
plan, the progress callback and ``timed``); a stage that is expensive to load is given as
a :class:`Lazy` and built the first time it is needed.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable

import torch
from torch import nn

from ..container import FULL_SCALE
from ..tiling import MemoryPlan
from . import precision
from .latent_codec import RULES, CodingRules, Compressed, rules_for_format
from .precision import channels_last


class Lazy:
    """A stage built on first use: ``build()`` returns the module; ``nbytes`` estimates its
    weights before that (the memory planner counts them)."""

    def __init__(self, build: Callable[[], nn.Module], nbytes: int = 0):
        self.build, self.nbytes = build, nbytes


def place_module(m: nn.Module, device: str, dtype: torch.dtype) -> None:
    """``m`` to device/dtype, keeping the float32 islands it names (``float32_modules``)."""
    keep = m.float32_modules() if hasattr(m, "float32_modules") else []
    reduced = m.reduced_modules() if hasattr(m, "reduced_modules") else []
    precision.place(m, device, dtype, keep, channels_last(dtype, device), reduced)


class OneStepModel(nn.Module):
    """Stages: ``analysis``, ``codec`` (compress/decompress/y_shape), ``synthesis``,
    ``denoiser``, ``decoder`` -- modules or :class:`Lazy` ones. ``stride``: the image padding;
    ``planner(model, h, w, budget)``: the memory plan; ``float_modules``: which of the
    codec's submodules belong to the image path (placed on the device; the rest of the codec
    is the exact parameter path)."""

    STAGES = ("analysis", "codec", "synthesis", "denoiser", "decoder")
    coded_scale = FULL_SCALE  # the papers' models code every image at its own size

    def __init__(self, *, analysis, codec, synthesis, denoiser, decoder, stride: int,
                 planner: Callable[["OneStepModel", int, int, int], MemoryPlan],
                 codec_image_modules: Callable[[nn.Module], list[nn.Module]]):
        super().__init__()
        self._lazy: dict[str, Lazy] = {}
        for name, stage in zip(self.STAGES, (analysis, codec, synthesis, denoiser, decoder)):
            if isinstance(stage, Lazy):
                self._lazy[name] = stage  # resolved by __getattr__ on first use
            else:
                setattr(self, name, stage)
        self._stride = stride
        self._planner = planner
        self._codec_image_modules = codec_image_modules
        self._placement: tuple[str, torch.dtype] | None = None
        self._compile = False
        self.plan = MemoryPlan()  # whole image at once; the API sets one per image
        self.last_plan = ""
        self.progress = None
        self.last_timings: dict[str, float] = {}  # seconds per stage of the last compress or decompress

    def __getattr__(self, name: str):
        if name in OneStepModel.STAGES:
            lazy = self.__dict__.get("_lazy", {})
            if name in lazy and self._modules.get(name) is None:
                return self.load_stage(name)
        return super().__getattr__(name)

    def load_stage(self, name: str) -> nn.Module:
        """Build a lazy stage now (placed and, for the denoiser, compiled as asked)."""
        stage = self._lazy[name].build().eval()
        if self._placement is not None:
            place_module(stage, *self._placement)
        if name == "denoiser" and self._compile and hasattr(stage, "unet"):
            stage.unet = torch.compile(stage.unet, dynamic=True)
        self._modules[name] = stage  # a registered submodule from now on
        return stage

    def stage_loaded(self, name: str) -> bool:
        return self._modules.get(name) is not None

    @property
    def denoiser_loaded(self) -> bool:
        return self.stage_loaded("denoiser")

    # -- bookkeeping -----------------------------------------------------------------------

    @contextlib.contextmanager
    def timed(self, stage: str):
        """Wall time of one stage into ``last_timings`` (what the benchmarks report)."""
        t = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":  # kernels are asynchronous: count them in their stage
                torch.cuda.synchronize(self.device)
            self.last_timings[stage] = round(self.last_timings.get(stage, 0.0) + time.perf_counter() - t, 3)

    @property
    def stride(self) -> int:
        return self._stride

    def _probe(self) -> torch.Tensor:
        for name in ("analysis", "codec"):
            m = self._modules.get(name)
            if m is not None:
                for p in self._image_params(name, m):
                    return p
        return torch.empty(0)

    def _image_params(self, name: str, m: nn.Module):
        mods = self._codec_image_modules(m) if name == "codec" else [m]
        for mod in mods:
            yield from mod.parameters()

    @property
    def device(self) -> torch.device:
        return self._probe().device

    @property
    def dtype(self) -> torch.dtype:
        return self._probe().dtype

    def resident_bytes(self, decoding: bool) -> int:
        """Bytes of weights in memory while encoding or decoding (lazy stages estimated until loaded)."""
        own = sum(t.numel() * t.element_size() for t in list(self.parameters()) + list(self.buffers()))
        codec = self._modules.get("codec")
        exact = 8 * sum(p.numel() for m in codec.parameter_modules() for p in m.parameters()) if codec is not None else 0
        if not decoding:
            return own + exact
        pending = sum(lz.nbytes for name, lz in self._lazy.items() if not self.stage_loaded(name))
        return own + exact + pending

    def plan_memory(self, height: int, width: int, budget: int) -> MemoryPlan:
        return self._planner(self, height, width, budget)

    def place(self, device: str, dtype: torch.dtype) -> None:
        """Image-path stages to ``device``/``dtype``; the entropy-parameter path stays exact on CPU.

        Convolutions run channels-last (NHWC): oneDNN's and cuDNN's fast kernels for
        reduced precision want that layout (2-3x on this project's CPU, docs/performance.md).
        """
        self._placement = (device, dtype)
        codec = self._modules.get("codec")
        if codec is not None and hasattr(codec, "exact_device"):
            codec.exact_device = device  # the exact path's integer arithmetic is the same on a GPU
        for name in self.STAGES:
            m = self._modules.get(name)
            if m is None:
                continue
            for mod in (self._codec_image_modules(m) if name == "codec" else [m]):
                place_module(mod, device, dtype)

    def enable_compile(self) -> None:
        """torch.compile the denoiser's UNet when it loads (its shape varies only with the tile plan)."""
        self._compile = True

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if channels_last(x.dtype, x.device.type) else x

    _layout = layout  # the name the benchmarks use

    # -- the pipeline ------------------------------------------------------------------------

    @torch.no_grad()
    def compress(self, x01: torch.Tensor, rules: CodingRules = RULES) -> Compressed:
        x01 = self.layout(x01.to(self.device, self.dtype))
        self.last_timings = {}
        inputs = self.analysis(x01, self)
        del x01
        with self.timed(self.codec_label):
            return self.codec.compress(*inputs, rules=rules)

    def coding_rules(self, major: int) -> CodingRules:
        return rules_for_format(major)

    @torch.no_grad()
    def decompress(self, payload: bytes, symbol_crc: int, padded_hw: tuple[int, int],
                   rules: CodingRules = RULES) -> torch.Tensor:
        self.last_timings = {}
        with self.timed("entropy decoding"):
            y_hat = self.codec.decompress(payload, symbol_crc, self.y_shape(padded_hw), rules=rules)
        return self._reconstruct(y_hat)

    @torch.no_grad()
    def reconstruct(self, y_hat: torch.Tensor) -> torch.Tensor:
        """ŷ -> image in [0, 1] (synthesis, one denoising step, decoder)."""
        self.last_timings = {}
        return self._reconstruct(y_hat)

    def _reconstruct(self, y_hat: torch.Tensor) -> torch.Tensor:
        synthesis = self.synthesis  # loaded on first use: not the stage's time
        y = self.layout(y_hat.to(self.device, self.dtype))
        with self.timed(synthesis.label):
            l_t, r = synthesis(y, self)
        del y
        denoiser = self.denoiser
        with self.timed("UNet"):
            l0_minus_r = denoiser(l_t, tile=self.plan.unet_tile, overlap=self.plan.unet_overlap,
                                  batch=self.plan.unet_batch, progress=self.progress)
        del l_t
        decoder = self.decoder
        with self.timed(decoder.label):
            x = decoder(l0_minus_r, r, self)
        del l0_minus_r, r
        return (x.float().clamp_(-1, 1) + 1) / 2  # in bf16, x + 1 would round to steps of 1/128

    # Overridden per family where the entropy coder's own label differs.
    codec_label = "latent codec (g_a, h_a, entropy encoding)"

    def y_shape(self, padded_hw: tuple[int, int]) -> tuple[int, int]:
        return self.codec.y_shape(padded_hw)
