"""Real photos in, real photos out (issue 16): ICC colour management, HEIC/AVIF, metadata.

Profiles are made from their definitions (``tests/_icc.py``); HEIC files with pillow-heif
(the ``heif`` extra, part of the test extras). CLI tests use the tiny random-weight model
"ft8" (``weights_home``) or the bundled default model where colours must survive coding.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageCms

import _icc
from stablecodec import container, imageio
from stablecodec.cli import cli
from stablecodec.errors import FormatError, ImageError

M = ["--model", "ft8", "--device", "cpu", "--precision", "fp32"]
LITE = ["--device", "cpu", "-q"]  # the bundled default model: colours survive its coding


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def saturated(h: int = 128, w: int = 192) -> np.ndarray:
    """Smooth, saturated 8-bit colours: where wide-gamut values differ most from sRGB."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    arr = np.stack([205 + 30 * np.sin(xx / 23), 80 + 25 * np.cos(yy / 17), 60 + 20 * np.sin((xx + yy) / 29)], -1)
    return np.clip(np.round(arr), 0, 255).astype(np.uint8)


def to_srgb_reference(arr: np.ndarray, icc: bytes, mode: str = "RGB") -> np.ndarray:
    src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    out = ImageCms.profileToProfile(Image.fromarray(arr, mode), src, ImageCms.createProfile("sRGB"),
                                    renderingIntent=ImageCms.Intent.PERCEPTUAL, outputMode="RGB")
    return np.asarray(out).astype(np.float64)


def means(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3).astype(np.float64).mean(0)


# ---------------------------------------------------------------------------------------
# Colour


@pytest.mark.parametrize("spec", [_icc.DISPLAY_P3, _icc.ADOBE_RGB], ids=["display-p3", "adobe-rgb"])
def test_wide_gamut_photos_decode_to_their_srgb_colours_not_their_raw_values(tmp_path, spec):
    arr, icc = saturated(), _icc.rgb_profile(spec)
    Image.fromarray(arr).save(tmp_path / "in.png", icc_profile=icc)
    r = run("encode", tmp_path / "in.png", "-o", tmp_path / "in.scdc", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert f"colours converted from ICC profile '{spec['name']}' to sRGB" in r.stderr
    assert run("decode", tmp_path / "in.scdc", "-o", tmp_path / "out.png", *LITE).exit_code == 0
    got, want, raw = means(tmp_path / "out.png"), to_srgb_reference(arr, icc).reshape(-1, 3).mean(0), \
        arr.reshape(-1, 3).astype(np.float64).mean(0)
    # the colour statistics in the file are the sRGB image's: decoded means are within a level
    assert np.abs(got - want).max() < 1.5, (got, want)
    assert np.abs(got - raw).max() > 8, (got, raw)  # and far from the unconverted values


def test_load_converts_pixels_exactly_as_littlecms_does(tmp_path):
    arr, icc = saturated(32, 48), _icc.rgb_profile(_icc.DISPLAY_P3)
    Image.fromarray(arr).save(tmp_path / "p3.jpg", icc_profile=icc, quality=100, subsampling=0)
    with Image.open(tmp_path / "p3.jpg") as im:
        stored = np.asarray(im.convert("RGB"))
    img = imageio.load(tmp_path / "p3.jpg")
    assert np.array_equal(np.round(img.pixels * 255).astype(np.uint8), to_srgb_reference(stored, icc).astype(np.uint8))


def test_an_srgb_profile_is_left_alone(tmp_path):
    arr = saturated(32, 48)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(arr).save(tmp_path / "s.png", icc_profile=srgb)
    img = imageio.load(tmp_path / "s.png")
    assert np.array_equal(np.round(img.pixels * 255).astype(np.uint8), arr)
    assert not any("ICC" in n for n in img.notes)


def test_a_grey_profile_is_converted_and_the_image_stays_grey(tmp_path):
    arr = np.tile(np.arange(0, 256, 2, dtype=np.uint8), (16, 1))
    icc = _icc.grey_profile(1.8)
    Image.fromarray(arr, "L").save(tmp_path / "g.png", icc_profile=icc)
    img = imageio.load(tmp_path / "g.png")
    assert img.grey
    want = to_srgb_reference(arr, icc, "L")[..., 0]
    assert np.abs(np.round(img.pixels[..., 0] * 255) - want).max() <= 1
    assert np.abs(np.round(img.pixels[..., 0] * 255) - arr).max() > 10  # gamma 1.8 is not sRGB
    assert any("Grey gamma 1.8" in n for n in img.notes)


def test_cmyk_with_a_profile_goes_through_it(tmp_path):
    rng = np.random.default_rng(0)
    cmyk = rng.integers(0, 256, (24, 32, 4), dtype=np.uint8)
    icc = _icc.cmyk_profile()
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "c.jpg", icc_profile=icc, quality=100)
    with Image.open(tmp_path / "c.jpg") as im:
        stored = np.asarray(im)
    img = imageio.load(tmp_path / "c.jpg")
    want = to_srgb_reference(stored, icc, "CMYK")
    assert np.abs(np.round(img.pixels * 255) - want).max() <= 1
    assert any("Naive CMYK" in n for n in img.notes)


