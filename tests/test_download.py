"""``stablecodec download`` (issue 16) against a local server that speaks the Hub's file
URLs (``tests/_hub.py``, through ``HF_ENDPOINT``), with the real huggingface_hub client:
SD-Turbo from the "Hub", the authors' checkpoints from ``--from`` (a folder or a URL),
every file checked and its SHA-256 recorded, then converted; offline, one line naming the
file and where to put it."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading

import pytest

import _hub
from stablecodec import testing


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    d = tmp_path_factory.mktemp("release")
    files = testing.write_released(d / "release", testing.tiny(), name="ft8")
    (d / "drive").mkdir()
    for k in ("checkpoint", "elic"):
        shutil.copy(files[k], d / "drive")
    hub = _hub.serve({"stabilityai/sd-turbo": str(files["sd_turbo"])})
    yield {"dir": d, "drive": d / "drive", "files": files, "endpoint": f"http://127.0.0.1:{hub.server_address[1]}"}
    hub.shutdown()


def _download(*args, endpoint: str):
    env = dict(os.environ, HF_ENDPOINT=endpoint)
    env.pop("HF_HUB_OFFLINE", None)  # as on a user's machine
    return subprocess.run([sys.executable, "-m", "stablecodec", "download", *[str(a) for a in args], "-q"], env=env,
                          capture_output=True, text=True, timeout=600)


def test_download_fetches_checks_records_and_converts(release, tmp_path):
    w = tmp_path / "w"
    _hub.Hub.log.clear()
    p = _download("ft8", "--weights-dir", w, "--from", release["drive"], endpoint=release["endpoint"])
    assert p.returncode == 0, p.stderr
    assert any(path.startswith("/stabilityai/sd-turbo/resolve/main/unet/") for _, path in _hub.Hub.log)
    sums = dict(line.split("  ")[::-1] for line in (w / "SHA256SUMS").read_text().splitlines())
    assert "sd-turbo/unet/diffusion_pytorch_model.safetensors" in sums and "stablecodec_ft8.pkl" in sums
    assert all(len(v) == 64 for v in sums.values())
    assert (w / "stablecodec-ft8.safetensors").is_file() and "wrote" in p.stdout
    assert " hub " in p.stdout and " from " in p.stdout  # the SHA-256 of every file is printed
    # the model is now usable from the weights directory
    m = subprocess.run([sys.executable, "-m", "stablecodec", "models", "--weights-dir", str(w), "--json"],
                       capture_output=True, text=True)
    assert '"name": "ft8"' in m.stdout and m.stdout.split('"name": "ft8"')[1].split("}")[0].count('"present": true')
    # a second run verifies the recorded hashes; a changed file is caught
    assert _download("ft8", "--weights-dir", w, "--no-convert", endpoint=release["endpoint"]).returncode == 0
    cfg = w / "sd-turbo" / "scheduler" / "scheduler_config.json"
    cfg.write_text(cfg.read_text() + " ")  # still valid JSON, another file
    p = _download("ft8", "--weights-dir", w, "--no-convert", endpoint=release["endpoint"])
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "not the" in p.stderr and "recorded" in p.stderr


def test_checkpoints_from_a_url_and_resumed(release, tmp_path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(release["drive"]))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        w = tmp_path / "w"
        w.mkdir()
        # half a file left by an interrupted transfer is completed, not restarted
        ck = (release["drive"] / "stablecodec_ft8.pkl").read_bytes()
        (w / "stablecodec_ft8.pkl.part").write_bytes(ck[: len(ck) // 2])
        p = _download("ft8", "--weights-dir", w, "--no-convert", "--from", f"http://127.0.0.1:{srv.server_address[1]}/",
                      endpoint=release["endpoint"])
        assert p.returncode == 0, p.stderr
        assert (w / "stablecodec_ft8.pkl").read_bytes() == ck
    finally:
        srv.shutdown()


def test_offline_is_one_line_naming_the_file_and_where_to_put_it(release, tmp_path):
    p = _download("ft8", "--weights-dir", tmp_path / "w", "--from", release["drive"], endpoint="http://127.0.0.1:9")
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1, p.stderr
    assert "could not fetch sd-turbo/unet/config.json from the Hugging Face Hub" in lines[0]
    assert f"by hand to {tmp_path / 'w' / 'sd-turbo' / 'unet' / 'config.json'}" in lines[0]


def test_checkpoints_that_need_a_browser_are_named_with_their_page(release, tmp_path):
    p = _download("ft8", "--weights-dir", tmp_path / "w", endpoint=release["endpoint"])
    assert p.returncode == 1 and p.stderr.count("\n") == 1
    assert "stablecodec_ft8.pkl, elic_official.pth not in" in p.stderr and "drive.google.com" in p.stderr
    assert "--from DOWNLOAD_FOLDER" in p.stderr


def test_the_default_model_needs_nothing(tmp_path):
    p = subprocess.run([sys.executable, "-m", "stablecodec", "download", "lite-3"], capture_output=True, text=True)
    assert p.returncode == 0 and "nothing to download" in p.stdout


def test_a_user_offline_setting_is_respected(release, tmp_path):
    env = dict(os.environ, HF_ENDPOINT=release["endpoint"], HF_HUB_OFFLINE="1")
    p = subprocess.run([sys.executable, "-m", "stablecodec", "download", "ft8", "--weights-dir", str(tmp_path / "w"),
                        "--from", str(release["drive"]), "-q"], env=env, capture_output=True, text=True)
    assert p.returncode == 1 and "HF_HUB_OFFLINE is set" in p.stderr
