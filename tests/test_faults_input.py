"""Bad input end to end (issue 24, item 5): every bad ``ntm train --dataset`` gives ONE line
``ntm train: error: --dataset PATH: ...`` naming the file, exit status 2, no traceback and no
``--out`` folder; ``--precision`` values are parsed and refused."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ntm_engine import cli
from ntm_engine.training import read_metrics

from run_testutils import TINY_ARGS

ROOT = Path(__file__).resolve().parents[1]


def png(path: Path, size=(16, 16), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), np.uint8)
    Image.fromarray(pixels).save(path)


def class_folder(root: Path, sizes) -> Path:
    for i, size in enumerate(sizes):
        png(root / "a" / f"{i}.png", size, seed=i)
    return root


def truncated(root: Path) -> Path:
    class_folder(root, [(16, 16)] * 3)
    f = root / "a" / "1.png"
    f.write_bytes(f.read_bytes()[:100])   # header and the start of the pixel data
    return root


def garbage(root: Path) -> Path:
    class_folder(root, [(16, 16)] * 3)
    (root / "a" / "2.png").write_bytes(b"not an image at all")
    return root


def broken_link(root: Path) -> Path:
    class_folder(root, [(16, 16)] * 3)
    (root / "a" / "3.png").symlink_to(root / "gone.png")   # e.g. a file on an unmounted disk
    return root


def no_permission(root: Path) -> Path:
    if os.geteuid() == 0:
        pytest.skip("root reads files without read permission")
    class_folder(root, [(16, 16)] * 3)
    (root / "a" / "0.png").chmod(0)
    return root


def npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


IMAGES = np.zeros((6, 8, 8), np.uint8)
# name -> (build(tmp) -> the --dataset path, what the message names after that path (the
# file, or the array), what else it says)
CASES = {
    "truncated_png": (truncated, "/a/1.png", "1 of 3 image files could not be read"),
    "not_an_image": (garbage, "/a/2.png", "cannot identify image file"),
    "broken_link": (broken_link, "/a/3.png", "FileNotFoundError"),
    "no_permission": (no_permission, "/a/0.png", "PermissionError"),
    "mixed_sizes": (lambda d: class_folder(d, [(8, 8), (12, 10), (8, 8)]), "/a/1.png is 12x10",
                    "pass image_size (--image-size)"),
    "empty_folder": (lambda d: d.mkdir() or d, "", "expected image files"),
    "npz_keys": (lambda d: npz(d.with_suffix(".npz"), pics=IMAGES, labels=np.zeros(6)), "",
                 "expected images under one of ['images', 'x'], got keys ['labels', 'pics']"),
    "npz_shape": (lambda d: npz(d.with_suffix(".npz"), images=np.zeros((6, 8))), "[images]",
                  "expected images [N, H, W], [N, C, H, W] or [N, H, W, C], got shape (6, 8)"),
    "npz_labels": (lambda d: npz(d.with_suffix(".npz"), images=IMAGES, labels=np.zeros(5)),
                   "[labels]", "6"),
    "not_npz": (lambda d: (d.with_suffix(".npz").write_bytes(b"garbage"), d.with_suffix(".npz"))[1],
                "", "not a readable .npy/.npz file"),
    "csv": (lambda d: (d.with_suffix(".csv").write_text("a,b\n1,2\n"), d.with_suffix(".csv"))[1],
            "", "expected a folder or a .npy/.npz file"),
    "missing": (lambda d: d, "", "(no such file or folder)"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_dataset_is_one_line_with_status_2_and_no_out_folder(tmp_path, capsys, case):
    build, names, says = CASES[case]
    data = build(tmp_path / case)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--dataset", str(data), *TINY_ARGS, "--iters", "2", "--out", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"ntm train: error: --dataset {data}: "), err
    assert f"{data}{names}" in err, err
    assert says in err, err
    assert not out.exists()


def test_no_traceback_reaches_the_user(tmp_path):
    data, out = truncated(tmp_path / "d"), tmp_path / "out"
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "ntm_engine", "train", "--dataset", str(data),
                        "--iters", "2", "--out", str(out)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith(f"ntm train: error: --dataset {data}: ") and \
        r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert not out.exists()


def test_precision_values_are_parsed_and_refused(tmp_path, capsys):
    out = tmp_path / "bf16"
    assert cli.main(["train", "--dataset", "two_moons", *TINY_ARGS, "--iters", "2",
                     "--log-every", "1", "--precision", "bf16", "--no-plots", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["precision"] == "bf16"
    assert [r["step"] for r in read_metrics(out) if r["type"] == "train"] == [1, 2]
    for bad in ("fp16", "BF16", ""):
        with pytest.raises(SystemExit) as e:
            cli.main(["train", "--dataset", "two_moons", "--precision", bad, "--out",
                      str(tmp_path / "never")])
        assert e.value.code == 2
        assert f"argument --precision: invalid choice: '{bad}' (choose from " in \
            capsys.readouterr().err
    assert not (tmp_path / "never").exists()
