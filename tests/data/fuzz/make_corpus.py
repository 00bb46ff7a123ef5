"""How the fuzz corpus in this folder was made. Not run by the tests, which replay it
(``tests/test_reliability.py::test_fuzz_corpus_replays``); rerun it only to add cases.

    OMP_NUM_THREADS=1 python tests/data/fuzz/make_corpus.py

Three kinds of input, listed in ``corpus.json`` with the outcome each must keep having
(an error class of ``stablecodec.errors``, a subclass being accepted, or ``ok``):

* ``container``: bytes for ``container.unpack``/``peek`` -- hand-made edge cases, and the
  first input hypothesis found for every distinct error message;
* ``decode``: whole ``.scdc`` files for ``Codec.decode`` with the golden tiny model --
  mutations of the golden 64x64 file with the CRC recomputed (a hostile or buggy
  writer), one per distinct outcome and message, plus
  ``decode-constriction-invalid-data.scdc``, the first payload bit flip that constriction
  rejects as invalid for the tables (the file the CLI test uses; before the fix in
  ``entropy.StreamReader`` its AssertionError escaped the decoder);
* ``stream``: payloads for ``entropy.StreamReader`` with fixed table indexes, one per
  outcome.

When the corpus was made, constriction's AssertionError still escaped the decoder
(outcome ``BUG`` below); those inputs are recorded with the correct outcome,
``DesyncError``, and guard the fix.
"""

from __future__ import annotations

import json
import re
import sys
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
GOLDEN = HERE.parent / "golden"
KNOWN_BUG = "invalid for the employed entropy model"


def recrc(body: bytes) -> bytes:
    return bytes(body) + zlib.crc32(bytes(body)).to_bytes(4, "big")


def norm(msg: str) -> str:
    return re.sub(r"0x[0-9a-f]+|(?<=weights )[0-9a-f]{4}|[0-9]+", "N", msg)[:60]


def keep_shortest(store: dict[str, bytes], kind: str, msg: str, data: bytes) -> None:
    """Keep, per distinct outcome ("kind: normalised message"), the shortest input seen."""
    key = f"{kind}: {norm(msg)}"
    if key not in store or len(data) < len(store[key]):
        store[key] = data


