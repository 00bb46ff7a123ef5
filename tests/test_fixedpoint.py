"""Exact numerics of the entropy-parameter path: accuracy and order independence."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stablecodec.models import fixedpoint as fx


@pytest.mark.parametrize("fn,ref,lo,hi,tol", [
    (fx.det_exp, torch.exp, -50, 50, 4e-16),
    (fx.det_log, torch.log, 1e-6, 1e6, 4e-16),
    (fx.det_tanh, torch.tanh, -20, 20, 2e-15),
    (fx.det_sigmoid, torch.sigmoid, -30, 30, 1e-15),
    (fx.det_softplus, lambda x: F.softplus(x, threshold=1000), -30, 30, 1e-15),
    (fx.det_log1p, torch.log1p, -0.9, 10, 1e-15),
    (fx.det_gelu, F.gelu, -12, 12, 1e-7),
])
def test_elementary_functions_are_accurate(fn, ref, lo, hi, tol):
    x = torch.linspace(lo, hi, 100_001, dtype=torch.float64)
    got, want = fn(x), ref(x)
    rel = ((got - want).abs() / want.abs().clamp_min(1e-300)).max() if fn is not fx.det_gelu else (got - want).abs().max()
    assert float(rel) <= tol


def test_erfc_meets_its_documented_bound():
    x = torch.linspace(-6, 6, 20001, dtype=torch.float64)
    rel = ((fx.det_erfc(x) - torch.special.erfc(x)).abs() / torch.special.erfc(x)).max()
    assert float(rel) < 1.2e-7


def _random_conv(cin, cout, k, groups=1, scale=1.0, seed=0):
    torch.manual_seed(seed)
    conv = nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups)
    with torch.no_grad():
        conv.weight.mul_(scale)
    return conv


@pytest.mark.parametrize("cin,cout,k,groups", [(40, 24, 1, 1), (24, 24, 5, 24), (16, 16, 3, 16), (8, 12, 3, 1)])
def test_v1_conv_is_exact_whatever_the_algorithm(cin, cout, k, groups):
    conv = _random_conv(cin, cout, k, groups, scale=3.0)
    q = fx.to_fixed(torch.randn(1, cin, 9, 11) * 50)
    qc = fx._QuantConv(conv)
    fast = qc(q)
    reference = torch.round(F.conv2d(q, qc.weight, qc.bias, 1, k // 2, 1, groups) * qc.unscale).clamp(-fx.QMAX, fx.QMAX)
    assert torch.equal(fast, reference)
    # a different summation order: channels reversed (exact integer sums are order-free)
    perm = torch.arange(cin).flip(0)
    if groups == 1:
        alt = F.conv2d(q[:, perm], qc.weight[:, perm], qc.bias, 1, k // 2)
        assert torch.equal(torch.round(alt * qc.unscale).clamp(-fx.QMAX, fx.QMAX), fast)


@pytest.mark.parametrize("cin,cout,k,groups,stride", [(40, 24, 1, 1, 1), (24, 24, 5, 24, 1), (16, 16, 3, 16, 1),
                                                     (8, 12, 3, 1, 1), (8, 12, 3, 1, 2)])
def test_v2_conv_is_the_rounded_exact_quotient_in_any_order(cin, cout, k, groups, stride):
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups)
    torch.manual_seed(1)
    with torch.no_grad():
        conv.weight.mul_(3.0)
    ops = fx.ExactOps(fx.V2)
    q = ops.to_fixed(torch.randn(1, cin, 9, 11) * 50)
    qc = fx._SplitConv(conv, fx.V2)
    got = qc(q)
    # every partial sum of both halves is an integer below 2**53
    assert fx.check_accumulator_bounds(conv, fx.V2) < 1.0
    halves = qc.inputs(q)
    assert float(halves.abs().max()) <= 2**17 and torch.equal(halves, halves.round())
    acc = F.conv2d(halves, qc.weight, None, stride, k // 2, 1, groups)
    assert torch.equal(got, qc.finish(acc.clone()))
    if groups == 1:  # another summation order: the same integers
        perm = torch.arange(cin).flip(0)
        assert torch.equal(got, qc.finish(F.conv2d(halves[:, perm], qc.weight[:, perm], None, stride, k // 2)))
    # and the result is the exact quotient rounded (to within the one float64 rounding)
    exact = (acc[:1] * 2.0**17 + acc[1:] + qc.bias) * qc.unscale
    assert float((got - exact.clamp(-ops.qmax, ops.qmax)).abs().max()) <= 0.5 + 2**-10


def test_accumulator_bound_holds_for_large_weights():
    conv = _random_conv(960, 64, 1, scale=50.0)
    assert fx.check_accumulator_bounds(conv, fx.V1) < 1.0
    assert fx.check_accumulator_bounds(conv, fx.V2) < 1.0


@pytest.mark.parametrize("nx,tol", [(fx.V1, 1e-4), (fx.V2, 1e-6)])
def test_fixed_point_follows_the_float_network(nx, tol):
    conv = _random_conv(32, 32, 3)
    x = torch.randn(1, 32, 8, 8)
    ops = fx.ExactOps(nx)
    got = ops.from_fixed(ops.gelu(ops.conv(conv, ops.to_fixed(x))))
    with torch.no_grad():
        want = F.gelu(conv.double()(x.double()))
    assert float((got - want).abs().max()) < tol


@pytest.mark.parametrize("nx,tol", [(fx.V1, 1e-4), (fx.V2, 1e-6)])
def test_layernorm_matches_torch(nx, tol):
    norm = nn.LayerNorm(24, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.2, 0.2)
    x = torch.randn(1, 24, 5, 7) * 3 + 40  # far from zero mean: the variance must not cancel
    ops = fx.ExactOps(nx)
    got = ops.from_fixed(ops.layernorm(norm, ops.to_fixed(x)))
    with torch.no_grad():
        want = norm.double()(x.double().permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    assert float((got - want).abs().max()) < tol


def test_v2_layernorm_and_products_at_the_range_limit():
    """Activations at +-qmax: squares and products reach 2**68-2**70; nothing overflows."""
    ops = fx.ExactOps(fx.V2)
    norm = nn.LayerNorm(960, eps=1e-6)
    q = torch.full((1, 960, 2, 3), ops.qmax, dtype=torch.float64)
    q[:, ::2] = -ops.qmax
    y = ops.from_fixed(ops.layernorm(norm, q))
    assert torch.allclose(y, torch.sign(q), atol=1e-6)
    assert float(ops.mul(q, q).max()) == ops.qmax
    a = ops.to_fixed(torch.tensor([1.5, -3.25, 1000.0]))
    assert torch.equal(ops.from_fixed(ops.mul(a, ops.to_fixed(torch.tensor([2.0, 2.0, 0.5])))),
                       torch.tensor([3.0, -6.5, 500.0], dtype=torch.float64))


def test_v2_interpolated_functions_are_within_one_grid_step_of_the_formulas():
    ops = fx.ExactOps(fx.V2)
    g = torch.Generator().manual_seed(0)
    q = torch.cat([torch.randint(-(9 << 24), 9 << 24, (400_000,), generator=g).double(),
                   torch.tensor([-ops.qmax, ops.qmax, -(8 << 24), 8 << 24, (8 << 24) - 1], dtype=torch.float64)])
    for got, fn in ((ops.gelu(q), fx.det_gelu), (ops.half_tanh(q), fx._half_tanh)):
        want = fx._elementwise(fn, q, fx.V2)
        assert float((got - want).abs().max()) <= 1.0


def test_pow2_is_exact():
    k = torch.arange(-1000, 1001, dtype=torch.float64)
    assert torch.equal(fx._pow2(k), torch.tensor([math.ldexp(1.0, int(v)) for v in k], dtype=torch.float64))


def test_v1_tables_give_exactly_the_formulas_results():
    q = torch.cat([torch.arange(-600_000, 600_000, 7, dtype=torch.float64),
                   torch.tensor([-fx.QMAX, fx.QMAX, -9 * fx.ONE, 9 * fx.ONE], dtype=torch.float64)])
    for name, fn in (("gelu", fx.det_gelu), ("half_tanh", fx._half_tanh)):
        assert torch.equal(fx._table(name, fn)(q), fx._elementwise(fn, q))
