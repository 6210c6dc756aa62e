"""End to end on an autoencoder's latents: a small convolutional autoencoder trained here on
the built-in colour patches encodes them to 4x4x4 latents (``latents.npz``); ``python -m
ntm_engine train --dataset latents.npz --decoder aemod:decode`` trains an NTM on them for a
few iterations without quantisation, then ``ntm sample`` writes raw latents and a grid of
decoded images, ``ntm eval`` reports nats per latent dimension (and no bits/dim) and ``ntm
score`` writes a ``nats_per_dim`` column."""
import csv
import importlib.util
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ntm_engine.data import colour_patches

from test_cli import run_cli, subprocess_env   # (the subprocess imports this worktree)

# the decoder's module, written into the test's folder: the architecture and a decode(z)
# that loads the weights the test trains (nothing of it is imported from the test)
AE_MODULE = '''
from pathlib import Path

import torch
from torch import nn


class AE(nn.Module):
    """3x16x16 images in [0, 1] <-> 4x4x4 latents."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 32, 4, 2, 1), nn.ReLU(), nn.Conv2d(32, 4, 4, 2, 1))
        self.dec = nn.Sequential(nn.ConvTranspose2d(4, 32, 4, 2, 1), nn.ReLU(),
                                 nn.ConvTranspose2d(32, 3, 4, 2, 1), nn.Sigmoid())


_AE = None


def decode(z):
    global _AE
    if _AE is None:
        _AE = AE()
        _AE.load_state_dict(torch.load(Path(__file__).with_name("ae.pt")))
        _AE.eval()
    return _AE.dec(z)
'''
GRID_SCALE, GRID_PAD = 8, 2   # plots.digit_grid_image's defaults


def _grid_size(n, nrow, h, w):
    rows = math.ceil(n / nrow)
    return (nrow * (w * GRID_SCALE + GRID_PAD) + GRID_PAD,
            rows * (h * GRID_SCALE + GRID_PAD) + GRID_PAD)


def _autoencoder_latents(folder):
    """Train the module's AE on colour patches for 300 steps; write ae.pt and latents.npz
    (train and test latents); returns the reconstruction MSE on the test patches."""
    spec = importlib.util.spec_from_file_location("aemod_for_training", folder / "aemod.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    data = colour_patches(n_train=2048, n_test=256)
    x = (data.tensors("train")[0] + 1) / 2          # [N, 3, 16, 16] in [0, 1]
    xt = (data.tensors("test")[0] + 1) / 2
    torch.manual_seed(0)
    ae = mod.AE()
    opt = torch.optim.Adam(ae.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        xb = x[torch.randint(0, len(x), (64,), generator=g)]
        loss = (ae.dec(ae.enc(xb)) - xb).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save(ae.state_dict(), folder / "ae.pt")
    with torch.no_grad():
        z, zt = ae.enc(x), ae.enc(xt)
        mse = float((ae.dec(zt) - xt).pow(2).mean())
    np.savez(folder / "latents.npz", latents=z.numpy(), test_latents=zt.numpy())
    return mse


@pytest.mark.slow
def test_train_sample_eval_score_on_autoencoder_latents(tmp_path, monkeypatch):
    (tmp_path / "aemod.py").write_text(AE_MODULE)
    mse = _autoencoder_latents(tmp_path)
    assert mse < 0.02, mse    # the latents carry the images (grey variance ~0.06)
    z = np.load(tmp_path / "latents.npz")["latents"]
    assert z.shape == (2048, 4, 4, 4) and np.abs(z).max() > 1   # not in [0, 1] or [-1, 1]

    args = ["train", "--dataset", "latents.npz", "--decoder", "aemod:decode", "--iters", "20",
            "--width", "32", "--depth", "1", "--heads", "2", "--transporter-layers", "2",
            "--transporter-hidden", "32", "--batch-size", "32", "--eval-every", "20",
            "--eval-samples", "20", "--ckpt-every", "20", "--no-progress", "--threads", "1",
            "--out", "run"]
    r = subprocess.run([sys.executable, "-m", "ntm_engine", *args], cwd=tmp_path,
                       env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert "test nats/dim" in out and "bits/dim" not in out
    run = tmp_path / "run"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["decoder"] == "aemod:decode"
    zt = torch.from_numpy(z).double()
    assert np.allclose(cfg["model"]["channel_mean"], zt.mean(dim=(0, 2, 3)).numpy())
    assert np.allclose(cfg["model"]["channel_scale"],
                       zt.std(dim=(0, 2, 3), unbiased=False).numpy())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [rec for rec in records if rec.get("type") == "train"]
    assert train and all(math.isfinite(rec["train_nats_per_dim"]) and "train_bpd" not in rec
                         for rec in train)
    # the training grid is of decoded 16x16 images
    assert Image.open(run / "samples.png").size == _grid_size(20, 10, 16, 16)

    monkeypatch.chdir(tmp_path)   # the stored decoder's module is found from here
    assert run_cli("sample", "run", "-n", 12, "--out", "s.npz", "--threads", 1) == 0
    s = np.load(tmp_path / "s.npz")
    assert s.files == ["latents"] and s["latents"].shape == (12, 4, 4, 4)
    assert s["latents"].dtype == np.float32
    # raw latents in the data's own scale: their spread is the data's, not the unit one
    ratio = s["latents"].std(axis=(0, 2, 3)) / np.asarray(cfg["model"]["channel_scale"])
    assert ((ratio > 0.3) & (ratio < 3)).all(), ratio
    assert Image.open(tmp_path / "s.png").size == _grid_size(12, 10, 16, 16)

    assert run_cli("eval", "run", "--n-samples", 50, "--bpd-samples", 2, "--threads", 1) == 0
    res = json.loads((run / "eval.json").read_text())
    assert math.isfinite(res["test_nats_per_dim"]) and math.isfinite(res["test_nats_per_dim_iw"])
    assert not [k for k in res if "bpd" in k], [k for k in res if "bpd" in k]
    assert res["test_n"] == 256 and "log-Jacobian" in res["nats_per_dim_note"]
    assert math.isfinite(res["frechet_distance_latent"])
    assert math.isfinite(res["frechet_distance_decoded"])

    assert run_cli("score", "run", "--bpd-samples", 2, "--out", "scores.csv",
                   "--threads", 1) == 0
    rows = list(csv.DictReader((tmp_path / "scores.csv").open()))
    assert list(rows[0]) == ["index", "label", "nats_per_dim"] and len(rows) == 256
    assert all(math.isfinite(float(row["nats_per_dim"])) for row in rows)
    print(f"\nAE test MSE {mse:.4f}; NTM after 20 iterations: test nats/dim "
          f"{res['test_nats_per_dim']:.4f} (IW K=2 {res['test_nats_per_dim_iw']:.4f}), "
          f"Frechet latent {res['frechet_distance_latent']:.3f}, decoded "
          f"{res['frechet_distance_decoded']:.3f}")

