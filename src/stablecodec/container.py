"""The ``.scdc`` container: bytes in, header fields and payload out (no torch import).

Specified byte by byte in ``docs/bitstream.md``. At 0.005 bpp a 768x512 image is about
250 bytes, so the header is packed tight: 19 bytes for a 768x512 image (17 + 2 varint
bytes per dimension above 127) plus the paper's 96 bits of colour statistics
(supplementary A, Eq. 10-11: six 16-bit values; two for a greyscale image).

Layout (big-endian)::

    magic        2   0x5C 0xDC
    version      1   major << 4 | minor
    flags        1   bit0 colour statistics present, bit1 greyscale, bit2 metadata (2.0 on),
                     bit3 coded at a reduced size (2.1 on), rest must be 0
    model        1   registry code of the model (``registry.py``)
    fingerprint  2   16 bits of the weights' fingerprint
    width - 1    varint (LEB128, at most 3 bytes)
    height - 1   varint
    scale        1   if flag bit 3: the coded size in sixteenths of each side (1..15)
    symbol CRC   4   CRC32 of every decoded symbol, checked after entropy decoding
    colour       12  mu_R mu_G mu_B sigma_R sigma_G sigma_B as uint16 (4 if greyscale)
    metadata     4+m if flag bit 2: uint32 length, then the section (``pack_metadata``)
    payload      n   one range-coder stream: z, then y steps 0..3 (``models/entropy.py``)
    CRC32        4   over every byte before it

The hyper-latent and latent shapes are not stored: they follow from width, height, the
scale and the model's stride, so they can never disagree with the image size. A file with
a scale holds the image coded at ``coded_size`` (each side scale/16 of the image's,
rounded half up, at least 1 px): at the lowest rates a smaller image at a higher rate
point is the better trade (the matched-rate baselines downscale for the same reason);
the decoder resamples it back to width x height. The CRC32 is verified
before any payload byte reaches the entropy decoder; the symbol CRC catches the other
failure, an intact file that these weights or this machine decode differently.
"""

from __future__ import annotations

import dataclasses
import zlib

from .errors import FormatError, LimitError

MAGIC = b"\x5c\xdc"
VERSION_MAJOR = 2  # what this stablecodec writes
VERSION_MINOR = 0  # files without a scale; a scale needs 2.1 (older readers refuse it by its flag)
SCALE_MINOR = 1
READ_MAJORS = (1, 2)  # 1.x: means on the 2**-8 grid; 2.x: the float means (docs/bitstream.md)
FLAG_COLOR = 0x01
FLAG_GREY = 0x02
FLAG_METADATA = 0x04  # an optional metadata section (EXIF, XMP, ICC profile), format 2.0 on
FLAG_SCALE = 0x08  # coded at a reduced size, format 2.1 on
_KNOWN_FLAGS = {1: FLAG_COLOR | FLAG_GREY, 2: FLAG_COLOR | FLAG_GREY | FLAG_METADATA | FLAG_SCALE}
FULL_SCALE = 16  # the scale field's unit is 1/16 of a side

# The metadata section: version, compression, then entries. Limits bound what a hostile
# file can make the decoder allocate.
METADATA_VERSION = 1
_META_KINDS = {1: "exif", 2: "xmp", 3: "icc"}
_META_CODES = {v: k for k, v in _META_KINDS.items()}
MAX_METADATA_BYTES = 16 << 20  # compressed, in the file
MAX_METADATA_EXPANDED = 64 << 20

MAX_SIDE = 16384
MAX_PIXELS = 1 << 27  # 134 Mpx, e.g. 16384 x 8192: beyond this nothing is allocated
_MAX_VARINT_BYTES = 3

SUFFIX = ".scdc"


@dataclasses.dataclass(frozen=True)
class Header:
    """Everything the decoder needs besides the payload."""

    model_code: int
    fingerprint: int
    width: int
    height: int
    symbol_crc: int
    color: tuple[int, ...] | None = None
    grey: bool = False
    version: tuple[int, int] | None = None  # None: the lowest that holds every field used
    metadata: dict[str, bytes] | None = None  # "exif", "xmp", "icc"; None or {}: no section
    metadata_size: int = dataclasses.field(default=0, compare=False)  # bytes in the file (parsed files)
    scale: int = FULL_SCALE  # sixteenths of each side the image is coded at (``coded_size``)

    def __post_init__(self) -> None:
        if not (isinstance(self.scale, int) and 1 <= self.scale <= FULL_SCALE):
            raise ValueError(f"scale must be an integer number of sixteenths in 1..16, got {self.scale!r}")
        if self.version is None:
            object.__setattr__(self, "version", (VERSION_MAJOR, SCALE_MINOR if self.scale < FULL_SCALE else VERSION_MINOR))
        if self.scale < FULL_SCALE and self.version < (VERSION_MAJOR, SCALE_MINOR):
            raise ValueError(f"a reduced coded size needs format {VERSION_MAJOR}.{SCALE_MINOR}, got {self.version}")
        if not (0 <= self.model_code < 256):
            raise ValueError(f"model_code must fit in one byte, got {self.model_code}")
        if not (0 <= self.fingerprint < 1 << 16):
            raise ValueError(f"fingerprint must fit in 16 bits, got {self.fingerprint}")
        check_size(self.width, self.height)
        if self.color is not None:
            want = 2 if self.grey else 6
            if len(self.color) != want or not all(0 <= c < 1 << 16 for c in self.color):
                raise ValueError(f"color must be {want} uint16 values, got {self.color!r}")

    @property
    def header_bytes(self) -> int:
        """Bytes spent on everything but the payload, the colour statistics and the metadata."""
        return (2 + 1 + 1 + 1 + 2 + _varint_len(self.width - 1) + _varint_len(self.height - 1)
                + (self.scale < FULL_SCALE) + 4 + 4)

    @property
    def coded_size(self) -> tuple[int, int]:
        """(width, height) of the image the payload holds."""
        return coded_size(self.width, self.height, self.scale)


