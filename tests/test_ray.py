"""``--engine ray`` (issue 17): a local Ray instance (num_cpus=2), the bundled default model,
generated images. Outputs equal the single-process CLI's byte for byte; a corrupt file is a
status row and the rest are coded; a rerun skips everything; a killed worker is survived;
decode through Ray round-trips; a missing extra is one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import save_png, smooth_image

ray = pytest.importorskip("ray", reason="the ray extra is not installed")

from stablecodec import raydata  # noqa: E402
from stablecodec.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # KillOnce, for workers that cannot import tests
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    (d / "sub").mkdir()
    for i in range(20):  # 20 images of four sizes, seven of them in a subfolder
        save_png(d / ("sub" if i % 3 == 0 else "") / f"p{i:02d}.png", smooth_image(48 + 8 * (i % 4), 64, seed=i))
    return d


def _cli(*args) -> int:
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return e.code
    return 0


def _files(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_ray_outputs_equal_the_clis_byte_for_byte_and_a_rerun_skips(local_ray, photos, tmp_path):
    assert _cli("encode", photos, "-o", tmp_path / "cli", "-r", "--device", "cpu", "-q") == 0
    status = _cli("encode", photos, "-o", tmp_path / "ray", "-r", "--device", "cpu", "-q", "--engine", "ray",
                  "--workers", "2", "--batch-size", "3", "--json", tmp_path / "r.json")
    assert status == 0
    cli, got = _files(tmp_path / "cli"), _files(tmp_path / "ray")
    assert len(cli) == 20 and got == cli
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["done"] == 20 and report["failed"] == 0
    assert all(r["bpp"] > 0 and r["seconds"] > 0 and r["error"] is None for r in report["results"])
    # running the same command again codes nothing
    assert _cli("encode", photos, "-o", tmp_path / "ray", "-r", "--device", "cpu", "-q", "--engine", "ray",
                "--json", tmp_path / "r2.json") == 0
    again = json.loads((tmp_path / "r2.json").read_text())
    assert again["skipped"] == 20 and again["done"] == 0 and _files(tmp_path / "ray") == cli


def test_a_corrupt_file_is_a_row_and_the_rest_are_coded(local_ray, photos, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for p in list(photos.glob("p0*.png"))[:4]:
        (d / p.name).write_bytes(p.read_bytes())
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rows = raydata.encode_dataset(d, tmp_path / "out", codec_kwargs={"device": "cpu"}, workers=1, batch_size=2)
    bad = [r for r in rows if r["error"]]
    assert len(rows) == 5 and len(bad) == 1 and "broken.png" in bad[0]["input"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.stem + ".scdc" for p in d.glob("p*.png"))
    assert _cli("encode", d, "-o", tmp_path / "out2", "--device", "cpu", "-q", "--engine", "ray") == 1


class KillOnce(raydata.CodecWorker):
    """A worker that SIGKILLs its own process at the first file of its first batch (once per job:
    a marker file says it happened)."""

    marker = ""  # set by the test; the class travels to the workers by value

    def __call__(self, batch):
        marker = Path(self.marker)
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__(batch)


def test_a_killed_worker_is_retried_and_every_file_is_coded_once(local_ray, photos, tmp_path):
    KillOnce.marker = str(tmp_path / "killed")
    rows = raydata.encode_dataset(photos, tmp_path / "out", codec_kwargs={"device": "cpu"}, workers=1, batch_size=4,
                                  worker=KillOnce)
    assert (tmp_path / "killed").exists()
    assert len(rows) == 20 and not any(r["error"] for r in rows)
    outs = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert len(outs) == 20 and not any(".part" in o for o in outs)


def test_decode_through_ray_round_trips(local_ray, photos, tmp_path):
    assert _cli("encode", photos, "-o", tmp_path / "packed", "-r", "--device", "cpu", "-q") == 0
    assert _cli("decode", tmp_path / "packed", "-o", tmp_path / "cli", "-r", "--device", "cpu", "-q") == 0
    assert _cli("decode", tmp_path / "packed", "-o", tmp_path / "ray", "-r", "--device", "cpu", "-q", "--engine",
                "ray", "--workers", "2", "--manifest", tmp_path / "m.parquet") == 0
    assert _files(tmp_path / "ray") == _files(tmp_path / "cli") and len(_files(tmp_path / "ray")) == 20
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "m.parquet").num_rows == 20


def test_without_the_extra_it_is_one_line(tmp_path):
    code = ("import sys; sys.modules['ray'] = None; from stablecodec.cli import main; "
            f"main(['encode', {str(tmp_path)!r}, '-o', {str(tmp_path / 'o')!r}, '--engine', 'ray'])")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 1 and p.stderr.strip().count("\n") == 0
    assert "pip install 'stablecodec[ray]'" in p.stderr
