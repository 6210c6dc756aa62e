"""The configuration of a training run: :class:`TrainConfig`, composed of typed sections
(:mod:`.sections`: data, optimisation, run cadence; :class:`ObjectiveConfig`) and the model's
keyword arguments (a validated mapping handed to the model factory, so that new model options
need no change here).

``config.json`` keeps one flat layout (one key per field, ``"model"`` a dict, ``"version"``).
:meth:`TrainConfig.from_dict` is the one place where a config stored by older code is brought
up to date (:func:`upgrade`); nothing else fills in missing keys.  Version 1 is every config
written before versions were recorded.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

from ..data import DIGITS_SHAPE, channel_mean_std, pixel_mean_std
from ..models import NTM, schedule
from ..models.predictor import default_patch_size
from .batches import run_data
from .decoder import decoder_spec
from .errors import ConfigError
from .sections import (DataConfig, OptimConfig, RunConfig, RunConfigProtocol, check,
                       check_number, differences, field_names, flatten, plain, reject_unknown,
                       section_from)

CONFIG_VERSION = 3
OBJECTIVES = ("ntm", "flow_matching")
TRAJECTORY_LOSSES = ("end_to_end", "pairwise")
# the transporter sizes of a kind when the user gives none (layers: blocks for the
# autoregressive kind, couplings otherwise; hidden: the blocks' width or the coupling units)
TRANSPORTER_SIZES = {"autoregressive": dict(transporter_layers=2, transporter_hidden=64)}

# keys of the model section that the command line exposes (and their CLI names)
MODEL_OPTIONS = {
    "steps": "--steps", "step_shares": "--step-shares", "transporter": "--transporter", "width": "--width", "depth": "--depth", "heads": "--heads",
    "patch_size": "--patch-size", "transporter_layers": "--transporter-layers",
    "transporter_hidden": "--transporter-hidden", "shift": "--shift",
    "t_min_max": "--t-min-max", "label_dropout": "--label-dropout", "clamp": "--clamp",
    "parameterization": "--parameterization", "transporter_backward": "--transporter-backward",
    "dropout": "--dropout",
}
# entries that define a run: a resumed run must agree on these
IDENTITY_KEYS = ("dataset", "class_conditional", "image_size", "channels", "model", "batch_size",
                 "seed", "objective", "init_from", "fm_reg", "trajectory_loss", "cond")


@dataclass(frozen=True)
class ObjectiveConfig:
    """``objective``: ``"ntm"`` (trajectory likelihood) or ``"flow_matching"`` (pretraining
    the predictor as a velocity model); ``init_from``: a flow-matching run an NTM starts from,
    with the regulariser weight ``fm_reg`` cosine-decayed to 0 (``docs/design.md`` section 1);
    ``trajectory_loss``: the NTM's ``"end_to_end"`` trajectory likelihood or its ``"pairwise"``
    estimate (one random level per sample, same expectation)."""
    objective: str = "ntm"
    init_from: Optional[str] = None
    fm_reg: float = 2.5
    trajectory_loss: str = "end_to_end"

    def __post_init__(self):
        check(self.objective in OBJECTIVES, f"--objective must be one of {', '.join(OBJECTIVES)}"
              f", got {self.objective!r}")
        check(self.init_from is None or self.objective == "ntm",
              "--init-from starts an NTM from a flow-matching run; it needs --objective ntm")
        check(_is_real(self.fm_reg) and 0 <= self.fm_reg < math.inf,
              f"--fm-reg must be a finite number >= 0, got {self.fm_reg}")
        check(self.trajectory_loss in TRAJECTORY_LOSSES, "--trajectory-loss must be one of "
              f"{', '.join(TRAJECTORY_LOSSES)}, got {self.trajectory_loss!r}")

    @property
    def needs_velocity_head(self) -> bool:
        return self.objective == "flow_matching" or self.init_from is not None


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# the defaults of the flat training keys (CLI defaults too); digits sized for ~10 min on 2 cores
TRAIN_DEFAULTS: Dict[str, Any] = {
    **flatten(OptimConfig(iters=1)), "iters": None, **flatten(RunConfig()),
    **flatten(ObjectiveConfig()), "eval_samples": 100,
}


@dataclass(frozen=True)
class TrainConfig(RunConfigProtocol):
    """One training run.  ``model``: keyword arguments of :class:`~ntm_engine.models.NTM`
    (complete: every constructor default is stored, so a run survives new defaults);
    ``eval_samples``: samples per evaluation grid (toys draw at least 1000)."""
    data: DataConfig
    model: Dict[str, Any]
    optim: OptimConfig
    run: RunConfig = RunConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    eval_samples: int = 100

    def __post_init__(self):
        object.__setattr__(self, "model", _check_model(self.model, self.data, self.objective))
        check_number("eval_samples", self.eval_samples, integer=True)
        check(self.eval_samples >= 0, f"--eval-samples must be >= 0, got {self.eval_samples}")

    @property
    def latent(self) -> bool:
        """A run on latents (continuous data): its model normalises each channel
        (``channel_mean``/``channel_scale``, set by :func:`default_model_config`)."""
        return self.model.get("channel_mean") is not None

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> Dict[str, Any]:
        """The flat, JSON-able form written to ``config.json`` (and into checkpoints)."""
        out = flatten(self.data, self.optim, self.run, self.objective)
        out.update(model=plain(self.model), eval_samples=self.eval_samples,
                   version=CONFIG_VERSION)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """A validated config from its flat form, of this or an older version (:func:`upgrade`;
        unknown keys are refused)."""
        flat = upgrade(d)
        reject_unknown(flat, KNOWN_KEYS, "training")
        check(isinstance(flat.get("model"), Mapping),
              f"model must be a mapping of model options, got {flat.get('model')!r}")
        return cls(data=section_from(DataConfig, flat), model=dict(flat["model"]),
                   optim=section_from(OptimConfig, flat), run=section_from(RunConfig, flat),
                   objective=section_from(ObjectiveConfig, flat),
                   eval_samples=flat.get("eval_samples", TRAIN_DEFAULTS["eval_samples"]))


KNOWN_KEYS = set(field_names(DataConfig) + field_names(OptimConfig) + field_names(RunConfig)
                 + field_names(ObjectiveConfig)) | {"model", "eval_samples", "version"}


# ----------------------------------------------------------------------------- versions

def _upgrade_v1(flat: Dict[str, Any]) -> None:
    """v1 -> v2: training keys added after configs were first stored take the values that
    reproduce old runs; so does the model's ``parameterization``."""
    for k, v in TRAIN_DEFAULTS.items():
        flat.setdefault(k, v)
    if isinstance(flat.get("model"), dict):
        flat["model"].setdefault("parameterization", "gaussian")


