"""The deep-compression latent codec (paper Sec. 3.2; Eq. 4-7).

``g_a`` maps the VAE latent (1/8, 4 channels) and the ELIC features (1/16, 320 channels)
to y (1/64, 320 channels); ``h_a``/``h_s`` form the hyperprior (z at 1/256, coded with
CompressAI's ``EntropyBottleneck``); y is coded in four quadtree steps, each step's
Gaussian means and scales predicted from everything decoded so far (``adapter_in[i]``,
the shared ``g_c``, ``adapter_out[i]``) and its reconstruction refined by latent residual
prediction (``LRP[i]``, 0.5 tanh). ``g_s`` returns the noisy latent l_T (1/8, 320 channels)
for the UNet and ``aux`` the residual r of Eq. 3.

Widths are a :class:`LatentCodecConfig`: the released checkpoints use the defaults;
tests and the default model use narrower ones. ``forward`` is the training pass (noise
and straight-through rounding); ``compress``/``decompress`` run the entropy-parameter
path in exact fixed point (:mod:`fixedpoint`) so that a file decodes to the encoder's ŷ
on any machine.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from ..container import VERSION_MAJOR
from ..errors import FormatError
from ._compressai import entropy_bottleneck, gaussian_conditional
from .blocks import FLOAT, LRP, Adapter, BasicBlock, Downsample, Stack, Upsample
from .entropy import StreamReader, StreamWriter, Table, bottleneck_tables, gaussian_tables, scale_table
from .fixedpoint import V1, V2, ExactOps, Numerics

# Step i codes, for channel groups 0..3, these positions of each 2x2 cell
# (0: even row/even col, 1: even/odd, 2: odd/even, 3: odd/odd).
QUADTREE = ((0, 1, 2, 3), (3, 2, 1, 0), (2, 3, 0, 1), (1, 0, 3, 2))

SCALE_BITS = 10  # scales are snapped on a 2**-10 grid before the table lookup
MEAN_LIMIT = 4096.0  # beyond the activation range (QMAX): never binding
Y_LIMIT = 1000.0  # |y| beyond this is clipped before coding, keeping the fixed point exact


@dataclasses.dataclass(frozen=True)
class CodingRules:
    """How a payload's symbols are computed: fixed per major version of the file format.

    ``numerics``: the exact arithmetic of the parameter network (:mod:`fixedpoint`);
    ``mean_bits``: the grid of the means in round(y - mean).

    Format 1.x snapped the means to 2**-8 and ran V1 numerics (~1e-5 from the float
    network): 107-172 symbols per 768x512 image came out other than the official
    implementation's, each flip carried on by the context model. Format 2.x subtracts the
    means as V2 computes them (2**-24 grid, ~3e-8 from a float64 evaluation), as the
    official code subtracts its float means (docs/reliability.md).
    """

    numerics: Numerics
    mean_bits: int


FORMAT_RULES = {1: CodingRules(V1, 8), 2: CodingRules(V2, V2.frac_bits)}
RULES_MAJOR = VERSION_MAJOR  # the rules of the format major this version writes
RULES = FORMAT_RULES[RULES_MAJOR]


def rules_for_format(major: int) -> CodingRules:
    """The coding rules of a ``.scdc`` payload of this major format version.

    The models ask this through their ``coding_rules`` (the default model keeps V1 under
    format 2.x: :meth:`stablecodec.models.lite.LiteModel.coding_rules`).
    """
    return FORMAT_RULES[major]


@dataclasses.dataclass(frozen=True)
class LatentCodecConfig:
    """Channel widths. The defaults are the released StableCodec checkpoints."""

    sd_channels: int = 4  # the VAE latent, pre1's input
    aux_channels: int = 320  # ELIC's features at 1/16, pre2's input (0: none)
    pre1_channels: int = 128
    pre2_channels: int = 64
    analysis: tuple[int, ...] = (192, 256, 320)  # BasicBlock widths of g_a; last = M
    context_mult: int = 3
    context_depth: int = 4
    synthesis: tuple[int, ...] = (320, 320, 320, 320)  # g_s widths; last = l_T channels
    aux_decoder: tuple[int, ...] = (320, 256, 192, 4)  # () for no auxiliary decoder
    rates: int = 0  # >0: per-rate gain vectors on y and z (variable-rate models)

    @property
    def M(self) -> int:
        return self.analysis[-1]

    @property
    def stride(self) -> int:
        """Stride of y relative to g_a's first input."""
        return 2 ** len(self.analysis)

    def __post_init__(self) -> None:
        if self.synthesis[0] != self.M or (self.aux_decoder and self.aux_decoder[0] != self.M):
            raise ValueError("synthesis and aux_decoder must start at the latent width M")
        if len(self.synthesis) != len(self.analysis) + 1:
            raise ValueError("synthesis must have one upsampling per downsampling of g_a")
        if self.M % 8 or (self.M // 2) % 8:
            raise ValueError("M must be a multiple of 16 (quadtree groups, InceptionNeXt splits)")
        if self.sd_channels < 1 or self.aux_channels < 0:
            raise ValueError("sd_channels must be >= 1 and aux_channels >= 0")
        if self.pre1_channels + (self.pre2_channels if self.aux_channels else 0) != self.analysis[0]:
            raise ValueError("pre1_channels (+ pre2_channels) must equal analysis[0]")


class AnalysisTransform(nn.Module):
    def __init__(self, cfg: LatentCodecConfig):
        super().__init__()
        self.pre1 = Downsample(cfg.sd_channels, cfg.pre1_channels)
        self.pre2 = nn.Conv2d(cfg.aux_channels, cfg.pre2_channels, 3, padding=1) if cfg.aux_channels else None
        layers: list[nn.Module] = [BasicBlock(cfg.analysis[0])]
        for cin, cout in zip(cfg.analysis[:-1], cfg.analysis[1:]):
            layers += [Downsample(cin, cout), BasicBlock(cout)]
        self.analysis_transform = Stack(*layers)

    def forward(self, latent: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        x = self.pre1(latent)
        if self.pre2 is not None:
            if features is None:
                raise ValueError("this latent codec needs the ELIC features as its second input")
            x = torch.cat((x, self.pre2(features)), dim=1)
        return self.analysis_transform(x)


def _synthesis(widths: tuple[int, ...]) -> Stack:
    layers: list[nn.Module] = []
    for cin, cout in zip(widths[:-1], widths[1:]):
        layers += [BasicBlock(cin), Upsample(cin, cout)]
    return Stack(*layers)


class SynthesisTransform(nn.Module):
    def __init__(self, widths: tuple[int, ...]):
        super().__init__()
        self.synthesis_transform = _synthesis(widths)

    def forward(self, x):
        return self.synthesis_transform(x)


class AuxDecoder(nn.Module):
    def __init__(self, widths: tuple[int, ...]):
        super().__init__()
        self.block = _synthesis(widths)

    def forward(self, x):
        return self.block(x)


class HyperAnalysis(nn.Module):
    def __init__(self, M: int):
        super().__init__()
        self.reduction = Stack(nn.Conv2d(M, M // 2, 3, 2, 1), BasicBlock(M // 2), nn.Conv2d(M // 2, M // 2, 3, 2, 1))

    def forward(self, x):
        return self.reduction(x)


class HyperSynthesis(nn.Module):
    def __init__(self, M: int):
        super().__init__()
        self.increase = Stack(
            nn.Conv2d(M // 2, M * 2, 1), nn.PixelShuffle(2), BasicBlock(M // 2), nn.Conv2d(M // 2, M * 4, 1),
            nn.PixelShuffle(2),
        )

    def forward(self, x, ops=FLOAT):
        return self.increase(x, ops)


class SpatialContext(nn.Module):
    def __init__(self, channels: int, depth: int):
        super().__init__()
        self.block = Stack(*[BasicBlock(channels) for _ in range(depth)])

    def forward(self, x, ops=FLOAT):
        return self.block(x, ops)


def quadtree_masks(channels: int, height: int, width: int, device=None) -> list[torch.Tensor]:
    """Boolean masks (C, H, W) of the four coding steps; together they cover y once."""
    rows = torch.arange(height, device=device).view(-1, 1) % 2
    cols = torch.arange(width, device=device).view(1, -1) % 2
    pos = rows * 2 + cols
    g = channels // 4
    return [torch.cat([(pos == p).expand(g, height, width) for p in step], 0) for step in QUADTREE]


def ste_round(x: torch.Tensor) -> torch.Tensor:
    return (torch.round(x) - x).detach() + x


@dataclasses.dataclass
class Compressed:
    """The latent codec's output: one range-coded payload and the check over its symbols."""

    payload: bytes
    symbol_crc: int
    y_hat: torch.Tensor  # float64 (1, M, h, w): what the decoder will reconstruct
    y_shape: tuple[int, int]


class ExactEntropyPath:
    """What every family's latent codec shares for its entropy path: the four quadtree steps'
    parameter network (``adapter_in[i]``, the shared ``g_c``, ``adapter_out[i]``), its exact
    numerics per version, and the probability tables. The codec provides
    ``parameter_modules()``, ``entropy_bottleneck`` and those three modules."""

    def _step_params(self, base, i: int, ops=FLOAT):
        return self.adapter_out[i](self.g_c(self.adapter_in[i](base, ops), ops), ops).chunk(2, dim=1)

    def exact_ops(self, numerics: Numerics = RULES.numerics) -> ExactOps:
        ops = self._exact.get(numerics.name)
        if ops is None:
            ops = ExactOps(numerics)
            for m in self.parameter_modules():
                ops.prepare(m)
            self._exact[numerics.name] = ops
        return ops

    def tables(self) -> tuple[list[Table], list[Table], torch.Tensor]:
        """(Gaussian tables, bottleneck tables, bottleneck medians), built or loaded once."""
        if self._tables is None:
            z_tables, medians = bottleneck_tables(self.entropy_bottleneck)
            self._tables = (gaussian_tables(), z_tables, medians)
        return self._tables

    def set_tables(self, gaussian: list[Table], bottleneck: list[Table], medians: torch.Tensor) -> None:
        self._tables = (gaussian, bottleneck, medians.to(torch.float32))

    def reset_caches(self) -> None:
        """Forget integer weights and tables (after the weights changed)."""
        self._exact = {}
        self._tables = None


# The per-rate gain vectors (Cui et al. 2021) of a multi-rate codec, as its parameters are named.
GAIN_NAMES = ("gain_y", "gain_y_inv", "gain_z", "gain_z_inv")


class LatentCodec(ExactEntropyPath, nn.Module):
    """g_a, h_a, h_s, the four-step context model with LRP, g_s and the auxiliary decoder."""

    def __init__(self, cfg: LatentCodecConfig = LatentCodecConfig()):
        super().__init__()
        self.cfg = cfg
        M = cfg.M
        ctx = M * cfg.context_mult
        self.g_a = AnalysisTransform(cfg)
        self.g_s = SynthesisTransform(cfg.synthesis)
        self.h_a = HyperAnalysis(M)
        self.h_s = HyperSynthesis(M)
        self.aux = AuxDecoder(cfg.aux_decoder) if cfg.aux_decoder else None
        self.adapter_in = nn.ModuleList(Adapter(M, ctx) for _ in range(4))
        self.g_c = SpatialContext(ctx, cfg.context_depth)
        self.adapter_out = nn.ModuleList(Adapter(ctx, M * 2) for _ in range(4))
        self.LRP = nn.ModuleList(LRP(M * 2, M) for _ in range(4))
        self.entropy_bottleneck = entropy_bottleneck(M // 2)
        self.gaussian_conditional = gaussian_conditional()
        if cfg.rates:
            self.gain_y = nn.Parameter(torch.ones(cfg.rates, M))
            self.gain_y_inv = nn.Parameter(torch.ones(cfg.rates, M))
            self.gain_z = nn.Parameter(torch.ones(cfg.rates, M // 2))
            self.gain_z_inv = nn.Parameter(torch.ones(cfg.rates, M // 2))
        self._exact: dict[str, ExactOps] = {}
        self._tables: tuple[list[Table], list[Table], torch.Tensor] | None = None
        self.exact_device = "cpu"  # where the V2 parameter path runs (the model's device: placed with it)

    # -- entropy-parameter path --------------------------------------------------------

    def parameter_modules(self) -> list[nn.Module]:
        """The modules whose outputs choose probability tables; kept in float32, run exactly."""
        return [self.h_s, self.g_c, self.entropy_bottleneck, *self.adapter_in, *self.adapter_out, *self.LRP]

    def _gain(self, name: str, rate, like: torch.Tensor) -> torch.Tensor:
        g = getattr(self, name)[rate]
        if g.dim() == 1:
            g = g[None]
        return g[:, :, None, None].to(like.dtype)

    # -- training ----------------------------------------------------------------------

    def forward(self, latent, features=None, rate: torch.Tensor | int | None = None, noise: bool = False):
        """Training pass: returns (ŷ, y likelihoods, z likelihoods).

        ŷ is y rounded around the predicted means with a straight-through gradient, or,
        with ``noise``, y plus uniform noise (Ballé et al.), which trains a network from
        scratch more reliably; the likelihoods always use noise.
        """
        y = self.g_a(latent, features).float()
        if self.cfg.rates:
            y = y * self._gain("gain_y", rate, y)
        z = self.h_a(y).float()
        if self.cfg.rates:
            z = z * self._gain("gain_z", rate, z)
        with torch.autocast(z.device.type, enabled=False):  # likelihoods need float32
            _, z_likelihoods = self.entropy_bottleneck(z)
        medians = self.entropy_bottleneck._get_medians()
        z_hat = z + torch.empty_like(z).uniform_(-0.5, 0.5) if noise else ste_round(z - medians) + medians
        if self.cfg.rates:
            z_hat = z_hat * self._gain("gain_z_inv", rate, z_hat)
        base = self.h_s(z_hat)
        masks = [m[None].to(y.dtype) for m in quadtree_masks(y.shape[1], y.shape[2], y.shape[3], y.device)]
        means_all = torch.zeros_like(y)
        scales_all = torch.zeros_like(y)
        y_hat = torch.zeros_like(y)
        for i, mask in enumerate(masks):
            means, scales = self._step_params(base, i)
            means_all = means_all + means * mask
            scales_all = scales_all + scales * mask
            if noise:
                y_hat_i = (y + torch.empty_like(y).uniform_(-0.5, 0.5)) * mask
            else:
                y_hat_i = (ste_round(y - means) + means) * mask
            lrp = 0.5 * torch.tanh(self.LRP[i](torch.cat([y_hat_i, base], dim=1))) * mask
            y_hat_i = y_hat_i + lrp
            base = base * (1 - mask) + y_hat_i
            y_hat = y_hat + y_hat_i
        with torch.autocast(y.device.type, enabled=False):
            _, y_likelihoods = self.gaussian_conditional(y.float(), scales_all.float(), means_all.float())
        if self.cfg.rates:
            y_hat = y_hat * self._gain("gain_y_inv", rate, y_hat)
        return y_hat, y_likelihoods, z_likelihoods

    # -- inference ---------------------------------------------------------------------

    def y_shape(self, latent_hw: tuple[int, int]) -> tuple[int, int]:
        s = self.cfg.stride
        return latent_hw[0] // s, latent_hw[1] // s

    @torch.no_grad()
    def analyse(self, latent, features=None, rate: int | None = None) -> torch.Tensor:
        """y = g_a(...) (times the rate's gain), as float32 on the CPU."""
        y = self.g_a(latent, features).to("cpu", torch.float32)
        if self.cfg.rates:
            y = y * self.gain_y[rate].detach().float().cpu()[None, :, None, None]
        return y

    @torch.no_grad()
    def compress(self, latent, features=None, rate: int | None = None, rules: CodingRules = RULES) -> Compressed:
        y = self.analyse(latent, features, rate).clamp(-Y_LIMIT, Y_LIMIT)
        return self.compress_y(y, rate, rules)

    @torch.no_grad()
    def compress_y(self, y: torch.Tensor, rate: int | None = None, rules: CodingRules = RULES) -> Compressed:
        """Entropy-code y (float32, CPU, (1, M, h, w)); the hyper-analysis runs here too.

        ``rules``: only tests and the golden files of format 1.x use others than the current.
        """
        if y.shape[0] != 1:
            raise ValueError("compress codes one image at a time")
        h_a_param = next(self.h_a.parameters())
        z = self.h_a(y.to(h_a_param.device, h_a_param.dtype)).to("cpu", torch.float64)
        if self.cfg.rates:
            z = z * self.gain_z[rate].detach().to(torch.float64).cpu()[None, :, None, None]
        gaussian, z_tables, medians = self.tables()
        med = medians.to(torch.float64)[None, :, None, None]
        z_sym = torch.round(z - med).clamp(-(1 << 20), 1 << 20)
        writer = StreamWriter()
        writer.write(z_sym.numpy().astype(np.int32), _channel_ids(z_sym), z_tables)
        z_hat = z_sym + med
        y_hat = self._code_y(z_hat, rate, rules, writer=writer, y=y.to(torch.float64).clamp(-Y_LIMIT, Y_LIMIT))
        return Compressed(writer.finish(), writer.crc, y_hat, (y.shape[2], y.shape[3]))

    @torch.no_grad()
    def decompress(self, payload: bytes, symbol_crc: int, y_shape: tuple[int, int], rate: int | None = None,
                   rules: CodingRules = RULES) -> torch.Tensor:
        """ŷ (float64, CPU) from a payload; raises DesyncError if the symbols fail their check.

        ``rules``: the payload's (:func:`rules_for_format` of its file's version).
        """
        h, w = y_shape
        if h % 4 or w % 4 or h < 4 or w < 4:
            raise FormatError(f"latent shape {y_shape} is not a multiple of the hyperprior's stride")
        gaussian, z_tables, medians = self.tables()
        reader = StreamReader(payload)
        zc = self.cfg.M // 2
        z_ids = np.repeat(np.arange(zc), (h // 4) * (w // 4))
        z_sym = torch.from_numpy(reader.read(z_ids, z_tables).astype(np.float64)).view(1, zc, h // 4, w // 4)
        z_hat = z_sym + medians.to(torch.float64)[None, :, None, None]
        y_hat = self._code_y(z_hat, rate, rules, reader=reader)
        reader.check(symbol_crc)
        return y_hat

    def dequantize(self, y_hat: torch.Tensor, rate: int | None = None) -> torch.Tensor:
        """The decoder's input: ŷ divided back by the rate's gain (identity without rates)."""
        if self.cfg.rates:
            y_hat = y_hat * self.gain_y_inv[rate].detach().to(y_hat.dtype).cpu()[None, :, None, None]
        return y_hat

    def _code_y(self, z_hat, rate, rules: CodingRules, *, writer: StreamWriter | None = None,
                reader: StreamReader | None = None, y=None):
        """The four quadtree steps in exact arithmetic, encoding (writer, y) or decoding (reader).

        The symbol is round(y - mean) in float64: one IEEE subtraction of y (float32) and a
        multiple of 2**-24 below 2**10, exact for |y| >= 2**-28 and correctly rounded
        otherwise, so the same on every machine. It differs from a float implementation's
        only where y - mean lies within the fixed-point network's error (~1e-5) of a
        half-integer.
        """
        ops = self.exact_ops(rules.numerics)
        gaussian, _, _ = self.tables()
        if self.cfg.rates:
            z_hat = z_hat * self.gain_z_inv[rate].detach().to(torch.float64).cpu()[None, :, None, None]
        device = self.exact_device if rules.numerics.split_bits else "cpu"  # V1 (format 1.x) stays on the CPU
        base = self.h_s(ops.to_fixed(z_hat.to(device)), ops)
        return code_quadtree(base, lambda b, i: self._step_params(b, i, ops), rules, ops, gaussian, STABLECODEC_STEPS,
                             lrp=lambda i, x: self.LRP[i](x, ops), writer=writer, reader=reader, y=y)


@dataclasses.dataclass(frozen=True)
class StepRules:
    """How a family turns one quadtree step's parameters into table indexes.

    ``index``: "ceil" -- CompressAI's rule, the smallest table scale >= the predicted scale,
    every element coded (StableCodec); "floor" -- the largest table scale <= it, and an
    element whose scale is below ``skip_below`` is not coded at all: its symbol is 0 and
    ŷ = mean on both sides (AEIC). ``lrp``: latent residual prediction after each step.
    """

    index: str
    lrp: bool
    skip_below: float = 0.0


STABLECODEC_STEPS = StepRules(index="ceil", lrp=True)


def code_quadtree(base: torch.Tensor, step_params, rules: CodingRules, ops: ExactOps, gaussian: list[Table],
                  steps: StepRules, *, lrp=None, writer: StreamWriter | None = None,
                  reader: StreamReader | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
    """The four quadtree steps (paper Eq. 5-7) in exact arithmetic, encoding (``writer``, ``y``
    float64) or decoding (``reader``), from ``base`` (h_s of ẑ on the fixed-point grid).

    ``step_params(base, i)`` returns step i's means and scales on the grid; the coded
    elements' symbols are round(y - mean) in float64: one IEEE subtraction of y (float32)
    and a multiple of 2**-24 below 2**10, exact for |y| >= 2**-28 and correctly rounded
    otherwise, so the same on every machine. It differs from a float implementation's
    only where y - mean lies within the fixed-point network's error of a half-integer.
    Elements the rules do not code are 0 for the encoder too, so both sides continue from
    the same ŷ. Runs on ``base``'s device (V2 is exact on a GPU too: integer products and
    sums, and one IEEE operation per kernel); symbols and table indexes go through the CPU's
    range coder. Returns ŷ (float64, CPU).
    """
    mean_bits, one, qmax = rules.mean_bits, ops.one, ops.qmax
    _, M, H, W = base.shape
    dev = base.device
    if y is not None:
        y = y.to(dev)
    total = torch.zeros_like(base)
    for i, mask in enumerate(quadtree_masks(M, H, W, device=dev)):
        means_q, scales_q = step_params(base, i)
        if steps.index == "ceil":
            mean_k, scale_idx = snap(*parameter_outputs(means_q[0], scales_q[0], rules), rules)
        else:
            mean_k, scale_idx = floor_index(means_q[0], scales_q[0], rules, ops, steps.skip_below)
        mk, ix = mean_k[mask], scale_idx[mask].cpu()
        coded = ix >= 0
        every = bool(coded.all())
        if writer is not None:
            sym = torch.round(y[0][mask] - mk.to(torch.float64) * 2.0**-mean_bits).to(torch.int64).cpu()
            if every:
                writer.write(sym.numpy(), ix.numpy(), gaussian)
            else:
                sym[~coded] = 0
                writer.write(sym[coded].numpy(), ix[coded].numpy(), gaussian)
        elif every:
            sym = torch.from_numpy(reader.read(ix.numpy(), gaussian).astype(np.int64))
        else:
            sym = torch.zeros(ix.shape, dtype=torch.int64)
            sym[coded] = torch.from_numpy(reader.read(ix[coded].numpy(), gaussian).astype(np.int64))
        sym = sym.to(dev)
        y_i = torch.zeros_like(base)
        y_i[0][mask] = (sym.to(torch.float64) * one + mk.to(torch.float64) * 2.0 ** (ops.frac_bits - mean_bits)).clamp(
            -qmax, qmax
        )
        if steps.lrp:
            r = ops.half_tanh(lrp(i, torch.cat([y_i, base], dim=1)))
            y_i[0][mask] = (y_i[0][mask] + r[0][mask]).clamp(-qmax, qmax)
        base[0][mask] = y_i[0][mask]
        total += y_i
    return ops.from_fixed(total).cpu()


def floor_index(means_q: torch.Tensor, scales_q: torch.Tensor, rules: CodingRules, ops: ExactOps,
                skip_below: float) -> tuple[torch.Tensor, torch.Tensor]:
    """AEIC's rule on the exact grid: (mean in 2**-mean_bits units, the largest table index
    whose scale <= the predicted scale, -1 below ``skip_below``), as int64.

    Compared on the parameter network's own 2**-frac_bits grid (no 2**-10 snapping), so a
    scale next to the skip threshold falls on the side a float implementation puts it on
    whenever the two agree to better than the grid."""
    mean_k = torch.round(means_q * 2.0 ** (rules.mean_bits - ops.frac_bits)).to(torch.int64)
    thresholds = torch.ceil(scale_table() * ops.one).to(scales_q.device)  # the smallest grid value >= each table scale
    idx = (torch.bucketize(scales_q, thresholds, right=True) - 1).clamp_(min=0)
    idx[scales_q < skip_below * ops.one] = -1
    return mean_k, idx


def parameter_outputs(means_q: torch.Tensor, scales_q: torch.Tensor,
                      rules: CodingRules = RULES) -> tuple[torch.Tensor, torch.Tensor]:
    """The parameter network's outputs on their grids: means on 2**-mean_bits (the
    fixed-point grid itself by default), scales on 2**-10 (float64).

    These are exact multiples of the grid step, so a float error smaller than half a step
    (e.g. a few float32 ulp) cannot change what :func:`snap` returns.
    """
    mean_bits, frac_bits = rules.mean_bits, rules.numerics.frac_bits
    lim = MEAN_LIMIT * 2**mean_bits
    m = torch.round(means_q * 2.0 ** (mean_bits - frac_bits)).clamp_(-lim, lim)
    s = torch.round(scales_q * 2.0 ** (SCALE_BITS - frac_bits)).clamp_(0, 512 * 2**SCALE_BITS)
    return m * 2.0**-mean_bits, s * 2.0**-SCALE_BITS


_SCALE_THRESHOLDS: torch.Tensor | None = None


def _scale_thresholds() -> torch.Tensor:
    """Grid integers j at which the table index steps up: index(j) = #{i < 63 : j > table[i] * 2**10}."""
    global _SCALE_THRESHOLDS
    if _SCALE_THRESHOLDS is None:
        t = scale_table()[:-1] * 2.0**SCALE_BITS
        _SCALE_THRESHOLDS = (torch.floor(t) + 1).to(torch.int64)
    return _SCALE_THRESHOLDS


def snap(means: torch.Tensor, scales: torch.Tensor, rules: CodingRules = RULES) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid values -> (mean in 2**-mean_bits units, scale-table index), as int64."""
    mean_k = torch.round(means * 2.0**rules.mean_bits).to(torch.int64)
    j = torch.round(scales * 2.0**SCALE_BITS).to(torch.int64)
    # CompressAI's rule: the smallest table scale >= the predicted scale (scales <= 0.11 -> 0).
    idx = torch.bucketize(j, _scale_thresholds().to(j.device), right=True)
    return mean_k, idx


def _channel_ids(t: torch.Tensor) -> np.ndarray:
    c, n = t.shape[1], t[0, 0].numel()
    return np.repeat(np.arange(c), n)
