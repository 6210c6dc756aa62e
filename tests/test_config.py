"""Typed run configs: every field checked with a message naming the option, what it must be
and what came; one versioned ``from_dict`` (older forms upgraded there, nothing mutated);
``to_dict`` / ``from_dict`` round trips."""
import json

import pytest

from ntm_engine.training import (CONFIG_VERSION, ConfigError, DistillConfig, OptimConfig,
                                 RunConfig, TrainConfig, make_config, upgrade)

from run_testutils import tiny_cfg


def test_round_trip_through_json():
    cfg = tiny_cfg("digits", True, objective="flow_matching", minutes=2.5)
    d = cfg.to_dict()
    assert d["version"] == CONFIG_VERSION and d["model"]["parameterization"] == "flow_matching"
    again = TrainConfig.from_dict(json.loads(json.dumps(d)))
    assert again == cfg and again.to_dict() == d
    assert again.optim.minutes == 2.5 and again.data.dataset == "digits"


def test_from_dict_upgrades_version_1_without_changing_its_input():
    old = tiny_cfg().to_dict()
    del old["version"], old["fm_reg"], old["eval_batch"], old["model"]["parameterization"]
    frozen = json.dumps(old, sort_keys=True)
    cfg = TrainConfig.from_dict(old)
    assert json.dumps(old, sort_keys=True) == frozen
    assert cfg.objective.fm_reg == 2.5 and cfg.run.eval_batch == 512
    assert cfg.model["parameterization"] == "gaussian"
    assert upgrade(old)["model"]["parameterization"] == "gaussian"


@pytest.mark.parametrize("change,match", [
    (dict(lr="fast"), r"--lr must be a number, got 'fast'"),
    (dict(batch_size=2.5), r"--batch-size must be an integer, got 2.5"),
    (dict(iters=True), r"--iters must be an integer or null, got True"),
    (dict(keep=0), r"--keep must be >= 1, got 0"),
    (dict(eval_samples=-1), r"--eval-samples must be >= 0, got -1"),
    (dict(colour="red"), r"unknown training options: \['colour'\]"),
    (dict(version=CONFIG_VERSION + 1), r"config version must be an integer in \[1, \d\], got"),
    (dict(model=[1, 2]), r"model must be a mapping of model options, got \[1, 2\]"),
    (dict(dataset="mnist"), "unknown dataset 'mnist'"),
])
def test_from_dict_names_the_bad_field(change, match):
    d = {**tiny_cfg().to_dict(), **change}
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_dict(d)


def test_model_options_are_an_open_mapping():
    cfg = tiny_cfg(model=dict(steps=6))
    assert cfg.model["steps"] == 6 and cfg.replace(seed=3).model == cfg.model
    with pytest.raises(ConfigError, match="--width must be an integer, got '32'"):
        make_config("two_moons", model=dict(width="32"), iters=1)


def test_sections_check_their_fields():
    with pytest.raises(ConfigError, match="give a budget"):
        OptimConfig()
    with pytest.raises(ConfigError, match=r"--ema-decay must lie in \[0, 1\), got 1.0"):
        OptimConfig(iters=1, ema_decay=1.0)
    with pytest.raises(ConfigError, match=r"--ema-warmup must be a finite number > 1, got 1.0"):
        OptimConfig(iters=1, ema_warmup=1.0)
    assert OptimConfig(iters=1).ema_warmup == 10.0
    with pytest.raises(ConfigError, match="--log-every must be >= 1, got 0"):
        RunConfig(log_every=0)
    with pytest.raises(ConfigError, match="kind must be 'ntm-denoiser', got None"):
        DistillConfig.from_dict({"t_min": 0.1})
