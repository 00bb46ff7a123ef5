"""The command line: single files, defaults, overwrite rules, exit codes, info, models."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from conftest import save_png, smooth_image
from stablecodec.cli import cli

M = ["--model", "ft8", "--device", "cpu", "--precision", "fp32"]


def run(*args, input=None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)


def test_encode_decode_default_names(weights_home, photo):
    r = run("encode", photo, *M)
    assert r.exit_code == 0, r.output
    scdc = photo.with_suffix(".scdc")
    assert scdc.exists() and not list(photo.parent.glob(".*.part"))
    png = photo.parent / "photo.png"
    png.unlink()  # decode's default name is the original's
    r = run("decode", scdc, *M)
    assert r.exit_code == 0, r.output
    from PIL import Image

    assert Image.open(png).size == (136, 96)


def test_explicit_outputs_and_formats(weights_home, photo, tmp_path):
    out = tmp_path / "x.scdc"
    assert run("encode", photo, "-o", out, *M).exit_code == 0
    jpg = tmp_path / "x.jpg"
    assert run("decode", out, "-o", jpg, *M).exit_code == 0
    assert jpg.read_bytes()[:2] == b"\xff\xd8"


def test_nothing_is_overwritten_without_force(weights_home, photo, tmp_path):
    out = tmp_path / "a.scdc"
    out.write_bytes(b"precious")
    r = run("encode", photo, "-o", out, *M)
    assert r.exit_code == 1 and "exists; use --force" in r.output
    assert out.read_bytes() == b"precious"
    assert run("encode", photo, "-o", out, "--force", *M).exit_code == 0
    assert out.read_bytes()[:2] == b"\x5c\xdc"


def test_user_errors_are_one_line_exit_1(weights_home, tmp_path):
    r = run("encode", tmp_path / "nope.png", *M)
    assert r.exit_code == 1 and r.output.strip().count("\n") == 0 and "no such file" in r.output
    bad = tmp_path / "bad.scdc"
    bad.write_bytes(b"\x5c\xdc\x10garbage-garbage-garbage")
    r = run("decode", bad, *M)
    assert r.exit_code == 1 and "corrupt" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "bad.png").exists()
    txt = tmp_path / "t.png"
    txt.write_text("not an image")
    r = run("encode", txt, *M)
    assert r.exit_code == 1 and "not an image" in r.output


def test_missing_weights_is_one_line(tmp_path, photo, monkeypatch):
    monkeypatch.setenv("STABLECODEC_HOME", str(tmp_path / "empty"))
    r = run("encode", photo, "-o", tmp_path / "o.scdc", *M)
    assert r.exit_code == 1 and "weights of model ft8 not found" in r.output
    assert "stablecodec_ft8.pkl" in r.output


def test_usage_errors_exit_2(photo):
    assert run("encode", photo, "--device", "tpu").exit_code == 2
    assert run("encode").exit_code == 2
    assert run("frobnicate").exit_code == 2
    assert run("encode", photo, "--model", "ft8", "--bpp", "0.1").exit_code == 2


def test_info_json(weights_home, photo, tmp_path):
    out = tmp_path / "a.scdc"
    run("encode", photo, "-o", out, *M)
    r = run("info", out, "--json")
    d = json.loads(r.output)
    assert d["model"] == "ft8" and d["width"] == 136 and d["height"] == 96 and d["crc_ok"]
    assert d["header_bytes"] == 18  # 136 needs a 2-byte varint, 96 one
    r = run("info", out)
    assert "ft8" in r.output and "136x96" in r.output


def test_models_lists_presence(weights_home):
    r = run("models", "--json")
    rows = {m["name"]: m for m in json.loads(r.output)["models"]}
    assert rows["ft8"]["present"] and not rows["ft16"]["present"]
    assert "stablecodec_ft16.pkl" in rows["ft16"]["where"]


def test_convert_command(tiny_release, tmp_path):
    out = tmp_path / "stablecodec-ft8.safetensors"
    r = run("convert", "--sd-turbo", tiny_release["sd_turbo"], "--checkpoint", tiny_release["checkpoint"],
            "--elic", tiny_release["elic"], "-o", out)
    assert r.exit_code == 0, r.output
    assert out.exists()
    assert run("convert", "--sd-turbo", tiny_release["sd_turbo"], "--checkpoint", tiny_release["checkpoint"],
               "--elic", tiny_release["elic"], "-o", out).exit_code == 1


def test_explicit_weight_files(tiny_release, photo, tmp_path):
    files = ["--sd-turbo", tiny_release["sd_turbo"], "--checkpoint", tiny_release["checkpoint"], "--elic", tiny_release["elic"]]
    out = tmp_path / "a.scdc"
    assert run("encode", photo, "-o", out, *files, "--device", "cpu").exit_code == 0
    assert run("decode", out, "-o", tmp_path / "a.png", *files).exit_code == 0
    r = run("encode", photo, "-o", tmp_path / "b.scdc", "--sd-turbo", tiny_release["sd_turbo"])
    assert r.exit_code == 1 and "must be given together" in r.output


def test_version_and_help_are_fast():
    t = time.time()
    r = subprocess.run([sys.executable, "-m", "stablecodec", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "encode" in r.stdout
    assert time.time() - t < 5  # the benchmark (docs/performance.md) tracks the real figure
    r = subprocess.run([sys.executable, "-m", "stablecodec", "--version"], capture_output=True, text=True)
    assert "stablecodec, version" in r.stdout
    for cmd in ("encode", "decode", "info", "models", "convert"):
        assert run(cmd, "--help").exit_code == 0


# ---------------------------------------------------------------------------------------
# Rough edges found by hostile testing (issue 16): one clear line each, the right status.


def _cli(*args, cwd=None):
    """The installed entry point in a subprocess: what a user's terminal shows."""
    return subprocess.run([sys.executable, "-m", "stablecodec", *[str(a) for a in args]], capture_output=True,
                          text=True, cwd=cwd)


