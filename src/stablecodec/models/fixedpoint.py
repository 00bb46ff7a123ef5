"""Exact, machine-independent numerics for the entropy-parameter path.

A learned codec fails silently when the decoder computes entropy parameters that differ
from the encoder's by a rounding error (CompressAI issues #279, #309, #320): the
arithmetic decoder desynchronises. Snapping float outputs to a grid only makes that
rare, because some value always lies next to a grid boundary. So the parameter path
(h_s, the adapters, g_c, LRP; paper Eq. 4-6) is computed in fixed point, after Ballé
et al., "Integer networks for data compression with latent-variable models" (ICLR 2019):

* activations are integers ``q`` in units of ``2**-FRAC_BITS`` with ``|q| <= QMAX``;
* each convolution uses integer weights, scaled per output channel by a power of two
  chosen so that every partial sum stays below 2**53; float64 then holds every partial
  sum exactly, so the result does not depend on summation order, BLAS, thread count or
  CPU vector width;
* nonlinearities (GELU, tanh, LayerNorm's square root) are built only from IEEE-754
  basic operations (+ - * / sqrt, each correctly rounded everywhere) in a fixed order,
  never from libm or vendor kernels whose last bits differ between machines;
* every result is rounded back to the integer grid.

The weights' float32 values are kept to 2**-20 relative or better, so this network
matches the float one to about 1e-5, far below what the rate or the image can show.
Runs on CPU in float64; the tensors are small (1/64 of the image).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

FRAC_BITS = 16
ONE = float(1 << FRAC_BITS)
QMAX = float(1 << 26)  # |activation| <= 1024; products of two fit in 2**52
_ACC_BUDGET = float(1 << 52)
_MAX_SHIFT = 40

# ----------------------------------------------------------------------------------------
# Deterministic elementary functions (float64, basic IEEE operations only).


_LN2_HI = 6.93147180369123816490e-01  # low 21 bits zero: k * _LN2_HI is exact for |k| < 2**21
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.44269504088896338700e00
_EXP_COEF = [1.0 / math.factorial(n) for n in range(14)]


def _pow2(k: torch.Tensor) -> torch.Tensor:
    """2**k for integer-valued float64 ``k`` in [-1022, 1023], built from the exponent bits."""
    return ((k.to(torch.int64) + 1023) << 52).view(torch.float64)


def det_exp(x: torch.Tensor) -> torch.Tensor:
    """exp(x) to ~1 ulp, identical on every IEEE-754 machine (Cody-Waite reduction + Taylor)."""
    x = x.clamp(-700.0, 700.0)
    k = torch.round(x * _INV_LN2)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    p = torch.full_like(r, _EXP_COEF[13])
    for c in reversed(_EXP_COEF[:13]):
        p = p * r + c
    return p * _pow2(k)


_SQRT_HALF = 0.70710678118654752440


def det_log(x: torch.Tensor) -> torch.Tensor:
    """log(x) for x > 0, identical on every IEEE-754 machine (atanh series on [sqrt(1/2), sqrt(2)))."""
    x = x.to(torch.float64).clamp_min(1e-300)
    bits = x.view(torch.int64)
    e = ((bits >> 52) & 0x7FF) - 1023
    m = ((bits & ((1 << 52) - 1)) | (1023 << 52)).view(torch.float64)  # mantissa in [1, 2)
    big = m > 2.0 * _SQRT_HALF
    m = torch.where(big, m * 0.5, m)
    e = (e + big.to(torch.int64)).to(torch.float64)
    s = (m - 1.0) / (m + 1.0)  # |s| <= 0.1716
    s2 = s * s
    p = torch.full_like(s, 1.0 / 25.0)
    for n in range(23, 0, -2):
        p = p * s2 + 1.0 / n
    return (2.0 * s) * p + e * _LN2_HI + e * _LN2_LO


def det_erfc(z: torch.Tensor) -> torch.Tensor:
    """erfc(z), fractional error < 1.2e-7 (Chebyshev fit of Numerical Recipes' erfcc)."""
    a = z.abs()
    t = 1.0 / (1.0 + 0.5 * a)
    p = torch.full_like(t, 0.17087277)
    for c in (-0.82215223, 1.48851587, -1.13520398, 0.27886807, -0.18628806, 0.09678418, 0.37409196, 1.00002368):
        p = p * t + c
    p = p * t - 1.26551223
    ans = t * det_exp(p - a * a)
    return torch.where(z >= 0, ans, 2.0 - ans)


def det_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Standard normal CDF, Phi(x) = erfc(-x / sqrt 2) / 2."""
    return 0.5 * det_erfc(x * -_SQRT_HALF)


def det_gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact-erf GELU, x * Phi(x), as ``nn.GELU()`` computes it, to ~1e-8."""
    return x * det_normal_cdf(x)


_EXPM1_COEF = [1.0 / math.factorial(n) for n in range(1, 19)]


def det_expm1(x: torch.Tensor) -> torch.Tensor:
    """exp(x) - 1 without cancellation near 0 (Taylor series for |x| <= 0.5)."""
    small = x.abs() <= 0.5
    xs = torch.where(small, x, torch.zeros_like(x))
    p = torch.full_like(x, _EXPM1_COEF[-1])
    for c in reversed(_EXPM1_COEF[:-1]):
        p = p * xs + c
    return torch.where(small, p * xs, det_exp(x) - 1.0)


def det_tanh(x: torch.Tensor) -> torch.Tensor:
    e = det_expm1(-2.0 * x.abs())  # tanh|x| = -expm1(-2|x|) / (2 + expm1(-2|x|))
    return torch.copysign(-e / (2.0 + e), x)


def det_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return 1.0 / (1.0 + det_exp(-x))


def det_log1p(y: torch.Tensor) -> torch.Tensor:
    """log(1 + y) for y > -1, accurate near 0 (Goldberg's trick: log(u) * y / (u - 1), u = 1 + y)."""
    u = 1.0 + y
    d = u - 1.0
    return torch.where(d == 0, y, det_log(u) * (y / torch.where(d == 0, torch.ones_like(d), d)))


def det_softplus(x: torch.Tensor) -> torch.Tensor:
    # log(1 + e^x) = max(x, 0) + log(1 + e^-|x|)
    return x.clamp_min(0.0) + det_log1p(det_exp(-x.abs()))


# ----------------------------------------------------------------------------------------
# Fixed-point layers.


def to_fixed(x: torch.Tensor) -> torch.Tensor:
    """Float tensor -> integer grid (float64 carrier), clamped to the activation range."""
    return torch.round(x.to(torch.float64) * ONE).clamp_(-QMAX, QMAX)


def from_fixed(q: torch.Tensor) -> torch.Tensor:
    return q * (1.0 / ONE)


def _requant(v: torch.Tensor) -> torch.Tensor:
    """A real value (float64) onto the activation grid."""
    return torch.round(v * ONE).clamp_(-QMAX, QMAX)


_CHUNK = 1 << 21  # elements per chunk of an element-wise function: bounds its temporaries


def _elementwise(fn, q: torch.Tensor) -> torch.Tensor:
    """fn on the activation grid, chunk by chunk (the IEEE formulas make ~10 temporaries)."""
    flat = q.reshape(-1)
    out = torch.empty_like(flat)
    for i in range(0, flat.numel(), _CHUNK):
        out[i : i + _CHUNK] = _requant(fn(from_fixed(flat[i : i + _CHUNK])))
    return out.view(q.shape)


class _GridTable:
    """fn on every grid point of [-limit, limit], computed once with the IEEE formulas.

    A lookup returns exactly what :func:`_elementwise` computes (points outside the table
    are computed the same way), about 30x faster: every activation is a grid point.
    """

    def __init__(self, fn, limit: float = 8.0):
        self.fn = fn
        self.n = int(limit * ONE)
        grid = torch.arange(-self.n, self.n + 1, dtype=torch.float64)
        self.table = _elementwise(fn, grid)

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        idx = q.to(torch.int64) + self.n
        inside = (idx >= 0) & (idx <= 2 * self.n)
        out = self.table[idx.clamp_(0, 2 * self.n)]
        if not bool(inside.all()):
            out[~inside] = _elementwise(self.fn, q[~inside])
        return out


_TABLES: dict[str, _GridTable] = {}


def _table(name: str, fn) -> _GridTable:
    t = _TABLES.get(name)
    if t is None:
        t = _TABLES[name] = _GridTable(fn)
    return t


def _half_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * det_tanh(x)


class _QuantConv:
    """Integer weights of one convolution and the per-channel power-of-two scales."""

    def __init__(self, layer: nn.Conv2d):
        w = layer.weight.detach().to("cpu", torch.float64)
        b = layer.bias.detach().to("cpu", torch.float64) if layer.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
        fan_in = w[0].numel()
        # L1 norm of each filter, exactly: an int64 sum of 2**-40 units is order-independent.
        l1 = torch.round(w.abs() * 2.0**40).to(torch.int64).flatten(1).sum(1).to(torch.float64) * 2.0**-40
        l1 = l1 + fan_in * 2.0**-40
        # Largest shift s with 2**s * (L1 * QMAX + |b| * ONE) <= 2**52; rounding the weights
        # adds at most fan_in/2 * QMAX < 2**40, so every partial sum stays below 2**53.
        _, e = torch.frexp(_ACC_BUDGET / (l1 * QMAX + b.abs() * ONE))
        shift = (e.to(torch.float64) - 1.0).clamp(-1000.0, _MAX_SHIFT)
        scale = _pow2(shift)
        self.weight = torch.round(w * scale.view(-1, 1, 1, 1))
        self.bias = torch.round(b * scale * ONE)
        self.unscale = _pow2(-shift).view(1, -1, 1, 1)
        self.stride, self.padding, self.dilation, self.groups = layer.stride, layer.padding, layer.dilation, layer.groups

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        # Any summation order is exact here, so the fastest formulation is chosen per layer:
        # PyTorch's float64 grouped convolution loops over groups one by one.
        w = self.weight
        cout, cin_g, kh, kw = w.shape
        simple = self.stride == (1, 1) and self.dilation == (1, 1)
        if simple and kh == kw == 1 and self.groups == 1:
            n, c, h, wd = q.shape
            acc = torch.matmul(w.view(cout, cin_g), q.reshape(n, c, h * wd)).view(n, cout, h, wd)
            acc += self.bias.view(1, -1, 1, 1)
        elif simple and cin_g == 1 and self.groups == cout == q.shape[1]:
            ph, pw = self.padding
            x = F.pad(q, (pw, pw, ph, ph))
            h, wd = x.shape[2] - kh + 1, x.shape[3] - kw + 1
            acc = self.bias.view(1, -1, 1, 1).expand(q.shape[0], cout, h, wd).clone()
            for dy in range(kh):
                for dx in range(kw):
                    acc += w[:, 0, dy, dx].view(1, -1, 1, 1) * x[:, :, dy : dy + h, dx : dx + wd]
        else:
            acc = F.conv2d(q, w, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return torch.round(acc * self.unscale).clamp_(-QMAX, QMAX)


class ExactOps:
    """Fixed-point numerics (see module docstring). Caches the integer weights per layer."""

    exact = True

    def __init__(self) -> None:
        self._convs: dict[int, tuple[nn.Conv2d, _QuantConv]] = {}

    def prepare(self, module: nn.Module) -> "ExactOps":
        """Quantize every convolution in ``module`` now rather than at first use."""
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                self._quant(m)
        return self

    def _quant(self, layer: nn.Conv2d) -> _QuantConv:
        hit = self._convs.get(id(layer))
        if hit is None or hit[0] is not layer:
            hit = (layer, _QuantConv(layer))
            self._convs[id(layer)] = hit
        return hit[1]

    def conv(self, layer: nn.Conv2d, q: torch.Tensor) -> torch.Tensor:
        return self._quant(layer)(q)

    def gelu(self, q: torch.Tensor) -> torch.Tensor:
        return _table("gelu", det_gelu)(q)

    def relu(self, q: torch.Tensor) -> torch.Tensor:
        return q.clamp_min(0.0)

    def add(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a + b).clamp_(-QMAX, QMAX)

    def mul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.round((a * b) * (1.0 / ONE)).clamp_(-QMAX, QMAX)

    def tanh(self, q: torch.Tensor) -> torch.Tensor:
        return _elementwise(det_tanh, q)

    def half_tanh(self, q: torch.Tensor) -> torch.Tensor:
        """0.5 tanh(x), LRP's output nonlinearity."""
        return _table("half_tanh", _half_tanh)(q)

    def layernorm(self, norm: nn.LayerNorm, q: torch.Tensor) -> torch.Tensor:
        # Sums in int64 are exact in any order; the rest is element-wise IEEE arithmetic.
        c = q.shape[1]
        qi = q.to(torch.int64)
        s1 = qi.sum(1, keepdim=True).to(torch.float64)
        s2 = (qi * qi).sum(1, keepdim=True).to(torch.float64)
        mean = s1 / c
        var = (s2 / c - mean * mean).clamp_min(0.0)
        y = (q - mean) / torch.sqrt(var + norm.eps * ONE * ONE)
        w = norm.weight.detach().to("cpu", torch.float64).view(1, -1, 1, 1)
        b = norm.bias.detach().to("cpu", torch.float64).view(1, -1, 1, 1)
        return _requant(y * w + b)


def check_accumulator_bounds(module: nn.Module) -> float:
    """Largest possible |partial sum| over the convolutions of ``module``, as a fraction of 2**53."""
    worst = 0.0
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            qc = _QuantConv(m)
            bound = qc.weight.abs().flatten(1).sum(1) * QMAX + qc.bias.abs()
            worst = max(worst, float(bound.max()) / 2.0**53)
    return worst