def test_a_broken_profile_is_noted_and_ignored(tmp_path):
    arr = saturated(16, 16)
    Image.fromarray(arr).save(tmp_path / "b.png", icc_profile=b"not an icc profile at all" * 8)
    img = imageio.load(tmp_path / "b.png")
    assert np.array_equal(np.round(img.pixels * 255).astype(np.uint8), arr)
    assert any("ICC profile unreadable" in n for n in img.notes)


@pytest.mark.parametrize("ext", ["png", "jpg", "webp"])
def test_decoded_files_say_they_are_srgb(weights_home, tmp_path, ext):
    Image.fromarray(saturated(64, 64)).save(tmp_path / "in.png")
    assert run("encode", tmp_path / "in.png", "-o", tmp_path / "a.scdc", *M).exit_code == 0
    assert run("decode", tmp_path / "a.scdc", "-o", tmp_path / f"a.{ext}", *M).exit_code == 0
    with Image.open(tmp_path / f"a.{ext}") as im:
        if ext == "png":
            assert im.info.get("srgb") == 0 and "icc_profile" not in im.info
        else:
            prof = ImageCms.ImageCmsProfile(io.BytesIO(im.info["icc_profile"]))
            assert "sRGB" in ImageCms.getProfileDescription(prof)


# ---------------------------------------------------------------------------------------
# HEIC / HEIF / AVIF


def _heic(arr: np.ndarray, **kwargs) -> bytes:
    import pillow_heif

    pillow_heif.register_heif_opener()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="HEIF", quality=95, **kwargs)
    return buf.getvalue()


def test_heic_is_read_upright_with_its_profile(weights_home, tmp_path):
    arr = saturated(64, 96)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    exif[0x010F] = "PhoneMaker"
    (tmp_path / "a.heic").write_bytes(_heic(arr, exif=exif.tobytes(), icc_profile=_icc.rgb_profile(_icc.DISPLAY_P3)))
    img = imageio.load(tmp_path / "a.heic")
    assert (img.width, img.height) == (64, 96)  # upright: portrait
    assert any("orientation 6 applied" in n for n in img.notes)
    assert any("Display P3" in n for n in img.notes)
    r = run("encode", tmp_path / "a.heic", "-o", tmp_path / "a.scdc", *M)
    assert r.exit_code == 0, r.output
    assert (container.unpack((tmp_path / "a.scdc").read_bytes())[0].width) == 64


def test_10_bit_heic_is_reduced_with_a_note(tmp_path):
    import pillow_heif

    rng = np.random.default_rng(0)
    data = (rng.random((32, 48, 3)) * 1023).astype("<u2") << 6
    f = pillow_heif.from_bytes(mode="RGB;16", size=(48, 32), data=data.tobytes())
    buf = io.BytesIO()
    f.save(buf, quality=-1)
    img = imageio.load(buf.getvalue())
    assert img.pixels.shape == (32, 48, 3)
    assert "10-bit input reduced to 8 bits per channel" in img.notes


def test_avif_is_read(tmp_path):
    from PIL import features

    if not features.check("avif"):
        pytest.skip("this Pillow has no AVIF support")
    arr = saturated(32, 48)
    Image.fromarray(arr).save(tmp_path / "a.avif", quality=100)
    assert imageio.load(tmp_path / "a.avif").pixels.shape == (32, 48, 3)


def test_heic_without_the_extra_names_it(tmp_path, monkeypatch):
    data = _heic(saturated(16, 16))
    monkeypatch.setattr(imageio, "_heif_registered", False)
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # import fails as if not installed
    with pytest.raises(ImageError, match=r"HEIC/HEIF images need the heif extra: pip install 'stablecodec\[heif\]'"):
        imageio.load(data, name="phone.heic")


# ---------------------------------------------------------------------------------------
# Metadata


