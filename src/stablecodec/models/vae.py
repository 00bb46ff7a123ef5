"""The SD-Turbo VAE's encoder and decoder at any resolution (paper Sec. 3.4, supp. A).

Wraps a diffusers ``AutoencoderKL`` (its encoder carries the merged LoRA) and runs it
layer by layer over horizontal bands of the image instead of calling its ``forward``:

* every GroupNorm uses statistics accumulated over the whole image (sum and sum of
  squares per group, in float64, over every band), never a band's own, so banding does
  not change what the network computes;
* each band is read with the halo its convolutions need (two rows for a ResNet block) and
  only the exact rows are kept, so convolutions are exact as well; a ResNet block whose
  second normalisation needs statistics of an intermediate result makes two passes
  (statistics, then output), recomputing its first convolution;
* the mid-block self-attention is the one global operation: when the 1/8 latent is
  larger than ``attn_tile`` it attends within overlapping 2D tiles (each position takes
  its output from the tile whose core holds it) -- the only place where the result
  depends on the tiling;
* activations of one resolution live in one buffer, updated in place where the channel
  count does not change; when the memory plan says so, the buffers are memory-mapped
  temporary files whose pages are released band by band (out-of-core), which keeps the
  process's resident memory within the budget at any size.

With ``band=None`` and no attention tiling this computes what ``vae.encode(x)`` /
``vae.decode(z)`` compute, up to float summation order.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import tempfile

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass
class VAEPlan:
    band_elems: int | None = None  # max elements (rows x width x channels) of a band; None: whole image
    attn_tile: int = 64  # latent px of an attention window's core
    attn_overlap: int = 16  # extra latent px of context around it
    spill: bool = False  # keep full-resolution activations in memory-mapped temporary files


class Level:
    """A (1, C, H, W) activation buffer, in RAM or in a memory-mapped temporary file."""

    def __init__(self, c: int, h: int, w: int, dtype: torch.dtype, device, spill: bool):
        self.shape = (1, c, h, w)
        self._mm = None
        if spill and torch.device(device).type == "cpu":
            itemsize = torch.empty((), dtype=dtype).element_size()
            nbytes = c * h * w * itemsize
            fd, path = tempfile.mkstemp(prefix="stablecodec-", suffix=".act")
            try:
                os.ftruncate(fd, nbytes)
                self._mm = mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED)
            finally:
                os.close(fd)
                os.unlink(path)  # the mapping keeps the data; nothing is left on disk
            self.t = torch.frombuffer(self._mm, dtype=dtype).view(self.shape)
            self._row_bytes = w * itemsize
            self._plane_bytes = h * w * itemsize
        else:
            self.t = torch.empty(self.shape, dtype=dtype, device=device)

    @property
    def height(self) -> int:
        return self.shape[2]

    def rows(self, r0: int, r1: int) -> torch.Tensor:
        return self.t[:, :, r0:r1]

    def release(self) -> None:
        """Drop this buffer's pages from the process (spilled buffers only; data is kept)."""
        if self._mm is not None:
            self._mm.madvise(mmap.MADV_DONTNEED)

    def release_rows(self, r0: int, r1: int) -> None:
        """Drop rows r0:r1 of every channel from the process (spilled buffers only).

        A mapped file's touched pages count in the process's resident memory until they are
        unmapped, so a pass that streams a whole buffer would otherwise hold all of it;
        released pages stay in the page cache (or on disk) and fault back in if read again.
        Only whole pages inside the rows are dropped."""
        if self._mm is None or r1 <= r0:
            return
        page = mmap.PAGESIZE
        for c in range(self.shape[1]):
            start = c * self._plane_bytes + r0 * self._row_bytes
            end = c * self._plane_bytes + r1 * self._row_bytes
            start, end = -(-start // page) * page, end // page * page
            if end > start:
                self._mm.madvise(mmap.MADV_DONTNEED, start, end - start)

    def close(self) -> None:
        self.t = None
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:  # a view is still alive somewhere; the GC will unmap it
                pass
            self._mm = None


def _bands(height: int, rows: int) -> list[tuple[int, int]]:
    return [(r, min(r + rows, height)) for r in range(0, height, rows)]


class _Affine:
    """GroupNorm with whole-image statistics, as a per-channel scale and shift (+ optional SiLU)."""

    def __init__(self, gn: nn.GroupNorm, mean: torch.Tensor, var: torch.Tensor, dtype, device):
        g = gn.num_groups
        c = gn.num_channels
        inv = torch.rsqrt(var + gn.eps)  # per group, float64
        scale = inv.repeat_interleave(c // g)
        shift = -mean.repeat_interleave(c // g) * scale
        w = gn.weight.detach().double().cpu() if gn.weight is not None else torch.ones(c, dtype=torch.float64)
        b = gn.bias.detach().double().cpu() if gn.bias is not None else torch.zeros(c, dtype=torch.float64)
        self.scale = (scale * w).to(device=device, dtype=dtype).view(1, -1, 1, 1)
        self.shift = (shift * w + b).to(device=device, dtype=dtype).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor, act: bool = True) -> torch.Tensor:
        y = torch.addcmul(self.shift, x, self.scale)
        return F.silu(y) if act else y


class _StatsAccumulator:
    def __init__(self, gn: nn.GroupNorm):
        self.gn = gn
        self.s1 = torch.zeros(gn.num_groups, dtype=torch.float64)
        self.s2 = torch.zeros(gn.num_groups, dtype=torch.float64)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        g = self.gn.num_groups
        v = x.detach().double().reshape(x.shape[0], g, -1)
        self.s1 += v.sum((0, 2)).cpu()
        self.s2 += (v * v).sum((0, 2)).cpu()
        self.n += v.shape[0] * v.shape[2]

    def affine(self, dtype, device) -> _Affine:
        mean = self.s1 / self.n
        var = (self.s2 / self.n - mean * mean).clamp_min(0.0)
        return _Affine(self.gn, mean, var, dtype, device)


class TiledVAE(nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    @property
    def config(self):
        return self.vae.config

    # -- public ---------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, x: torch.Tensor, plan: VAEPlan | None = None, progress=None) -> torch.Tensor:
        """x in [-1, 1] -> mode of the posterior (unscaled latent, 4 channels at 1/8)."""
        plan = plan or VAEPlan()
        if plan.band_elems is None and not self._needs_attn_tiles(x.shape[2] // 8, x.shape[3] // 8, plan):
            return self.vae.encode(x).latent_dist.mode()
        run = _Runner(plan, x.dtype, x.device, progress)
        enc = self.vae.encoder
        lvl = run.conv_from_tensor(enc.conv_in, x)
        for down in enc.down_blocks:
            for r in down.resnets:
                lvl = run.resnet(r, lvl)
            if down.downsamplers:
                lvl = run.downsample(down.downsamplers[0], lvl)
        lvl = self._mid(run, enc.mid_block, lvl)
        moments = run.norm_act_conv(enc.conv_norm_out, enc.conv_out, lvl)
        if self.vae.quant_conv is not None:
            moments = self.vae.quant_conv(moments)
        return moments[:, : moments.shape[1] // 2]

    @torch.no_grad()
    def decode(self, latent: torch.Tensor, plan: VAEPlan | None = None, progress=None) -> torch.Tensor:
        """Unscaled latent -> image in about [-1, 1]."""
        plan = plan or VAEPlan()
        if plan.band_elems is None and not self._needs_attn_tiles(latent.shape[2], latent.shape[3], plan):
            return self.vae.decode(latent).sample
        run = _Runner(plan, latent.dtype, latent.device, progress)
        dec = self.vae.decoder
        z = self.vae.post_quant_conv(latent) if self.vae.post_quant_conv is not None else latent
        lvl = run.conv_from_tensor(dec.conv_in, z)
        lvl = self._mid(run, dec.mid_block, lvl)
        for up in dec.up_blocks:
            for r in up.resnets:
                lvl = run.resnet(r, lvl)
            if up.upsamplers:
                lvl = run.upsample(up.upsamplers[0], lvl)
        return run.norm_act_conv(dec.conv_norm_out, dec.conv_out, lvl)

    # -- helpers ----------------------------------------------------------------------------

    @staticmethod
    def _needs_attn_tiles(h: int, w: int, plan: VAEPlan) -> bool:
        return h > plan.attn_tile + 2 * plan.attn_overlap or w > plan.attn_tile + 2 * plan.attn_overlap

    def _mid(self, run: "_Runner", mid, lvl: Level) -> Level:
        lvl = run.resnet(mid.resnets[0], lvl)
        for attn, res in zip(mid.attentions, mid.resnets[1:]):
            if attn is not None:
                lvl = run.attention(attn, lvl)
            lvl = run.resnet(res, lvl)
        return lvl


class _Runner:
    """Banded execution of diffusers VAE layers (see the module docstring)."""

    def __init__(self, plan: VAEPlan, dtype, device, progress):
        self.plan, self.dtype, self.device, self.progress = plan, dtype, device, progress

    def _rows(self, lvl_or_shape) -> int:
        _, c, h, w = lvl_or_shape.shape if hasattr(lvl_or_shape, "shape") else lvl_or_shape
        if self.plan.band_elems is None:
            return h
        return max(4, self.plan.band_elems // max(1, c * w))

    def _new(self, c: int, h: int, w: int) -> Level:
        return Level(c, h, w, self.dtype, self.device, self.plan.spill)

    @staticmethod
    def _replace(src: Level, out: Level) -> Level:
        """``out`` supersedes ``src``: free the input, drop the output's resident pages."""
        src.close()
        out.release()
        return out

    def _tick(self) -> None:
        if self.progress is not None:
            self.progress(1)

    # whole-image statistics of a buffer
    def stats(self, gn: nn.GroupNorm, lvl: Level) -> _Affine:
        acc = _StatsAccumulator(gn)
        for r0, r1 in _bands(lvl.height, self._rows(lvl)):
            acc.add(lvl.rows(r0, r1))
            lvl.release_rows(r0, r1)
        lvl.release()
        return acc.affine(self.dtype, self.device)

    def conv_from_tensor(self, conv: nn.Conv2d, x: torch.Tensor) -> Level:
        """A stride-1 'same' convolution of an in-memory tensor into a new buffer."""
        _, _, h, w = x.shape
        out = self._new(conv.out_channels, h, w)
        k = conv.kernel_size[0] // 2
        for r0, r1 in _bands(h, self._rows(out.shape)):
            a0, a1 = max(0, r0 - k), min(h, r1 + k)
            y = conv(x[:, :, a0:a1])
            out.rows(r0, r1).copy_(y[:, :, r0 - a0 : r1 - a0])
            out.release_rows(r0, r1)
        out.release()
        return out

    def resnet(self, block, src: Level) -> Level:
        _, cin, h, w = src.shape
        cout = block.conv2.out_channels
        in_place = cin == cout and block.conv_shortcut is None
        dst = src if in_place else self._new(cout, h, w)
        rows = self._rows((1, max(cin, cout), h, w))
        n1 = self.stats(block.norm1, src)
        acc = _StatsAccumulator(block.norm2)
        for r0, r1 in _bands(h, rows):  # pass A: statistics of conv1's output
            a0, a1 = max(0, r0 - 1), min(h, r1 + 1)
            hid = block.conv1(n1(src.rows(a0, a1)))
            acc.add(hid[:, :, r0 - a0 : r1 - a0])
            src.release_rows(a0, a1)
        src.release()
        n2 = acc.affine(self.dtype, self.device)
        saved = None  # in place: the rows above the band as they were before being overwritten
        for r0, r1 in _bands(h, rows):  # pass B: the block's output
            a0, a1 = max(0, r0 - 2), min(h, r1 + 2)
            if saved is not None:
                x = torch.cat([saved, src.rows(r0, a1)], dim=2)
            else:
                x = src.rows(a0, a1)
            hid = block.conv2(n2(block.conv1(n1(x))))
            res = x[:, :, r0 - a0 : r1 - a0]
            if block.conv_shortcut is not None:
                res = block.conv_shortcut(res)
            out = (res + hid[:, :, r0 - a0 : r1 - a0]) / block.output_scale_factor
            if in_place:
                saved = src.rows(max(r0, r1 - 2), r1).clone()
            dst.rows(r0, r1).copy_(out)
            src.release_rows(a0, a1)  # in place, dst is src and these rows include r0:r1
            if not in_place:
                dst.release_rows(r0, r1)
            self._tick()
        dst.release()
        if not in_place:
            src.close()
        return dst

    def upsample(self, up, src: Level) -> Level:
        """Nearest x2 then a 3x3 convolution, band by band."""
        _, c, h, w = src.shape
        out = self._new(up.conv.out_channels, 2 * h, 2 * w)
        for r0, r1 in _bands(2 * h, self._rows(out.shape)):
            l0, l1 = max(0, (r0 - 1) // 2), min(h, r1 // 2 + 1)
            y = up.conv(F.interpolate(src.rows(l0, l1), scale_factor=2.0, mode="nearest"))
            out.rows(r0, r1).copy_(y[:, :, r0 - 2 * l0 : r1 - 2 * l0])
            src.release_rows(l0, l1)
            out.release_rows(r0, r1)
            self._tick()
        return self._replace(src, out)

    def downsample(self, down, src: Level) -> Level:
        """diffusers' Downsample2D with padding 0: zero-pad right and bottom, 3x3 stride 2."""
        _, c, h, w = src.shape
        conv = down.conv
        ho, wo = (h - 2) // 2 + 1, (w - 2) // 2 + 1  # what the conv gives on the padded (h+1, w+1) input
        out = self._new(conv.out_channels, ho, wo)
        for o0, o1 in _bands(ho, self._rows(out.shape)):
            i0, i1 = 2 * o0, 2 * o1 + 1
            x = src.rows(i0, min(h, i1))
            x = F.pad(x, (0, 1, 0, i1 - min(h, i1)))
            out.rows(o0, o1).copy_(conv(x))
            src.release_rows(i0, min(h, i1))
            out.release_rows(o0, o1)
            self._tick()
        return self._replace(src, out)

    def attention(self, attn, src: Level) -> Level:
        """Self-attention with whole-image GroupNorm statistics, in windows when the latent is large."""
        _, c, h, w = src.shape
        norm = self.stats(attn.group_norm, src)
        core, ov = self.plan.attn_tile, self.plan.attn_overlap
        windowed = h > core + 2 * ov or w > core + 2 * ov
        # Outputs go to a fresh buffer: windows read their context from the unmodified input.
        out = self._new(c, h, w)
        boxes = [(t, l, min(t + core, h), min(l + core, w)) for t in range(0, h, core) for l in range(0, w, core)] if windowed else [(0, 0, h, w)]
        for t, l, b, r in boxes:
            t0, l0, b0, r0 = (max(0, t - ov), max(0, l - ov), min(h, b + ov), min(w, r + ov)) if windowed else (t, l, b, r)
            x = src.t[:, :, t0:b0, l0:r0]
            y = _attend(attn, norm(x, act=False))
            res = x + y if attn.residual_connection else y
            res = res / attn.rescale_output_factor
            out.t[:, :, t:b, l:r] = res[:, :, t - t0 : b - t0, l - l0 : r - l0]
            if r == w:  # a row of windows is done
                src.release_rows(t0, b0)
                out.release_rows(t, b)
            self._tick()
        return self._replace(src, out)

    def norm_act_conv(self, gn: nn.GroupNorm, conv: nn.Conv2d, src: Level) -> torch.Tensor:
        """GroupNorm, SiLU and a 3x3 convolution into an ordinary tensor (few channels)."""
        _, c, h, w = src.shape
        norm = self.stats(gn, src)
        out = torch.empty((1, conv.out_channels, h, w), dtype=self.dtype, device=self.device)
        k = conv.kernel_size[0] // 2
        for r0, r1 in _bands(h, self._rows(src)):
            a0, a1 = max(0, r0 - k), min(h, r1 + k)
            y = conv(norm(src.rows(a0, a1)))
            out[:, :, r0:r1] = y[:, :, r0 - a0 : r1 - a0]
            src.release_rows(a0, a1)
        src.release()
        src.close()
        return out


def _attend(attn, x: torch.Tensor) -> torch.Tensor:
    """diffusers' Attention on already-normalised (1, C, h, w), without its residual."""
    b, c, h, w = x.shape
    seq = x.reshape(b, c, h * w).transpose(1, 2)
    q, k, v = attn.to_q(seq), attn.to_k(seq), attn.to_v(seq)
    heads = attn.heads
    d = q.shape[-1] // heads
    q, k, v = (t.view(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    o = F.scaled_dot_product_attention(q, k, v)
    o = o.transpose(1, 2).reshape(b, -1, heads * d)
    o = attn.to_out[0](o)
    return o.transpose(1, 2).reshape(b, c, h, w)
