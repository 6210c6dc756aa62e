"""Checkpoint files: atomic save, retention, checksums, refusal of corrupt or truncated
checkpoints and fall-back to the previous one.  No model needed."""
import json
import os

import pytest
import torch

from ntm_engine import checkpoint as ckpt


def weights(seed):
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(4, 3, generator=g), "a.bias": torch.randn(4, generator=g),
            "steps": torch.tensor([seed])}


def state(step):
    return {"config": {"dataset": "toy", "model": {"width": 8}}, "elapsed_s": 1.5 * step,
            "optimizer": {"state": {0: {"exp_avg": torch.ones(3) * step}}, "param_groups": []},
            "rng": {"torch_cpu": torch.get_rng_state(), "python": [3, [1, 2, 3], None]}}


def save(run, step, keep=2):
    return ckpt.save_checkpoint(run, step, weights(step), weights(step + 100), state(step),
                                keep=keep)


def test_roundtrip(tmp_path):
    path = save(tmp_path, 7)
    assert path == tmp_path / "checkpoints" / "step_00000007"
    assert sorted(p.name for p in path.iterdir()) == sorted(
        [ckpt.MODEL_FILE, ckpt.EMA_FILE, ckpt.STATE_FILE, ckpt.MANIFEST_FILE])
    ck = ckpt.load_checkpoint(path)
    assert ck.step == 7 and ck.config == state(7)["config"]
    for k, v in weights(7).items():
        assert torch.equal(ck.model[k], v)
    for k, v in weights(107).items():
        assert torch.equal(ck.ema[k], v)
    assert torch.equal(ck.state["optimizer"]["state"][0]["exp_avg"], torch.ones(3) * 7)
    assert torch.equal(ck.state["rng"]["torch_cpu"], state(7)["rng"]["torch_cpu"])
    manifest = json.loads((path / ckpt.MANIFEST_FILE).read_text())
    assert set(manifest["files"]) == {ckpt.MODEL_FILE, ckpt.EMA_FILE, ckpt.STATE_FILE}
    assert all(len(m["sha256"]) == 64 for m in manifest["files"].values())
    # a file inside the folder and the run folder resolve to it too
    assert ckpt.resolve(path / ckpt.MODEL_FILE).step == 7
    assert ckpt.resolve(tmp_path).step == 7
    assert ckpt.resolve(tmp_path / "checkpoints").step == 7


def test_keeps_the_previous_checkpoint_only(tmp_path):
    for s in (10, 20, 30, 40):
        save(tmp_path, s)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [30, 40]
    for s in (50, 60):
        save(tmp_path, s, keep=3)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [40, 50, 60]


def test_shared_and_noncontiguous_tensors_are_saved(tmp_path):
    w = torch.randn(4, 4)
    sd = {"w": w, "tied": w, "t": w.T}
    ckpt.save_checkpoint(tmp_path, 1, sd, None, state(1))
    ck = ckpt.load_latest(tmp_path)
    assert ck.ema is None
    assert torch.equal(ck.model["tied"], w) and torch.equal(ck.model["t"], w.T)


def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x55
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage,message", [
    ("flip_model", "sha256 of model.safetensors does not match"),
    ("flip_state", "sha256 of state.pt does not match"),
    ("truncate_ema", "truncated"),
    ("no_manifest", "incomplete"),
    ("bad_manifest", "unreadable manifest.json"),
    ("missing_file", "model.safetensors is missing"),
])
def test_damaged_checkpoint_is_refused_and_previous_used(tmp_path, damage, message):
    save(tmp_path, 10)
    bad = save(tmp_path, 20)
    if damage == "flip_model":
        _flip_byte(bad / ckpt.MODEL_FILE)
    elif damage == "flip_state":
        _flip_byte(bad / ckpt.STATE_FILE)
    elif damage == "truncate_ema":
        with open(bad / ckpt.EMA_FILE, "r+b") as f:
            f.truncate(os.path.getsize(bad / ckpt.EMA_FILE) // 2)
    elif damage == "no_manifest":
        (bad / ckpt.MANIFEST_FILE).unlink()
    elif damage == "bad_manifest":
        (bad / ckpt.MANIFEST_FILE).write_text('{"format": "ntm_engine-checkpoint", "fi')
    elif damage == "missing_file":
        (bad / ckpt.MODEL_FILE).unlink()
    with pytest.raises(ckpt.CheckpointError, match=message):
        ckpt.load_checkpoint(bad)
    msgs = []
    ck = ckpt.load_latest(tmp_path, log=msgs.append)
    assert ck.step == 10 and torch.equal(ck.model["a.weight"], weights(10)["a.weight"])
    assert len(msgs) == 1 and "step_00000020" in msgs[0] and "previous" in msgs[0]
    assert bad.exists()  # without quarantine nothing is moved
    ck = ckpt.load_latest(tmp_path, quarantine=True, log=msgs.append)
    assert ck.step == 10 and not bad.exists()
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [10]


def test_all_damaged_means_none_and_resolve_says_so(tmp_path):
    only = save(tmp_path, 5)
    _flip_byte(only / ckpt.MODEL_FILE)
    assert ckpt.load_latest(tmp_path, log=lambda m: None) is None
    with pytest.raises(ckpt.CheckpointError, match="no valid checkpoint"):
        ckpt.resolve(tmp_path, log=lambda m: None)
    with pytest.raises(ckpt.CheckpointError, match="no such checkpoint"):
        ckpt.resolve(tmp_path / "nope")


def test_a_save_killed_midway_leaves_no_visible_checkpoint(tmp_path):
    save(tmp_path, 10)
    # what a kill during save leaves behind: a hidden temporary folder with partial files
    tmp = tmp_path / "checkpoints" / ".tmp-step_00000020-12345"
    tmp.mkdir()
    (tmp / ckpt.MODEL_FILE).write_bytes(b"partial")
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [10]
    assert ckpt.load_latest(tmp_path).step == 10
    save(tmp_path, 20)  # the next save cleans the leftovers
    assert not tmp.exists()
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [10, 20]


def test_resaving_a_step_replaces_it(tmp_path):
    save(tmp_path, 10)
    p = ckpt.save_checkpoint(tmp_path, 10, weights(99), None, state(10))
    assert torch.equal(ckpt.load_checkpoint(p).model["a.weight"], weights(99)["a.weight"])


class Opaque:
    pass


def test_unsafe_state_is_rejected_at_save_time(tmp_path):
    with pytest.raises(ValueError, match="weights_only"):
        ckpt.save_checkpoint(tmp_path, 1, weights(1), None, {"config": {}, "x": Opaque()})
    assert ckpt.list_checkpoints(tmp_path) == []
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_atomic_write_replaces_whole_file(tmp_path):
    p = tmp_path / "sub" / "f.txt"
    ckpt.atomic_write_text(p, "one")
    ckpt.atomic_write_text(p, "two")
    assert p.read_text() == "two"
    assert [x.name for x in p.parent.iterdir()] == ["f.txt"]
