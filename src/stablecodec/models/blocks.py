"""Building blocks of the latent codecs (StableCodec Sec. 3.2, Fig. 3; AEIC's shallow encoder).

One definition per block, run in two numerics: ``FLOAT`` (plain PyTorch, any device and
dtype) for the image path, and :class:`~stablecodec.models.fixedpoint.ExactOps` for the
entropy-parameter path, which must give the same integers on every machine. Blocks take
``ops`` and route every arithmetic layer through it; layout operations (split, cat,
pixel shuffle) are exact in both. Module and parameter names are those of the released
checkpoints (``../shared/reference/checkpoint-codec-keys.tsv``, ``aeic-*-codec-keys.tsv``).
StableCodec and AEIC share InceptionDW, InceptionNeXt, GatedCNN, BasicBlock and Adapter;
AEIC adds :class:`StarBlock` and single-branch :class:`ShuffleDown`/:class:`ShuffleUp`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FloatOps:
    """Plain PyTorch numerics: the layers as they are."""

    exact = False

    def conv(self, layer: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        return layer(x)

    def gelu(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x)

    def relu(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x)

    def add(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b

    def mul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b

    def layernorm(self, norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
        # nn.LayerNorm over channels of an NCHW map, as the checkpoints were trained.
        return F.layer_norm(x.permute(0, 2, 3, 1), norm.normalized_shape, norm.weight, norm.bias, norm.eps).permute(
            0, 3, 1, 2
        )


FLOAT = FloatOps()


def run(module: nn.Module, x: torch.Tensor, ops) -> torch.Tensor:
    """Apply ``module`` to ``x`` in the numerics ``ops`` (Sequential unrolled)."""
    if ops is FLOAT:
        return module(x)
    if isinstance(module, OpsModule):
        return module(x, ops)
    if isinstance(module, nn.Conv2d):
        return ops.conv(module, x)
    if isinstance(module, nn.GELU):
        return ops.gelu(x)
    if isinstance(module, nn.ReLU):
        return ops.relu(x)
    if isinstance(module, nn.PixelShuffle):
        return F.pixel_shuffle(x, module.upscale_factor)
    if isinstance(module, nn.PixelUnshuffle):
        return F.pixel_unshuffle(x, module.downscale_factor)
    if isinstance(module, nn.Sequential):
        for child in module:
            x = run(child, x, ops)
        return x
    raise TypeError(f"{type(module).__name__} has no exact implementation")


class OpsModule(nn.Module):
    """A module whose forward takes the numerics as a second argument."""

    def forward(self, x: torch.Tensor, ops=FLOAT) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class InceptionDWConv2d(OpsModule):
    """Identity, 3x3, 1x11 and 11x1 depthwise convolutions on a channel split."""

    def __init__(self, channels: int, square: int = 3, band: int = 11):
        super().__init__()
        c = channels // 8
        self.split = (channels - 3 * c, c, c, c)
        self.dwconv_hw = nn.Conv2d(c, c, square, padding=square // 2, groups=c)
        self.dwconv_w = nn.Conv2d(c, c, (1, band), padding=(0, band // 2), groups=c)
        self.dwconv_h = nn.Conv2d(c, c, (band, 1), padding=(band // 2, 0), groups=c)

    def forward(self, x, ops=FLOAT):
        x_id, x_hw, x_w, x_h = torch.split(x, self.split, dim=1)
        return torch.cat(
            (x_id, ops.conv(self.dwconv_hw, x_hw), ops.conv(self.dwconv_w, x_w), ops.conv(self.dwconv_h, x_h)), dim=1
        )


class InceptionNeXt(OpsModule):
    def __init__(self, channels: int):
        super().__init__()
        self.depthconv = InceptionDWConv2d(channels)
        self.conv1 = nn.Conv2d(channels, channels * 2, 1)
        self.conv2 = nn.Conv2d(channels * 2, channels, 1)

    def forward(self, x, ops=FLOAT):
        h = ops.gelu(ops.conv(self.conv1, self.depthconv(x, ops)))
        return ops.add(x, ops.conv(self.conv2, h))


class GatedCNN(OpsModule):
    """MambaOut's gated CNN block: LayerNorm, 1x1 to 4C, GELU(a) * dwconv3x3(b), 1x1 back."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.fc1 = nn.Conv2d(channels, channels * 4, 1)
        self.conv = nn.Conv2d(channels * 2, channels * 2, 3, padding=1, groups=channels * 2)
        self.fc2 = nn.Conv2d(channels * 2, channels, 1)

    def forward(self, x, ops=FLOAT):
        a, b = ops.conv(self.fc1, ops.layernorm(self.norm, x)).chunk(2, dim=1)
        return ops.add(x, ops.conv(self.fc2, ops.mul(ops.gelu(a), ops.conv(self.conv, b))))


