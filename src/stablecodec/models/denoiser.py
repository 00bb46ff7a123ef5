"""One-step denoising with the SD-Turbo UNet (paper Eq. 3).

The latent codec's synthesis output l_T (320 channels at 1/8) goes whole into the UNet,
whose first convolution the released checkpoints replace by a 320 -> 320 one; with
epsilon = UNet(l_T, t = 999, prompt), the clean latent is

    l_0 = (l_T[:, :4] - sqrt(1 - abar_999) * epsilon) / sqrt(abar_999) + r

with abar from the scheduler's config and r the auxiliary decoder's residual. This is
what a one-step DDPM ``step()`` at t = 999 returns, minus its 1e-10-scale sampler noise:
decoding is deterministic. Large latents run in overlapping tiles blended with a
Gaussian weight map (supplementary A), see :mod:`stablecodec.tiling`.

At reduced precision the UNet's full-resolution level and output layers stay in float32
(:meth:`OneStepDenoiser.float32_modules`), so epsilon comes out in float32.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from ..tiling import Box, LatentAggregator, gaussian_weight, plan_tiles_2d
from .attention import AttnProcessor
from .precision import is_channels_last, run_in_own_dtype

TIMESTEP = 999


def alpha_bar(beta_start: float = 0.00085, beta_end: float = 0.012, steps: int = 1000, t: int = TIMESTEP,
              schedule: str = "scaled_linear") -> float:
    """abar_t of a DDPM schedule, in float32 as diffusers computes it."""
    if schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float32) ** 2
    elif schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float32)
    else:
        raise ValueError(f"unsupported beta_schedule {schedule!r}")
    return float(torch.cumprod(1.0 - betas, dim=0)[t])


class _UNetStage(nn.Module):
    """What both families' UNet stages share: the attention core, transformer outputs in
    the network's layout, and the float32 islands at reduced precision."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet
        unet.set_attn_processor(AttnProcessor())
        for block in unet.modules():
            if hasattr(block, "_get_output_for_continuous_inputs") and hasattr(block, "use_linear_projection"):
                block._get_output_for_continuous_inputs = functools.partial(_transformer_output, block)
        for i, module in enumerate(self.float32_modules()):
            run_in_own_dtype(module, hand_back=i == 0)
        for module in self.reduced_modules():
            run_in_own_dtype(module, hand_back=True)

    def float32_modules(self) -> list[nn.Module]:
        """What stays float32 at reduced precision: the UNet's full-resolution level and output.

        (Measured for StableCodec; AEIC's UNet is the same network without time embedding and
        cross-attention, and keeps the same islands.)

        Measured with the full-size architecture at 768x512 in bf16 (docs/performance.md):
        the UNet's output is 1.34 % (relative L2) off float32. Taken one at a time, its first
        down block and its last up block in float32 reduce that most (to 1.15 % and 1.00 %);
        together, to 0.74 %, for ~0.9 s more than the UNet's 5 s. Both run at the latent's
        full size, and their skip connections and output reach the result through no other
        block. The output norm and convolution cost nothing and spare epsilon a last
        rounding. The first block hands its outputs back in the network's dtype; the others
        pass float32 on to the next.
        """
        u = self.unet
        return [u.down_blocks[0], u.up_blocks[-1], u.conv_norm_out, u.conv_out]

    def reduced_modules(self) -> list[nn.Module]:
        """Inside those, what runs in the working precision after all: each transformer block's
        feed-forward layers (its largest linear layers) and self-attention (6144 tokens at
        768x512, the level's costliest operation; :mod:`.attention` runs it at bf16 GEMM
        speed). Both add to a float32 residual stream, and in bf16 they leave the UNet's
        output as close to float32 as before: 0.646 % with neither reduced, 0.662 % with
        the feed-forward layers, 0.657 % with both, for ~1.7 s less (measured, 768x512). Its
        cross-attention (0.672 %), projections in and out (0.80 %) or the ResNets' first
        convolutions (0.79 %) in bf16 would cost accuracy.
        """
        return [m for b in self.float32_modules()[:2] for n, m in b.named_modules()
                if n.rsplit(".", 1)[-1] in ("ff", "attn1")]