def _upgrade_v2(flat: Dict[str, Any]) -> None:
    """v2 -> v3: runs stored before the transporter became a choice were trained with the
    label-conditioned coupling transporter (new runs default to a label-free one), and with
    the end-to-end trajectory loss."""
    flat.setdefault("trajectory_loss", "end_to_end")
    if isinstance(flat.get("model"), dict):
        flat["model"].setdefault("transporter", "coupling")
        flat["model"].setdefault("transporter_label_conditioned", True)


# version -> the step that brings a config of that version to the next one; a new model
# option whose default changes what old runs computed adds a step here (and bumps the version)
UPGRADES: Dict[int, Callable[[Dict[str, Any]], None]] = {1: _upgrade_v1, 2: _upgrade_v2}


def upgrade(d: Mapping[str, Any]) -> Dict[str, Any]:
    """A copy of flat config ``d`` brought to :data:`CONFIG_VERSION` (``d`` is not changed)."""
    flat = plain(dict(d))
    version = flat.pop("version", 1)
    check(isinstance(version, int) and 1 <= version <= CONFIG_VERSION,
          f"config version must be an integer in [1, {CONFIG_VERSION}], got {version!r} "
          "(written by newer code?)")
    for v in range(version, CONFIG_VERSION):
        UPGRADES[v](flat)
    return flat


# ----------------------------------------------------------------------------- model section

