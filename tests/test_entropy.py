"""Probability tables and the range-coded stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from compressai.entropy_models import EntropyBottleneck

from stablecodec.errors import DesyncError
from stablecodec.models import entropy


def test_scale_table_matches_compressai():
    want = torch.exp(torch.linspace(np.log(0.11), np.log(256), 64, dtype=torch.float64))
    torch.testing.assert_close(entropy.scale_table(), want, rtol=1e-14, atol=0)


def test_gaussian_tables_are_valid_and_close_to_the_density():
    tables = entropy.gaussian_tables()
    assert len(tables) == 64
    for s, t in zip(entropy.scale_table().tolist(), tables):
        assert t.freq.min() >= 1 and t.freq.sum() == 1 << entropy.PRECISION
        p0 = t.freq[t.offset] / (1 << entropy.PRECISION)
        from math import erf, sqrt
        want = erf(0.5 / (s * sqrt(2)))
        assert abs(p0 - want) < 2e-3 + 1e-3 * want


def test_bottleneck_tables_match_compressai_update():
    torch.manual_seed(0)
    eb = EntropyBottleneck(8)
    with torch.no_grad():
        eb.quantiles.copy_(torch.tensor([-5.0, 0.3, 6.0]).expand_as(eb.quantiles))
    eb.update(force=True)
    tables, medians = entropy.bottleneck_tables(eb)
    for c, t in enumerate(tables):
        n = int(eb._cdf_length[c])
        ref = eb._quantized_cdf[c, :n].numpy().astype(np.int64)
        ref_pmf = np.diff(ref) / 65536.0
        ours = t.freq / float(1 << entropy.PRECISION)
        assert len(ours) == len(ref_pmf) and t.offset == -int(eb._offset[c])
        assert np.abs(ours - ref_pmf).max() < 2e-4


def _round_trip(values, ids, tables):
    w = entropy.StreamWriter()
    w.write(values, ids, tables)
    payload = w.finish()
    r = entropy.StreamReader(payload)
    out = r.read(ids, tables)
    return payload, out, w.crc, r


def test_stream_round_trip_with_escapes():
    tables = entropy.gaussian_tables()
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 64, 5000)
    vals = np.round(rng.standard_normal(5000) * entropy.scale_table().numpy()[ids]).astype(np.int64)
    vals[:20] = rng.integers(-(1 << 20), 1 << 20, 20)  # far outside every table
    payload, out, crc, r = _round_trip(vals, ids, tables)
    assert np.array_equal(out, vals)
    r.check(crc)


def test_symbol_check_catches_a_wrong_stream():
    tables = entropy.gaussian_tables()
    ids = np.full(300, 40)
    vals = np.arange(300) % 7 - 3
    payload, out, crc, _ = _round_trip(vals, ids, tables)
    bad = bytearray(payload)
    bad[len(bad) // 2] ^= 0xFF
    r = entropy.StreamReader(bytes(bad))
    r.read(ids, tables)
    with pytest.raises(DesyncError):
        r.check(crc)


@pytest.mark.parametrize("cut", [0, 1, 3, 7])
def test_truncated_stream_is_a_desync_not_a_crash(cut):
    tables = entropy.gaussian_tables()
    ids = np.full(1000, 50)
    vals = np.arange(1000) % 31 - 15
    payload, _, crc, _ = _round_trip(vals, ids, tables)
    r = entropy.StreamReader(payload[:cut])
    with pytest.raises(DesyncError, match="too short"):
        r.read(ids, tables)


def test_information_bound_never_refuses_a_real_stream():
    """The decoder's bound (information content <= payload bits + 128) on streams whose
    symbols are all near-certain, where the coder's overhead is largest relative to them."""
    tables = entropy.gaussian_tables()
    rng = np.random.default_rng(0)
    for n, table, spread in [(1, 0, 0), (5, 63, 3), (20000, 0, 0), (3000, 10, 1), (2000, 63, 400)]:
        ids = np.full(n, table)
        vals = rng.integers(-spread, spread + 1, n)
        payload, _, _, _ = _round_trip(vals, ids, tables)
        r = entropy.StreamReader(payload)
        assert np.array_equal(r.read(ids, tables), vals)
        assert r.bits <= 8 * len(payload) + 128


def test_tables_survive_serialization():
    tables = entropy.gaussian_tables()[:5]
    back = entropy.tables_from_tensors("t", entropy.tables_to_tensors("t", tables))
    assert all(np.array_equal(a.freq, b.freq) and a.offset == b.offset for a, b in zip(tables, back))


def test_compressai_shim_leaves_scipy_stats_to_first_use():
    """The CLI's start-up does not pay for scipy.stats (0.7 s); compressai still gets it."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from stablecodec.models import _compressai as c\n"
        "assert 'scipy.stats' not in sys.modules\n"
        "q = c.gaussian_conditional()._standardized_quantile(0.975)\n"
        "assert abs(q - 1.959963984540054) < 1e-12, q\n"
        "import scipy.stats\n"
        "assert type(scipy.stats.norm).__name__ == 'norm_gen'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
