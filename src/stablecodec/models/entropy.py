"""Entropy coding: probability tables and the range-coded stream (paper Eq. 5, 7).

Tables are built once per model, deterministically (float64 with the IEEE-only
functions of :mod:`fixedpoint`), and can be stored with the weights: 64 discretized
Gaussians for the scale table exp(linspace(ln 0.11, ln 256, 64)) and one table per
channel of the hyper-latent's factorized density (CompressAI's ``EntropyBottleneck``).
Each table reserves its last symbol as an escape for values outside its range; the
escaped value follows in bypass code, as in CompressAI.

The coder is ``constriction``'s range coder (Rust): memory-safe, so a damaged or hostile
stream decodes to wrong symbols or an error, never to an out-of-bounds read. CompressAI's
rANS decoder is avoided because it reads past the end of a truncated stream. Symbols
that share a table are coded together in raster order, so the coder is called once per
table rather than once per symbol; the decoder knows every table index before it reads.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np
import torch

from ..errors import DesyncError
from .fixedpoint import det_exp, det_log, det_normal_cdf, det_sigmoid, det_softplus, det_tanh

PRECISION = 24  # table resolution: constriction's range coder works with 24-bit probabilities
TAIL_MASS = 1e-9
_TAIL_QUANTILE = 6.109410204869  # -Phi^-1(TAIL_MASS / 2), as CompressAI computes it
SCALE_MIN, SCALE_MAX, SCALE_LEVELS = 0.11, 256.0, 64
_ESCAPE_NBITS_MAX = 24
_PAD = b"\xff"  # completes a trimmed last word (see StreamWriter.finish)


def _coder_error(e: BaseException) -> bool:
    """Whether constriction rejected a stream: it raises AssertionError or ValueError, or a
    Rust panic surfaces as pyo3's PanicException (a BaseException, so checked by name)."""
    return isinstance(e, Exception) or type(e).__name__ == "PanicException"


def scale_table() -> torch.Tensor:
    """exp(linspace(ln 0.11, ln 256, 64)), the same float64 values on every machine."""
    lo, hi = det_log(torch.tensor(SCALE_MIN, dtype=torch.float64)), det_log(torch.tensor(SCALE_MAX, dtype=torch.float64))
    i = torch.arange(SCALE_LEVELS, dtype=torch.float64)
    return det_exp(lo + (hi - lo) * i / (SCALE_LEVELS - 1))


def quantize_pmf(pmf: np.ndarray, precision: int = PRECISION) -> np.ndarray:
    """Probabilities (escape last) -> integer frequencies >= 1 summing to 2**precision."""
    total = 1 << precision
    n = len(pmf)
    freq = np.floor(np.clip(pmf, 0.0, 1.0) * float(total - n)).astype(np.int64) + 1
    freq[int(np.argmax(freq))] += total - int(freq.sum())
    assert freq.min() >= 1 and int(freq.sum()) == total
    return freq


@dataclasses.dataclass
class Table:
    """One discrete distribution: value v is symbol v + offset; symbol len(freq)-1 escapes."""

    offset: int
    freq: np.ndarray  # int64, sums to 2**PRECISION
    _model: object = None
    _bits: np.ndarray | None = None

    def bits(self) -> np.ndarray:
        """A lower bound on each symbol's code length: -log2((freq + 2) / 2**PRECISION).

        The +2 allows for constriction re-quantizing our frequencies by a unit or so, so
        that the sum over a stream can only underestimate what the coder spent."""
        if self._bits is None:
            self._bits = np.maximum(0.0, PRECISION - np.log2(self.freq.astype(np.float64) + 2.0))
        return self._bits

    @property
    def escape(self) -> int:
        return len(self.freq) - 1

    def model(self):
        if self._model is None:
            import constriction

            probs = self.freq.astype(np.float64) / float(1 << PRECISION)
            self._model = constriction.stream.model.Categorical(probs, perfect=False)
        return self._model


def gaussian_tables(scales: torch.Tensor | None = None) -> list[Table]:
    """Discretized zero-mean Gaussians of unit-width bins, one per scale (CompressAI's layout)."""
    scales = scale_table() if scales is None else scales.to(torch.float64)
    out = []
    for s in scales:
        center = int(torch.ceil(s * _TAIL_QUANTILE))
        v = torch.arange(-center, center + 1, dtype=torch.float64).abs()
        upper = det_normal_cdf((0.5 - v) / s)
        lower = det_normal_cdf((-0.5 - v) / s)
        pmf = (upper - lower).numpy()
        tail = float(2.0 * det_normal_cdf((-0.5 - torch.tensor(float(center), dtype=torch.float64)) / s))
        out.append(Table(offset=center, freq=quantize_pmf(np.append(pmf, tail))))
    return out