def _exif_with_thumbnail() -> bytes:
    """A little-endian TIFF/EXIF block: IFD0 (orientation 8, make, a datetime, GPS IFD),
    IFD1 with a 600-byte JPEG thumbnail, as cameras write it."""
    import struct

    thumb = b"\xff\xd8" + bytes(596) + b"\xff\xd9"
    entries0 = [(0x010F, 2, b"CameraCo\0"), (0x0112, 3, struct.pack("<H", 8)), (0x0132, 2, b"2026:11:30 10:20:30\0"),
                (0x8825, 4, None)]
    out = bytearray(b"II*\0" + struct.pack("<I", 8))

    def ifd(entries, next_ifd_at, data_at):
        body, extra = bytearray(struct.pack("<H", len(entries))), bytearray()
        for tag, typ, val in entries:
            if typ == 2:
                n = len(val)
                if n <= 4:
                    body += struct.pack("<HHI", tag, typ, n) + val.ljust(4, b"\0")
                else:
                    body += struct.pack("<HHII", tag, typ, n, data_at + len(extra))
                    extra += val
            elif typ == 3:
                body += struct.pack("<HHI", tag, typ, 1) + val.ljust(4, b"\0")
            else:
                body += struct.pack("<HHII", tag, typ, 1, val if val is not None else 0)
        body += struct.pack("<I", next_ifd_at)
        return body, extra

    size0 = 2 + 12 * len(entries0) + 4
    data0_at = 8 + size0
    # GPS IFD with one entry (GPSVersionID), then IFD1
    _, extra0 = ifd(entries0, 0, data0_at)
    gps_at = data0_at + len(extra0)
    gps = struct.pack("<HHHI4sI", 1, 0, 1, 4, b"\x02\x03\x00\x00", 0)
    ifd1_at = gps_at + len(gps)
    entries0[-1] = (0x8825, 4, gps_at)
    body0, extra0 = ifd(entries0, ifd1_at, data0_at)
    thumb_at = ifd1_at + 2 + 12 * 2 + 4
    body1 = struct.pack("<H", 2) + struct.pack("<HHII", 0x0201, 4, 1, thumb_at) + struct.pack("<HHII", 0x0202, 4, 1, len(thumb))
    body1 += struct.pack("<I", 0)
    out += body0 + extra0 + gps + body1 + thumb
    return b"Exif\0\0" + bytes(out)


def _jpeg_with_metadata(path: Path, arr: np.ndarray, icc: bytes | None = None) -> bytes:
    exif = _exif_with_thumbnail()
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>'
    kwargs = {"icc_profile": icc} if icc else {}
    Image.fromarray(arr).save(path, quality=95, exif=exif, xmp=xmp, **kwargs)
    return exif


def test_metadata_is_dropped_by_default_and_files_are_unchanged(weights_home, tmp_path):
    arr = saturated(48, 64)
    _jpeg_with_metadata(tmp_path / "m.jpg", arr)
    Image.open(tmp_path / "m.jpg").save(tmp_path / "plain.png")  # same pixels, no metadata
    assert run("encode", tmp_path / "m.jpg", "-o", tmp_path / "m.scdc", *M).exit_code == 0
    assert run("encode", tmp_path / "plain.png", "-o", tmp_path / "p.scdc", *M).exit_code == 0
    data = (tmp_path / "m.scdc").read_bytes()
    assert not data[3] & container.FLAG_METADATA
    # no trace of the metadata: the same bytes as the image without any (orientation aside)
    img = Image.open(tmp_path / "m.jpg").transpose(Image.Transpose.ROTATE_90)
    img.save(tmp_path / "upright.png")
    assert run("encode", tmp_path / "upright.png", "-o", tmp_path / "u.scdc", *M).exit_code == 0
    assert data == (tmp_path / "u.scdc").read_bytes()


def test_exif_is_kept_upright_without_its_thumbnail_and_written_back(weights_home, tmp_path):
    arr = saturated(48, 64)
    raw = _jpeg_with_metadata(tmp_path / "m.jpg", arr)
    r = run("encode", tmp_path / "m.jpg", "-o", tmp_path / "m.scdc", "--metadata", "exif", "--json",
            tmp_path / "r.json", *M)
    assert r.exit_code == 0, r.output
    data = (tmp_path / "m.scdc").read_bytes()
    h, _ = container.unpack(data)
    assert set(h.metadata) == {"exif"}
    stored = Image.Exif()
    stored.load(h.metadata["exif"])
    assert stored[0x0112] == 1 and stored[0x010F] == "CameraCo" and stored.get_ifd(0x8825)
    assert not stored.get_ifd(-1) and len(h.metadata["exif"]) < len(raw) - 500  # thumbnail gone
    rep = json.loads((tmp_path / "r.json").read_text())["results"][0]
    assert rep["metadata_bytes"] == h.metadata_size > 0
    assert rep["bpp"] == pytest.approx((len(data) - h.metadata_size) * 8 / (48 * 64), abs=1e-6)
    info = json.loads(run("info", tmp_path / "m.scdc", "--json").stdout)
    assert info["metadata_bytes"] == h.metadata_size and info["metadata"]["exif_fields"]["camera"] == "CameraCo"
    assert info["metadata"]["exif_fields"]["gps"] is True
    for ext in ("png", "jpg", "webp"):
        assert run("decode", tmp_path / "m.scdc", "-o", tmp_path / f"d.{ext}", *M).exit_code == 0
        with Image.open(tmp_path / f"d.{ext}") as im:
            ex = im.getexif()
            assert ex.get(0x010F) == "CameraCo" and ex.get(0x0112, 1) == 1 and im.size == (48, 64)


