"""The default model: the paper's latent codec over a small learned pixel autoencoder.

The released StableCodec weights are several GB and live behind a model hub; this model
ships inside the package (``weights/lite.safetensors``) so a fresh install compresses
photos with no download. It keeps the paper's latent codec unchanged in structure
(``g_a``/``h_a``/``h_s``, the four-step quadtree entropy model with LRP, ``g_s``; Eq. 4-7)
at narrower widths and y at 1/16 instead of 1/64 (a PSNR codec at up to 0.1 bpp needs the
finer latent, and it trains far faster from scratch), replaces the SD-Turbo VAE and ELIC
encoder with a small analysis CNN (image -> 1/8 features) and the UNet plus VAE decoder
with a small synthesis CNN (1/8 features -> image). There is no diffusion step: it is
trained for MSE, so it gives the fidelity end of the paper's trade-off. Several rates
share one network through per-channel gain vectors on y and z (Cui et al., "Asymmetric
gained deep image compression", CVPR 2021); each rate is a named model in the registry.
Trained on CPU by ``scripts/train_default.py``.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..container import FULL_SCALE
from ..tiling import MemoryPlan, plan_lite, run_windows
from .blocks import BasicBlock, Downsample, Upsample
from .latent_codec import FORMAT_RULES, RULES_MAJOR, CodingRules, LatentCodec, LatentCodecConfig, rules_for_format


@dataclasses.dataclass(frozen=True)
class LiteConfig:
    mid: int = 96  # channels at 1/4
    width: int = 128  # channels at 1/8, the latent codec's input and output
    codec: LatentCodecConfig = LatentCodecConfig(
        sd_channels=128,
        aux_channels=0,
        pre1_channels=160,
        analysis=(160,),
        context_mult=2,
        context_depth=1,
        synthesis=(160, 128),
        aux_decoder=(),
        rates=5,
    )
    # The exact numerics of the entropy parameters under format 2.x ("1": V1 and means on
    # the 2**-8 grid, format 1.x's rules; "2": V2). Format 2.0 brought V2 so that
    # StableCodec's files agree with the official float code; this model has no official
    # code to agree with, only itself on other machines, which V1 gives at half V2's
    # matrix work (V2 took its encode + decode of 768x512 past 3 s, docs/performance.md).
    # Weights files written before this field existed coded with V2 and keep it
    # (weights.lite reads a missing field as "2").
    entropy_numerics: str = "1"
    # BasicBlocks added to the pixel synthesis after its block at 1/8 and after its block
    # at 1/4: a grown network (scripts/train_default.py --grow starts them as identities,
    # so growing keeps what the network had learnt). Files without the field have none.
    synthesis_extra: tuple[int, int] = (0, 0)

    @classmethod
    def from_dict(cls, raw: dict) -> LiteConfig:
        """The config from its JSON form (``dataclasses.asdict``: tuples became lists)."""
        raw = dict(raw)
        codec = LatentCodecConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.pop("codec").items()})
        return cls(codec=codec, **{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})

    def __post_init__(self) -> None:
        extra = tuple(self.synthesis_extra)
        if len(extra) != 2 or any(not isinstance(n, int) or n < 0 for n in extra):
            raise ValueError(f"synthesis_extra must be two counts >= 0 (at 1/8, at 1/4), got {self.synthesis_extra!r}")
        object.__setattr__(self, "synthesis_extra", extra)
        if self.codec.sd_channels != self.width or self.codec.synthesis[-1] != self.width:
            raise ValueError("the latent codec must take and return `width` channels")
        if self.entropy_numerics not in ("1", "2"):
            raise ValueError(f"entropy_numerics must be '1' or '2', got {self.entropy_numerics!r}")


class PixelAnalysis(nn.Module):
    """Image in [0, 1] -> features at 1/8."""

    def __init__(self, mid: int, width: int):
        super().__init__()
        self.stem = nn.Conv2d(48, mid, 3, padding=1)
        self.block1 = BasicBlock(mid)
        self.down = Downsample(mid, width)
        self.block2 = BasicBlock(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block2(self.down(self.block1(F.gelu(self.stem(F.pixel_unshuffle(x - 0.5, 4))))))


class PixelSynthesis(nn.Module):
    """Features at 1/8 -> image (about [0, 1]; the caller clamps)."""

    def __init__(self, mid: int, width: int, extra: tuple[int, int] = (0, 0)):
        super().__init__()
        self.block1 = BasicBlock(width)
        self.up = Upsample(width, mid)
        self.block2 = BasicBlock(mid)
        self.head = nn.Conv2d(mid, 48, 3, padding=1)
        # Only when present, so the state-dict keys of an ungrown network stay as shipped.
        if extra[0]:
            self.extra1 = nn.Sequential(*(BasicBlock(width) for _ in range(extra[0])))
        if extra[1]:
            self.extra2 = nn.Sequential(*(BasicBlock(mid) for _ in range(extra[1])))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block1(x)
        if hasattr(self, "extra1"):
            x = self.extra1(x)
        x = self.block2(self.up(x))
        if hasattr(self, "extra2"):
            x = self.extra2(x)
        return F.pixel_shuffle(self.head(x), 4) + 0.5

    def extra_blocks(self) -> list[BasicBlock]:
        return [*getattr(self, "extra1", ()), *getattr(self, "extra2", ())]


class LiteNet(nn.Module):
    """The whole default network; ``forward`` is its training pass."""

    def __init__(self, cfg: LiteConfig = LiteConfig()):
        super().__init__()
        self.cfg = cfg
        self.analysis = PixelAnalysis(cfg.mid, cfg.width)
        self.codec = LatentCodec(cfg.codec)
        self.synthesis = PixelSynthesis(cfg.mid, cfg.width, cfg.synthesis_extra)

    @property
    def stride(self) -> int:
        """Image sizes are padded to a multiple of this (the hyper-latent's stride)."""
        return 8 * self.cfg.codec.stride * 4

    def forward(self, x: torch.Tensor, rate: torch.Tensor, noise: bool = False):
        y_hat, y_lik, z_lik = self.codec(self.analysis(x), None, rate, noise=noise)
        return self.synthesis(self.codec.g_s(y_hat)), y_lik, z_lik


class LiteModel(nn.Module):
    """The default network bound to one rate point, with the composite model contract."""

    def __init__(self, net: LiteNet, rate: int, coded_scale: int = FULL_SCALE):
        super().__init__()
        if not 0 <= rate < net.cfg.codec.rates:
            raise ValueError(f"rate must be in [0, {net.cfg.codec.rates}), got {rate}")
        if not 1 <= coded_scale <= FULL_SCALE:
            raise ValueError(f"coded_scale must be in 1..{FULL_SCALE} (sixteenths of a side), got {coded_scale}")
        self.net = net
        self.rate = rate
        # The rate point's coded size (the weights file's "coded_scale", chosen by
        # scripts/export_default.py on training photos): lite-1 at 0.006 bpp does ~3 dB
        # better on kodak/ as a half-size image at a higher rate, upsampled, than at full size.
        self.coded_scale = coded_scale
        self.plan = MemoryPlan()
        self.last_plan = ""
        self.progress = None

    @property
    def codec(self) -> LatentCodec:
        return self.net.codec

    @property
    def stride(self) -> int:
        return self.net.stride

    @property
    def device(self) -> torch.device:
        return self.net.analysis.stem.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.net.analysis.stem.weight.dtype

    def place(self, device: str, dtype: torch.dtype) -> None:
        """Image-path modules to ``device``/``dtype``; the entropy-parameter path stays exact on CPU."""
        c = self.net.codec
        for m in (self.net.analysis, self.net.synthesis, c.g_a, c.g_s, c.h_a):
            m.to(device=device, dtype=dtype)

    def resident_bytes(self, decoding: bool) -> int:
        return sum(p.numel() * p.element_size() for p in self.parameters())

    def plan_memory(self, height: int, width: int, budget: int) -> MemoryPlan:
        return plan_lite(height, width, budget=budget, weights=self.resident_bytes(True))

    # Receptive radius of analysis + g_a is 196 px, of g_s + synthesis 13.75 y px (220 px);
    # each extra BasicBlock (11-tap band, then 3x3) adds 6 px at its scale: 3 y px at 1/8,
    # 1.5 at 1/4.
    ENCODER_HALO = 256

    @property
    def DECODER_HALO(self) -> int:  # upper case: a constant per network, like ENCODER_HALO
        e8, e4 = self.net.cfg.synthesis_extra
        return max(16, math.ceil(13.75 + 3 * e8 + 1.5 * e4))

    def _encode_features(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net.codec.g_a(self.net.analysis(x))
        return y.float() * self.net.codec.gain_y[self.rate].detach().float()[None, :, None, None].to(y.device)

    @torch.no_grad()
    def compress(self, x01: torch.Tensor):
        x = x01.to(self.device, self.dtype)
        w = self.plan.encoder_window
        y = self._encode_features(x) if w is None else run_windows(self._encode_features, x, w, self.ENCODER_HALO, down=16)
        from .latent_codec import Y_LIMIT

        return self.net.codec.compress_y(y.to("cpu", torch.float32).clamp(-Y_LIMIT, Y_LIMIT), self.rate,
                                         self.coding_rules(RULES_MAJOR))

    def coding_rules(self, major: int) -> CodingRules:
        """The rules of this model's payloads in a file of format ``major``.x (see ``LiteConfig``)."""
        if major >= 2 and self.net.cfg.entropy_numerics == "1":
            return FORMAT_RULES[1]
        return rules_for_format(major)

    @torch.no_grad()
    def decompress(self, payload: bytes, symbol_crc: int, padded_hw: tuple[int, int],
                   rules: CodingRules | None = None) -> torch.Tensor:
        """``rules``: the file's (:meth:`coding_rules`); by default what :meth:`compress` writes."""
        y_shape = self.codec.y_shape((padded_hw[0] // 8, padded_hw[1] // 8))
        rules = self.coding_rules(RULES_MAJOR) if rules is None else rules
        y_hat = self.codec.decompress(payload, symbol_crc, y_shape, self.rate, rules)
        return self.reconstruct(y_hat)

    @torch.no_grad()
    def reconstruct(self, y_hat: torch.Tensor) -> torch.Tensor:
        y = self.codec.dequantize(y_hat, self.rate).to(self.device, self.dtype)
        dec = lambda t: self.net.synthesis(self.codec.g_s(t))  # noqa: E731
        w = self.plan.synthesis_window
        x = dec(y) if w is None else run_windows(dec, y, w, self.DECODER_HALO, up=16)
        return x.clamp_(0, 1).float()
