"""The SD-Turbo VAE's encoder and decoder at any resolution (paper Sec. 3.4, supp. A).

Wraps a diffusers ``AutoencoderKL`` (its encoder carries the merged LoRA) and runs it
layer by layer over horizontal bands of the image instead of calling its ``forward``:

* every GroupNorm uses statistics accumulated over the whole image (sum and sum of
  squares per group: float32 within chunks of at most 4 M elements, float64 across
  chunks and bands), never a band's own, so banding does not change what the network
  computes;
* each band is read with the halo its convolutions need (two rows for a ResNet block) and
  only the exact rows are kept, so convolutions are exact as well; a ResNet block whose
  second normalisation needs statistics of an intermediate result makes two passes
  (statistics, then output), recomputing its first convolution unless one band covers
  the image;
* the mid-block self-attention is the one global operation: when the 1/8 latent is
  larger than ``attn_tile`` it attends within overlapping 2D tiles (each position takes
  its output from the tile whose core holds it) -- the only place where the result
  depends on the tiling;
* activations of one resolution live in one buffer, updated in place where the channel
  count does not change; when the memory plan says so, the buffers are temporary files
  read and written one band at a time (out-of-core), which keeps the process's resident
  memory within the budget at any size.

With ``band=None`` and no attention tiling this computes what ``vae.encode(x)`` /
``vae.decode(z)`` compute, up to float summation order.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile

import torch
import torch.nn.functional as F
from torch import nn

from .attention import AttnProcessor, sdpa
from .precision import channels_last, is_channels_last, run_in_own_dtype


@dataclasses.dataclass
class VAEPlan:
    band_elems: int | None = None  # max elements (rows x width x channels) of a band; None: whole image
    attn_tile: int = 64  # latent px of an attention window's core
    attn_overlap: int = 16  # extra latent px of context around it
    spill: bool = False  # keep full-resolution activations in temporary files, read band by band


class Level:
    """A (1, C, H, W) activation buffer, in RAM or in a temporary file, accessed by row bands.

    ``read`` gives rows r0:r1 of every channel (a view in RAM; a fresh tensor from the file),
    ``write`` stores them. A spilled buffer lies in the file row by row, (H, C, W), or
    (H, W, C) when ``memory_format`` is channels-last, so a band is one contiguous
    ``pread``/``pwrite``: only the band being computed is ever resident. Channels-last
    buffers hold the layout the convolutions run in (bf16 on CPU), so bands go in and out
    without a transposing copy.
    Why not ``mmap``: the pages of a shared mapping that the process touched count in its
    resident memory, and per-band ``madvise(MADV_DONTNEED)`` did not keep them from adding
    ~3-5 GB at 2048x1365 and 3840x2160 (docs/memory.md); reads and writes through the page
    cache never count there.
    """

    def __init__(self, c: int, h: int, w: int, dtype: torch.dtype, device, spill: bool,
                 memory_format: torch.memory_format = torch.contiguous_format):
        self.shape = (1, c, h, w)
        self.dtype = dtype
        self.memory_format = memory_format
        # A band's (C, rows, W) as it lies in the file: (rows, W, C) or (rows, C, W).
        self._file_order = (1, 2, 0) if memory_format == torch.channels_last else (1, 0, 2)
        self._from_file = tuple(self._file_order.index(i) for i in range(3))
        self._fd = None
        self.t = None
        if spill and torch.device(device).type == "cpu":
            self._row_bytes = c * w * torch.empty((), dtype=dtype).element_size()
            fd, path = tempfile.mkstemp(prefix="stablecodec-", suffix=".act")
            os.unlink(path)  # the open descriptor keeps the data; nothing is left on disk
            try:
                os.ftruncate(fd, h * self._row_bytes)
            except OSError:
                os.close(fd)
                raise
            self._fd = fd
        else:
            self.t = torch.empty(self.shape, dtype=dtype, device=device, memory_format=memory_format)

    @property
    def height(self) -> int:
        return self.shape[2]

    def read(self, r0: int, r1: int) -> torch.Tensor:
        if self._fd is None:
            return self.t[:, :, r0:r1]
        _, c, _, w = self.shape
        band = (c, r1 - r0, w)
        buf = torch.empty([band[i] for i in self._file_order], dtype=self.dtype)
        _transfer(os.preadv, self._fd, buf, r0 * self._row_bytes)
        # Channels-last: the permuted view already has its strides, so no copy is made.
        return buf.permute(*self._from_file).unsqueeze(0).contiguous(memory_format=self.memory_format)

    def write(self, r0: int, x: torch.Tensor) -> None:
        if self._fd is None:
            self.t[:, :, r0 : r0 + x.shape[2]] = x
            return
        buf = x[0].to(self.dtype).permute(*self._file_order).contiguous()
        _transfer(os.pwritev, self._fd, buf, r0 * self._row_bytes)

    def close(self) -> None:
        self.t = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the descriptor goes with the process
            pass


def _transfer(op, fd: int, buf: torch.Tensor, offset: int) -> None:
    """The whole of a contiguous CPU tensor through ``os.preadv`` or ``os.pwritev`` at ``offset``."""
    view = memoryview(buf.view(torch.uint8).numpy()).cast("B")  # uint8 view: bf16 has no numpy dtype
    done = 0
    while done < len(view):
        n = op(fd, [view[done:]], offset + done)
        if n <= 0:
            raise OSError(f"activation spill file: {'read' if op is os.preadv else 'write'} stopped at byte {offset + done}")
        done += n


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
        return F.silu(y, inplace=True) if act else y  # y is this call's own: no second full-size tensor


_STATS_CHUNK = 1 << 22  # elements of one chunk of a band whose statistics are taken


class _StatsAccumulator:
    def __init__(self, gn: nn.GroupNorm):
        self.gn = gn
        self.s1 = torch.zeros(gn.num_groups, dtype=torch.float64)
        self.s2 = torch.zeros(gn.num_groups, dtype=torch.float64)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        # Per-channel sums, then per group. The band goes in chunks of rows, each viewed
        # (without a copy) as a matrix whose reduced dimension runs along memory, copied
        # into one reused float32 buffer and squared there (exact for bf16 inputs); each
        # chunk is summed in float32 (PyTorch's cascade summation over at most 4 M
        # elements, as diffusers' own GroupNorm sums a whole image) and the chunks in
        # float64. Taken whole, the band's float32 copy, its square and the float64
        # reductions' copies were fresh band-sized tensors per statistic, and they made the
        # banded runner ~2x diffusers' forward at 1024x1024 (measured, docs/performance.md).
        g = self.gn.num_groups
        n, c, h, w = x.shape
        x = x.detach()
        cl = n == 1 and is_channels_last(x)  # one image: its (pixels, channels) view needs no copy
        rows = max(1, _STATS_CHUNK // max(1, n * c * w))
        buf = torch.empty(min(h, rows) * n * c * w, dtype=torch.float32, device=x.device)
        s1 = torch.zeros(c, dtype=torch.float64, device=x.device)
        s2 = torch.zeros(c, dtype=torch.float64, device=x.device)
        for r in range(0, h, rows):
            xc = x[:, :, r : r + rows]
            m, dim = (xc.permute(0, 2, 3, 1).reshape(-1, c), 0) if cl else (xc.transpose(0, 1).reshape(c, -1), 1)
            f = buf[: m.numel()].view(m.shape)
            f.copy_(m)
            s1 += f.sum(dim).double()
            s2 += f.mul_(f).sum(dim).double()
        self.s1 += s1.view(g, -1).sum(1).cpu()
        self.s2 += s2.view(g, -1).sum(1).cpu()
        self.n += n * (c // g) * h * w

    def affine(self, dtype, device) -> _Affine:
        mean = self.s1 / self.n
        var = (self.s2 / self.n - mean * mean).clamp_min(0.0)
        return _Affine(self.gn, mean, var, dtype, device)


class DecoderOnly(nn.Module):
    """A diffusers ``Decoder`` alone -- no encoder, no post-quant convolution, no scaling (AdcSR's
    halfDecoder, which AEIC decodes with) -- in the interface :class:`TiledVAE` runs."""

    encoder = None
    quant_conv = None
    post_quant_conv = None

    def __init__(self, decoder: nn.Module, config: dict):
        super().__init__()
        self.decoder = decoder
        self.config = type("DecoderConfig", (), dict(config))()

    def set_attn_processor(self, processor) -> None:
        from diffusers.models.attention_processor import Attention

        for m in self.decoder.modules():
            if isinstance(m, Attention):
                m.set_processor(processor)

    def decode(self, z: torch.Tensor):
        return type("DecoderOutput", (), {"sample": self.decoder(z)})()


class TiledVAE(nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae
        vae.set_attn_processor(AttnProcessor())
        for module in self.float32_modules():
            run_in_own_dtype(module, hand_back=False)
        from diffusers.models.resnet import ResnetBlock2D  # already imported: vae is a diffusers model

        encoder = vae.encoder.modules() if vae.encoder is not None else ()
        for block in (*encoder, *vae.decoder.modules()):
            if isinstance(block, ResnetBlock2D):
                block.forward = functools.partial(_resnet_forward, block)

    def float32_modules(self) -> list[nn.Module]:
        """What stays float32 at reduced precision: the decoder's output norm and convolution.

        They cost ~0.1 % of the decoder and spare the image its last bf16 rounding (the
        decoded image's relative L2 to float32 at 768x512: 0.00919 -> 0.00906, measured,
        docs/performance.md); the image comes out in float32.
        """
        dec = self.vae.decoder
        return [dec.conv_norm_out, dec.conv_out]

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
        cl = channels_last(dtype, torch.device(device).type)
        self.memory_format = torch.channels_last if cl else torch.contiguous_format

    def _rows(self, lvl_or_shape) -> int:
        _, c, h, w = lvl_or_shape.shape if hasattr(lvl_or_shape, "shape") else lvl_or_shape
        if self.plan.band_elems is None:
            return h
        return max(4, self.plan.band_elems // max(1, c * w))

    def _new(self, c: int, h: int, w: int) -> Level:
        return Level(c, h, w, self.dtype, self.device, self.plan.spill, self.memory_format)

    def _tick(self) -> None:
        if self.progress is not None:
            self.progress(1)

    # whole-image statistics of a buffer
    def stats(self, gn: nn.GroupNorm, lvl: Level, dtype: torch.dtype | None = None) -> _Affine:
        acc = _StatsAccumulator(gn)
        for r0, r1 in _bands(lvl.height, self._rows(lvl)):
            acc.add(lvl.read(r0, r1))
        return acc.affine(dtype or self.dtype, self.device)

    def conv_from_tensor(self, conv: nn.Conv2d, x: torch.Tensor) -> Level:
        """A stride-1 'same' convolution of an in-memory tensor into a new buffer."""
        _, _, h, w = x.shape
        out = self._new(conv.out_channels, h, w)
        k = conv.kernel_size[0] // 2
        for r0, r1 in _bands(h, self._rows(out.shape)):
            a0, a1 = max(0, r0 - k), min(h, r1 + k)
            out.write(r0, conv(x[:, :, a0:a1])[:, :, r0 - a0 : r1 - a0])
        return out

    def resnet(self, block, src: Level) -> Level:
        _, cin, h, w = src.shape
        cout = block.conv2.out_channels
        in_place = cin == cout and block.conv_shortcut is None
        dst = src if in_place else self._new(cout, h, w)
        rows = self._rows((1, max(cin, cout), h, w))
        n1 = self.stats(block.norm1, src)
        acc = _StatsAccumulator(block.norm2)
        bands = _bands(h, rows)
        for r0, r1 in bands:  # pass A: statistics of conv1's output
            a0, a1 = max(0, r0 - 1), min(h, r1 + 1)
            hid = block.conv1(n1(src.read(a0, a1)))
            acc.add(hid[:, :, r0 - a0 : r1 - a0])
        n2 = acc.affine(self.dtype, self.device)
        # One band (the whole image; only the attention is windowed): pass A's conv1 output
        # is pass B's, so it is kept rather than computed again.
        whole_conv1 = hid if len(bands) == 1 else None
        del hid
        saved = None  # in place: the rows above the band as they were before being overwritten
        for r0, r1 in bands:  # pass B: the block's output
            a0, a1 = max(0, r0 - 2), min(h, r1 + 2)
            x = src.read(a0, a1) if saved is None else torch.cat([saved, src.read(r0, a1)], dim=2)
            h1 = whole_conv1 if whole_conv1 is not None else block.conv1(n1(x))
            whole_conv1 = None
            hid = block.conv2(n2(h1))
            del h1
            res = x[:, :, r0 - a0 : r1 - a0]
            if block.conv_shortcut is not None:
                res = block.conv_shortcut(res)
            out = hid[:, :, r0 - a0 : r1 - a0]
            out += res  # hid is this band's own: the sum in place, no third band-sized tensor
            if block.output_scale_factor != 1:
                out /= block.output_scale_factor
            if in_place:
                saved = x[:, :, max(r0, r1 - 2) - a0 : r1 - a0].clone()
            dst.write(r0, out)
            self._tick()
        if not in_place:
            src.close()
        return dst

    def upsample(self, up, src: Level) -> Level:
        """Nearest x2 then a 3x3 convolution, band by band."""
        _, c, h, w = src.shape
        out = self._new(up.conv.out_channels, 2 * h, 2 * w)
        for r0, r1 in _bands(2 * h, self._rows(out.shape)):
            l0, l1 = max(0, (r0 - 1) // 2), min(h, r1 // 2 + 1)
            y = up.conv(F.interpolate(src.read(l0, l1), scale_factor=2.0, mode="nearest"))
            out.write(r0, y[:, :, r0 - 2 * l0 : r1 - 2 * l0])
            self._tick()
        src.close()
        return out

    def downsample(self, down, src: Level) -> Level:
        """diffusers' Downsample2D with padding 0: zero-pad right and bottom, 3x3 stride 2."""
        _, c, h, w = src.shape
        conv = down.conv
        ho, wo = (h - 2) // 2 + 1, (w - 2) // 2 + 1  # what the conv gives on the padded (h+1, w+1) input
        out = self._new(conv.out_channels, ho, wo)
        for o0, o1 in _bands(ho, self._rows(out.shape)):
            i0, i1 = 2 * o0, 2 * o1 + 1
            x = F.pad(src.read(i0, min(h, i1)), (0, 1, 0, i1 - min(h, i1)))
            out.write(o0, conv(x))
            self._tick()
        src.close()
        return out

    def attention(self, attn, src: Level) -> Level:
        """Self-attention with whole-image GroupNorm statistics, in windows when the latent is large."""
        _, c, h, w = src.shape
        norm = self.stats(attn.group_norm, src)
        windowed = TiledVAE._needs_attn_tiles(h, w, self.plan)
        core_h, core_w, ov = (self.plan.attn_tile, self.plan.attn_tile, self.plan.attn_overlap) if windowed else (h, w, 0)
        # Outputs go to a fresh buffer: windows read their context from the unmodified input.
        out = self._new(c, h, w)
        for t in range(0, h, core_h):  # one row of windows at a time
            b = min(t + core_h, h)
            t0, b0 = max(0, t - ov), min(h, b + ov)
            xs = src.read(t0, b0)
            ys = torch.empty((1, c, b - t, w), dtype=self.dtype, device=self.device, memory_format=self.memory_format)
            for l in range(0, w, core_w):
                r = min(l + core_w, w)
                l0, r0 = max(0, l - ov), min(w, r + ov)
                x = xs[:, :, :, l0:r0]
                y = _attend(attn, norm(x, act=False))
                res = (x + y if attn.residual_connection else y) / attn.rescale_output_factor
                ys[:, :, :, l:r] = res[:, :, t - t0 : b - t0, l - l0 : r - l0]
                self._tick()
            out.write(t, ys)
        src.close()
        return out

    def norm_act_conv(self, gn: nn.GroupNorm, conv: nn.Conv2d, src: Level) -> torch.Tensor:
        """GroupNorm, SiLU and a 3x3 convolution into an ordinary tensor (few channels), in
        the convolution's dtype (float32 when the model keeps it so)."""
        _, c, h, w = src.shape
        dtype = conv.weight.dtype
        norm = self.stats(gn, src, dtype)
        out = torch.empty((1, conv.out_channels, h, w), dtype=dtype, device=self.device)
        k = conv.kernel_size[0] // 2
        for r0, r1 in _bands(h, self._rows(src)):
            a0, a1 = max(0, r0 - k), min(h, r1 + k)
            out[:, :, r0:r1] = conv(norm(src.read(a0, a1).to(dtype)))[:, :, r0 - a0 : r1 - a0]
        src.close()
        return out