class OneStepDenoiser(_UNetStage):
    """epsilon-prediction at t = 999 turned into the clean latent (Eq. 3, without r)."""

    def __init__(self, unet: nn.Module, prompt_embedding: torch.Tensor, abar: float):
        super().__init__(unet)
        self.register_buffer("prompt_embedding", prompt_embedding.detach().clone(), persistent=False)
        self.abar = abar
        self.latent_channels = unet.config.out_channels

    def _x0(self, l_t: torch.Tensor) -> torch.Tensor:
        prompt = self.prompt_embedding.to(l_t.device, l_t.dtype).expand(l_t.shape[0], -1, -1)
        t = torch.full((l_t.shape[0],), TIMESTEP, device=l_t.device, dtype=torch.long)
        eps = self.unet(l_t, t, encoder_hidden_states=prompt).sample
        # Eq. 3 in float32 whatever the network's precision: at t = 999 it subtracts two
        # near-equal terms and scales the difference up by 1/sqrt(abar) ~ 15, so it should
        # not add reduced-precision roundings of its own. The caller casts once.
        l_t, eps = l_t[:, : self.latent_channels].float(), eps.float()
        return (l_t - math.sqrt(1.0 - self.abar) * eps) / math.sqrt(self.abar)

    @torch.no_grad()
    def forward(self, l_t: torch.Tensor, tile: int | None = None, overlap: int = 32, batch: int = 1,
                progress=None) -> torch.Tensor:
        """l_0 - r for the whole latent (float32); tiles of ``tile`` latent px when it is larger."""
        h, w = l_t.shape[2:]
        if tile is None or (h <= tile and w <= tile):
            return self._x0(l_t)
        boxes = plan_tiles_2d(h, w, tile, overlap)
        agg = LatentAggregator((l_t.shape[0], self.latent_channels, h, w), device=l_t.device, dtype=torch.float32)
        for i in range(0, len(boxes), batch):
            chunk = boxes[i : i + batch]
            x = torch.cat([l_t[:, :, b.top : b.bottom, b.left : b.right] for b in chunk])
            out = self._x0(x)
            for j, b in enumerate(chunk):
                agg.add(b, out[j : j + 1], gaussian_weight(b.height, b.width, device=l_t.device))
            if progress is not None:
                progress(len(chunk))
        return agg.result()


def _transformer_output(block, hidden_states: torch.Tensor, residual: torch.Tensor, batch_size: int, height: int,
                        width: int, inner_dim: int) -> torch.Tensor:
    """diffusers' ``Transformer2DModel._get_output_for_continuous_inputs``, with the output in
    the residual's memory format instead of always NCHW.

    diffusers ends with ``.permute(0, 3, 1, 2).contiguous()``: for a channels-last network
    that turns every transformer's output NCHW, and with it the skip connections and
    concatenations after it, so each following convolution first reorders its input
    (26 ms for one 960-channel input at 768x512 in the float32 level; ~150 ms of a 2.8 s
    bf16 UNet, measured). The values are the same; for an NCHW network (float32 on CPU)
    this is diffusers' computation exactly.
    """
    fmt = torch.channels_last if is_channels_last(residual) else torch.contiguous_format
    if not block.use_linear_projection:
        hidden_states = hidden_states.reshape(batch_size, height, width, inner_dim).permute(0, 3, 1, 2)
        hidden_states = block.proj_out(hidden_states.contiguous(memory_format=fmt))
    else:
        hidden_states = block.proj_out(hidden_states)
        hidden_states = hidden_states.reshape(batch_size, height, width, inner_dim).permute(0, 3, 1, 2)
        hidden_states = hidden_states.contiguous(memory_format=fmt)
    return hidden_states + residual