def coded_size(width: int, height: int, scale: int) -> tuple[int, int]:
    """Each side at ``scale``/16, rounded half up, at least 1 px: integer arithmetic, so the
    encoder and every decoder agree."""
    return (max(1, (width * scale + FULL_SCALE // 2) // FULL_SCALE),
            max(1, (height * scale + FULL_SCALE // 2) // FULL_SCALE))


def pack_metadata(meta: dict[str, bytes]) -> bytes:
    """The metadata section after its length field: version 1, compression 1 (zlib), then
    the zlib stream of entries (kind byte: 1 EXIF, 2 XMP, 3 ICC; uint32 length; bytes)."""
    body = bytearray()
    for kind in ("exif", "xmp", "icc"):  # a fixed order: the same metadata makes the same bytes
        if kind in meta:
            data = bytes(meta[kind])
            body.append(_META_CODES[kind])
            body += len(data).to_bytes(4, "big") + data
    packed = bytes([METADATA_VERSION, 1]) + zlib.compress(bytes(body), 9)
    if len(packed) > MAX_METADATA_BYTES:
        raise LimitError(f"metadata of {len(packed):,} bytes (compressed) exceed the format's limit of "
                         f"{MAX_METADATA_BYTES >> 20} MB; use --metadata exif or none")
    return packed


def unpack_metadata(section: bytes) -> dict[str, bytes]:
    """Parse a metadata section (``pack_metadata``); FormatError for anything malformed."""
    if len(section) < 2:
        raise FormatError("metadata section is truncated; the file is corrupt")
    if section[0] != METADATA_VERSION:
        raise FormatError(f"metadata section version {section[0]} is unknown to this stablecodec; upgrade stablecodec "
                          "(or decode with --metadata none)")
    if section[1] != 1:
        raise FormatError(f"metadata section uses unknown compression {section[1]}; the file is corrupt")
    d = zlib.decompressobj()
    try:
        body = d.decompress(section[2:], MAX_METADATA_EXPANDED)
        if d.unconsumed_tail or not d.eof:
            raise FormatError("metadata section is truncated or expands beyond "
                              f"{MAX_METADATA_EXPANDED >> 20} MB; the file is corrupt")
    except zlib.error:
        raise FormatError("metadata section does not decompress; the file is corrupt") from None
    out: dict[str, bytes] = {}
    pos = 0
    while pos < len(body):
        if pos + 5 > len(body):
            raise FormatError("metadata section is truncated; the file is corrupt")
        kind, n = body[pos], int.from_bytes(body[pos + 1 : pos + 5], "big")
        pos += 5
        if kind not in _META_KINDS or _META_KINDS[kind] in out or pos + n > len(body):
            raise FormatError("metadata section is malformed; the file is corrupt")
        out[_META_KINDS[kind]] = body[pos : pos + n]
        pos += n
    return out


def check_size(width: int, height: int) -> None:
    """Refuse sizes the codec will not handle, before anything is allocated."""
    if width < 1 or height < 1:
        raise FormatError(f"image size {width}x{height} is empty")
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise LimitError(
            f"image size {width}x{height} exceeds the limit ({MAX_SIDE} px per side, "
            f"{MAX_PIXELS // 1_000_000} Mpx); downscale or split the image first"
        )


def _varint_len(v: int) -> int:
    n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


def _put_varint(out: bytearray, v: int) -> None:
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return


def _get_varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    v = shift = 0
    for i in range(_MAX_VARINT_BYTES):
        if pos >= end:
            raise FormatError("file is truncated inside its header")
        b = data[pos]
        pos += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            if i and b == 0:
                raise FormatError("header has a non-canonical size field; the file is corrupt")
            return v, pos
    raise FormatError("header size field is too long; the file is corrupt")


def pack(header: Header, payload: bytes) -> bytes:
    """Serialize a header and an entropy-coded payload into ``.scdc`` bytes."""
    out = bytearray(MAGIC)
    major, minor = header.version
    out.append(major << 4 | minor)
    meta = pack_metadata(header.metadata) if header.metadata else None
    if meta is not None and major < 2:
        raise ValueError("format 1.x has no metadata section")
    flags = (FLAG_COLOR if header.color is not None else 0) | (FLAG_GREY if header.grey else 0)
    flags |= FLAG_METADATA if meta is not None else 0
    flags |= FLAG_SCALE if header.scale < FULL_SCALE else 0
    out.append(flags)
    out.append(header.model_code)
    out += header.fingerprint.to_bytes(2, "big")
    _put_varint(out, header.width - 1)
    _put_varint(out, header.height - 1)
    if header.scale < FULL_SCALE:
        out.append(header.scale)
    out += header.symbol_crc.to_bytes(4, "big")
    if header.color is not None:
        for c in header.color:
            out += c.to_bytes(2, "big")
    if meta is not None:
        out += len(meta).to_bytes(4, "big") + meta
    out += payload
    out += zlib.crc32(out).to_bytes(4, "big")
    return bytes(out)


def _as_bytes(data: bytes) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    return bytes(data)


def _check_identity(data: bytes) -> tuple[int, int]:
    """Magic and version: the first three bytes, the same in every version of the format."""
    if len(data) < 3 or data[:2] != MAGIC:
        raise FormatError("not a .scdc file (wrong magic bytes)")
    major, minor = data[2] >> 4, data[2] & 0x0F
    if major not in READ_MAJORS:
        reads = " and ".join(f"{m}.x" for m in READ_MAJORS)
        raise FormatError(
            f"file format version {major}.{minor} is not supported by this stablecodec "
            f"(reads {reads}); use the stablecodec version that wrote it"
        )
    return major, minor


def _parse(data: bytes) -> tuple[Header, int, int]:
    """Parse the fields; returns the header and the payload's start and end offsets."""
    data = _as_bytes(data)
    major, minor = _check_identity(data)
    end = len(data) - 4
    if end < 7:
        raise FormatError("file is truncated inside its header")
    flags = data[3]
    if flags & ~_KNOWN_FLAGS[major]:
        raise FormatError(
            f"file uses features (flags 0x{flags:02x}) unknown to this stablecodec; upgrade stablecodec"
        )
    model_code = data[4]
    fingerprint = int.from_bytes(data[5:7], "big")
    w1, pos = _get_varint(data, 7, end)
    h1, pos = _get_varint(data, pos, end)
    scale = FULL_SCALE
    if flags & FLAG_SCALE:
        if (major, minor) < (VERSION_MAJOR, SCALE_MINOR):
            raise FormatError(f"file version {major}.{minor} cannot have a scale (flags 0x{flags:02x}); the file is corrupt")
        if pos >= end:
            raise FormatError("file is truncated inside its header")
        scale = data[pos]
        pos += 1
        if not 1 <= scale < FULL_SCALE:
            raise FormatError(f"header has scale {scale}/16 (1..15 are valid); the file is corrupt")
    grey = bool(flags & FLAG_GREY)
    n_color = (2 if grey else 6) if flags & FLAG_COLOR else 0
    if pos + 4 + 2 * n_color > end:
        raise FormatError("file is truncated inside its header")
    symbol_crc = int.from_bytes(data[pos : pos + 4], "big")
    pos += 4
    color = None
    if n_color:
        color = tuple(int.from_bytes(data[pos + 2 * i : pos + 2 * i + 2], "big") for i in range(n_color))
        pos += 2 * n_color
    check_size(w1 + 1, h1 + 1)
    metadata = None
    if flags & FLAG_METADATA:
        if pos + 4 > end:
            raise FormatError("file is truncated inside its header")
        n = int.from_bytes(data[pos : pos + 4], "big")
        pos += 4
        if n > MAX_METADATA_BYTES or pos + n > end:
            raise FormatError("metadata section runs past the end of the file; the file is corrupt")
        metadata = unpack_metadata(data[pos : pos + n])
        pos += n
    metadata_size = 4 + n if flags & FLAG_METADATA else 0
    header = Header(
        model_code=model_code,
        fingerprint=fingerprint,
        width=w1 + 1,
        height=h1 + 1,
        symbol_crc=symbol_crc,
        color=color,
        grey=grey,
        version=(major, minor),
        metadata=metadata,
        metadata_size=metadata_size,
        scale=scale,
    )
    return header, pos, end


def crc_ok(data: bytes) -> bool:
    """Whether the trailing CRC32 matches the rest of the file."""
    return len(data) >= 4 and zlib.crc32(data[:-4]) == int.from_bytes(data[-4:], "big")


def unpack(data: bytes) -> tuple[Header, bytes]:
    """Validate ``.scdc`` bytes and return the header and payload.

    The CRC is checked first, so no field of a damaged file is trusted.
    """
    data = _as_bytes(data)
    _check_identity(data)
    if not crc_ok(data):
        raise FormatError("file is corrupt or truncated (CRC mismatch); re-encode or recopy it")
    header, start, end = _parse(data)
    return header, data[start:end]


def peek(data: bytes) -> tuple[Header, bool]:
    """Header fields and whether the CRC matches, without refusing a damaged file.

    For ``stablecodec info``: shows what a file claims even when it cannot be decoded.
    """
    data = _as_bytes(data)
    header, _, _ = _parse(data)
    return header, crc_ok(data)
