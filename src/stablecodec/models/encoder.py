"""The encoder stack's auxiliary branch: ELIC's analysis transform (paper Sec. 3.2).

StableCodec feeds the latent codec two views of the image: the SD-Turbo VAE latent
(``models/vae.py``, encoder with LoRA) and ELIC's analysis features, l_aux = g_a((x+1)/2),
320 channels at 1/16 (He et al., "ELIC", CVPR 2022). Only ``g_a`` of the official ELIC
checkpoint is used; names follow ``elic_official.pth`` (``elic-g_a-keys.tsv``).
"""

from __future__ import annotations

from torch import nn

from ._compressai import AttentionBlock


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

    # Receptive field of the whole transform: 265 px (4 stride-2 5x5 convolutions, 3x3s in
    # the bottlenecks and attention units), so 144 px of context make a window's core exact.
    HALO = 144

    def forward(self, x01, tile: int | None = None, progress=None):
        """x01: image in [0, 1] -> features at 1/16.

        With ``tile`` (image px, a multiple of 16), runs on windows of tile + 2 x 144 px and
        keeps each window's core: the transform is convolutional, so this is exact.
        """
        h, w = x01.shape[2:]
        if tile is None or (h <= tile and w <= tile):
            return self.analysis_transform(x01)
        if tile % 16:
            raise ValueError(f"tile must be a multiple of 16, got {tile}")
        out = None
        halo = self.HALO
        for t in range(0, h, tile):
            for l in range(0, w, tile):
                b, r = min(h, t + tile), min(w, l + tile)
                t0, l0, b0, r0 = max(0, t - halo), max(0, l - halo), min(h, b + halo), min(w, r + halo)
                y = self.analysis_transform(x01[:, :, t0:b0, l0:r0])
                if out is None:
                    out = y.new_empty((x01.shape[0], y.shape[1], (h + 15) // 16, (w + 15) // 16))
                ct, cl = (t - t0) // 16, (l - l0) // 16
                out[:, :, t // 16 : (b + 15) // 16, l // 16 : (r + 15) // 16] = y[:, :, ct : ct + (b - t + 15) // 16, cl : cl + (r - l + 15) // 16]
                if progress is not None:
                    progress(1)
        return out
