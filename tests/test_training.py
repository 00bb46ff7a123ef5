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


def _part(tmp: Path, out: str, init: str, steps: int, *extra: str) -> dict:
    cmd = [sys.executable, str(SCRIPT), "--data", str(tmp / "train"), "--val", str(tmp / "val"),
           "--out", str(tmp / out), "--init", init, "--steps", str(steps), "--batch", "2", "--crop", "64",
           "--scales", "1.0", "--val-images", "1", "--val-every", "1000", "--threads", "2",
           "--export", "none", "--no-amp", "--min-gain", "-1000", *extra]
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


def _train_module():
    sys.path.insert(0, str(ROOT / "scripts"))
    import train_default

    return train_default


@pytest.mark.parametrize("with_trained", [True, False])
def test_a_part_started_from_a_weights_file_resumes_its_trained_gains(tmp_path, with_trained):
    """Checkpoints stay on the machine that trained; the shipped file travels. With the
    trained gains stored beside its rate points a part resumes at its trained rates; an
    older file's rate points are re-spread (and the lineage says which)."""
    from stablecodec.models.lite import LiteNet
    from stablecodec.models.latent_codec import GAIN_NAMES
    from stablecodec.weights.lite import load_lite, load_trained_gains, save_lite

    td = _train_module()
    trained = LiteNet()
    td.init_gains(trained)
    with torch.no_grad():  # gains no spread of the exported points could give back
        trained.codec.gain_z.mul_(torch.linspace(0.5, 2.0, trained.codec.gain_z.shape[1]))
    gains = {n: getattr(trained.codec, n).detach().clone() for n in GAIN_NAMES}
    path = tmp_path / "lite.safetensors"
    rates = [{"name": f"lite-{i + 1}", "trained_rate": float(i)} for i in range(5)]
    fp = save_lite(trained, path, rates, training={"steps": 7}, trained_gains=gains if with_trained else None)
    assert load_lite(path)[1] == fp  # the stored gains take no part in coding or the fingerprint
    assert (load_trained_gains(path) is not None) == with_trained
    net, lineage = td.from_weights(path)
    assert lineage["steps_before"] == 7 and lineage["init_gains"] == ("trained" if with_trained else "re-spread")
    same = all(torch.equal(getattr(net.codec, n), gains[n]) for n in GAIN_NAMES)
    assert same == with_trained


def test_a_grown_part_starts_where_its_init_was_and_trains_the_new_blocks(first_part):
    """--grow adds synthesis blocks as identities: the part's start is its init's best state
    to the last digit, the new blocks move, and a later part (and the export) rebuilds the
    grown network from the checkpoint's config."""
    tmp, run1 = first_part
    best1 = tmp / "part1" / "best.pt"
    run = _part(tmp, "grown", str(best1), 2, "--grow", "1", "1", "--grow-lr", "1e-2")
    assert run["grown"] == [1, 1] and run["val_start"] == run1["val_best"]
    ck = torch.load(tmp / "grown" / "checkpoint.pt", weights_only=False)
    assert tuple(ck["config"]["synthesis_extra"]) == (1, 1)
    assert float(ck["model"]["synthesis.extra2.0.blocks.1.fc2.weight"].abs().max()) > 0  # zero at the start
    td = _train_module()
    net, lineage = td.from_checkpoint(tmp / "grown" / "checkpoint.pt")
    assert net.cfg.synthesis_extra == (1, 1) and lineage["steps_before"] == run["steps_before"] + 2


def test_grow_makes_identities_and_names_only_the_new_parameters():
    from stablecodec.models.lite import LiteNet

    td = _train_module()
    torch.manual_seed(0)
    net = LiteNet().eval()
    grown, new = td.grow(net, (2, 1))
    again, newer = td.grow(grown, (0, 1))
    assert grown.cfg.synthesis_extra == (2, 1) and again.cfg.synthesis_extra == (2, 2)
    assert new and all(k.startswith(("synthesis.extra1.", "synthesis.extra2.")) for k in new)
    assert newer and all(k.startswith("synthesis.extra2.1.") for k in newer)  # the earlier ones kept as grown
    x, rate = torch.rand(1, 3, 64, 64), torch.tensor([2])
    with torch.no_grad():
        ref = net(x, rate)[0]
        assert torch.equal(grown.eval()(x, rate)[0], ref) and torch.equal(again.eval()(x, rate)[0], ref)