class PlainUNet(_UNetStage):
    """AEIC's use of the SD-Turbo UNet: a plain network, l_T (320 channels) -> e = l_0 - r.

    No timestep, no prompt, no scheduler: the time embedding, every ResNet's time
    projection and every transformer block's cross-attention are removed (``prune``), and
    the forward pass below runs what is left in diffusers' order -- conv_in; down blocks
    (ResNet, transformer, ..., downsampler), every output kept as a skip; mid (ResNet,
    transformer, ResNet); up blocks (concatenate a skip, ResNet, transformer, ...,
    upsampler); GroupNorm, SiLU, conv_out (``../shared/reference/aeic-network.md``).

    Large latents run in AEIC's own tiles (``tile``/``overlap``, latent px), laid out and
    blended as its research code does (:func:`aeic_tiles`, :func:`aeic_tile_weight`).
    """

    def __init__(self, unet: nn.Module):
        prune(unet)
        super().__init__(unet)
        self.latent_channels = unet.conv_out.out_channels

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        # diffusers' own block forwards with no time embedding and no prompt: what its
        # UNet forward does after the embeddings (the float32 islands hook those blocks).
        u = self.unet
        x = u.conv_in(x)
        skips: tuple[torch.Tensor, ...] = (x,)
        for down in u.down_blocks:
            kw = {"encoder_hidden_states": None} if getattr(down, "has_cross_attention", False) else {}
            x, res = down(hidden_states=x, temb=None, **kw)
            skips += res
        x = u.mid_block(x, None, encoder_hidden_states=None)
        for up in u.up_blocks:
            n = len(up.resnets)
            res, skips = skips[-n:], skips[:-n]
            kw = {"encoder_hidden_states": None} if getattr(up, "has_cross_attention", False) else {}
            x = up(hidden_states=x, res_hidden_states_tuple=res, temb=None, **kw)
        x = u.conv_act(u.conv_norm_out(x))
        return u.conv_out(x).float()

    @torch.no_grad()
    def forward(self, l_t: torch.Tensor, tile: int | None = None, overlap: int = 32, batch: int = 1,
                progress=None) -> torch.Tensor:
        h, w = l_t.shape[2:]
        if tile is None or h * w <= tile * tile:  # AEIC tiles only latents of more than tile^2 px
            return self._run(l_t)
        t = min(tile, h, w)
        rows, cols = aeic_tiles(h, t, overlap), aeic_tiles(w, t, overlap)
        agg = LatentAggregator((l_t.shape[0], self.latent_channels, h, w), device=l_t.device, dtype=torch.float32)
        weight = aeic_tile_weight(t, device=l_t.device)
        boxes = [(r, c) for r in rows for c in cols]
        for i in range(0, len(boxes), batch):
            chunk = boxes[i : i + batch]
            x = torch.cat([l_t[:, :, r : r + t, c : c + t] for r, c in chunk])
            out = self._run(x)
            for j, (r, c) in enumerate(chunk):
                agg.add(Box(r, c, r + t, c + t), out[j : j + 1], weight)
            if progress is not None:
                progress(len(chunk))
        return agg.result()


def prune(unet: nn.Module) -> nn.Module:
    """Remove what AEIC's UNet does not use: time embedding, time projections, cross-attention."""
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.resnet import ResnetBlock2D

    unet.time_proj = None
    unet.time_embedding = None
    for m in unet.modules():
        if isinstance(m, ResnetBlock2D):
            m.time_emb_proj = None
        elif isinstance(m, BasicTransformerBlock):
            m.attn2 = None
            m.norm2 = None
    return unet


def aeic_tiles(size: int, tile: int, overlap: int) -> list[int]:
    """Tile starts along one axis as AEIC lays them out: the fewest tiles with
    (n - 1)(tile - overlap) + tile >= size, tile k at k(tile - overlap), the last flush with the end."""
    if size <= tile:
        return [0]
    n = 1
    while (n - 1) * (tile - overlap) + tile < size:
        n += 1
    return [k * (tile - overlap) for k in range(n - 1)] + [size - tile]


def aeic_tile_weight(tile: int, var: float = 0.01, device=None) -> torch.Tensor:
    """AEIC's Gaussian tile weight, (1, 1, tile, tile): g(x; (tile - 1)/2) g(y; tile/2) -- the
    two axes centred differently, as its research code does (normalised by the summed
    weights, only their ratios matter)."""
    x = torch.arange(tile, dtype=torch.float32, device=device)

    def g(c: float) -> torch.Tensor:
        return torch.exp(-((x - c) ** 2) / (tile * tile) / (2 * var)) / math.sqrt(2 * math.pi * var)

    return (g(tile / 2)[:, None] * g((tile - 1) / 2)[None, :])[None, None]
