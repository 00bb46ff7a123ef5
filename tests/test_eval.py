"""``stablecodec eval``: metrics against known values, the matched-rate search, report files."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import types

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import save_png, smooth_image
from PIL import Image, features

from stablecodec import baselines, metrics
from stablecodec import evaluate as ev
from stablecodec.cli_eval import eval_command

CPU = ["--device", "cpu", "--precision", "fp32"]
CODECS = ["jpeg", "webp"] + (["avif"] if features.check("avif") else [])


def run(*args):
    return CliRunner().invoke(eval_command, [str(a) for a in args], catch_exceptions=False)


def u8(arr: np.ndarray) -> np.ndarray:
    return metrics.as_uint8_rgb(arr)


@pytest.fixture()
def photos(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    save_png(d / "a.png", smooth_image(96, 128, seed=1))
    save_png(d / "b.png", smooth_image(72, 64, seed=2, channels=1))  # greyscale
    return d


# ---------------------------------------------------------------------------------------
# Metrics


@pytest.mark.parametrize("size", [(200, 180), (64, 80)])  # 5 scales; fewer scales
def test_identical_images_psnr_inf_ms_ssim_one(size):
    img = u8(smooth_image(*size, seed=3))
    assert metrics.psnr(img, img) == math.inf
    assert metrics.ms_ssim(img, img) == pytest.approx(1.0, abs=1e-9)


def test_psnr_of_a_known_error():
    ref = np.full((40, 50, 3), 128, np.uint8)
    checker = np.where((np.indices((40, 50)).sum(0) % 2)[..., None] == 0, 5, -5)
    # Every value off by exactly 5: MSE 25.
    assert metrics.psnr(ref, (ref + checker).astype(np.uint8)) == pytest.approx(10 * math.log10(255**2 / 25), abs=1e-9)
    # Gaussian noise of sigma 8 without clipping: 20 log10(255 / 8) dB, up to sampling and rounding.
    rng = np.random.default_rng(0)
    noisy = np.clip(np.round(128 + rng.normal(0, 8, (256, 256, 3))), 0, 255).astype(np.uint8)
    ref = np.full_like(noisy, 128)
    assert metrics.psnr(ref, noisy) == pytest.approx(20 * math.log10(255 / 8), abs=0.05)


def test_ms_ssim_scales_follow_the_window_rule():
    assert metrics.ms_ssim_scales(161, 500) == 5
    assert metrics.ms_ssim_scales(160, 500) == 4
    assert metrics.ms_ssim_scales(81, 81) == 4
    assert metrics.ms_ssim_scales(80, 81) == 3
    assert metrics.ms_ssim_scales(11, 40) == 1
    assert metrics.ms_ssim_scales(10, 40) == 0
    tiny = u8(smooth_image(8, 20))
    assert math.isnan(metrics.ms_ssim(tiny, tiny))


def test_ms_ssim_fallback_equals_the_library_at_five_scales():
    import torch
    from pytorch_msssim import ms_ssim

    a = u8(smooth_image(170, 176, seed=4))
    b = u8(np.clip(a / 255.0 + np.random.default_rng(1).normal(0, 0.05, a.shape), 0, 1))
    x = torch.from_numpy(a.transpose(2, 0, 1)[None] / 255.0)
    y = torch.from_numpy(b.transpose(2, 0, 1)[None] / 255.0)
    assert metrics._ms_ssim_fewer_scales(x, y, 5) == pytest.approx(float(ms_ssim(x, y, data_range=1.0)), abs=1e-12)
    assert metrics.ms_ssim(a, b) == pytest.approx(float(ms_ssim(x, y, data_range=1.0)), abs=1e-12)


@pytest.mark.parametrize("size", [(200, 200), (64, 64)])
def test_ms_ssim_falls_as_noise_grows(size):
    a = smooth_image(*size, seed=5)
    rng = np.random.default_rng(2)
    scores = [metrics.ms_ssim(u8(a), u8(np.clip(a + rng.normal(0, s, a.shape), 0, 1))) for s in (0.01, 0.05, 0.2)]
    assert 1.0 > scores[0] > scores[1] > scores[2] > 0.0


def test_patches_follow_the_hifc_grid():
    img = np.arange(512 * 768 * 3, dtype=np.int64).reshape(512, 768, 3)
    p = metrics.extract_patches(img)
    # 2 x 3 aligned patches, then (512-128)//256 x (768-128)//256 = 1 x 2 shifted by 128.
    assert p.shape == (8, 256, 256, 3)
    np.testing.assert_array_equal(p[0], img[:256, :256])
    np.testing.assert_array_equal(p[5], img[256:, 512:])
    np.testing.assert_array_equal(p[6], img[128:384, 128:384])
    np.testing.assert_array_equal(p[7], img[128:384, 384:640])
    assert metrics.extract_patches(np.zeros((200, 900, 3), np.uint8)).shape == (0, 256, 256, 3)


def test_fid_and_kid_on_known_features():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(3000, 8))
    assert metrics.frechet_distance(real, real) == pytest.approx(0.0, abs=1e-6)
    shift = np.array([1.0, -2.0, 0, 0, 0, 0, 0, 0.5])
    # Same covariance, moved mean: FID is the squared distance of the means.
    assert metrics.frechet_distance(real, real + shift) == pytest.approx(float(shift @ shift), rel=1e-6)
    same, _ = metrics.kernel_inception_distance(real, real.copy(), subsets=20, subset_size=500)
    moved, _ = metrics.kernel_inception_distance(real, real + shift, subsets=20, subset_size=500)
    assert abs(same) < 0.05 < moved
    assert math.isnan(metrics.frechet_distance(real[:1], real[:1]))


def test_learned_metrics_are_skipped_with_one_note_each_when_not_installed(monkeypatch):
    for mod in ("lpips", "DISTS_pytorch", "piq", "torch_fidelity", "torch_fidelity.feature_extractor_inceptionv3"):
        monkeypatch.setitem(sys.modules, mod, None)  # import fails
    m = metrics.LearnedMetrics("cpu")
    assert m.lpips is m.dists is m.features is None
    assert len(m.notes) == 3 and all("\n" not in n and "skipped" in n for n in m.notes)
    assert [n.split()[0] for n in m.notes] == ["LPIPS", "DISTS", "FID/KID"]


def test_learned_metrics_never_build_without_local_weights(monkeypatch, tmp_path):
    import torch.hub

    built = []
    fake = types.ModuleType("lpips")
    fake.LPIPS = lambda **kw: built.append(kw)  # would download AlexNet
    monkeypatch.setitem(sys.modules, "lpips", fake)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    m = metrics.LearnedMetrics("cpu")
    assert not built and m.lpips is None
    assert any(n.startswith("LPIPS not available") and metrics.ALEXNET in n for n in m.notes)
    with metrics.offline(), pytest.raises(RuntimeError, match="local weights only"):
        torch.hub.load_state_dict_from_url("https://example.invalid/x.pth", model_dir=str(tmp_path / "c"))


# ---------------------------------------------------------------------------------------
# Matched-rate search


def test_best_setting_binary_search_and_non_monotone_sizes():
    def search(sizes, budget):
        return baselines.best_setting(lambda q: sizes[q], 0, len(sizes) - 1, lambda n: n <= budget)

    sizes = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert search(sizes, 55) == 4 and search(sizes, 5) is None and search(sizes, 100) == 9
    assert search(sizes, 10) == 0
    dip = [10, 20, 30, 40, 50, 60, 45, 48, 90, 100]  # a larger setting that happens to be smaller
    assert search(dip, 49) == 7
    calls = []

    def counted(q):
        calls.append(q)
        return q * 10

    baselines.best_setting(counted, 0, 100, lambda n: n <= 333)
    assert len(set(calls)) < 20  # a search, not a scan


@pytest.mark.parametrize("codec", CODECS)
def test_matched_rate_is_the_best_setting_under_the_budget(codec):
    img = Image.fromarray(u8(smooth_image(128, 128, seed=6)))
    b = baselines.BASELINES[codec]
    search = baselines.MatchedRate(img)
    pixels = 128 * 128
    lowest = baselines.bpp_of(len(b.encode(img, b.qmin)), pixels)
    for target in (lowest * 1.5, lowest * 4):
        m = search.search(b, target)
        assert m.quality is not None and m.bpp == baselines.bpp_of(m.bytes, pixels) <= target
        assert m.reconstruction.shape == (128, 128, 3)
        full = next(c for c in m.candidates if c.scale == "1")
        # At full size, the best quality that fits: every higher quality overshoots.
        assert full.bytes == len(b.encode(img, full.quality))  # the real file size
        assert all(baselines.bpp_of(len(b.encode(img, q)), pixels) > target for q in range(full.quality + 1, b.qmax + 1))
        # The answer is the best of full size and the downscaled options.
        assert metrics.psnr(u8(smooth_image(128, 128, seed=6)), m.reconstruction) >= full.psnr - 1e-9
        if m.scale == "1":
            assert m.setting == f"q={m.quality}" and m.bytes == full.bytes


@pytest.mark.parametrize("codec", CODECS)
def test_below_the_lowest_rate_the_image_is_downscaled(codec):
    # Large enough that AVIF's ~300-byte container still fits under the reduced budget.
    img = Image.fromarray(u8(smooth_image(224, 256, seed=7)))
    b = baselines.BASELINES[codec]
    pixels = 224 * 256
    lowest = baselines.bpp_of(len(b.encode(img, b.qmin)), pixels)
    target = lowest * 0.6
    m = baselines.MatchedRate(img).search(b, target)
    assert m.quality is not None and m.scale != "1" and 0 < m.scale_factor < 1 and "downscaled" in m.note
    assert m.bpp <= target and m.reconstruction.shape == (224, 256, 3)
    assert len(m.candidates) > 1 and all(c.bpp <= target for c in m.candidates)
    # The scale with the best PSNR wins, and the reported PSNR is that of the upscaled result.
    assert metrics.psnr(u8(np.asarray(img)), m.reconstruction) == max(c.psnr for c in m.candidates)
    # The file is that of the downscaled image; bpp counts the original's pixels.
    w, h = max(1, round(256 * m.scale_factor)), max(1, round(224 * m.scale_factor))
    small = img.resize((w, h), Image.LANCZOS)
    assert m.bytes == len(b.encode(small, m.quality)) and m.bpp == baselines.bpp_of(m.bytes, pixels)
    # ...and at that scale, it is the best quality that fits.
    assert all(baselines.bpp_of(len(b.encode(small, q)), pixels) > target for q in range(m.quality + 1, b.qmax + 1))


def test_absurd_target_is_unreachable_not_an_error():
    img = Image.fromarray(u8(smooth_image(64, 64)))
    m = baselines.MatchedRate(img).search(baselines.BASELINES["jpeg"], 1e-6)
    assert m.quality is None and m.bpp is None and m.reconstruction is None
    assert m.note.startswith("unreachable") and "smallest file" in m.note


# ---------------------------------------------------------------------------------------
# The command


def test_report_files_parse(tiny_release, tiny_codec, photos, tmp_path):
    out_csv, out_json, plots = tmp_path / "r.csv", tmp_path / "r.json", tmp_path / "plots"
    r = run(photos, "--model", "ft8", "--weights-dir", tiny_release["dir"], *CPU, "--bpp", "0.5,2",
            "--baselines", "jpeg,webp", "--csv", out_csv, "--json", out_json, "--plot", plots)
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output and "LPIPS" in r.stderr  # the one-line skip note
    table = r.stdout.splitlines()
    assert table[0].split()[:3] == ["codec", "setting", "target"] and len(table) == 1 + 1 + 2 * 2

    rows = list(csv.DictReader(io.StringIO(out_csv.read_text())))
    assert len(rows) == 2 * (1 + 2 * 2)  # images x (model + baselines x targets)
    for col in ("image", "codec", "setting", "target_bpp", "bpp", "bytes", "psnr", "ms_ssim", "lpips", "dists",
                "scale", "note"):
        assert col in rows[0]
    model = [r for r in rows if r["codec"] == "stablecodec"]
    assert {r["setting"] for r in model} == {"ft8"} and len(model) == 2
    for row in model:
        # The rate is the real .scdc size, header included, as the library writes it.
        data = tiny_codec.encode(photos / row["image"])
        assert int(row["bytes"]) == len(data)
        assert float(row["bpp"]) == pytest.approx(len(data) * 8 / (int(row["width"]) * int(row["height"])), abs=1e-6)
        assert float(row["psnr"]) > 0 and 0 <= float(row["ms_ssim"]) <= 1
    for row in rows:
        if row["codec"] in ("jpeg", "webp") and row["bpp"]:
            assert float(row["bpp"]) <= float(row["target_bpp"])
            assert float(row["scale"]) <= 1

    doc = json.loads(out_json.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert doc["images"] == ["a.png", "b.png"] and len(doc["results"]) == len(rows)
    assert doc["metrics_available"]["lpips"] is False and len(doc["notes"]) >= 3
    groups = {(s["codec"], s["target_bpp"]) for s in doc["summary"]}
    assert groups == {("stablecodec", None), ("jpeg", 0.5), ("jpeg", 2.0), ("webp", 0.5), ("webp", 2.0)}
    pytest.importorskip("matplotlib")
    assert (plots / "rd_psnr.png").read_bytes()[:4] == b"\x89PNG" and (plots / "rd_ms_ssim.png").exists()


def test_bpp_alone_picks_the_closest_model(tiny_release, photos, tmp_path):
    r = run(photos, "--bpp", "0.017", "--family", "stablecodec", "--weights-dir", tiny_release["dir"], *CPU,
            "--baselines", "none", "--json", tmp_path / "r.json", "-q")
    assert r.exit_code == 0, r.output
    assert r.stderr == ""  # --quiet: no notes
    doc = json.loads((tmp_path / "r.json").read_text())
    assert {x["setting"] for x in doc["results"]} == {"ft8"}
    assert {x["target_bpp"] for x in doc["results"]} == {0.017}


def test_missing_default_model_is_one_note_and_baselines_run(photos, tmp_path, monkeypatch):
    monkeypatch.setenv("STABLECODEC_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("STABLECODEC_MODEL", "ft8")
    r = run(photos, "--baselines", "jpeg", "--csv", tmp_path / "r.csv")
    assert r.exit_code == 0, r.output
    notes = [line for line in r.stderr.splitlines() if "ft8" in line]
    assert len(notes) == 1 and notes[0].startswith("stablecodec: note: model ft8 skipped")
    rows = list(csv.DictReader(io.StringIO((tmp_path / "r.csv").read_text())))
    assert {r["codec"] for r in rows} == {"jpeg"} and {r["target_bpp"] for r in rows} == {"0.017"}


def test_user_errors_are_one_line_and_exit_1(tiny_release, photos, tmp_path, monkeypatch):
    monkeypatch.setenv("STABLECODEC_HOME", str(tmp_path / "empty"))
    r = run(tmp_path / "nowhere", "--baselines", "jpeg", "--bpp", "0.1")
    assert r.exit_code == 1 and r.stderr.strip() == f"stablecodec: error: {tmp_path / 'nowhere'}: no such file or folder"
    r = run(photos, "--model", "ft8", "--baselines", "none")
    assert r.exit_code == 1 and "weights of model ft8 not found" in r.stderr and len(r.stderr.splitlines()) == 1
    r = run(photos, "--model", "nosuch", "-q")
    assert r.exit_code == 1 and "unknown model 'nosuch'" in r.stderr and "Traceback" not in r.output
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    r = run(empty, "--bpp", "0.1", "-q")
    assert r.exit_code == 1 and "no images" in r.stderr
    existing = tmp_path / "keep.csv"
    existing.write_text("precious")
    r = run(photos, "--model", "none", "--bpp", "1", "--baselines", "jpeg", "--csv", existing, "-q")
    assert r.exit_code == 1 and "exists; use --force" in r.stderr and existing.read_text() == "precious"


def test_usage_errors_exit_2(photos):
    assert run(photos, "--bpp", "fast").exit_code == 2
    assert run(photos, "--bpp", "-0.1").exit_code == 2
    assert run(photos, "--baselines", "jpeg,gif").exit_code == 2
    assert run(photos, "--device", "tpu").exit_code == 2
    assert run().exit_code == 2


def test_a_bad_image_fails_the_run_but_not_the_others(photos, tmp_path):
    (photos / "broken.png").write_text("not an image")
    r = run(photos, "--model", "none", "--bpp", "1", "--baselines", "jpeg", "--json", tmp_path / "r.json", "-q")
    assert r.exit_code == 1 and "Traceback" not in r.output
    errors = [line for line in r.stderr.splitlines() if line.startswith("stablecodec: error:")]
    assert len(errors) == 1 and "broken.png" in errors[0] and "not an image" in errors[0]
    doc = json.loads((tmp_path / "r.json").read_text())
    assert {x["image"] for x in doc["results"]} == {"a.png", "b.png"} and len(doc["errors"]) == 1


def test_interrupt_keeps_what_was_measured(photos, tmp_path, monkeypatch):
    calls = []
    real = baselines.MatchedRate.search

    def search(self, codec, target):
        calls.append(target)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, codec, target)

    monkeypatch.setattr(baselines.MatchedRate, "search", search)
    r = run(photos, "--model", "none", "--bpp", "1,2", "--baselines", "jpeg", "--json", tmp_path / "r.json", "-q")
    assert r.exit_code == 130 and "interrupted" in r.stderr
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["interrupted"] is True and len(doc["results"]) == 1


def test_model_plan(monkeypatch):
    monkeypatch.delenv("STABLECODEC_MODEL", raising=False)
    assert [r.name for r in ev.plan_models([], [])] == ["lite-3"]
    assert [(r.name, r.explicit) for r in ev.plan_models(["ft8,ft2", "ft8"], [0.1])] == [("ft8", True), ("ft2", True)]
    assert ev.plan_models(["none"], [0.1]) == []
    # One model per target, closest in log rate; a model closest to two targets is run once;
    # the fine-tuned ft2 rather than "base", which shares its typical rate.
    plan = ev.plan_models([], [0.035, 0.0101, 0.0099], family="stablecodec")
    assert [(r.name, r.target_bpp) for r in plan] == [("ft2", 0.035), ("ft16", 0.0101)]
