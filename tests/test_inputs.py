"""Inputs as users have them, outputs in the format asked for, and choosing a rate (issue 5).

Reading: formats, EXIF orientation, greyscale, alpha, 16-bit, decompression bombs, size
limits, memory. Writing: the format from the output name. Rates: ``--bpp`` and
``stablecodec models``. CLI tests use the tiny random-weight model "ft8" (``weights_home``).
"""

from __future__ import annotations

import io
import json
import math
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import save_png, smooth_image
from stablecodec import imageio, registry
from stablecodec.cli import cli, pick_model
from stablecodec.errors import ImageError, LimitError

M = ["--model", "ft8", "--device", "cpu", "--precision", "fp32"]


def run(*args, input=None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)


def rgb8(h: int = 40, w: int = 56, seed: int = 0) -> np.ndarray:
    return np.clip(np.round(smooth_image(h, w, seed=seed) * 255), 0, 255).astype(np.uint8)


def info_of(path: Path) -> dict:
    r = run("info", path, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def one_line_error(r) -> str:
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stablecodec: error: "), r.stderr
    return lines[0]


def png16_rgb(h: int, w: int) -> bytes:
    """A 16-bit-per-channel RGB PNG, written by hand (Pillow cannot write one)."""
    rng = np.random.default_rng(0)
    rows = b"".join(b"\x00" + rng.integers(0, 65535, w * 3, dtype=np.uint16).astype(">u2").tobytes() for _ in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


# ---------------------------------------------------------------------------------------
# Formats


def test_every_common_format_is_read(weights_home, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    arr = rgb8()
    for ext in ("png", "jpg", "webp", "tif", "bmp"):
        Image.fromarray(arr).save(src / f"x_{ext}.{ext}")
    r = run("encode", src, "-o", tmp_path / "out", "--json", tmp_path / "r.json", *M)
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["done"] == 5
    assert all((rec["width"], rec["height"]) == (56, 40) for rec in rep["results"])


@pytest.mark.parametrize("ext,magic,fmt", [("png", b"\x89PNG", "PNG"), ("jpg", b"\xff\xd8", "JPEG"),
                                           ("webp", b"RIFF", "WEBP"), ("tif", b"II*\x00", "TIFF"), ("bmp", b"BM", "BMP")])
def test_decode_writes_the_format_the_name_says(weights_home, tmp_path, ext, magic, fmt):
    a = save_png(tmp_path / "a.png", smooth_image(40, 56))
    assert run("encode", a, *M).exit_code == 0
    out = tmp_path / f"dec.{ext}"
    r = run("decode", tmp_path / "a.scdc", "-o", out, *M)
    assert r.exit_code == 0, r.output
    assert out.read_bytes()[: len(magic)] == magic
    with Image.open(out) as im:
        assert im.format == fmt and im.size == (56, 40)


def test_decode_defaults_to_png(weights_home, tmp_path):
    a = save_png(tmp_path / "a.png", smooth_image(40, 56))
    assert run("encode", a, "-o", tmp_path / "a.scdc", *M).exit_code == 0
    (tmp_path / "a.png").unlink()
    assert run("decode", tmp_path / "a.scdc", *M).exit_code == 0
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    assert run("decode", tmp_path / "a.scdc", "-o", tmp_path / "noext", *M).exit_code == 0
    assert (tmp_path / "noext").read_bytes()[:4] == b"\x89PNG"
    assert run("decode", tmp_path / "a.scdc", "--format", "webp", *M).exit_code == 0
    assert (tmp_path / "a.webp").read_bytes()[:4] == b"RIFF"


def test_single_file_into_a_folder(weights_home, tmp_path):
    a = save_png(tmp_path / "a.png", smooth_image(40, 56))
    assert run("encode", a, "-o", str(tmp_path / "new") + "/", *M).exit_code == 0
    assert (tmp_path / "new" / "a.scdc").is_file()


# ---------------------------------------------------------------------------------------
# EXIF orientation


def exif_jpeg(path: Path, orientation: int = 6) -> np.ndarray:
    arr = rgb8(48, 80)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(path, exif=exif, quality=95)
    return arr


def test_exif_orientation_is_applied(weights_home, tmp_path):
    jpg = tmp_path / "rot.jpg"
    exif_jpeg(jpg)
    with Image.open(jpg) as im:
        assert im.size == (80, 48) and im.getexif()[0x0112] == 6
    r = run("encode", jpg, *M)
    assert r.exit_code == 0, r.output
    assert "EXIF orientation 6 applied" in r.stderr
    d = info_of(tmp_path / "rot.scdc")
    assert (d["width"], d["height"]) == (48, 80)  # stored 80x48, shown (and coded) upright
    r = run("decode", tmp_path / "rot.scdc", "-o", tmp_path / "back.png", *M)
    with Image.open(tmp_path / "back.png") as im:
        assert im.size == (48, 80)


def test_exif_orientation_pixels(tmp_path):
    jpg = tmp_path / "rot.jpg"
    exif_jpeg(jpg)
    with Image.open(jpg) as im:
        stored = np.asarray(im.convert("RGB"), dtype=np.float32) / 255
    img = imageio.load(jpg)
    # orientation 6: the camera was turned 90 degrees clockwise; upright = stored rotated clockwise
    np.testing.assert_array_equal(img.pixels, np.rot90(stored, k=-1))
    assert any("EXIF orientation 6" in n for n in img.notes)
    # an image without the tag gets no note and is not rotated
    Image.fromarray(rgb8(48, 80)).save(tmp_path / "plain.jpg")
    plain = imageio.load(tmp_path / "plain.jpg")
    assert plain.pixels.shape == (48, 80, 3) and plain.notes == []


def test_a_pil_image_given_to_load_is_not_modified(tmp_path):
    jpg = tmp_path / "rot.jpg"
    exif_jpeg(jpg)
    with Image.open(jpg) as im:
        im.load()
        assert imageio.load(im).pixels.shape == (80, 48, 3)
        assert im.size == (80, 48)


# ---------------------------------------------------------------------------------------
# Greyscale, alpha, 16-bit


def test_greyscale_is_coded_as_grey_and_decoded_to_one_channel(weights_home, tmp_path):
    g = save_png(tmp_path / "g.png", smooth_image(40, 56, channels=1))
    with Image.open(g) as im:
        assert im.mode == "L"
    r = run("encode", g, *M)
    assert r.exit_code == 0, r.output
    assert "greyscale: coded as grey" in r.stderr
    assert info_of(tmp_path / "g.scdc")["greyscale"]
    g.unlink()
    assert run("decode", tmp_path / "g.scdc", *M).exit_code == 0
    with Image.open(g) as im:
        assert im.mode == "L" and im.size == (56, 40)


def test_alpha_is_refused_with_a_clear_message(weights_home, tmp_path):
    rgba = np.dstack([rgb8(), np.full((40, 56), 200, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    line = one_line_error(run("encode", tmp_path / "a.png", *M))
    assert "a.png" in line and "alpha channel" in line and "--alpha=drop" in line
    assert not (tmp_path / "a.scdc").exists()


def test_alpha_drop_encodes_the_colours(weights_home, tmp_path):
    rgba = np.dstack([rgb8(), np.full((40, 56), 200, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    r = run("encode", tmp_path / "a.png", "--alpha=drop", *M)
    assert r.exit_code == 0, r.output
    assert "alpha channel dropped" in r.stderr
    assert not info_of(tmp_path / "a.scdc")["greyscale"]
    np.testing.assert_array_equal(imageio.load(tmp_path / "a.png", alpha="drop").pixels,
                                  rgb8().astype(np.float32) / 255)


def test_other_alpha_forms(tmp_path):
    la = Image.fromarray(np.dstack([rgb8()[..., 0], np.full((40, 56), 9, np.uint8)]), "LA")
    la.save(tmp_path / "la.png")
    with pytest.raises(ImageError, match="--alpha=drop"):
        imageio.load(tmp_path / "la.png")
    assert imageio.load(tmp_path / "la.png", alpha="drop").grey
    pal = Image.fromarray(rgb8()).convert("P")
    pal.info["transparency"] = 0
    pal.save(tmp_path / "p.png", transparency=0)
    with pytest.raises(ImageError, match="alpha"):
        imageio.load(tmp_path / "p.png")
    Image.fromarray(rgb8()).convert("P").save(tmp_path / "opaque.png")
    assert imageio.load(tmp_path / "opaque.png").pixels.shape == (40, 56, 3)


def test_16_bit_grey_gives_a_note_and_works(weights_home, tmp_path):
    a16 = (smooth_image(40, 56, channels=1)[..., 0] * 65535).astype(np.uint16)
    Image.fromarray(a16).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode == "I;16"
    r = run("encode", tmp_path / "g16.png", *M)
    assert r.exit_code == 0, r.output
    assert "16-bit input reduced to 8 bits" in r.stderr
    d = info_of(tmp_path / "g16.scdc")
    assert d["greyscale"] and (d["width"], d["height"]) == (56, 40)
    img = imageio.load(tmp_path / "g16.png")
    assert img.pixels.dtype == np.float32
    np.testing.assert_allclose(img.pixels[..., 0], a16 / 65535, atol=1e-6)  # full precision for the statistics


def test_16_bit_colour_gives_a_note(weights_home, tmp_path):
    (tmp_path / "c16.png").write_bytes(png16_rgb(24, 32))
    r = run("encode", tmp_path / "c16.png", *M)
    assert r.exit_code == 0, r.output
    assert "16-bit colour input read at 8 bits" in r.stderr


def test_notes_go_to_the_json_report_in_a_batch(weights_home, tmp_path):
    (tmp_path / "in").mkdir()
    save_png(tmp_path / "in" / "g.png", smooth_image(24, 32, channels=1))
    r = run("encode", tmp_path / "in", "-o", tmp_path / "out", "--json", tmp_path / "r.json", *M)
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "r.json").read_text())["results"][0]
    assert any(n.startswith("greyscale") for n in rec["notes"])


def test_other_modes_and_frames(tmp_path):
    Image.fromarray(rgb8()).convert("CMYK").save(tmp_path / "cmyk.jpg")
    assert imageio.load(tmp_path / "cmyk.jpg").pixels.shape == (40, 56, 3)
    Image.fromarray(rgb8()[..., 0]).convert("1").save(tmp_path / "bw.png")
    assert imageio.load(tmp_path / "bw.png").grey
    frames = [Image.fromarray(rgb8(seed=i)).convert("P") for i in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    img = imageio.load(tmp_path / "anim.gif")
    assert "only the first of 3 frames coded" in img.notes


# ---------------------------------------------------------------------------------------
# Broken, huge and hostile inputs


def test_unreadable_inputs_name_the_file(tmp_path):
    Image.fromarray(rgb8()).save(tmp_path / "a.jpg")
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageError, match=r"cut\.jpg: unreadable or truncated"):
        imageio.load(tmp_path / "cut.jpg")
    with pytest.raises(ImageError, match=r"nope\.png: no such file"):
        imageio.load(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="^input: not an image"):
        imageio.load(b"plain text")
    with pytest.raises(ImageError, match="^photo: not an image"):
        imageio.load(b"plain text", name="photo")


def test_decompression_bomb_limit_is_respected(weights_home, tmp_path, monkeypatch):
    a = save_png(tmp_path / "a.png", smooth_image(40, 56))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 40 x 56 = 2240 px: above it
    line = one_line_error(run("encode", a, *M))
    assert "a.png" in line and "decompression-bomb limit of 1,000 px" in line and "2,240 px" in line
    assert not (tmp_path / "a.scdc").exists()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # far above it: Pillow's error, same message
    with pytest.raises(ImageError, match="decompression-bomb"):
        imageio.load(a)


def test_an_image_too_large_for_the_codec_is_refused_before_decoding(weights_home, tmp_path):
    Image.new("RGB", (16385, 2)).save(tmp_path / "wide.png")
    line = one_line_error(run("encode", tmp_path / "wide.png", *M))
    assert "wide.png: image size 16385x2 exceeds the limit" in line
    with pytest.raises(LimitError):
        imageio.load(tmp_path / "wide.png")


def test_load_makes_float32_without_a_float64_temporary():
    buf = io.BytesIO()
    Image.fromarray(rgb8(200, 200)).save(buf, "PNG")
    data = buf.getvalue()
    imageio.load(data)  # warm up imports
    tracemalloc.start()
    try:
        img = imageio.load(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert img.pixels.dtype == np.float32 and img.pixels.shape == (200, 200, 3)
    # the float32 result plus Pillow's 8-bit bytes; a float64 copy would add twice the result
    assert peak < 1.4 * img.pixels.nbytes, peak
    np.testing.assert_array_equal(img.pixels, rgb8(200, 200).astype(np.float32) / np.float32(255))


def test_alpha_argument_is_checked():
    with pytest.raises(ValueError):
        imageio.load(b"", alpha="keep")


# ---------------------------------------------------------------------------------------
# Rate selection


def _expected(bpp: float, weights: Path) -> str:
    """The registry's answer: the closest rate among models whose weights are present (never "base")."""
    present = [m for m in registry.MODELS if m.name != "base" and registry.locate(m, weights).present]
    return min(present, key=lambda m: abs(math.log(m.bpp / bpp))).name if present else registry.closest(bpp).name


def test_bpp_picks_the_closest_available_model(weights_home, tmp_path):
    a = save_png(tmp_path / "a.png", smooth_image(40, 56))
    expected = _expected(0.03, weights_home)
    assert registry.locate(registry.get(expected), weights_home).present
    r = run("encode", a, "--bpp", "0.03", "--device", "cpu", "--precision", "fp32")
    assert r.exit_code == 0, r.output
    assert f"--bpp 0.03: model {expected}" in r.stderr
    assert info_of(tmp_path / "a.scdc")["model"] == expected


def test_pick_model_prefers_present_weights(tmp_path):
    wd = tmp_path / "w"
    wd.mkdir()
    # nothing present: the closest in the whole registry (loading it will name what is missing)
    for bpp in (0.004, 0.011, 0.02, 0.05, 1.0):
        assert pick_model(bpp, wd) == _expected(bpp, wd)
    assert pick_model(0.035, wd) != "base"  # never StableCodec before fine-tuning
    (wd / "stablecodec-base.safetensors").write_bytes(b"")
    assert pick_model(0.035, wd) != "base"
    (wd / "stablecodec-ft16.safetensors").write_bytes(b"")
    (wd / "stablecodec-ft4.safetensors").write_bytes(b"")
    for bpp in (0.004, 0.011, 0.02, 0.05, 1.0):
        got = pick_model(bpp, wd)
        assert got == _expected(bpp, wd) and registry.locate(registry.get(got), wd).present
    if not registry.locate(registry.get("lite-1"), wd).present:  # no bundled lite weights yet
        assert (pick_model(0.004, wd), pick_model(0.03, wd)) == ("ft16", "ft4")


def test_bpp_usage_errors(weights_home, tmp_path, tiny_release):
    a = save_png(tmp_path / "a.png", smooth_image(40, 56))
    assert run("encode", a, "--bpp", "-1").exit_code == 2
    assert run("encode", a, "--bpp", "0.02", "--model", "ft8").exit_code == 2
    r = run("encode", a, "--bpp", "0.02", "--checkpoint", tiny_release["checkpoint"])
    assert r.exit_code == 2 and "--bpp" in r.output


def test_models_lists_names_rates_and_presence(weights_home):
    r = run("models")
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    assert lines[0] == f"weights directory: {weights_home}"
    for m in registry.MODELS:
        row = next(ln for ln in lines if ln[2:].split()[0] == m.name)
        assert f"{m.bpp:.4f} bpp" in row
        state = "present" if registry.locate(m, weights_home).present else "missing"
        assert state in row
    assert "present" in next(ln for ln in lines if ln[2:].startswith("ft8 "))
    assert "missing" in next(ln for ln in lines if ln[2:].startswith("ft16 "))
    assert next(ln for ln in lines if ln.startswith("*"))[2:].split()[0] == registry.default_name()
    rows = json.loads(run("models", "--json").stdout)["models"]
    assert [row["name"] for row in rows] == [m.name for m in registry.MODELS]
    assert all({"name", "bpp", "present", "where", "default"} <= row.keys() for row in rows)
