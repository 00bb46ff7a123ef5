"""Size targets (issue 16): --target-size / --target-bpp pick the highest-rate model that fits.

Run on the bundled default model's five rate points (present on every install), against a
brute-force encode with each of them.
"""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from conftest import save_png, smooth_image
from stablecodec import Codec, registry
from stablecodec.cli import cli, parse_bytes
from stablecodec.errors import LimitError

LITE = [m.name for m in registry.MODELS if m.family == "lite"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def sizes(tmp_path_factory):
    """The file size of one image with every default-model rate point."""
    d = tmp_path_factory.mktemp("target")
    path = save_png(d / "img.png", smooth_image(256, 384, seed=4))
    codec = Codec(device="cpu")
    return path, codec, {name: len(codec.encode(path, model=name)) for name in LITE}


def test_sizes_grow_with_the_rate_points(sizes):
    _, _, s = sizes
    assert [s[n] for n in LITE] == sorted(s[n] for n in LITE)


@pytest.mark.parametrize("between", [0, 1, 2, 3])
def test_the_highest_model_that_fits_is_chosen_in_few_encodes(sizes, between):
    path, codec, s = sizes
    target = (s[LITE[between]] + s[LITE[between + 1]]) // 2  # fits rate point `between`, not the next
    fit = codec.encode_to_size(path, target, family="lite")
    assert fit.model == LITE[between] and len(fit.data) == s[LITE[between]] <= target
    assert len(fit.tried) <= 3
    assert all(size > target for name, size in fit.tried if LITE.index(name) > between)


def test_the_top_rate_point_takes_one_encode(sizes):
    path, codec, s = sizes
    fit = codec.encode_to_size(path, s[LITE[-1]] * 10, family="lite")
    assert fit.model == LITE[-1] and len(fit.tried) == 1


def test_nothing_fits_names_the_smallest_file(sizes):
    path, codec, s = sizes
    with pytest.raises(LimitError, match=rf"no model fits 10 bytes: the smallest file is {s[LITE[0]]:,} bytes "
                                         rf"\(model {LITE[0]}\)"):
        codec.encode_to_size(path, 10, family="lite")


def test_target_bpp_counts_the_image_not_the_metadata(sizes):
    path, codec, s = sizes
    px = 256 * 384
    bpp = (s[LITE[2]] + 1) * 8 / px
    fit = codec.encode_to_size(path, max_bpp=bpp, family="lite")
    assert fit.model == LITE[2]


def test_cli_reports_the_model_per_file_in_a_batch(sizes, tmp_path):
    path, _, s = sizes
    (tmp_path / "in").mkdir()
    for i, seed in enumerate((4, 5)):
        save_png(tmp_path / "in" / f"{i}.png", smooth_image(256, 384, seed=seed))
    target = (s[LITE[1]] + s[LITE[2]]) // 2
    r = run("encode", tmp_path / "in", "-o", tmp_path / "out", "--target-size", target, "--json", tmp_path / "r.json",
            "--device", "cpu")
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "r.json").read_text())["results"]
    assert [row["model"] for row in rows][0] == LITE[1] and all(row["size"] <= target for row in rows)
    assert all(row["tried"] for row in rows)


def test_cli_none_fits_is_one_line_exit_1(sizes, tmp_path):
    path, _, _ = sizes
    r = run("encode", path, "-o", tmp_path / "x.scdc", "--target-size", "10", "--device", "cpu")
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and "no model fits 10 bytes" in r.stderr
    assert not (tmp_path / "x.scdc").exists()


@pytest.mark.parametrize("text,n", [("2048", 2048), ("2KB", 2000), ("2kB", 2000), ("2 KiB", 2048), ("1.5MB", 1_500_000),
                                    ("3k", 3000)])
def test_sizes_are_read_with_units(text, n):
    assert parse_bytes(text) == n


@pytest.mark.parametrize("text", ["", "2XB", "-3", "0", "KB"])
def test_bad_sizes_are_usage_errors(text):
    with pytest.raises(click.BadParameter):
        parse_bytes(text)


def test_conflicting_choices_are_usage_errors(tmp_path):
    for extra in (["--model", "lite-2"], ["--bpp", "0.02"], ["--target-bpp", "0.1"]):
        r = run("encode", tmp_path / "a.png", "--target-size", "2KB", *extra)
        assert r.exit_code == 2 and "not several" in r.stderr
    assert run("encode", tmp_path / "a.png", "--family", "lite").exit_code == 2
    r = run("encode", tmp_path / "a.png", "--target-size", "2KB", "--family", "nope")
    assert r.exit_code == 1 and "unknown model family 'nope'" in r.stderr
