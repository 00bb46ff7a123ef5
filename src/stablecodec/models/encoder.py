"""The encoder stack's auxiliary branch: ELIC's analysis transform (paper Sec. 3.2).

StableCodec feeds the latent codec two views of the image: the SD-Turbo VAE latent
(``models/vae.py``, encoder with LoRA) and ELIC's analysis features, l_aux = g_a((x+1)/2),
320 channels at 1/16 (He et al., "ELIC", CVPR 2022). Only ``g_a`` of the official ELIC
checkpoint is used; names follow ``elic_official.pth`` (``elic-g_a-keys.tsv``).
"""

from __future__ import annotations

from compressai.layers import AttentionBlock
from torch import nn


def _conv(cin: int, cout: int, k: int = 5, stride: int = 2) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)


class ResidualBottleneck(nn.Module):
    """x + [1x1 (N -> N/2), ReLU, 3x3, ReLU, 1x1 (N/2 -> N)] (ELIC's official block)."""

    def __init__(self, n: int):
        super().__init__()
        self.branch = nn.Sequential(
            nn.Conv2d(n, n // 2, 1), nn.ReLU(inplace=True), nn.Conv2d(n // 2, n // 2, 3, padding=1),
            nn.ReLU(inplace=True), nn.Conv2d(n // 2, n, 1),
        )

    def forward(self, x):
        return x + self.branch(x)


class ElicAnalysis(nn.Module):
    """ELIC g_a: four stride-2 5x5 convolutions with residual bottlenecks and attention."""

    def __init__(self, N: int = 192, M: int = 320):
        super().__init__()
        rb = lambda: ResidualBottleneck(N)  # noqa: E731
        self.analysis_transform = nn.Sequential(
            _conv(3, N), rb(), rb(), rb(),
            _conv(N, N), rb(), rb(), rb(),
            AttentionBlock(N),
            _conv(N, N), rb(), rb(), rb(),
            _conv(N, M),
            AttentionBlock(M),
        )

    def forward(self, x01):
        """x01: image in [0, 1] -> features at 1/16."""
        return self.analysis_transform(x01)
