"""The bundled default model (weights/lite.safetensors): the README's main job works on a
fresh install, every rate point is a trained codec, and the weights ship in the wheel.

These use the real bundled weights, so they fail if the file is missing, untrained or
left out of the package; the numbers they check are the sample's (docs/default-model.md
has the evaluation on held-out photos).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from stablecodec import registry

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "src" / "stablecodec" / "samples" / "sample.png"
LITE = [s.name for s in registry.MODELS if s.family == "lite"]


def _psnr(a: Image.Image, b: Image.Image) -> float:
    x = np.asarray(a.convert("RGB"), dtype=np.float64)
    y = np.asarray(b.convert("RGB"), dtype=np.float64)
    return float(10 * np.log10(255.0**2 / np.mean((x - y) ** 2)))


@pytest.fixture(scope="module")
def clean_env(tmp_path_factory):
    """No external weights configured and no model named: what a fresh install sees."""
    mp = pytest.MonkeyPatch()
    mp.setenv("STABLECODEC_HOME", str(tmp_path_factory.mktemp("empty_home")))
    mp.delenv("STABLECODEC_MODEL", raising=False)
    yield
    mp.undo()


@pytest.fixture(scope="module")
def rate_points(clean_env):
    """(bytes, PSNR) of the sample at every lite rate point."""
    import stablecodec

    original = Image.open(SAMPLE)
    out = {}
    for name in LITE:
        codec = stablecodec.Codec(name, device="cpu", precision="fp32", progress=False)
        data = codec.encode(SAMPLE)
        assert stablecodec.info(data)["model"] == name
        out[name] = (len(data), _psnr(original, codec.decode(data)))
    return out


def test_readme_main_job_uses_the_bundled_default_model(clean_env, tmp_path):
    from stablecodec.cli import cli as main

    runner = CliRunner()
    scdc, png = tmp_path / "sample.scdc", tmp_path / "sample.decoded.png"
    r = runner.invoke(main, ["encode", str(SAMPLE), "-o", str(scdc), "--quiet"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["info", str(scdc), "--json"])
    assert r.exit_code == 0 and f'"{registry.DEFAULT_MODEL}"' in r.output, r.output
    r = runner.invoke(main, ["decode", str(scdc), "-o", str(png), "--quiet"])
    assert r.exit_code == 0, r.output
    decoded, original = Image.open(png), Image.open(SAMPLE)
    assert decoded.size == original.size
    bpp = scdc.stat().st_size * 8 / (original.width * original.height)
    assert bpp < 0.1
    assert _psnr(original, decoded) > 22.0


def test_every_rate_point_is_a_trained_codec(rate_points):
    sizes = [rate_points[n][0] for n in LITE]
    psnrs = [rate_points[n][1] for n in LITE]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes), rate_points
    assert psnrs == sorted(psnrs), rate_points
    # This sample (a detailed landscape) is hard: the shipped weights (22d7ff59) give
    # 20.9 dB at lite-1 (0.006 bpp), then +1.7, +1.2, +1.0, +1.0 dB per rate point (e11ae52a:
    # 21.1, then +1.3, +1.1, +1.0, +0.8); an export from 400 training steps gave 19.6 at
    # every rate, and one at an extrapolated lite-1 rate lost 3.5 dB there on kodak/.
    steps = np.diff(psnrs)
    assert psnrs[0] > 20.5 and (steps > 0.5).all() and psnrs[-1] > psnrs[0] + 3.0, rate_points


def test_bpp_target_picks_the_closest_lite_rate(clean_env):
    spec = registry.closest(0.03, family="lite")
    want = min((s for s in registry.MODELS if s.family == "lite"), key=lambda s: abs(np.log(s.bpp / 0.03)))
    assert spec.name == want.name


@pytest.mark.skipif(not (ROOT / "pyproject.toml").exists(), reason="needs the source tree")
def test_a_wheel_carries_the_default_weights(tmp_path):
    """A plain (non-editable) install gets the weights: they are in the wheel."""
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True)
    if r.returncode != 0 and "No module named" in r.stderr:
        pytest.skip(f"cannot build a wheel here: {r.stderr.strip().splitlines()[-1]}")
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("stablecodec-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "stablecodec/bundled/lite.safetensors" in names
    assert "stablecodec/samples/sample.png" in names


def _export_default():
    sys.path.insert(0, str(ROOT / "scripts"))
    import export_default

    return export_default


def test_export_prefers_a_trained_rate_to_an_extrapolated_one():
    """Part 3's rate estimate was flat below the lowest trained rate (0.0052-0.0054 bpp
    from -1 to 0): the closest estimate to 0.005 was at -0.875, an untrained gain that
    cost 3.5 dB on kodak/. Within 10% of the target, a trained rate wins."""
    ex = _export_default()
    grid = np.array([-1.0, -0.875, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 4.5])
    est = np.array([0.0053, 0.0052, 0.0054, 0.0054, 0.0066, 0.0094, 0.0267, 0.0658, 0.1278, 0.15])
    chosen = [float(grid[j]) for j in ex.choose_grid_points(grid, est, (0.005, 0.011, 0.023, 0.048, 0.1), 5)]
    assert chosen[0] == 0.0
    assert chosen == sorted(chosen) and len(set(chosen)) == 5
    # Past the trained range's reach the grid still extrapolates: 0.15 bpp lies only at 4.5.
    assert float(grid[ex.choose_grid_points(grid, est, (0.15,), 5)[0]]) == 4.5