def _logits_cumulative(eb, x: torch.Tensor) -> torch.Tensor:
    """EntropyBottleneck's cumulative logits, with products summed in a fixed order.

    ``x``: (C, 1, N) float64. Matrices are tiny (3x3), so the products are written out
    rather than left to BLAS, whose summation order and FMA use vary between machines.
    """
    logits = x
    n_layers = len(eb.matrices)
    for i in range(n_layers):
        m = det_softplus(eb.matrices[i].detach().to("cpu", torch.float64))  # (C, out, in)
        out = []
        for j in range(m.shape[1]):
            acc = m[:, j, 0:1] * logits[:, 0, :]
            for k in range(1, m.shape[2]):
                acc = acc + m[:, j, k : k + 1] * logits[:, k, :]
            out.append(acc)
        logits = torch.stack(out, 1) + eb.biases[i].detach().to("cpu", torch.float64)
        if i < len(eb.factors):
            f = det_tanh(eb.factors[i].detach().to("cpu", torch.float64))
            logits = logits + f * det_tanh(logits)
    return logits


def bottleneck_tables(eb) -> tuple[list[Table], torch.Tensor]:
    """Per-channel tables of a CompressAI ``EntropyBottleneck`` and its medians (float32)."""
    q = eb.quantiles.detach().to("cpu", torch.float64)[:, 0, :]
    medians = q[:, 1]
    minima = torch.ceil(medians - q[:, 0]).clamp(min=0, max=1 << 14).to(torch.int64)
    maxima = torch.ceil(q[:, 2] - medians).clamp(min=0, max=1 << 14).to(torch.int64)
    length = minima + maxima + 1
    samples = (medians - minima)[:, None] + torch.arange(int(length.max()), dtype=torch.float64)[None, :]
    lower = _logits_cumulative(eb, (samples - 0.5)[:, None, :])[:, 0, :]
    upper = _logits_cumulative(eb, (samples + 0.5)[:, None, :])[:, 0, :]
    sign = -torch.sign(lower + upper)
    pmf = (det_sigmoid(sign * upper) - det_sigmoid(sign * lower)).abs().numpy()
    tables = []
    for c in range(q.shape[0]):
        n = int(length[c])
        tail = float(det_sigmoid(lower[c, :1]) + det_sigmoid(-upper[c, n - 1 : n]))
        tables.append(Table(offset=int(minima[c]), freq=quantize_pmf(np.append(pmf[c, :n], tail))))
    return tables, eb.quantiles.detach().to("cpu", torch.float32)[:, 0, 1].clone()


def tables_to_tensors(prefix: str, tables: list[Table]) -> dict[str, torch.Tensor]:
    """Flatten tables for a safetensors file: offsets, lengths and concatenated frequencies."""
    return {
        f"{prefix}.offset": torch.tensor([t.offset for t in tables], dtype=torch.int64),
        f"{prefix}.length": torch.tensor([len(t.freq) for t in tables], dtype=torch.int64),
        f"{prefix}.freq": torch.from_numpy(np.concatenate([t.freq for t in tables]).astype(np.int64)),
    }


def tables_from_tensors(prefix: str, tensors: dict[str, torch.Tensor]) -> list[Table]:
    offsets = tensors[f"{prefix}.offset"].tolist()
    lengths = tensors[f"{prefix}.length"].tolist()
    freq = tensors[f"{prefix}.freq"].numpy().astype(np.int64)
    if sum(lengths) != len(freq) or min(lengths, default=2) < 2:
        raise ValueError(f"stored tables {prefix!r} are inconsistent")
    out, pos = [], 0
    for off, n in zip(offsets, lengths):
        f = freq[pos : pos + n]
        if f.min() < 1 or int(f.sum()) != 1 << PRECISION:
            raise ValueError(f"stored table {prefix!r} does not sum to 2**{PRECISION}")
        out.append(Table(offset=int(off), freq=f.copy()))
        pos += n
    return out


def _group(table_ids: np.ndarray):
    """Stable grouping by table: (table, positions in the input) in ascending table order."""
    order = np.argsort(table_ids, kind="stable")
    ids, starts, counts = np.unique(table_ids[order], return_index=True, return_counts=True)
    for t, s, n in zip(ids.tolist(), starts.tolist(), counts.tolist()):
        yield t, order[s : s + n]