def _one_line(p, status):
    lines = p.stderr.strip().splitlines()
    assert p.returncode == status and len(lines) == 1 and lines[0].startswith("stablecodec: error: "), p.stderr
    return lines[0]


def test_some_but_not_all_weight_files_is_one_line(tmp_path):
    p = _cli("decode", tmp_path / "f.scdc", "--checkpoint", tmp_path / "x.pkl", "-o", tmp_path / "o.png")
    line = _one_line(p, 1)
    assert "--sd-turbo, --checkpoint and --elic (stablecodec) or --sd-turbo, --checkpoint and --half-decoder " \
           "(aeic) must be given together (got only --checkpoint)" in line
    assert "internal error" not in line


def test_a_file_named_like_an_option_is_one_line_with_the_fix(tmp_path):
    save_png(tmp_path / "-x.png", smooth_image(16, 16))
    line = _one_line(_cli("encode", "-x.png", cwd=tmp_path), 2)
    assert "No such option '-x'" in line and "write ./-x.png or put -- before it" in line


@pytest.mark.parametrize("output", ["a.png", "link.png"])
def test_output_onto_the_input_is_one_line(tmp_path, output):
    save_png(tmp_path / "a.png", smooth_image(16, 16))
    (tmp_path / "link.png").symlink_to(tmp_path / "a.png")
    line = _one_line(_cli("encode", "a.png", "-o", output, cwd=tmp_path), 2)
    assert f"output {output} would overwrite the input" in line
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"


def test_unknown_option_is_one_line():
    assert "No such option '--bogus' (see 'stablecodec encode --help')" in _one_line(_cli("encode", "--bogus", "a"), 2)


def test_a_folder_named_like_an_image_is_an_error_not_zero_files(tmp_path):
    (tmp_path / "x.png").mkdir()
    line = _one_line(_cli("encode", tmp_path / "x.png"), 1)
    assert "no images" in line and "found in the folder" in line
    (tmp_path / "d").mkdir()
    assert "no .scdc files found in the folder" in _one_line(_cli("decode", tmp_path / "d"), 1)


def test_malicious_checkpoint_error_is_one_line_without_torch_advice(tmp_path):
    import os
    import pickle

    import torch

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    sd = tmp_path / "sd"
    for sub in ("unet", "vae", "scheduler"):
        (sd / sub).mkdir(parents=True)
    torch.save({"state_dict_vae": Evil()}, tmp_path / "evil.pkl")
    (tmp_path / "evil2.pkl").write_bytes(pickle.dumps(Evil(), protocol=4))
    from stablecodec import container

    (tmp_path / "f.scdc").write_bytes(container.pack(container.Header(0xFF, 0, 64, 64, 0), b"\0"))
    for f in ("evil.pkl", "evil2.pkl"):
        p = _cli("decode", tmp_path / "f.scdc", "--sd-turbo", sd, "--checkpoint", tmp_path / f, "--elic",
                 tmp_path / f, "-o", tmp_path / "o.png")
        line = _one_line(p, 1)
        assert "refused to load" in line and "weights_only" not in line and "Warning" not in p.stderr
    assert not (tmp_path / "pwned").exists()
