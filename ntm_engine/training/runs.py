"""Loading what runs produced, for Python users and the command line: a trained model
(:func:`load_run`, from a run folder, a checkpoint or a pretrained folder written by
``save_pretrained``/``ntm export``; :func:`export_run` writes one) and a distilled denoiser (:func:`load_denoiser`, checked against the model it
serves by :func:`check_denoiser_fits`)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Tuple, Union

from torch import nn

from .. import checkpoint as ckpt
from ..models import NTM, Denoiser
from ..models import pretrained
from .config import TrainConfig, upgrade
from .determinism import check_model_code
from .distill_config import KIND
from .errors import ConfigError
from .factory import build_model
from .sections import differences
from .session import stderr_log


@dataclass
class Run:
    """A trained model loaded from a run folder: ``model`` (eval mode), its ``config``, and
    the ``checkpoint`` it came from (``step``, ``path``, ``state``)."""
    model: nn.Module
    config: TrainConfig
    checkpoint: ckpt.Checkpoint

    @property
    def step(self) -> int:
        return self.checkpoint.step

    @property
    def run_dir(self) -> Path:
        """The run folder (``<run>/checkpoints/step_N`` -> ``<run>``; a pretrained folder is its
        own)."""
        if pretrained.is_pretrained(self.checkpoint.path):
            return self.checkpoint.path
        return self.checkpoint.path.parent.parent


def load_run(path: Union[str, Path], device="cpu", ema: bool = True, *,
             log: Optional[Callable[[str], None]] = None) -> Run:
    """The model of a run folder, its ``checkpoints/`` folder or one checkpoint (the newest
    valid one; EMA weights unless ``ema=False``), or of a pretrained folder that carries its
    training config (``ntm export``), on ``device``, in eval mode."""
    log = log or stderr_log
    ck = _pretrained_checkpoint(path) if pretrained.is_pretrained(path) else \
        ckpt.resolve(path, log=log)
    if ck.config.get("kind") == KIND:
        raise ConfigError(f"{ck.path} is a denoiser (made by `ntm distill`), not a model run; "
                          "give its teacher run and pass it as --denoiser")
    check_model_code(ck.state, ck.path, log)
    cfg = TrainConfig.from_dict(ck.config)
    model = build_model(cfg)
    weights = ck.ema if (ema and ck.ema is not None) else ck.model
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise ConfigError(f"checkpoint {ck.path} does not fit the model of its config: {e}")
    return Run(model.to(device).eval(), cfg, ck)


def _pretrained_checkpoint(path) -> ckpt.Checkpoint:
    """A pretrained folder seen as a checkpoint (its weights as the model's, no EMA)."""
    try:
        meta, state = pretrained.read_pretrained(path)
    except pretrained.PretrainedError as e:
        raise ConfigError(str(e)) from None
    if "train_config" not in meta:
        raise ConfigError(f"{path} holds a {meta['class']} saved without a training config; "
                          f"load it in Python with {meta['class']}.from_pretrained, or write "
                          "the folder with `ntm export RUN DIR`")
    card = meta.get("card", {})
    return ckpt.Checkpoint(Path(path), int(card.get("step", 0)), state, None,
                           {"config": meta["train_config"],
                            "elapsed_s": card.get("train_seconds"),
                            "model_code_sha256": card.get("model_code_sha256")})


def export_run(path, out, *, ema: bool = True, log: Optional[Callable[[str], None]] = None
               ) -> Path:
    """Write the model of run ``path`` (EMA weights unless ``ema=False``) as a pretrained
    folder ``out`` (:mod:`ntm_engine.models.pretrained`): its config, its training config, and
    a model card with the run's data, budget and, when ``eval.json`` is in the run folder, its
    figures.  Returns ``out``."""
    run = load_run(path, "cpu", ema=ema, log=log)
    cfg = run.config
    card = {"dataset": cfg.dataset, "class_conditional": cfg.conditional, "step": run.step,
            "train_seconds": run.checkpoint.state.get("elapsed_s"), "weights":
            "EMA" if ema and run.checkpoint.ema is not None else "model",
            "model_code_sha256": run.checkpoint.state.get("model_code_sha256")}
    if cfg.data.cond is not None:
        card["condition_tokens"] = cfg.data.cond
    figures = _eval_figures(run.run_dir / "eval.json")
    if figures:
        card["eval"] = figures
    return run.model.save_pretrained(out, card=card, train_config=cfg.to_dict())


def _eval_figures(path: Path) -> dict:
    """The top-level numbers of an ``eval.json`` (none if absent or unreadable)."""
    try:
        res = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in res.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def load_denoiser(path, device=None, *, use_ema: bool = True, log=None
                  ) -> Tuple[Denoiser, ckpt.Checkpoint]:
    """``(denoiser in eval mode, checkpoint)`` from a distillation folder or checkpoint."""
    ck = ckpt.resolve(path, log=log)
    if ck.config.get("kind") != KIND:
        what = ("a flow-matching run" if ck.config.get("objective") == "flow_matching"
                else "an NTM training run")
        raise ConfigError(f"--denoiser {path}: {ck.path} is not a denoiser checkpoint (made by "
                          f"`ntm distill`); it is {what}")
    den = Denoiser(**{**ck.config["denoiser"], "t_min": ck.config["t_min"]})
    weights = ck.ema if (use_ema and ck.ema is not None) else ck.model
    try:
        den.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise ConfigError(f"checkpoint {ck.path} does not fit the denoiser of its config: {e}")
    return den.to(device or "cpu").eval(), ck


def check_denoiser_fits(teacher_ck: ckpt.Checkpoint, denoiser_ck: ckpt.Checkpoint,
                        log: Callable[[str], None]) -> None:
    """Refuse a denoiser made for another kind of model (data shape, labels); warn when it was
    distilled from another teacher checkpoint or model configuration."""
    tm, dm = teacher_ck.config["model"], denoiser_ck.config["denoiser"]
    if list(tm["data_shape"]) != list(dm["data_shape"]):
        raise ConfigError(f"--denoiser {denoiser_ck.path} is for data of shape "
                          f"{list(dm['data_shape'])}, the model {teacher_ck.path} for "
                          f"{list(tm['data_shape'])}")
    if int(tm.get("num_classes", 0)) != int(dm["num_classes"]):
        raise ConfigError(f"--denoiser {denoiser_ck.path}: label mismatch: the denoiser has "
                          f"num_classes={dm['num_classes']}, the model {teacher_ck.path} "
                          f"num_classes={tm.get('num_classes', 0)}")
    distilled_from = denoiser_ck.config["teacher"]["checkpoint"]
    if Path(distilled_from) != Path(teacher_ck.path).resolve():
        log(f"warning: the denoiser was distilled from {distilled_from}, not from "
            f"{teacher_ck.path}")
    models = [upgrade({"model": m})["model"] for m in (denoiser_ck.config["teacher_model"], tm)]
    diffs = differences({"model": models[0]}, {"model": models[1]}, ("model",))
    if diffs:
        log("warning: the denoiser's teacher had another model configuration: "
            + "; ".join(diffs))


def denoiser_for(path: Optional[str], run: Run, device, log: Callable[[str], None]
                 ) -> Tuple[Optional[Denoiser], float, Optional[ckpt.Checkpoint]]:
    """``(denoiser, t_d, checkpoint)`` for ``--denoiser path`` used with ``run`` (``(None,
    0.0, None)`` without one); refuses a model that is not an NTM and a denoiser made for
    another kind of model."""
    if path is None:
        return None, 0.0, None
    if not isinstance(run.model, NTM):
        raise ConfigError(f"--denoiser needs an NTM run; {run.checkpoint.path} holds a "
                          f"{type(run.model).__name__}")
    den, ck = load_denoiser(path, device, log=log)
    check_denoiser_fits(run.checkpoint, ck, log)
    return den, float(ck.config["t_min"]), ck