class BasicBlock(OpsModule):
    def __init__(self, channels: int):
        super().__init__()
        self.blocks = nn.Sequential(InceptionNeXt(channels), GatedCNN(channels))

    def forward(self, x, ops=FLOAT):
        return self.blocks[1](self.blocks[0](x, ops), ops)


class _TwoBranch(OpsModule):
    def forward(self, x, ops=FLOAT):
        return ops.add(run(self.branch1, x, ops), run(self.branch2, x, ops))


class Downsample(_TwoBranch):
    """Stride-2: [1x1, GELU, 3x3/2] + [1x1, GELU, depthwise 5x5/2]."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.branch1 = nn.Sequential(nn.Conv2d(cin, cout, 1), nn.GELU(), nn.Conv2d(cout, cout, 3, 2, 1))
        self.branch2 = nn.Sequential(nn.Conv2d(cin, cout, 1), nn.GELU(), nn.Conv2d(cout, cout, 5, 2, 2, groups=cout))


class Upsample(_TwoBranch):
    """x2: [3x3, GELU, 1x1 to 4o, shuffle] + [depthwise 5x5, GELU, 1x1 to 4o, shuffle]."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.branch1 = nn.Sequential(
            nn.Conv2d(cin, cin, 3, padding=1), nn.GELU(), nn.Conv2d(cin, cout * 4, 1), nn.PixelShuffle(2)
        )
        self.branch2 = nn.Sequential(
            nn.Conv2d(cin, cin, 5, padding=2, groups=cin), nn.GELU(), nn.Conv2d(cin, cout * 4, 1), nn.PixelShuffle(2)
        )


class Adapter(_TwoBranch):
    """[1x1 to m, GELU, depthwise 5x5, GELU, 1x1 to o] + 1x1, with m = (i + o) // 2."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = (cin + cout) // 2
        self.branch1 = nn.Sequential(
            nn.Conv2d(cin, mid, 1), nn.GELU(), nn.Conv2d(mid, mid, 5, padding=2, groups=mid), nn.GELU(),
            nn.Conv2d(mid, cout, 1),
        )
        self.branch2 = nn.Conv2d(cin, cout, 1)


class LRP(OpsModule):
    """Latent residual prediction: two adapters, i -> (i + o) // 2 -> o (tanh applied by the caller)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = (cin + cout) // 2
        self.block = nn.Sequential(Adapter(cin, mid), Adapter(mid, cout))

    def forward(self, x, ops=FLOAT):
        return self.block[1](self.block[0](x, ops), ops)


class Stack(OpsModule):
    """An ``nn.Sequential`` that passes the numerics on (keeps the checkpoint's numbering)."""

    def __init__(self, *layers: nn.Module):
        super().__init__()
        for i, layer in enumerate(layers):
            self.add_module(str(i), layer)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, i: int) -> nn.Module:
        return list(self._modules.values())[i]

    def __len__(self) -> int:
        return len(self._modules)

    def forward(self, x, ops=FLOAT):
        for layer in self:
            x = layer(x, ops) if isinstance(layer, OpsModule) else run(layer, x, ops)
        return x


class StarBlock(OpsModule):
    """AEIC's StarBlock: t = LN(InceptionDW(x)); a, b = 1x1 (C -> 4C) of t; x + 1x1 (2C -> C) of GELU(a) * b."""

    def __init__(self, channels: int):
        super().__init__()
        self.dwconv = InceptionDWConv2d(channels)
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.fc1 = nn.Conv2d(channels, channels * 4, 1)
        self.fc2 = nn.Conv2d(channels * 2, channels, 1)

    def forward(self, x, ops=FLOAT):
        a, b = ops.conv(self.fc1, ops.layernorm(self.norm, self.dwconv(x, ops))).chunk(2, dim=1)
        return ops.add(x, ops.conv(self.fc2, ops.mul(ops.gelu(a), b)))


class ShuffleDown(OpsModule):
    """AEIC's Downsample(i -> o): 3x3 conv (i -> o/4), then PixelUnshuffle(2)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout // 4, 3, padding=1), nn.PixelUnshuffle(2))

    def forward(self, x, ops=FLOAT):
        return run(self.body, x, ops)


class ShuffleUp(OpsModule):
    """AEIC's Upsample(i -> o): 3x3 conv (i -> 4o), then PixelShuffle(2)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout * 4, 3, padding=1), nn.PixelShuffle(2))

    def forward(self, x, ops=FLOAT):
        return run(self.body, x, ops)
