"""scripts/train_default.py in parts: a part can start from an earlier part's best.pt with
its trained rates as they are, and the lineage of steps carries over (issue 19: training
split over days and machines)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_default.py"


def _photos(folder: Path, n: int, seed: int) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:160, 0:200]
    for i in range(n):
        base = np.stack([(xx * (i + 1)) % 256, (yy * 2) % 256, (xx + yy) % 256], -1)
        noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(folder / f"p{i}.png")
    return folder


def _part(tmp: Path, out: str, init: str, steps: int) -> dict:
    cmd = [sys.executable, str(SCRIPT), "--data", str(tmp / "train"), "--val", str(tmp / "val"),
           "--out", str(tmp / out), "--init", init, "--steps", str(steps), "--batch", "2", "--crop", "64",
           "--scales", "1.0", "--val-images", "1", "--val-every", "1000", "--threads", "2",
           "--export", "none", "--no-amp", "--min-gain", "-1000"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((tmp / out / "runs.jsonl").read_text().splitlines()[-1])


@pytest.fixture(scope="module")
def first_part(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    _photos(tmp / "train", 3, 0)
    _photos(tmp / "val", 1, 1)
    return tmp, _part(tmp, "part1", "scratch", 3)


def test_a_part_starts_from_an_earlier_parts_best_state_unchanged(first_part):
    tmp, run1 = first_part
    best1 = tmp / "part1" / "best.pt"
    run2 = _part(tmp, "part2", str(best1), 2)
    # The lineage counts the earlier part's steps, and the start is measured on exactly
    # the earlier best state: no re-spread of the rate gains.
    assert run2["steps_before"] == torch.load(best1, weights_only=False)["step"]
    assert run2["init"] == str(best1) and len(run2["init_fingerprint"]) == 16
    assert run2["val_start"] == run1["val_best"]
