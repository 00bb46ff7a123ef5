"""Folders, resuming, failures among many files, streams and shards (issue 5).

Everything runs the real CLI on the tiny random-weight model "ft8" (``weights_home``) and
small generated images; the interruption and stream tests run it as a separate process.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import save_png, smooth_image
from stablecodec import api, cli as cli_module
from stablecodec.cli import cli, in_shard, parse_shard, plan_jobs, write_atomic

M = ["--model", "ft8", "--device", "cpu", "--precision", "fp32"]
SCDC_MAGIC = b"\x5c\xdc"


def run(*args, input=None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)


def image(path: Path, h: int = 40, w: int = 56, seed: int = 0) -> Path:
    """A small photo-like image in the format its name says."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        return save_png(path, smooth_image(h, w, seed=seed))
    save_png(path.with_suffix(".tmp.png"), smooth_image(h, w, seed=seed))
    with Image.open(path.with_suffix(".tmp.png")) as im:
        im.convert("RGB").save(path)
    path.with_suffix(".tmp.png").unlink()
    return path


def tree(root: Path) -> Path:
    """root/{a.png, b.jpg, sub/c.png, sub/deeper/d.webp} plus things a walk must ignore."""
    image(root / "a.png", seed=1)
    image(root / "b.jpg", seed=2)
    image(root / "sub" / "c.png", seed=3)
    image(root / "sub" / "deeper" / "d.webp", seed=4)
    image(root / ".hidden" / "e.png", seed=5)  # hidden folder
    image(root / ".f.png", seed=6)  # hidden file
    (root / "notes.txt").write_text("not an image")
    return root


def rel_files(root: Path, suffix: str) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob(f"*{suffix}")}


def no_part_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.endswith(".part")]


def report(path: Path) -> dict:
    return json.loads(path.read_text())


def by_input(rep: dict) -> dict[str, dict]:
    return {Path(r["input"]).name: r for r in rep["results"]}


# ---------------------------------------------------------------------------------------
# Folders


def test_folder_top_level_only_without_r(weights_home, tmp_path):
    src = tree(tmp_path / "in")
    r = run("encode", src, "-o", tmp_path / "out", *M)
    assert r.exit_code == 0, r.output
    assert rel_files(tmp_path / "out", ".scdc") == {"a.scdc", "b.scdc"}


def test_folder_recursive_mirrors_relative_paths(weights_home, tmp_path):
    src = tree(tmp_path / "in")
    out = tmp_path / "out"
    r = run("encode", src, "-o", out, "-r", *M)
    assert r.exit_code == 0, r.output
    assert rel_files(out, ".scdc") == {"a.scdc", "b.scdc", "sub/c.scdc", "sub/deeper/d.scdc"}
    assert no_part_files(out)
    # decode mirrors back, in the format --format says, at the original sizes
    dec = tmp_path / "dec"
    r = run("decode", out, "-o", dec, "-r", "--format", "jpg", *M)
    assert r.exit_code == 0, r.output
    assert rel_files(dec, ".jpg") == {"a.jpg", "b.jpg", "sub/c.jpg", "sub/deeper/d.jpg"}
    for p in dec.rglob("*.jpg"):
        assert p.read_bytes()[:2] == b"\xff\xd8"
        with Image.open(p) as im:
            assert im.size == (56, 40)


def test_in_place_without_output(weights_home, tmp_path):
    src = tree(tmp_path / "in")
    assert run("encode", src, "-r", *M).exit_code == 0
    assert rel_files(src, ".scdc") == {"a.scdc", "b.scdc", "sub/c.scdc", "sub/deeper/d.scdc"}


def test_several_files_to_a_folder(weights_home, tmp_path):
    a, b = image(tmp_path / "x" / "a.png"), image(tmp_path / "y" / "b.png", seed=3)
    r = run("encode", a, b, "-o", tmp_path / "out", *M)
    assert r.exit_code == 0, r.output
    assert rel_files(tmp_path / "out", ".scdc") == {"a.scdc", "b.scdc"}