def test_all_keeps_xmp_and_the_icc_profile_and_restores_the_colour_encoding(tmp_path):
    # within sRGB's gamut, so that the way back through sRGB loses nothing to clipping
    arr, icc = (saturated(64, 96) * 0.6 + 50).astype(np.uint8), _icc.rgb_profile(_icc.ADOBE_RGB)
    _jpeg_with_metadata(tmp_path / "m.jpg", arr, icc)
    with Image.open(tmp_path / "m.jpg") as im:
        stored = np.asarray(im.transpose(Image.Transpose.ROTATE_90)).reshape(-1, 3).astype(np.float64).mean(0)
    assert run("encode", tmp_path / "m.jpg", "-o", tmp_path / "m.scdc", "--metadata", "all", *LITE).exit_code == 0
    h, _ = container.unpack((tmp_path / "m.scdc").read_bytes())
    assert set(h.metadata) == {"exif", "xmp", "icc"} and h.metadata["icc"] == icc
    assert run("decode", tmp_path / "m.scdc", "-o", tmp_path / "d.jpg", *LITE).exit_code == 0
    with Image.open(tmp_path / "d.jpg") as im:
        assert im.info["icc_profile"] == icc and b"xmpmeta" in im.info["xmp"]
        got = np.asarray(im).reshape(-1, 3).astype(np.float64).mean(0)
    assert np.abs(got - stored).max() < 3  # back in Adobe RGB values


def test_metadata_section_round_trips_and_is_bounded():
    meta = {"exif": b"Exif\0\0" + bytes(range(256)) * 4, "xmp": b"<x/>" * 100, "icc": bytes(1000)}
    h = container.Header(1, 2, 10, 10, 3, color=(1, 2, 3, 4, 5, 6), metadata=meta)
    data = container.pack(h, b"\x01\x02\x03")
    back, payload = container.unpack(data)
    assert back.metadata == meta and payload == b"\x01\x02\x03" and back.metadata_size > 4
    assert back.metadata_size == len(data) - len(container.pack(container.Header(1, 2, 10, 10, 3, color=(1, 2, 3, 4, 5, 6)),
                                                                 b"\x01\x02\x03"))
    # a zlib bomb is refused, not expanded
    import zlib

    bomb = bytes([1, 1]) + zlib.compress(bytes(200 << 20), 9)
    with pytest.raises(FormatError, match="expands beyond"):
        container.unpack_metadata(bomb)
    for bad in (b"", b"\x02\x01", b"\x01\x07xx", bytes([1, 1]) + zlib.compress(b"\x09\0\0\0\x01a")):
        with pytest.raises(FormatError):
            container.unpack_metadata(bad)


def test_a_format_1_file_with_the_metadata_flag_is_refused_clearly():
    import zlib

    data = bytearray(container.pack(container.Header(1, 2, 10, 10, 3, version=(1, 0)), b"\x01"))
    data[3] |= container.FLAG_METADATA
    data[-4:] = zlib.crc32(bytes(data[:-4])).to_bytes(4, "big")
    with pytest.raises(FormatError, match="unknown to this stablecodec; upgrade"):
        container.unpack(bytes(data))


def test_a_corrupt_exif_block_is_a_note_not_a_warning(tmp_path):
    arr = saturated(16, 16)
    Image.fromarray(arr).save(tmp_path / "x.jpg", exif=b"Exif\0\0II*\0\xff\xff\xff\x7f" + bytes(20))
    p = subprocess.run([sys.executable, "-W", "default", "-c", "from stablecodec import imageio; "
                        f"print(imageio.load({str(tmp_path / 'x.jpg')!r}).notes)"], capture_output=True, text=True)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert "EXIF" in p.stdout


def test_metadata_argument_is_checked():
    from stablecodec import Codec
    from stablecodec.errors import ConfigError

    with pytest.raises(ConfigError, match="--metadata must be one of none, exif, all"):
        Codec(metadata="everything")
    r = run("encode", "x.png", "--metadata", "everything")
    assert r.exit_code == 2