class StreamWriter:
    """Range-encodes symbol values, each with a table, and keeps a CRC of the values."""

    def __init__(self) -> None:
        import constriction

        self._cs = constriction
        self._enc = constriction.stream.queue.RangeEncoder()
        self._log: list[tuple[object, np.ndarray]] = []  # (model, symbols) as coded, to verify trimming
        self.crc = 0

    def _encode(self, symbols, model) -> None:
        self._enc.encode(symbols, model)
        self._log.append((model, np.atleast_1d(np.asarray(symbols, dtype=np.int32))))

    def write(self, values: np.ndarray, table_ids: np.ndarray, tables: list[Table]) -> None:
        values = np.ascontiguousarray(values, dtype=np.int32).ravel()
        table_ids = np.ascontiguousarray(table_ids, dtype=np.int64).ravel()
        self.crc = zlib.crc32(values.astype("<i4").tobytes(), self.crc)
        uniform = self._cs.stream.model.Uniform
        for t, idx in _group(table_ids):
            table = tables[t]
            sym = values[idx].astype(np.int64) + table.offset
            out = (sym < 0) | (sym >= table.escape)
            sym[out] = table.escape
            self._encode(sym.astype(np.int32), table.model())
            for v in values[idx][out].tolist():
                # Bypass code for an escaped value: sign, bit length, then the bits.
                mag = abs(v) - (table.offset if v < 0 else table.escape - 1 - table.offset) - 1
                nbits = int(mag).bit_length()
                if nbits > _ESCAPE_NBITS_MAX:
                    raise ValueError(f"latent value {v} is out of the codable range")
                self._encode(int(v < 0), uniform(2))
                self._encode(nbits, uniform(_ESCAPE_NBITS_MAX + 1))
                if nbits > 1:
                    self._encode_bits(mag - (1 << (nbits - 1)), nbits - 1)

    def _encode_bits(self, v: int, n: int) -> None:
        uniform = self._cs.stream.model.Uniform
        while n > 0:
            k = min(n, 16)
            self._encode(v & ((1 << k) - 1), uniform(1 << k) if k > 1 else uniform(2))
            v >>= k
            n -= k

    def finish(self) -> bytes:
        """The stream's bytes, with as many trailing bytes dropped as still decode identically.

        The decoder pads a stream to whole 32-bit words with 0xFF bytes; the encoder tries
        shorter tails and keeps the shortest one that decodes to the same symbols (1.7
        bytes saved on average: the coder seals at the bottom of its final interval, so
        padding upwards usually stays inside it).
        """
        data = self._enc.get_compressed().astype(">u4").tobytes()
        for k in (3, 2, 1):
            if len(data) >= k and self._decodes_to_log(data[:-k]):
                return data[:-k]
        return data

    def _decodes_to_log(self, data: bytes) -> bool:
        pad = (-len(data)) % 4
        dec = self._cs.stream.queue.RangeDecoder(np.frombuffer(data + _PAD * pad, dtype=">u4").astype(np.uint32))
        try:
            for model, sym in self._log:
                if not np.array_equal(np.asarray(dec.decode(model, len(sym))).reshape(-1), sym):
                    return False
        except BaseException as e:
            if not _coder_error(e):
                raise
            return False  # this shorter tail is not a valid stream
        return True


class StreamReader:
    """Decodes what :class:`StreamWriter` wrote, given the same table indexes."""

    def __init__(self, payload: bytes) -> None:
        import constriction

        self._cs = constriction
        pad = (-len(payload)) % 4
        words = np.frombuffer(bytes(payload) + _PAD * pad, dtype=">u4").astype(np.uint32)
        self._dec = constriction.stream.queue.RangeDecoder(words)
        self.crc = 0
        # A range coder cannot code symbols in fewer bits than their information content
        # (up to its final state words and our trimmed tail), but a decoder run past the
        # end of a short payload keeps returning symbols: a forged size with a tiny payload
        # is caught here after the cheap hyper-latent instead of after a full-size decode.
        self.bits = 0.0
        self._payload_len = len(payload)
        self._bit_limit = 8.0 * self._payload_len + 128.0

    def read(self, table_ids: np.ndarray, tables: list[Table]) -> np.ndarray:
        table_ids = np.ascontiguousarray(table_ids, dtype=np.int64).ravel()
        values = np.zeros(table_ids.shape, dtype=np.int64)
        uniform = self._cs.stream.model.Uniform
        try:
            for t, idx in _group(table_ids):
                table = tables[t]
                sym = np.asarray(self._dec.decode(table.model(), len(idx)), dtype=np.int64)
                self.bits += float(table.bits()[sym].sum())
                v = sym - table.offset
                for j in np.flatnonzero(sym == table.escape).tolist():
                    neg = int(self._dec.decode(uniform(2)))
                    nbits = int(self._dec.decode(uniform(_ESCAPE_NBITS_MAX + 1)))
                    mag = 0
                    if nbits > 1:
                        mag = (1 << (nbits - 1)) + self._decode_bits(nbits - 1)
                    elif nbits == 1:
                        mag = 1
                    v[j] = -(table.offset + 1 + mag) if neg else (table.escape - table.offset + mag)
                values[idx] = v
        except BaseException as e:
            if not _coder_error(e):
                raise
            raise DesyncError(
                "the entropy decoder found invalid data: this file was made with other weights or is damaged"
            ) from None
        if self.bits > self._bit_limit:
            raise DesyncError(
                f"the payload ({self._payload_len} bytes) is too short for the image size the header declares: "
                "the file is damaged or forged"
            )
        values32 = values.astype(np.int32)
        self.crc = zlib.crc32(values32.astype("<i4").tobytes(), self.crc)
        return values32

    def _decode_bits(self, n: int) -> int:
        uniform = self._cs.stream.model.Uniform
        v, shift = 0, 0
        while n > 0:
            k = min(n, 16)
            v |= int(self._dec.decode(uniform(1 << k) if k > 1 else uniform(2))) << shift
            shift += k
            n -= k
        return v

    def check(self, expected_crc: int) -> None:
        if self.crc != expected_crc:
            raise DesyncError(
                "decoded latents fail their check: this file was made with other weights, or "
                "this machine computes the entropy model differently; decode it with the weights "
                "and stablecodec version that encoded it"
            )