def main() -> None:
    import torch
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from safetensors.torch import load_file

    import stablecodec
    from stablecodec import container, errors
    from stablecodec.models import entropy

    torch.set_num_threads(1)
    cases: list[dict] = []
    for old in HERE.glob("*.bin"):
        old.unlink()
    for old in HERE.glob("*.scdc"):
        old.unlink()

    def add(kind: str, name: str, data: bytes, expect: str, origin: str, note: str = "", fname: str | None = None,
            **extra) -> None:
        n = len([c for c in cases if c["target"] == kind])
        fname = fname or f"{kind}-{n:03d}-{name}.{'scdc' if kind == 'decode' else 'bin'}"
        (HERE / fname).write_bytes(data)
        cases.append({"file": fname, "target": kind, "expect": expect, "origin": origin, "note": note, **extra})

    def container_outcome(data: bytes) -> tuple[str, str]:
        try:
            container.unpack(data)
            return "ok", ""
        except (errors.FormatError, errors.LimitError) as e:
            return type(e).__name__, str(e)

    small = (GOLDEN / "rgb-64x64.scdc").read_bytes()

    # -- container: hand-made --------------------------------------------------------------
    hand = {
        "empty": b"",
        "magic-only": b"\x5c\xdc",
        "png-signature": b"\x89PNG\r\n\x1a\n" + b"\0" * 20,
        "version-2.0": recrc(small[:2] + b"\x20" + small[3:-4]),
        "version-0.1": recrc(small[:2] + b"\x01" + small[3:-4]),
        "minor-1.15": recrc(small[:2] + b"\x1f" + small[3:-4]),
        "unknown-flag-0x04": recrc(small[:3] + bytes([small[3] | 4]) + small[4:-4]),
        "varint-4-bytes": recrc(small[:7] + b"\xff\xff\xff\x7f\x00" + small[9:-4]),
        "varint-non-canonical": recrc(small[:7] + b"\x80\x00\x3f" + small[9:-4]),
        "size-2^21": recrc(small[:7] + b"\xff\xff\x7f\xff\xff\x7f" + small[9:-4]),
        "size-16385x1": recrc(small[:7] + b"\x80\x80\x01\x00" + small[9:-4]),
        "truncated-in-colour": recrc(small[:20]),
        "crc-flipped": small[:-1] + bytes([small[-1] ^ 1]),
        "valid-64x64": small,
        "valid-plus-junk-crc-fixed": recrc(small[:-4] + b"junk"),
    }
    for name, data in hand.items():
        add("container", name, data, container_outcome(data)[0], "hand-made")

    # -- container: hypothesis, the first input per distinct message -----------------------
    seen: dict[str, bytes] = {}
    fast = settings(max_examples=20000, deadline=None, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))

    @fast
    @given(prefix=st.sampled_from([b"", b"\x5c\xdc", b"\x5c\xdc\x10", b"\x5c\xdc\x11\x03"]),
           rest=st.binary(max_size=40), fix=st.booleans())
    def explore(prefix, rest, fix):
        data = recrc(prefix + rest) if fix else prefix + rest
        keep_shortest(seen, *container_outcome(data), data)

    explore()
    for key, data in sorted(seen.items()):
        add("container", "hypothesis", data, key.split(":")[0], "hypothesis", key)

    # -- decode: mutations of the 64x64 golden file, CRC recomputed ------------------------
    codec = stablecodec.Codec("ft8", weights_dir=GOLDEN, device="cpu", precision="fp32")
    ref = codec.decode_array(small)

    def decode_outcome(data: bytes) -> tuple[str, str]:
        try:
            out = codec.decode_array(data)
        except errors.DesyncError as e:
            return ("BUG" if "invalid data" in str(e) else "DesyncError"), str(e)
        except errors.StableCodecError as e:
            return type(e).__name__, str(e)
        except AssertionError as e:
            if KNOWN_BUG in str(e):
                return "BUG", str(e)
            raise
        return ("ok-identical" if out.shape == ref.shape and np.array_equal(out, ref) else "ok-different"), ""

    body = small[:-4]
    start = len(body) - len(container.unpack(small)[1])
    for pos in range(start, len(body)):
        for bit in range(8):
            bad = bytearray(body)
            bad[pos] ^= 1 << bit
            if decode_outcome(recrc(bad))[0] == "BUG":
                # the CLI test opens this one by name
                add("decode", "", recrc(bad), "DesyncError", "search",
                    f"payload byte {pos} bit {bit}: constriction rejects the stream",
                    fname="decode-constriction-invalid-data.scdc")
                break
        else:
            continue
        break

    found: dict[str, bytes] = {}

    @settings(max_examples=400, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(edits=st.lists(st.tuples(st.integers(0, len(body) - 1), st.integers(0, 255)), min_size=1, max_size=3),
           cut=st.integers(0, len(body)))
    def explore_decode(edits, cut):
        bad = bytearray(body)
        for pos, v in edits:
            bad[pos] = v
        data = recrc(bytes(bad[: cut or None]))
        keep_shortest(found, *decode_outcome(data), data)

    explore_decode()
    for key, data in sorted(found.items()):
        kind = key.split(":")[0]
        expect = {"BUG": "DesyncError", "ok-identical": "ok", "ok-different": "ok"}.get(kind, kind)
        if kind == "ok-different":
            key += "decodes to another image: a header field that only the file CRC covers (colour statistics, size)"
        add("decode", "hypothesis", data, expect, "hypothesis", key)

    # -- stream: arbitrary payloads with fixed table indexes -------------------------------
    t = load_file(str(GOLDEN / "stablecodec-ft8.safetensors"))
    tables = {name: entropy.tables_from_tensors(f"tables.{name}", t) for name in ("gaussian", "z")}
    stream_found: dict[str, tuple] = {}

    @settings(max_examples=1500, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(payload=st.binary(max_size=40), which=st.sampled_from(["gaussian", "z"]), data=st.data())
    def explore_stream(payload, which, data):
        ids = data.draw(st.lists(st.integers(0, len(tables[which]) - 1), min_size=1, max_size=200))
        try:
            r = entropy.StreamReader(payload)
            r.read(np.asarray(ids), tables[which])
            r.check(0)
            kind = "ok"
        except errors.DesyncError as e:
            kind = "BUG" if "invalid data" in str(e) else "DesyncError"
        except errors.StableCodecError as e:
            kind = type(e).__name__
        except AssertionError as e:  # before the fix
            if KNOWN_BUG not in str(e):
                raise
            kind = "BUG"
        key = f"{kind}-{which}"
        if key not in stream_found or len(payload) + len(ids) < sum(map(len, stream_found[key][:2])):
            stream_found[key] = (payload, ids, which)

    explore_stream()
    for key, (payload, ids, which) in sorted(stream_found.items()):
        kind = key.split("-")[0]
        add("stream", key, payload, "DesyncError" if kind == "BUG" else kind, "hypothesis",
            "constriction rejects the stream" if kind == "BUG" else "", tables=which, ids=list(ids))

    (HERE / "corpus.json").write_text(json.dumps({"cases": cases}, indent=1) + "\n")
    print(f"{len(cases)} cases", file=sys.stderr)


if __name__ == "__main__":
    main()