def default_model_config(dataset: Union[str, DataConfig],
                         class_conditional: bool = False) -> Dict[str, Any]:
    """Every :class:`~ntm_engine.models.NTM` constructor default, then the dataset's config:
    the digits' or the toys' own, or for other images the digits' architecture with the
    data's shape, step counts (:meth:`~ntm_engine.models.NTM.image_step_counts`) and their
    shares (:meth:`~ntm_engine.models.NTM.image_step_shares`), transporter
    size (:meth:`~ntm_engine.models.NTM.image_transporter_size`), the paper's
    time shift (``"auto"``), classes and pixel mean / std (:func:`~ntm_engine.data.pixel_mean_std`); latents (continuous data)
    instead get the per-channel mean and std of their training split as the model's fixed
    normalisation (``channel_mean``/``channel_scale``, :func:`~ntm_engine.data.channel_mean_std`),
    the normalised data being mean 0, std 1; with condition tokens (``data.cond``) their size
    as ``cond_dim``."""
    data = dataset if isinstance(dataset, DataConfig) else DataConfig(dataset, class_conditional)
    cfg = NTM.defaults()
    if not data.is_image:
        cfg.update(NTM.toy_config())
    else:
        cfg.update(NTM.digits_config(conditional=data.class_conditional))
        if data.dataset != "digits":
            images = run_data(data)
            cfg.update(data_shape=list(images.shape),
                       patch_size=default_patch_size(images.shape),
                       steps=NTM.image_step_counts(images.shape),
                       step_shares=NTM.image_step_shares(images.shape), shift="auto",
                       num_classes=images.num_classes if data.class_conditional else 0,
                       **NTM.image_transporter_size(images.shape))
            if images.continuous:
                mean, std = _latent_statistics(images, data)
                cfg.update(data_mean=0.0, data_std=1.0, channel_mean=mean, channel_scale=std)
            else:
                mean, std = pixel_mean_std(images)
                cfg.update(data_mean=round(mean, 4), data_std=round(std, 4))
        if data.cond is not None:
            cfg["cond_dim"] = run_data(data).cond_dim
    cfg["data_shape"] = list(cfg["data_shape"])
    return cfg


def _latent_statistics(images, data: DataConfig):
    try:
        return channel_mean_std(images)
    except ValueError as e:   # DataError
        raise ConfigError(f"--dataset {data.dataset}: {e}") from e


def _data_shape_ok(data: DataConfig, shape: List[Any]) -> bool:
    if not data.is_image:
        return shape == [2]
    if data.dataset == "digits":
        return shape == list(DIGITS_SHAPE)
    return (len(shape) == 3 and data.channels in (None, shape[0])
            and data.image_size in (None, shape[1]) and shape[1] == shape[2])


def _check_model(m: Mapping[str, Any], data: DataConfig, obj: ObjectiveConfig) -> Dict[str, Any]:
    """A checked copy of the model options (the constructor checks the rest, at build time)."""
    m = plain(dict(m))
    shape = list(m.get("data_shape", []))
    check(_data_shape_ok(data, shape), f"model data_shape {m.get('data_shape')} does "
          f"not match dataset {data.dataset!r} (image_size {data.image_size}, channels "
          f"{data.channels})")
    classes = m.get("num_classes", 0)
    want = (10 if data.dataset == "digits" else classes) if data.class_conditional else 0
    check(classes == want and (classes > 0) == data.class_conditional,
          f"model num_classes {classes} but class_conditional={data.class_conditional}")
    for k in ("width", "depth", "heads", "transporter_layers", "transporter_hidden"):
        check(isinstance(m.get(k), int), f"{MODEL_OPTIONS[k]} must be an integer, got {m.get(k)!r}")
    cond_dim = m.get("cond_dim", 0)
    check(_is_real(cond_dim) and cond_dim == int(cond_dim) and cond_dim >= 0
          and (cond_dim > 0) == (data.cond is not None),
          f"model cond_dim {cond_dim!r} but --cond {data.cond} (condition tokens need "
          f"cond_dim = their size C > 0; none need cond_dim 0)")
    check(not (cond_dim and obj.needs_velocity_head),
          "--cond: condition tokens are not supported with flow-matching pretraining "
          "(--objective flow_matching, --init-from); train the NTM directly")
    try:
        counts = schedule.step_counts(m.get("steps"))
    except ValueError as e:
        check(False, f"--steps/--steps-T (the trajectory step counts T): {e}")
    try:
        schedule.step_shares(m.get("step_shares"), counts)
    except ValueError as e:
        check(False, f"--step-shares (how often each of --steps is drawn): {e}")
    # a value that is not a plain number (shift "auto") is the model constructor's to check
    checks = [
        (m["width"] >= 1 and m["depth"] >= 1 and m["heads"] >= 1,
         f"--width, --depth and --heads must be >= 1, got {m['width']}, {m['depth']}, "
         f"{m['heads']}"),
        (m["width"] % m["heads"] == 0,
         f"--width ({m['width']}) must be divisible by --heads ({m['heads']})"),
        (m["transporter_layers"] >= 0 and m["transporter_hidden"] >= 1,
         "--transporter-layers must be >= 0 and --transporter-hidden >= 1, got "
         f"{m['transporter_layers']} and {m['transporter_hidden']}"),
        (not _is_real(m.get("shift")) or m["shift"] > 0,
         f"--shift must be > 0, got {m.get('shift')}"),
        (not _is_real(m.get("clamp")) or m["clamp"] > 0,
         f"--clamp must be > 0, got {m.get('clamp')}"),
        (_is_real(m.get("dropout", 0.0)) and 0 <= m.get("dropout", 0.0) < 1,
         f"--dropout must be a number in [0, 1), got {m.get('dropout')!r}"),
        (not obj.needs_velocity_head or m.get("parameterization") == "flow_matching",
         "--init-from and --objective flow_matching need the flow_matching parameterization, "
         f"got --parameterization {m.get('parameterization')}"),
    ]
    for ok, msg in checks:
        check(ok, msg)
    p = m.get("patch_size")
    if len(shape) == 3 and p is not None:
        check(p >= 1 and not shape[1] % p and not shape[2] % p,
              f"--patch-size {p} must divide the image size {shape[1]}x{shape[2]}")
    return m