def test_skip_existing_then_force(weights_home, tmp_path):
    src, out = tree(tmp_path / "in"), tmp_path / "out"
    assert run("encode", src, "-o", out, "-r", *M).exit_code == 0
    (out / "a.scdc").write_bytes(b"kept")  # an existing output is never replaced without --force
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.scdc")}
    r = run("encode", src, "-o", out, "-r", "--json", tmp_path / "r.json", *M)
    assert r.exit_code == 0, r.output
    rep = report(tmp_path / "r.json")
    assert (rep["done"], rep["skipped"], rep["failed"]) == (0, 4, 0)
    assert all(rec["skipped"] for rec in rep["results"])
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.scdc")} == before
    assert (out / "a.scdc").read_bytes() == b"kept"
    r = run("encode", src, "-o", out, "-r", "--force", "--json", tmp_path / "r.json", *M)
    assert r.exit_code == 0, r.output
    rep = report(tmp_path / "r.json")
    assert (rep["done"], rep["skipped"]) == (4, 0)
    assert (out / "a.scdc").read_bytes()[:2] == SCDC_MAGIC


def test_one_corrupt_input_among_several(weights_home, tmp_path):
    src = tmp_path / "in"
    for i in range(3):
        image(src / f"good{i}.png", seed=i)
    (src / "garbage.png").write_bytes(b"this is not a png")
    whole = (src / "good0.png").read_bytes()
    (src / "truncated.png").write_bytes(whole[: len(whole) // 2])
    out = tmp_path / "out"
    r = run("encode", src, "-o", out, "--json", tmp_path / "r.json", *M)
    assert r.exit_code == 1
    assert rel_files(out, ".scdc") == {"good0.scdc", "good1.scdc", "good2.scdc"}
    assert no_part_files(out)
    rep = by_input(report(tmp_path / "r.json"))
    assert "not an image" in rep["garbage.png"]["error"]
    assert "truncated" in rep["truncated.png"]["error"]
    assert all(rep[f"good{i}.png"]["error"] is None for i in range(3))
    # one line per failed file on stderr, naming it
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("stablecodec: error:")]
    assert len(errors) == 2 and any("garbage.png" in ln for ln in errors)
    assert "Traceback" not in r.output


def test_too_large_file_in_a_batch_is_reported_and_the_run_goes_on(weights_home, tmp_path):
    src = tmp_path / "in"
    image(src / "ok.png")
    Image.new("L", (16385, 1)).save(src / "wide.png")  # over 16384 px per side, a few bytes
    r = run("encode", src, "-o", tmp_path / "out", "--json", tmp_path / "r.json", *M)
    assert r.exit_code == 1
    assert (tmp_path / "out" / "ok.scdc").exists() and not (tmp_path / "out" / "wide.scdc").exists()
    err = by_input(report(tmp_path / "r.json"))["wide.png"]["error"]
    assert "16385x1 exceeds the limit" in err and "downscale" in err


def test_an_output_that_cannot_be_written_is_reported_and_the_run_goes_on(weights_home, tmp_path):
    src, out = tree(tmp_path / "in"), tmp_path / "out"
    out.mkdir()
    (out / "sub").write_text("a file where the folder sub/ should be")
    r = run("encode", src, "-o", out, "-r", "--json", tmp_path / "r.json", *M)
    assert r.exit_code == 1
    rep = by_input(report(tmp_path / "r.json"))
    for name in ("c.png", "d.webp"):
        assert rep[name]["error"].startswith(f"cannot write {out / 'sub'}") and "a file is in the way" in rep[name]["error"]
    assert rel_files(out, ".scdc") == {"a.scdc", "b.scdc"}


def test_corrupt_scdc_among_several_on_decode(weights_home, tmp_path):
    src = tmp_path / "in"
    image(src / "a.png")
    assert run("encode", src, "-o", tmp_path / "packed", *M).exit_code == 0
    (tmp_path / "packed" / "bad.scdc").write_bytes(SCDC_MAGIC + b"\x10corrupt-corrupt-corrupt")
    r = run("decode", tmp_path / "packed", "-o", tmp_path / "dec", "--json", tmp_path / "r.json", *M)
    assert r.exit_code == 1
    assert rel_files(tmp_path / "dec", ".png") == {"a.png"}
    assert "corrupt" in by_input(report(tmp_path / "r.json"))["bad.scdc"]["error"]


def test_summary_line_and_json_report_fields(weights_home, tmp_path):
    src = tree(tmp_path / "in")
    (src / "broken.png").write_bytes(b"nope")
    r = run("encode", src, "-o", tmp_path / "out", "-r", "--json", tmp_path / "r.json", *M)
    assert r.exit_code == 1
    summary = r.stderr.strip().splitlines()[-1]
    m = re.fullmatch(r"encode: 5 of 5 files: 4 done, 0 skipped, 1 failed; (\d+) B compressed, ([0-9.]+) bpp overall, "
                     r"mean ([0-9.]+) bpp; [0-9.]+ s, [0-9.]+ s/file", summary)
    assert m, summary
    rep = report(tmp_path / "r.json")
    assert rep["command"] == "encode" and rep["exit_status"] == 1 and not rep["interrupted"]
    assert (rep["planned"], rep["files"], rep["done"], rep["skipped"], rep["failed"]) == (5, 5, 4, 0, 1)
    assert rep["bytes"] == int(m.group(1)) == sum(p.stat().st_size for p in (tmp_path / "out").rglob("*.scdc"))
    assert rep["pixels"] == 4 * 40 * 56
    assert rep["bpp"] == pytest.approx(rep["bytes"] * 8 / rep["pixels"], abs=1e-6)
    for rec in rep["results"]:
        assert {"input", "output", "size", "bpp", "seconds", "error", "skipped"} <= rec.keys()
        if rec["error"] is None:
            assert rec["size"] == Path(rec["output"]).stat().st_size
            assert rec["bpp"] == pytest.approx(rec["size"] * 8 / (40 * 56), abs=1e-6)
            assert rec["seconds"] >= 0 and (rec["width"], rec["height"]) == (56, 40)
        else:
            assert rec["size"] is None and rec["bpp"] is None and rec["input"].endswith("broken.png")
    mean = sum(r_["bpp"] for r_ in rep["results"] if r_["bpp"]) / 4
    assert rep["mean_bpp"] == pytest.approx(mean, abs=1e-6)


def test_decode_report_sizes_are_the_compressed_files(weights_home, tmp_path):
    image(tmp_path / "in" / "a.png")
    run("encode", tmp_path / "in", "-o", tmp_path / "packed", *M)
    r = run("decode", tmp_path / "packed", "-o", tmp_path / "dec", "--json", tmp_path / "r.json", *M)
    assert r.exit_code == 0, r.output
    rec = report(tmp_path / "r.json")["results"][0]
    assert rec["size"] == (tmp_path / "packed" / "a.scdc").stat().st_size and rec["format"] == "PNG"


def test_quiet_prints_nothing_on_success(weights_home, tmp_path):
    image(tmp_path / "in" / "a.png")
    r = run("encode", tmp_path / "in", "-o", tmp_path / "out", "-q", *M)
    assert r.exit_code == 0 and r.stderr == "" and r.stdout == ""


def test_progress_bar_over_files_shows_bpp_and_speed(weights_home, tmp_path, monkeypatch):
    for i in range(3):
        image(tmp_path / "in" / f"{i}.png", seed=i)
    monkeypatch.setattr(cli_module, "_tty", lambda: True)
    r = run("encode", tmp_path / "in", "-o", tmp_path / "out", *M)
    assert r.exit_code == 0, r.output
    bar = r.stderr.replace("\r", "\n")
    # tqdm shows the rate as files/s, or as s/file when a file takes over a second (a loaded machine)
    assert re.search(r"encode: 100%.*3/3 \[.*(file/s|s/file), bpp=[0-9.]+\]", bar), bar


def test_empty_folder_says_so(weights_home, tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    image(tmp_path / "in" / "sub" / "a.png")
    r = run("encode", tmp_path / "in", "-o", tmp_path / "out", *M)
    # nothing to code in a folder given by name is a mistake: one line, exit 1 (issue 16)
    assert r.exit_code == 1 and r.stderr.count("\n") == 1
    assert "no images" in r.stderr and "use -r" in r.stderr
    assert run("encode", tmp_path / "in", "-o", tmp_path / "out", "-r", *M).exit_code == 0


def test_two_inputs_for_one_output_is_a_usage_error(weights_home, tmp_path):
    image(tmp_path / "in" / "a.png")
    image(tmp_path / "in" / "a.jpg")
    r = run("encode", tmp_path / "in", "-o", tmp_path / "out", *M)
    assert r.exit_code == 2 and "would both be written to" in r.output
    assert not (tmp_path / "out").exists()


def test_batch_usage_errors(weights_home, tmp_path):
    image(tmp_path / "in" / "a.png")
    assert run("encode", tmp_path / "in", "-o", "-", *M).exit_code == 2
    assert run("encode", tmp_path / "in", "-", *M).exit_code == 2
    (tmp_path / "file").write_text("x")
    assert run("encode", tmp_path / "in", "-o", tmp_path / "file", *M).exit_code == 2


def test_missing_weights_fail_once_for_a_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("STABLECODEC_HOME", str(tmp_path / "empty"))
    for i in range(3):
        image(tmp_path / "in" / f"{i}.png", seed=i)
    r = run("encode", tmp_path / "in", "-o", tmp_path / "out", *M)
    assert r.exit_code == 1 and r.stderr.count("weights of model ft8 not found") == 1


# ---------------------------------------------------------------------------------------
# Never lose work


def test_write_atomic_never_clobbers_and_leaves_no_part(tmp_path, monkeypatch):
    out = tmp_path / "d" / "x.scdc"
    write_atomic(out, b"one", force=False)
    assert out.read_bytes() == b"one"
    with pytest.raises(FileExistsError):
        write_atomic(out, b"two", force=False)
    write_atomic(out, b"two", force=True)
    assert out.read_bytes() == b"two" and no_part_files(tmp_path)

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)  # Ctrl-C in the middle of writing
    with pytest.raises(KeyboardInterrupt):
        write_atomic(tmp_path / "d" / "y.scdc", b"partial", force=False)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(out, b"three", force=True)
    assert not (tmp_path / "d" / "y.scdc").exists() and out.read_bytes() == b"two" and no_part_files(tmp_path)


# A CLI process whose encoder takes a second per image, so that SIGINT lands mid-batch.
SLOW_CLI = """
import sys, time
import stablecodec.api as api
_encode = api.Codec.encode
def slow(self, *args, **kwargs):
    out = _encode(self, *args, **kwargs)
    time.sleep(1.0)
    return out
api.Codec.encode = slow
from stablecodec.cli import main
main()
"""


def _env(weights_home: Path) -> dict[str, str]:
    return {**os.environ, "STABLECODEC_HOME": str(weights_home), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def test_interrupt_leaves_no_partial_file_and_a_rerun_resumes(weights_home, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(6):
        image(src / f"{i}.png", seed=i)
    cmd = [sys.executable, "-c", SLOW_CLI, "encode", str(src), "-o", str(out), "--json", str(tmp_path / "r1.json"), *M]
    # Ctrl-C as at a terminal: a suite started in the background of a non-interactive shell
    # would otherwise hand the CLI an ignored SIGINT, which Python then leaves ignored.
    proc = subprocess.Popen(cmd, env=_env(weights_home), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while not list(out.glob("*.scdc")):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no output appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr.decode()
    assert "interrupted" in stderr.decode() and "Traceback" not in stderr.decode()
    assert no_part_files(out)
    first = {p.name: p.read_bytes() for p in out.glob("*.scdc")}
    assert 1 <= len(first) < 6
    for data in first.values():  # complete files only
        assert api.info(data)["crc_ok"]
    rep = report(tmp_path / "r1.json")
    assert rep["interrupted"] and rep["exit_status"] == 130 and rep["done"] == len(first)

    r = run("encode", src, "-o", out, "--json", tmp_path / "r2.json", *M)
    assert r.exit_code == 0, r.output
    rep = report(tmp_path / "r2.json")
    assert (rep["skipped"], rep["done"], rep["failed"]) == (len(first), 6 - len(first), 0)
    assert {p.name for p in out.glob("*.scdc")} == {f"{i}.scdc" for i in range(6)}
    assert all((out / name).read_bytes() == data for name, data in first.items())


def test_main_maps_interruptions_and_usage_errors_to_exit_statuses(weights_home, tmp_path, monkeypatch, capsys):
    image(tmp_path / "in" / "a.png")

    def interrupted(self, name=None):
        raise KeyboardInterrupt  # Ctrl-C while the model loads, before any file

    monkeypatch.setattr(api.Codec, "get_model", interrupted)
    with pytest.raises(SystemExit) as e:
        cli_module.main(["encode", str(tmp_path / "in"), "-o", str(tmp_path / "out"), *M])
    assert e.value.code == 130 and "interrupted" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as e:
        cli_module.main(["encode", str(tmp_path / "in"), "--shard", "9/2"])
    assert e.value.code == 2 and "--shard" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli_module.main(["--version"])
    assert e.value.code == 0 and "stablecodec, version" in capsys.readouterr().out


def test_sigterm_stops_like_ctrl_c():
    with pytest.raises(KeyboardInterrupt):
        cli_module._terminate(signal.SIGTERM, None)


# ---------------------------------------------------------------------------------------
# Streams


def test_stdin_to_stdout_as_separate_processes(weights_home, tmp_path):
    a = image(tmp_path / "a.png", h=48, w=64)
    env = _env(weights_home)
    args = " ".join(M)
    r = subprocess.run(f'cat "{a}" | "{sys.executable}" -m stablecodec encode - -o - {args} > "{tmp_path / "a.scdc"}"',
                       shell=True, env=env, capture_output=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr.decode()
    data = (tmp_path / "a.scdc").read_bytes()
    assert data[:2] == SCDC_MAGIC
    meta = api.info(data)
    assert (meta["width"], meta["height"], meta["model"]) == (64, 48, "ft8")
    r = subprocess.run([sys.executable, "-m", "stablecodec", "decode", "-", *M], input=data, env=env,
                       capture_output=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr.decode()
    with Image.open(io.BytesIO(r.stdout)) as im:
        assert im.format == "PNG" and im.size == (64, 48)


def test_stdin_and_stdout_in_process(weights_home, tmp_path):
    a = image(tmp_path / "a.png")
    r = CliRunner().invoke(cli, ["encode", "-", *M], input=a.read_bytes(), catch_exceptions=False)
    assert r.exit_code == 0 and r.stdout_bytes[:2] == SCDC_MAGIC
    r = CliRunner().invoke(cli, ["decode", "-", "-o", "-", "--format", "jpg", *M], input=r.stdout_bytes,
                           catch_exceptions=False)
    assert r.exit_code == 0 and r.stdout_bytes[:2] == b"\xff\xd8"
    # stdin to a file, a file to stdout
    r = CliRunner().invoke(cli, ["encode", "-", "-o", tmp_path / "s.scdc", *M], input=a.read_bytes())
    assert r.exit_code == 0 and (tmp_path / "s.scdc").read_bytes()[:2] == SCDC_MAGIC
    r = CliRunner().invoke(cli, ["decode", str(tmp_path / "s.scdc"), "-o", "-", *M])
    assert r.exit_code == 0 and r.stdout_bytes[:4] == b"\x89PNG"
    r = CliRunner().invoke(cli, ["encode", "-", *M], input=b"not an image")
    assert r.exit_code == 1 and "standard input: not an image" in r.stderr and r.stdout_bytes == b""


def test_binary_output_is_not_sent_to_a_terminal(weights_home, tmp_path, monkeypatch):
    a = image(tmp_path / "a.png")
    monkeypatch.setattr(cli_module, "_stdout_is_tty", lambda: True)
    r = run("encode", a, "-o", "-", *M)
    assert r.exit_code == 1 and "terminal" in r.stderr and r.stdout_bytes == b""


# ---------------------------------------------------------------------------------------
# Shards


NAMES = [f"{d}/img_{i:03d}.png" for d in ("a", "b/c", "") for i in range(40)]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_in_shard_partitions_every_file_exactly_once(n):
    for rel in NAMES:
        assert sum(in_shard(rel, (i, n)) for i in range(1, n + 1)) == 1
    if n > 1:  # and not all in one shard
        assert all(any(in_shard(rel, (i, n)) for rel in NAMES) for i in range(1, n + 1))


def test_shard_assignment_is_stable_when_files_are_added():
    before = {rel: [i for i in range(1, 5) if in_shard(rel, (i, 4))] for rel in NAMES[:60]}
    # adding files changes nothing for the others: the assignment depends on the name only
    assert before == {rel: [i for i in range(1, 5) if in_shard(rel, (i, 4))] for rel in NAMES[:60]}
    assert in_shard("a/img_000.png", None)
    # and it is a fixed function of the relative path (the same on every machine)
    assert [i for i in range(1, 5) if in_shard("a/img_000.png", (i, 4))] == [
        1 + int.from_bytes(__import__("hashlib").blake2b(b"a/img_000.png", digest_size=8).digest(), "big") % 4]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_plan_jobs_shards_cover_a_folder_exactly_once(tmp_path, n):
    root = tmp_path / "in"
    for i in range(12):
        (root / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        (root / f"d{i % 3}" / f"{i}.png").write_bytes(b"")
    all_jobs, batch = plan_jobs((str(root),), str(tmp_path / "out"), True, (".png",), ".scdc")
    assert batch and len(all_jobs) == 12
    parts = [plan_jobs((str(root),), str(tmp_path / "out"), True, (".png",), ".scdc", (i, n))[0] for i in range(1, n + 1)]
    seen = [job for part in parts for job in part]
    assert sorted(seen) == sorted(all_jobs) and len(seen) == len(set(seen))


def test_shard_via_the_cli_covers_every_file_once(weights_home, tmp_path):
    src = tmp_path / "in"
    for i in range(6):
        image(src / ("sub" if i % 2 else "") / f"{i}.png", h=24, w=32, seed=i)
    n, inputs = 3, []
    for i in range(1, n + 1):
        r = run("encode", src, "-o", tmp_path / "out", "-r", "--shard", f"{i}/{n}", "--json", tmp_path / f"{i}.json", *M)
        assert r.exit_code == 0, r.output
        rep = report(tmp_path / f"{i}.json")
        assert rep["skipped"] == 0  # no other shard wrote any of this shard's files
        inputs += [rec["input"] for rec in rep["results"]]
    assert sorted(inputs) == sorted(str(p) for p in src.rglob("*.png"))
    assert len(rel_files(tmp_path / "out", ".scdc")) == 6


def test_shard_option_errors_are_usage_errors(weights_home, tmp_path):
    image(tmp_path / "in" / "a.png")
    for bad in ("0/3", "4/3", "1/0", "x", "1/2/3"):
        r = run("encode", tmp_path / "in", "--shard", bad, *M)
        assert r.exit_code == 2, bad
    assert parse_shard("2/5") == (2, 5) and parse_shard(None) is None
    with pytest.raises(click.BadParameter):
        parse_shard("6/5")
