"""Training on image data other than the digits: colour patches, arrays, data handed in from
Python; the model's shape and statistics come from the data; the data fingerprint travels in
the checkpoint and a resume warns when it changed."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from ntm_engine import checkpoint as ckpt
from ntm_engine.cli import main
from ntm_engine.data import open_dataset, pixel_mean_std
from ntm_engine.training import (ConfigError, DataSource, TrainConfig, eval_bins, hand_in,
                                 make_config, sample_labels, test_data)
from ntm_engine.training import batches
from tests.run_testutils import TINY, trainer

SMALL = dict(batch_size=8, iters=4, warmup=1, log_every=2, eval_every=1000, ckpt_every=2,
             eval_samples=0, eval_batch=64)


def _npz(path, n=40, size=8, seed=0, labels=True):
    rng = np.random.default_rng(seed)
    arrays = {"images": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)}
    if labels:
        arrays["labels"] = np.arange(n) % 4
    np.savez(path, **arrays)
    return path


def test_model_shape_and_statistics_come_from_the_data():
    cfg = make_config("colour-patches", model=TINY, **SMALL)
    data = open_dataset("colour-patches")
    mean, std = pixel_mean_std(data)
    assert cfg.model["data_shape"] == [3, 16, 16] == list(data.shape)
    assert cfg.model["data_mean"] == pytest.approx(mean, abs=1e-4)
    assert cfg.model["data_std"] == pytest.approx(std, abs=1e-4)
    assert eval_bins(cfg.data) == 256
    big = make_config("colour-patches", model=TINY, image_size=32, **SMALL)
    assert big.model["data_shape"] == [3, 32, 32]
    x, _ = DataSource(big).batch(0)
    assert x.shape == (8, 3, 32, 32)
    # dequantised within one 256-level bin of the stored codes
    assert float(x.min()) >= -1 and float(x.max()) <= 1


def test_arrays_train_conditionally_and_the_fingerprint_is_checked_on_resume(tmp_path):
    path = _npz(tmp_path / "imgs.npz")
    cfg = make_config(str(path), True, model=TINY, **SMALL)
    assert cfg.model["num_classes"] == 4 and cfg.model["data_shape"] == [3, 8, 8]
    assert sample_labels(cfg.data, 6).tolist() == [0, 1, 2, 3, 0, 1]
    x, y = test_data(cfg.data)
    assert x.shape[1:] == (3, 8, 8) and y is not None and len(y) == len(x)
    out = tmp_path / "run"
    trainer(cfg, out).run(stop_after=2)
    ck = ckpt.load_latest(out)
    assert ck.state["data_fingerprint"] == DataSource(cfg).fingerprint
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["type"] == "train"]
    assert train and all(r["img_s"] > 0 for r in train)
    # same data: a quiet resume; changed data: a warning naming both fingerprints
    logs = []
    trainer(cfg, out, resume=True, log=logs.append).run(stop_after=1)
    assert not any("changed" in m for m in logs)
    _npz(path, seed=1)
    batches._open.cache_clear()
    logs = []
    t = trainer(cfg, out, resume=True, log=logs.append)
    t.run()
    assert any("changed since" in m and ck.state["data_fingerprint"] in m for m in logs)


def test_data_handed_in_from_python_trains(tmp_path):
    images = torch.randint(0, 256, (30, 1, 8, 8), dtype=torch.uint8)
    ds = torch.utils.data.TensorDataset(images, torch.zeros(30, dtype=torch.long))
    name = hand_in(open_dataset(ds, num_classes=1), "mine")
    cfg = make_config(name, model=TINY, **SMALL)
    assert cfg.dataset == "python:mine" and cfg.model["data_shape"] == [1, 8, 8]
    summary = trainer(cfg, tmp_path / "run").run()
    assert summary["step"] == SMALL["iters"]


def test_colour_images_evaluate_and_draw_rgb_grids(tmp_path):
    cfg = make_config("colour-patches", model=TINY, **{**SMALL, "iters": 1, "eval_every": 1,
                                                      "eval_samples": 4})
    summary = trainer(cfg, tmp_path / "run", plots=True).run()
    assert 0 < summary["test_bpd"] < 16
    assert Image.open(tmp_path / "run" / "samples.png").mode == "RGB"


@pytest.mark.parametrize("kw, match", [
    (dict(dataset="mnist"), "unknown dataset 'mnist'"),
    (dict(dataset="two_moons", image_size=8), "--image-size/--channels apply to images"),
    (dict(dataset="colour-patches", channels=2), "--channels must be 1 or 3, got 2"),
    (dict(dataset="/no/such/folder"), "--dataset /no/such/folder: dataset: expected one of"),
])
def test_bad_data_options_name_the_option(kw, match):
    d = kw.pop("dataset")
    with pytest.raises(ConfigError, match=match):
        make_config(d, model=TINY, **kw, **SMALL)


def test_old_configs_without_data_options_load():
    cfg = make_config("digits", model=TINY, **SMALL).to_dict()
    for k in ("image_size", "channels", "data_workers"):
        del cfg[k]
    again = TrainConfig.from_dict(cfg)
    assert again.data.image_size is None and again.data.data_workers == 0


def test_lazy_data_with_workers_streams_the_same_batches(tmp_path):
    images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8)
    ds = torch.utils.data.TensorDataset(images, torch.arange(40) % 2)
    name = hand_in(open_dataset(ds, num_classes=2), "lazy")
    cfg = make_config(name, True, model=TINY, **SMALL)
    plain = DataSource(cfg)
    assert not plain.batches.in_memory
    streamed = DataSource(cfg.replace(data_workers=2))
    for step in (0, 1, 1, 2, 5, 6):   # a repeat and a jump restart nothing / the stream
        a, b = plain.batch(step), streamed.batch(step)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_cli_trains_on_a_folder_of_images(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(
                tmp_path / "imgs" / cls / f"{i}.png")
    out = tmp_path / "run"
    argv = ["train", "--dataset", str(tmp_path / "imgs"), "--image-size", "8", "--channels",
            "1", "--class-conditional", "--iters", "2", "--batch-size", "4", "--width", "32",
            "--depth", "1", "--heads", "2", "--transporter-layers", "2", "--eval-every", "2",
            "--eval-samples", "4", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 2 and summary["test_bpd"] > 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["data_shape"] == [1, 8, 8] and cfg["model"]["num_classes"] == 2
    assert Image.open(out / "samples.png").mode == "L"
