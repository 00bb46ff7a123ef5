"""The stage benchmark (benchmarks/stages.py) on small inputs: every stage runs and is
counted. Its lite half went unrun for a week because nothing called it."""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import stages  # noqa: E402

LITE = ["analysis", "g_a + h_a", "entropy encoding", "entropy decoding", "g_s", "synthesis"]
FULL = ["VAE encoder", "ELIC encoder", "g_a + h_a", "entropy encoding", "entropy decoding", "g_s",
        "auxiliary decoder", "UNet", "VAE decoder"]


def _run_all(st: dict) -> dict[str, dict[str, int]]:
    with torch.no_grad():
        return {name: stages.flops(fn) for name, fn in st.items()}


def test_lite_stages_run_and_count_their_flops():
    load_s, st = stages.lite_stages("fp32", 64, 96, repeat=1)
    assert list(st) == LITE and load_s > 0
    fl = _run_all(st)
    assert all(sum(v.values()) > 0 for v in fl.values()), fl
    assert set(fl["entropy decoding"]) == {"float64"}  # the exact path
    assert set(fl["synthesis"]) == {"float32"}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_full_stages_run_on_the_tiny_release(tiny_release, precision):
    load_s, st = stages.full_stages(tiny_release["dir"], precision, 200, 300, repeat=1)
    assert list(st) == FULL
    fl = _run_all(st)
    assert all(sum(v.values()) > 0 for v in fl.values()), fl
    assert "float64" in fl["entropy decoding"]
    if precision == "bf16":
        assert "bfloat16" in fl["VAE decoder"] and "float32" in fl["UNet"]  # the UNet's float32 level


def test_floor_rates_are_positive_and_keyed_by_device():
    assert stages.rate_key("cpu", torch.bfloat16) == "bfloat16"
    assert stages.rate_key("cuda", torch.float16) == "cuda/float16"
    assert stages.conv_rate(torch.float32, reps=1) > 0


def test_no_benchmark_or_script_shadows_an_installed_module():
    # Tests put benchmarks/ and scripts/ first on sys.path; a file there named like an
    # installed package (benchmarks/kernels.py vs transformers' `kernels`) broke every test
    # that imported diffusers in a fresh environment.
    taken = set(importlib.metadata.packages_distributions()) | set(sys.stdlib_module_names)
    ours = {p.stem for d in ("benchmarks", "scripts") for p in (ROOT / d).glob("*.py")}
    assert not ours & taken, sorted(ours & taken)
