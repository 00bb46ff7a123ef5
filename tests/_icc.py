"""ICC profiles written from their definitions, for colour-management tests.

No profile files are shipped or downloaded: Display P3 and Adobe RGB (1998) are
matrix/TRC profiles made here from their primaries, white point and transfer curve (ICC
v2.4 layout, colorants Bradford-adapted to the D50 connection space), a grey profile is a
gamma curve, and a CMYK profile is a 2-point lut16 table from CMYK to Lab. LittleCMS
(Pillow's ImageCms) reads them like any other profile.
"""

from __future__ import annotations

import struct

import numpy as np

D50 = np.array([0.9642, 1.0, 0.8249])
D65_XY = (0.3127, 0.3290)
_BRADFORD = np.array([[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]])

DISPLAY_P3 = dict(red=(0.680, 0.320), green=(0.265, 0.690), blue=(0.150, 0.060), white=D65_XY, trc="srgb",
                  name="Display P3 (test)")
ADOBE_RGB = dict(red=(0.64, 0.33), green=(0.21, 0.71), blue=(0.15, 0.06), white=D65_XY, trc=563 / 256,
                 name="Adobe RGB (1998) (test)")


def _xyz(xy) -> np.ndarray:
    x, y = xy
    return np.array([x / y, 1.0, (1 - x - y) / y])


def rgb_to_xyz_d50(red, green, blue, white) -> np.ndarray:
    """The 3x3 matrix from linear RGB to XYZ under D50 (columns: the adapted colorants)."""
    prim = np.stack([_xyz(red), _xyz(green), _xyz(blue)], 1)
    w = _xyz(white)
    m = prim * np.linalg.solve(prim, w)[None, :]
    adapt = np.linalg.inv(_BRADFORD) @ np.diag((_BRADFORD @ D50) / (_BRADFORD @ w)) @ _BRADFORD
    return adapt @ m


def _s15(v: float) -> bytes:
    return struct.pack(">i", int(round(v * 65536)))


def _xyz_tag(v) -> bytes:
    return b"XYZ \0\0\0\0" + b"".join(_s15(c) for c in v)


def _desc(text: str) -> bytes:
    a = text.encode("ascii") + b"\0"
    return b"desc\0\0\0\0" + struct.pack(">I", len(a)) + a + b"\0" * 8 + b"\0\0\0" + b"\0" * 67


def _text(text: str) -> bytes:
    return b"text\0\0\0\0" + text.encode("ascii") + b"\0"


def _curve(trc) -> bytes:
    if trc == "srgb":  # IEC 61966-2-1 as a parametric curve (type 3)
        g, a, b, c, d = 2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045
        return b"para\0\0\0\0" + struct.pack(">HH", 3, 0) + b"".join(_s15(v) for v in (g, a, b, c, d))
    return b"curv\0\0\0\0" + struct.pack(">IH", 1, int(round(trc * 256))) + b"\0\0"


def _profile(device_class: bytes, space: bytes, pcs: bytes, tags: list[tuple[bytes, bytes]]) -> bytes:
    n = len(tags)
    offset = 128 + 4 + 12 * n
    table, body = b"", b""
    for sig, data in tags:
        pad = (-len(data)) % 4
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data + b"\0" * pad
    size = offset + len(body)
    header = struct.pack(">I4sI4s4s4s", size, b"\0\0\0\0", 0x02400000, device_class, space, pcs)
    header += b"\0" * 12 + b"acsp" + b"\0" * 24 + struct.pack(">I", 0) + b"".join(_s15(v) for v in D50)
    header += b"\0" * (128 - len(header))
    return header + struct.pack(">I", n) + table + body


def rgb_profile(spec: dict) -> bytes:
    m = rgb_to_xyz_d50(spec["red"], spec["green"], spec["blue"], spec["white"])
    curve = _curve(spec["trc"])
    return _profile(b"mntr", b"RGB ", b"XYZ ", [
        (b"desc", _desc(spec["name"])), (b"cprt", _text("no copyright, test data")), (b"wtpt", _xyz_tag(D50)),
        (b"rXYZ", _xyz_tag(m[:, 0])), (b"gXYZ", _xyz_tag(m[:, 1])), (b"bXYZ", _xyz_tag(m[:, 2])),
        (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)])


def grey_profile(gamma: float = 1.8, name: str = "Grey gamma 1.8 (test)") -> bytes:
    return _profile(b"mntr", b"GRAY", b"XYZ ", [
        (b"desc", _desc(name)), (b"cprt", _text("no copyright, test data")), (b"wtpt", _xyz_tag(D50)),
        (b"kTRC", _curve(gamma))])


def _lab_d50(rgb01: np.ndarray) -> np.ndarray:
    """sRGB values in [0, 1] -> CIE Lab (D50), for the CMYK table's corners."""
    lin = np.where(rgb01 <= 0.04045, rgb01 / 12.92, ((rgb01 + 0.055) / 1.055) ** 2.4)
    xyz = rgb_to_xyz_d50((0.64, 0.33), (0.30, 0.60), (0.15, 0.06), D65_XY) @ lin
    f = np.cbrt(xyz / D50) if np.all(xyz / D50 > 0.008856) else np.where(
        xyz / D50 > 0.008856, np.cbrt(xyz / D50), 7.787 * xyz / D50 + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def cmyk_profile(name: str = "Naive CMYK (test)") -> bytes:
    """CMYK -> Lab through a 2-point table: each corner is the naive (1-c)(1-k) ... colour."""
    clut = b""
    for c in (0, 1):
        for m in (0, 1):
            for y in (0, 1):
                for k in (0, 1):
                    rgb = np.array([(1 - c) * (1 - k), (1 - m) * (1 - k), (1 - y) * (1 - k)], dtype=float)
                    L, a, b = _lab_d50(rgb)
                    clut += struct.pack(">HHH", int(round(L / 100 * 0xFF00)), int(round((a + 128) * 256)),
                                        int(round((b + 128) * 256)))
    ident = struct.pack(">HH", 0, 0xFFFF)
    lut = (b"mft2\0\0\0\0" + struct.pack(">BBBB", 4, 3, 2, 0) + b"".join(_s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
           + struct.pack(">HH", 2, 2) + ident * 4 + clut + ident * 3)
    return _profile(b"prtr", b"CMYK", b"Lab ", [
        (b"desc", _desc(name)), (b"cprt", _text("no copyright, test data")), (b"wtpt", _xyz_tag(D50)),
        (b"A2B0", lut)])