# ----------------------------------------------------------------------------- building

def make_config(dataset: str = "digits", class_conditional: bool = False, *,
                model: Optional[Mapping[str, Any]] = None, image_size: Optional[int] = None,
                channels: Optional[int] = None, data_workers: int = 0,
                decoder: Optional[str] = None, cond: Optional[str] = None,
                **train) -> TrainConfig:
    """A full, validated config: the dataset's model defaults with ``model`` entries (None
    values ignored) and flat training entries ``train`` (unknown ones refused).  ``dataset``,
    ``image_size``, ``channels``, ``data_workers``, ``decoder`` (latents; a file path in it
    is stored absolute, :func:`~.decoder.decoder_spec`), ``cond`` (where condition tokens come
    from): :class:`DataConfig`."""
    reject_unknown(train, set(TRAIN_DEFAULTS), "training")
    data = DataConfig(dataset, bool(class_conditional), image_size, channels, data_workers,
                      decoder_spec(decoder), cond)
    m = default_model_config(data)
    given = {k: v for k, v in (model or {}).items() if v is not None}
    m.update(TRANSPORTER_SIZES.get(given.get("transporter", m["transporter"]), {}))
    if "steps" in given and "step_shares" not in given:
        m["step_shares"] = None     # the config's shares belong to its own step counts
    m.update(given)
    flat = {**TRAIN_DEFAULTS, **{k: v for k, v in train.items() if v is not None}}
    if (model or {}).get("parameterization") is None and \
            section_from(ObjectiveConfig, flat).needs_velocity_head:
        m["parameterization"] = "flow_matching"
    flat.update(dataclasses.asdict(data), model=m)
    return TrainConfig.from_dict(flat)


def config_differences(a: Union[TrainConfig, Mapping[str, Any]],
                       b: Union[TrainConfig, Mapping[str, Any]]) -> List[str]:
    """Readable differences of the run-defining entries (:data:`IDENTITY_KEYS`) of two
    configs; dict forms of older versions count as upgraded (:func:`upgrade`)."""
    a, b = (c.to_dict() if isinstance(c, TrainConfig) else upgrade(c) for c in (a, b))
    return differences(a, b, IDENTITY_KEYS)


def validate_config(cfg: Union[TrainConfig, Mapping[str, Any]]) -> TrainConfig:
    """The validated :class:`TrainConfig` of ``cfg`` (:class:`ConfigError` otherwise)."""
    return TrainConfig.coerce(cfg)


__all__ = ["TrainConfig", "ObjectiveConfig", "DataConfig", "OptimConfig", "RunConfig",
           "ConfigError", "make_config", "config_differences", "validate_config", "upgrade",
           "CONFIG_VERSION", "IDENTITY_KEYS", "MODEL_OPTIONS", "TRAIN_DEFAULTS",
           "TRAJECTORY_LOSSES", "TRANSPORTER_SIZES"]
