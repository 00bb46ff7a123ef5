"""Golden files: ``.scdc`` files of formats 1.0 and 2.0 that every later version must keep decoding.

``tests/data/golden/`` holds a tiny StableCodec model as a converted weights file and
four files per format version coded with it (made once by ``make_golden.py``, which the
tests never run; the ``v2-`` files are format 2.0, made by the code that passed the
official implementation's parity kit, see there).
Each must decode to the stored ŷ bit for bit -- the format's promise, independent of
the machine -- and to the stored image pixel for pixel. A format change must bump the
version byte and keep reading these files or refuse them clearly (docs/bitstream.md).

The image path after ŷ (g_s, the UNet, the VAE decoder) is ordinary float32 arithmetic:
its last bit depends on torch's thread count and on the CPU's vector instructions (made
on an AMD EPYC, family 25; on an Intel Xeon 2..31 values of a file move by one level), so
the images are compared with one thread, as they were made, and allowed rounding-sized
differences: at most one level, in at most 0.1% of the values. A real change to the
image path moves far more. If only the pixel test fails, the format is intact and the
float image path has changed.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import stablecodec
from stablecodec import container
from stablecodec.errors import FormatError

GOLDEN = Path(__file__).parent / "data" / "golden"
MANIFEST = json.loads((GOLDEN / "golden.json").read_text())
NAMES = sorted(MANIFEST["files"])


@pytest.fixture(scope="module")
def codec():
    return stablecodec.Codec("ft8", weights_dir=GOLDEN, device="cpu", precision="fp32")


@pytest.fixture()
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data(name: str) -> bytes:
    return (GOLDEN / f"{name}.scdc").read_bytes()


def _y_hat(codec, data: bytes) -> np.ndarray:
    from stablecodec.models.latent_codec import rules_for_format

    header, payload = container.unpack(data)
    model = codec.get_model().model
    s = model.stride
    hp, wp = -(-header.height // s) * s, -(-header.width // s) * s
    return model.codec.decompress(payload, header.symbol_crc, model.codec.y_shape((hp // 8, wp // 8)),
                                  rules=rules_for_format(header.version[0])).numpy()


def _recrc(data: bytearray) -> bytes:
    data[-4:] = zlib.crc32(bytes(data[:-4])).to_bytes(4, "big")
    return bytes(data)


def test_golden_files_are_the_committed_ones():
    """Nothing rewrote the golden files (regenerating them would defeat their purpose)."""
    assert len(NAMES) >= 3
    for fname, digest in MANIFEST["sha256"].items():
        assert hashlib.sha256((GOLDEN / fname).read_bytes()).hexdigest() == digest, fname
    assert (GOLDEN / "stablecodec-ft8.safetensors").stat().st_size < 6_000_000


@pytest.mark.parametrize("name", NAMES)
def test_golden_header(name):
    h, _ = container.unpack(_data(name))
    want = MANIFEST["files"][name]
    assert (h.width, h.height, h.grey) == (want["width"], want["height"], want["grey"])
    assert f"{h.version[0]}.{h.version[1]}" == want["format_version"] in ("1.0", "2.0")
    assert h.model_code == 0x25  # ft8
    assert h.fingerprint == int(MANIFEST["fingerprint"][:4], 16)


@pytest.mark.parametrize("name", NAMES)
def test_golden_y_hat_is_bit_identical(codec, name):
    want = np.load(GOLDEN / f"{name}.y.npy")
    got = _y_hat(codec, _data(name))
    assert got.dtype == want.dtype == np.float64 and got.shape == want.shape
    assert np.array_equal(got, want), f"{name}: ŷ differs in {(got != want).sum()} of {got.size} elements"


@pytest.mark.parametrize("name", NAMES)
def test_golden_image_matches_up_to_rounding(codec, one_thread, name):
    want_img = Image.open(GOLDEN / f"{name}.png")
    got_img = codec.decode(_data(name))
    assert got_img.mode == want_img.mode == ("L" if MANIFEST["files"][name]["grey"] else "RGB")
    got, want = np.asarray(got_img).astype(int), np.asarray(want_img).astype(int)
    assert got.shape == want.shape
    moved, worst = int((got != want).sum()), int(np.abs(got - want).max())
    assert worst <= 1 and moved <= 0.001 * got.size, (
        f"{name}: {moved} of {got.size} values differ (max {worst} levels); if "
        "test_golden_y_hat_is_bit_identical passes, the float image path changed, not the format")


@pytest.mark.parametrize("version", [0x30, 0x31, 0x3F, 0xF0, 0x00])
@pytest.mark.parametrize("fix_crc", [True, False])
def test_other_major_versions_are_refused_clearly(codec, version, fix_crc):
    data = bytearray(_data("rgb-64x64"))
    data[2] = version
    data = _recrc(data) if fix_crc else bytes(data)
    major, minor = version >> 4, version & 15
    with pytest.raises(FormatError, match=rf"file format version {major}\.{minor} is not supported by this "
                                          r"stablecodec \(reads 1\.x and 2\.x\)"):
        codec.decode(data)


def test_a_format_1_payload_labelled_2_0_is_caught_not_misdecoded(codec):
    """The versions code their means differently: relabelling is a DesyncError, never an image."""
    from stablecodec.errors import DesyncError

    data = bytearray(_data("latent-640x384"))
    data[2] = 0x20
    with pytest.raises(DesyncError):
        codec.decode(_recrc(data))


@pytest.mark.parametrize("bit", range(2, 8))
@pytest.mark.parametrize("version", [0x10, 0x11, 0x1F])
def test_unknown_flag_bits_are_refused_clearly(codec, version, bit):
    data = bytearray(_data("rgb-64x64"))
    data[2] = version
    data[3] |= 1 << bit
    with pytest.raises(FormatError, match=r"uses features \(flags 0x[0-9a-f]{2}\) unknown to this stablecodec; "
                                          r"upgrade"):
        codec.decode(_recrc(data))


@pytest.mark.parametrize("name,version", [("latent-640x384", 0x11), ("latent-640x384", 0x1F),
                                          ("v2-latent-640x384", 0x21), ("v2-latent-640x384", 0x2F)])
def test_newer_minor_version_with_known_flags_decodes_the_same(codec, name, version):
    data = bytearray(_data(name))
    data[2] = version
    data = _recrc(data)
    assert container.unpack(data)[0].version == (version >> 4, version & 15)
    assert np.array_equal(_y_hat(codec, data), np.load(GOLDEN / f"{name}.y.npy"))


def test_both_format_versions_are_in_the_golden_set():
    versions = {f["format_version"] for f in MANIFEST["files"].values()}
    assert versions == {"1.0", "2.0"}
    # format 2 codes the same inputs with other means: the files differ, ŷ barely
    for name in ("rgb-384x256", "latent-640x384"):
        a, b = np.load(GOLDEN / f"{name}.y.npy"), np.load(GOLDEN / f"v2-{name}.y.npy")
        assert _data(name) != _data(f"v2-{name}") and a.shape == b.shape
