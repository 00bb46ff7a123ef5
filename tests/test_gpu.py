"""The GPU path (issue 18): the script that checks it on a CUDA machine runs here on CPU with
the tiny configuration, so it cannot rot; and where CUDA is present, the exact
entropy-parameter path must give on the GPU the integers it gives on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).parent.parent


def test_gpu_check_runs_on_cpu_quick(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--quick",
                        "--out", str(tmp_path), "--reps", "1"], capture_output=True, text=True, timeout=900)
    r = json.loads((tmp_path / "results.json").read_text())
    assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-2000:])
    assert r["failures"] == [] and r["correctness"]["cpu_file_device_y_hat_equal"]
    assert {s["precision"] for s in r["speed"]["stages"]} == {"fp32", "bf16"}
    assert all("entropy decoding" in s["stages_s"] and "UNet" in s["stages_s"] for s in r["speed"]["stages"])
    assert len(r["memory"]) == 2 and all("plan" in k for k in r["memory"][0] if k.endswith("_plan"))
    assert (tmp_path / "results.md").read_text().startswith("# GPU check")


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


@needs_cuda
def test_exact_path_on_cuda_equals_cpu_on_many_random_inputs():
    from stablecodec.models import fixedpoint as fx
    from stablecodec.models.latent_codec import LatentCodec
    from stablecodec.testing import codec_state, tiny

    lc = LatentCodec(tiny().codec).eval()
    lc.load_state_dict(codec_state(lc.cfg, seed=3))
    g = torch.Generator().manual_seed(0)
    for trial in range(4):
        y = torch.randn(1, lc.cfg.M, 16, 24, generator=g) * (1 + 4 * trial)
        lc.exact_device = "cpu"
        a = lc.compress_y(y)
        lc.exact_device = "cuda"
        b = lc.compress_y(y)
        assert a.payload == b.payload and a.symbol_crc == b.symbol_crc and torch.equal(a.y_hat, b.y_hat)
        assert torch.equal(lc.decompress(b.payload, b.symbol_crc, b.y_shape), a.y_hat)
    # the elementwise functions and the layer norm, at a million points
    ops_c, ops_g = fx.ExactOps(fx.V2), fx.ExactOps(fx.V2)
    q = torch.randint(-(1 << 30), 1 << 30, (1_000_000,), generator=g).double()
    for f in ("gelu", "half_tanh"):
        assert torch.equal(getattr(ops_c, f)(q), getattr(ops_g, f)(q.cuda()).cpu())
    norm = torch.nn.LayerNorm(960, eps=1e-6)
    x = ops_c.to_fixed(torch.randn(1, 960, 8, 8, generator=g) * 3)
    assert torch.equal(ops_c.layernorm(norm, x), ops_g.layernorm(norm, x.cuda()).cpu())


@needs_cuda
def test_golden_files_decode_on_cuda_to_the_stored_y_hat():
    from stablecodec import Codec, container
    from stablecodec.models.latent_codec import rules_for_format

    golden = ROOT / "tests" / "data" / "golden"
    codec = Codec("ft8", weights_dir=golden, device="cuda")
    m = codec.get_model().model
    for name in json.loads((golden / "golden.json").read_text())["files"]:
        data = (golden / f"{name}.scdc").read_bytes()
        h, payload = container.unpack(data)
        s = m.stride
        y = m.codec.decompress(payload, h.symbol_crc, m.y_shape((-(-h.height // s) * s, -(-h.width // s) * s)),
                               rules=rules_for_format(h.version[0]))
        assert np.array_equal(y.numpy(), np.load(golden / f"{name}.y.npy")), name
