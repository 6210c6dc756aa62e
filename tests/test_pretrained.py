"""Save and load anywhere: ``save_pretrained``/``from_pretrained`` for every model class, ``ntm
export`` of a run, and ``load_run``/``ntm sample``/``ntm eval`` on the exported folder, which
compute what the run computes (an old run fixture included)."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from ntm_engine import load_run
from ntm_engine.models import NTM, Denoiser, FlowMatchingModel, TarFlow
from ntm_engine.models.pretrained import (PretrainedError, is_pretrained, load_pretrained,
                                          read_pretrained)
from ntm_engine.training import ConfigError

from test_cli import fast_classifier, run_cli  # noqa: F401  (an autouse fixture)

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "run_v1_digits"

MODELS = {
    "NTM": lambda: NTM((1, 4, 4), steps=(2, 4), num_classes=3, width=16, depth=1, heads=2,
                       transporter_layers=1, transporter_hidden=8, context_dim=8),
    "FlowMatchingModel": lambda: FlowMatchingModel((1, 4, 4), width=16, depth=1, heads=2),
    "Denoiser": lambda: Denoiser((1, 4, 4), 3, hidden=16, blocks=1, context_dim=8),
    "TarFlow": lambda: TarFlow((1, 4, 4), patch_size=2, blocks=2, width=16, depth=1, heads=2),
}


def _randomised(model):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():   # zero-initialised heads would hide a weight that did not load
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_class_round_trips(name, tmp_path):
    model = _randomised(MODELS[name]())
    folder = model.save_pretrained(tmp_path / "m", card={"dataset": "toy", "eval": {"bpd": 1.5}})
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json",
                                                        "model.safetensors"]
    assert is_pretrained(folder)
    loaded = type(model).from_pretrained(folder)
    assert type(loaded) is type(model) and not loaded.training
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert type(load_pretrained(folder)) is type(model)
    card = (folder / "README.md").read_text()
    assert f"# {name}" in card and "| bpd | 1.5 |" in card and "from_pretrained" in card


def test_a_loaded_ntm_computes_the_same_likelihood(tmp_path):
    model = _randomised(MODELS["NTM"]()).eval()
    loaded = NTM.from_pretrained(model.save_pretrained(tmp_path / "m"))
    x, y = torch.randn(3, 1, 4, 4), torch.tensor([0, 1, 2])
    kw = dict(samples=2, steps=4)
    assert torch.equal(model.log_prob(x, y, generator=torch.Generator().manual_seed(1), **kw),
                       loaded.log_prob(x, y, generator=torch.Generator().manual_seed(1), **kw))


def test_bad_folders_are_named(tmp_path):
    folder = MODELS["Denoiser"]().save_pretrained(tmp_path / "d")
    with pytest.raises(PretrainedError, match="holds a Denoiser, not a NTM"):
        NTM.from_pretrained(folder)
    with pytest.raises(PretrainedError, match="no config.json"):
        NTM.from_pretrained(tmp_path)
    (folder / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(PretrainedError, match="model.safetensors is damaged"):
        Denoiser.from_pretrained(folder)
    meta = json.loads((folder / "config.json").read_text())
    MODELS["Denoiser"]().save_pretrained(folder)
    meta["model"]["hidden"] = 32
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(PretrainedError, match="does not fit the Denoiser of its config"):
        Denoiser.from_pretrained(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(PretrainedError, match="config.json is not valid JSON"):
        read_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**meta, "class": "Unet"}))
    with pytest.raises(PretrainedError, match="unknown model class 'Unet'"):
        read_pretrained(folder)


def test_a_model_saved_without_a_training_config_is_for_python_only(tmp_path):
    folder = MODELS["NTM"]().save_pretrained(tmp_path / "m")
    with pytest.raises(ConfigError, match="saved without a training config"):
        load_run(folder)


def test_an_exported_old_run_computes_what_the_run_computes(tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    assert run_cli("export", run, tmp_path / "exported") == 0
    exported = tmp_path / "exported"
    meta, _ = read_pretrained(exported)
    assert meta["class"] == "NTM" and meta["card"]["step"] == 6 and meta["card"]["weights"] == "EMA"
    expected = torch.load(run / "expected_v1.pt")
    model = NTM.from_pretrained(exported)
    s = model.sample(4, y=torch.tensor([0, 1, 2, 3]), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(s, expected["samples_seed0_labels0123"])
    r = load_run(exported)
    assert r.step == 6 and r.run_dir == exported and r.config.conditional
    assert run_cli("sample", exported, "-n", 4, "--labels", "1", "--out", tmp_path / "s.png") == 0
    assert (tmp_path / "s.png").stat().st_size > 0
    assert run_cli("eval", exported, "--n-samples", 0, "--out", tmp_path / "e.json") == 0
    ran = run_cli("eval", run, "--n-samples", 0, "--out", tmp_path / "e_run.json")
    assert ran == 0
    figures = [json.loads((tmp_path / f).read_text())["test_bpd"] for f in ("e.json", "e_run.json")]
    assert figures[0] == pytest.approx(figures[1], rel=1e-12)
