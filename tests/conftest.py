"""Shared fixtures: tiny models in the released layouts, generated images."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

DATA = Path(__file__).parent / "data"


def smooth_image(h: int, w: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    """A photo-like float32 image in [0, 1]: smooth gradients plus some texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for c in range(channels):
        fy, fx, ph = rng.uniform(1, 4), rng.uniform(1, 4), rng.uniform(0, 6.28)
        base = 0.5 + 0.3 * np.sin(fy * yy / max(h, 1) * 3.14 + fx * xx / max(w, 1) * 3.14 + ph)
        out.append(base + 0.05 * rng.standard_normal((h, w)).astype(np.float32))
    return np.clip(np.stack(out, -1), 0, 1).astype(np.float32)


def save_png(path: Path, arr: np.ndarray) -> Path:
    from PIL import Image

    a = np.clip(np.round(arr * 255), 0, 255).astype(np.uint8)
    Image.fromarray(a[..., 0] if a.shape[2] == 1 else a).save(path)
    return path


@pytest.fixture(scope="session")
def tiny_release(tmp_path_factory) -> dict[str, Path]:
    """A weights directory with tiny random SD-Turbo, stablecodec_ft8.pkl and elic_official.pth."""
    from stablecodec import testing

    d = tmp_path_factory.mktemp("tiny_weights")
    files = testing.write_released(d, testing.tiny(), name="ft8")
    files["dir"] = d
    return files


@pytest.fixture(scope="session")
def tiny_codec(tiny_release):
    from stablecodec import Codec

    return Codec("ft8", weights_dir=tiny_release["dir"], device="cpu", precision="fp32")


@pytest.fixture()
def weights_home(tiny_release, tmp_path, monkeypatch) -> Path:
    """$STABLECODEC_HOME pointing at a copy-free view of the tiny release."""
    monkeypatch.setenv("STABLECODEC_HOME", str(tiny_release["dir"]))
    return tiny_release["dir"]


@pytest.fixture()
def photo(tmp_path) -> Path:
    return save_png(tmp_path / "photo.png", smooth_image(96, 136, seed=1))


def copy_release(src: dict[str, Path], dst: Path) -> Path:
    shutil.copytree(src["dir"], dst)
    return dst
