"""The .scdc container: layout, size, validation (docs/bitstream.md)."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stablecodec import container
from stablecodec.errors import FormatError, LimitError

COLOR = (32768, 30000, 20000, 9000, 8000, 7000)


def make(width=768, height=512, color=COLOR, grey=False, payload=b"\x01\x02\x03") -> bytes:
    h = container.Header(model_code=0x03, fingerprint=0xBEEF, width=width, height=height, symbol_crc=0xDEADBEEF,
                         color=color, grey=grey)
    return container.pack(h, payload)


def test_round_trip_keeps_every_field():
    data = make()
    h, payload = container.unpack(data)
    assert (h.model_code, h.fingerprint, h.width, h.height, h.symbol_crc, h.color, h.grey) == (
        0x03, 0xBEEF, 768, 512, 0xDEADBEEF, COLOR, False)
    assert payload == b"\x01\x02\x03"


def test_header_is_at_most_20_bytes_for_768x512():
    data = make(payload=b"")
    assert len(data) - 12 == 19  # everything but the 96 colour bits
    assert container.Header(0, 0, 768, 512, 0).header_bytes == 19


def test_greyscale_stores_two_colour_values():
    data = make(color=(30000, 9000), grey=True, payload=b"")
    assert len(data) == 19 + 4
    h, _ = container.unpack(data)
    assert h.grey and h.color == (30000, 9000)


def test_magic_identifies_the_format():
    assert make()[:2] == b"\x5c\xdc"
    with pytest.raises(FormatError, match="not a .scdc file"):
        container.unpack(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)


def test_files_are_written_as_version_2_0():
    assert make()[2] == 0x20 and container.unpack(make())[0].version == (2, 0)


@pytest.mark.parametrize("version", [0x30, 0x00, 0xF1])
def test_unknown_major_version_is_refused_clearly(version):
    data = bytearray(make())
    data[2] = version
    data[-4:] = zlib.crc32(bytes(data[:-4])).to_bytes(4, "big")
    with pytest.raises(FormatError, match=rf"version {version >> 4}\.{version & 15} is not supported by this "
                                          r"stablecodec \(reads 1\.x and 2\.x\)"):
        container.unpack(bytes(data))


@pytest.mark.parametrize("version,read", [(0x13, (1, 3)), (0x10, (1, 0)), (0x2F, (2, 15))])
def test_older_major_and_newer_minor_versions_are_read(version, read):
    data = bytearray(make())
    data[2] = version
    data[-4:] = zlib.crc32(bytes(data[:-4])).to_bytes(4, "big")
    assert container.unpack(bytes(data))[0].version == read


def test_unknown_flags_are_refused():
    data = bytearray(make())
    data[3] |= 0x80
    data[-4:] = zlib.crc32(bytes(data[:-4])).to_bytes(4, "big")
    with pytest.raises(FormatError, match="unknown to this stablecodec"):
        container.unpack(bytes(data))


def test_crc_is_checked_before_anything_else():
    data = bytearray(make())
    data[-5] ^= 0x01  # a payload byte
    with pytest.raises(FormatError, match="CRC"):
        container.unpack(bytes(data))
    h, ok = container.peek(bytes(data))
    assert not ok and h.width == 768


@pytest.mark.parametrize("cut", range(0, 20))
def test_truncation_is_an_error(cut):
    with pytest.raises(FormatError):
        container.unpack(make()[:cut])


def test_absurd_sizes_are_refused():
    with pytest.raises(LimitError):
        container.Header(0, 0, 100_000, 10, 0)
    # a forged header claiming 2**21 x 2**21 pixels, with a valid CRC
    h = container.Header(0, 0, 16, 16, 0)
    data = bytearray(container.pack(h, b""))
    forged = data[:7] + bytes([0xFF, 0xFF, 0x7F, 0xFF, 0xFF, 0x7F]) + data[9:-4]
    forged += zlib.crc32(bytes(forged)).to_bytes(4, "big")
    with pytest.raises(LimitError, match="exceeds the limit"):
        container.unpack(bytes(forged))


@settings(max_examples=300, deadline=None)
@given(
    w=st.integers(1, container.MAX_SIDE), h=st.integers(1, container.MAX_SIDE),
    code=st.integers(0, 255), fp=st.integers(0, 0xFFFF), crc=st.integers(0, 2**32 - 1),
    grey=st.booleans(), with_color=st.booleans(), payload=st.binary(max_size=64), scale=st.integers(1, 16),
)
def test_any_valid_header_round_trips(w, h, code, fp, crc, grey, with_color, payload, scale):
    if w * h > container.MAX_PIXELS:
        return
    color = tuple(range(1000, 1002 if grey else 1006)) if with_color else None
    hd = container.Header(code, fp, w, h, crc, color=color, grey=grey, scale=scale)
    back, p = container.unpack(container.pack(hd, payload))
    assert back == hd and p == payload


def test_a_reduced_coded_size_is_one_byte_and_format_2_1():
    h = container.Header(0x01, 0xBEEF, 768, 512, 7, color=COLOR, scale=8)
    data = container.pack(h, b"\x01")
    assert data[2] == 0x21 and data[3] & container.FLAG_SCALE
    assert h.header_bytes == 20 and len(data) == 20 + 12 + 1
    back, _ = container.unpack(data)
    assert back.scale == 8 and back.coded_size == (384, 256) and back.version == (2, 1)
    # without a scale nothing changes: version 2.0, no byte more
    assert make()[2] == 0x20 and container.unpack(make())[0].coded_size == (768, 512)


@pytest.mark.parametrize("w,h,scale,want", [(768, 512, 12, (576, 384)), (767, 511, 8, (384, 256)),
                                             (1, 1, 1, (1, 1)), (15, 9, 15, (14, 8)), (3, 5, 8, (2, 3))])
def test_coded_size_rounds_half_up_and_keeps_a_pixel(w, h, scale, want):
    assert container.coded_size(w, h, scale) == want


def _with_crc(data: bytearray) -> bytes:
    data[-4:] = zlib.crc32(bytes(data[:-4])).to_bytes(4, "big")
    return bytes(data)


@pytest.mark.parametrize("byte,match", [(0, "scale 0/16"), (16, "scale 16/16"), (200, "scale 200/16")])
def test_an_invalid_scale_byte_is_refused(byte, match):
    data = bytearray(container.pack(container.Header(1, 2, 768, 512, 3, scale=8), b"\x01"))
    data[11] = byte  # magic 2, version, flags, model, fingerprint 2, two 2-byte sizes: offset 11
    with pytest.raises(FormatError, match=match):
        container.unpack(_with_crc(data))


def test_a_scale_flag_in_a_2_0_file_is_refused():
    data = bytearray(container.pack(container.Header(1, 2, 768, 512, 3, scale=8), b"\x01"))
    data[2] = 0x20
    with pytest.raises(FormatError, match="cannot have a scale"):
        container.unpack(_with_crc(data))
    with pytest.raises(ValueError, match="needs format 2.1"):
        container.Header(1, 2, 768, 512, 3, scale=8, version=(2, 0))
    with pytest.raises(ValueError, match="scale must be"):
        container.Header(1, 2, 768, 512, 3, scale=17)
