"""Save a model to a folder and load it back anywhere: ``save_pretrained`` / ``from_pretrained``.

A *pretrained folder* holds

* ``config.json`` -- ``{"format": "ntm_engine-pretrained", "format_version": 1, "class":
  "NTM", "ntm_engine_version": ..., "model": <the constructor's keyword arguments>, "card":
  <what is known of its training: data, budget, figures>, "train_config": <the training
  run's config, when it came from one>}``;
* ``model.safetensors`` -- the weights (no pickle: loading runs no code);
* ``README.md`` -- a model card generated from the above.

Every model class here keeps its constructor's keyword arguments in ``.config``
(:class:`~.ntm.NTM`, :class:`~.flow_matching.FlowMatchingModel`, :class:`~.denoiser.Denoiser`,
:class:`~.tarflow.TarFlow`), so a folder is enough to rebuild it; nothing is fetched from a
network.  ``ntm export RUN DIR`` writes one from a training run's EMA weights, and ``load_run``,
``ntm sample`` and ``ntm eval`` read one like a run folder.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Type, TypeVar, Union

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from .._version import __version__
from ..checkpoint import atomic_write_bytes, atomic_write_text, tensors_for_saving

__all__ = ["PretrainedMixin", "FORMAT", "CONFIG_FILE", "WEIGHTS_FILE", "CARD_FILE",
           "is_pretrained", "read_pretrained", "load_pretrained"]

FORMAT = "ntm_engine-pretrained"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"

M = TypeVar("M", bound="PretrainedMixin")


class PretrainedError(ValueError):
    """A folder is not a pretrained folder, or does not hold what was asked for."""


# the classes that can be saved and loaded, by name (each registers itself by subclassing)
_CLASSES: Dict[str, Type[nn.Module]] = {}


class PretrainedMixin:
    """``save_pretrained(dir)`` and ``cls.from_pretrained(dir)`` for an ``nn.Module`` whose
    ``config`` attribute holds its constructor's keyword arguments (module docstring).

    >>> import tempfile, torch
    >>> from ntm_engine.models import NTM
    >>> model = NTM((2,), steps=2, width=32, depth=1, heads=2, transporter_layers=1)
    >>> folder = model.save_pretrained(tempfile.mkdtemp(), card={"dataset": "toy"})
    >>> same = NTM.from_pretrained(folder)
    >>> all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
    ...                                       same.state_dict().values()))
    True
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _CLASSES[cls.__name__] = cls

    def save_pretrained(self, directory: Union[str, Path], *,
                        card: Optional[Mapping[str, Any]] = None,
                        train_config: Optional[Mapping[str, Any]] = None) -> Path:
        """Write ``config.json``, ``model.safetensors`` and ``README.md`` into ``directory``
        (created if absent; files replaced atomically).  ``card``: what is known of the
        training (e.g. ``dataset``, ``iterations``, ``train_seconds``, ``eval``: a dict of
        figures), shown in the model card; ``train_config``: the training run's config
        (``TrainConfig.to_dict()``), which lets ``ntm sample``/``ntm eval`` use the folder like
        a run.  Returns the folder."""
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise PretrainedError(f"save_pretrained: directory {directory} exists and is not a "
                                  "folder")
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "class": type(self).__name__, "ntm_engine_version": __version__,
                "model": dict(self.config), "card": dict(card or {})}
        if train_config is not None:
            meta["train_config"] = dict(train_config)
        atomic_write_bytes(directory / WEIGHTS_FILE,
                           st_save(tensors_for_saving(self.state_dict())))
        atomic_write_text(directory / CARD_FILE, model_card(meta, self))
        atomic_write_text(directory / CONFIG_FILE, json.dumps(meta, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls: Type[M], directory: Union[str, Path], *,
                        device: Union[str, torch.device] = "cpu") -> M:
        """The model saved in ``directory`` by :meth:`save_pretrained` (or ``ntm export``), on
        ``device``, in eval mode.  Refuses a folder that holds another class."""
        meta, state = read_pretrained(directory)
        if meta["class"] != cls.__name__:
            raise PretrainedError(f"{directory} holds a {meta['class']}, not a {cls.__name__}; "
                                  f"use {meta['class']}.from_pretrained or "
                                  "ntm_engine.load_pretrained")
        return _build(cls, meta, state, directory).to(device).eval()


def is_pretrained(directory: Union[str, Path]) -> bool:
    """Whether ``directory`` holds a ``config.json`` of this format."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("format") == FORMAT
    except (ValueError, OSError, AttributeError):
        return False


def read_pretrained(directory: Union[str, Path]) -> Tuple[Dict[str, Any],
                                                         Dict[str, torch.Tensor]]:
    """``(config.json as a dict, the weights)`` of a pretrained folder; PretrainedError naming
    the file when one is missing or damaged."""
    directory = Path(directory)
    cfg_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    if not cfg_path.is_file():
        raise PretrainedError(f"{directory} is not a pretrained model folder: no {CONFIG_FILE}")
    try:
        meta = json.loads(cfg_path.read_text())
    except ValueError as e:
        raise PretrainedError(f"{cfg_path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise PretrainedError(f"{cfg_path} is not a pretrained model config (expected "
                              f"\"format\": \"{FORMAT}\")")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise PretrainedError(f"{cfg_path} has format_version {meta['format_version']}; this "
                              f"ntm_engine ({__version__}) reads up to {FORMAT_VERSION}")
    if meta.get("class") not in _CLASSES:
        raise PretrainedError(f"{cfg_path}: unknown model class {meta.get('class')!r}, expected "
                              f"one of {sorted(_CLASSES)}")
    if not weights_path.is_file():
        raise PretrainedError(f"{directory} has no {WEIGHTS_FILE}")
    try:
        state = st_load(weights_path.read_bytes())
    except Exception as e:   # safetensors raises its own error types
        raise PretrainedError(f"{weights_path} is damaged: {e}") from None
    return meta, state


def _build(cls: Type[nn.Module], meta: Mapping[str, Any], state: Mapping[str, torch.Tensor],
           directory) -> nn.Module:
    try:
        model = cls(**meta["model"])
    except (TypeError, ValueError) as e:
        raise PretrainedError(f"{Path(directory) / CONFIG_FILE}: its model config does not "
                              f"build a {cls.__name__}: {e}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise PretrainedError(f"{Path(directory) / WEIGHTS_FILE} does not fit the "
                              f"{cls.__name__} of its config: {e}") from None
    return model


def load_pretrained(directory: Union[str, Path], *,
                    device: Union[str, torch.device] = "cpu") -> nn.Module:
    """The model of any class saved in ``directory`` (eval mode, on ``device``)."""
    meta, state = read_pretrained(directory)
    return _build(_CLASSES[meta["class"]], meta, state, directory).to(device).eval()


def model_card(meta: Mapping[str, Any], model: nn.Module) -> str:
    """The ``README.md`` of a pretrained folder: what the model is, its configuration, what is
    known of its training and evaluation, and how to load it."""
    cls, cfg, card = meta["class"], meta["model"], meta.get("card", {})
    params = sum(p.numel() for p in model.parameters())
    lines = [f"# {card.get('name', cls)}", "",
             f"A `{cls}` saved by ntm_engine {meta['ntm_engine_version']} (Normalizing "
             f"Trajectory Models, arXiv 2605.08078): {params:,} parameters, data of shape "
             f"{list(cfg.get('data_shape', []))}.", ""]
    if cls == "NTM":
        steps = cfg.get("steps")
        lines += [f"Normalizing Trajectory Model trained on step counts {steps}, transporter "
                  f"`{cfg.get('transporter', 'coupling')}`, "
                  + (f"{cfg['num_classes']} classes" if cfg.get("num_classes") else
                     "no classes")
                  + (f", condition tokens of {cfg['cond_dim']} features (`cond=`)."
                     if cfg.get("cond_dim") else "."), ""]
    known = {k: v for k, v in card.items() if k not in ("name", "eval")}
    if known:
        lines += ["## Training", "", "| | |", "| --- | --- |"]
        lines += [f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |"
                  for k, v in known.items()]
        lines.append("")
    if card.get("eval"):
        lines += ["## Evaluation", "", "| figure | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |"
                  for k, v in card["eval"].items()]
        lines.append("")
    lines += ["## Configuration", "", "```json", json.dumps(cfg, indent=2), "```", "",
              "## Use", "", "```python", f"from ntm_engine.models import {cls}",
              f"model = {cls}.from_pretrained(\"path/to/this/folder\")"]
    if cls in ("NTM", "FlowMatchingModel", "TarFlow"):
        lines.append("x = model.sample(16)")
    if cls == "NTM":
        lines.append("log_px = model.log_prob(x)      # a bound on log p(x), nats per sample")
    lines += ["```", ""]
    if "train_config" in meta:
        lines += ["or from the command line: `ntm sample path/to/this/folder`, "
                  "`ntm eval path/to/this/folder`", ""]
    return "\n".join(lines)