def _resnet_forward(block, x: torch.Tensor, temb: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
    """diffusers' ``ResnetBlock2D.forward`` as the VAE uses it (no time embedding, no
    resampling), with the SiLUs and the residual sum in place and no division by an
    ``output_scale_factor`` of 1: the same values, three fewer full-size activations
    allocated and one pass fewer over them. Those are the decoder's largest tensors (up to
    400 MB at 768x512 in float32): 0.5 s of a 10.8 s bf16 decode and 1.4 s of 23.5 s in
    float32 (measured, 768x512, docs/performance.md). Anything else goes to diffusers."""
    if (block.training or temb is not None or args or kwargs or block.upsample is not None
            or block.downsample is not None or not isinstance(block.nonlinearity, nn.SiLU)):
        return type(block).forward(block, x, temb, *args, **kwargs)
    h = block.conv1(F.silu(block.norm1(x), inplace=True))
    h = block.conv2(block.dropout(F.silu(block.norm2(h), inplace=True)))
    h += x if block.conv_shortcut is None else block.conv_shortcut(x)
    if block.output_scale_factor != 1:
        h /= block.output_scale_factor
    return h


def _attend(attn, x: torch.Tensor) -> torch.Tensor:
    """diffusers' Attention on already-normalised (1, C, h, w), without its residual."""
    b, c, h, w = x.shape
    seq = x.reshape(b, c, h * w).transpose(1, 2)
    q, k, v = attn.to_q(seq), attn.to_k(seq), attn.to_v(seq)
    heads = attn.heads
    d = q.shape[-1] // heads
    q, k, v = (t.view(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    o = sdpa(q, k, v)
    o = o.transpose(1, 2).reshape(b, -1, heads * d)
    o = attn.to_out[0](o)
    return o.transpose(1, 2).reshape(b, c, h, w)
