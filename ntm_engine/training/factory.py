"""From a :class:`~.config.TrainConfig` to the things a run trains: the model, its objective,
and, for an NTM started from a flow-matching run (``init_from``), the FM weights and the frozen
reference predictor (``docs/design.md`` section 1, "Initialising from a flow-matching model")."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Dict, Optional

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from .. import checkpoint as ckpt
from ..models import NTM, FlowMatchingModel
from ..models.flow_matching import architecture_differences, frozen_copy, load_predictor_weights
from ..models.loss import group_sizes
from .batches import DataSource
from .config import TrainConfig, upgrade
from .determinism import device_generator
from .errors import ConfigError
from .objectives import Batch, FlowMatching, FMInitRegularised, NTMLikelihood
from .optim import budget_progress

REFERENCE_FILE = "fm_reference.safetensors"   # the frozen FM predictor of an --init-from run


def build_model(cfg) -> nn.Module:
    """The model of ``cfg`` (a :class:`TrainConfig` or its dict form): the NTM of its model
    section, or for the ``flow_matching`` objective the
    :class:`~ntm_engine.models.FlowMatchingModel` of the same settings; constructor errors
    become :class:`ConfigError`."""
    cfg = TrainConfig.coerce(cfg)
    m = dict(cfg.model)
    try:
        if cfg.objective.objective == "flow_matching":
            return FlowMatchingModel.from_ntm_config(m)
        return NTM(**m)
    except (ValueError, TypeError, AssertionError, RuntimeError) as e:
        raise ConfigError(f"invalid model configuration: {e}") from e


def fm_reg_weight(cfg: TrainConfig, step: int, elapsed_s: float = 0.0) -> float:
    """Weight of ``|mu - mu_FM|^2`` in iteration ``step`` (0-based) of an ``init_from`` run:
    ``fm_reg`` cosine-decayed to 0 over the budget (``fm_reg`` at step 0, 0 at the end)."""
    progress = budget_progress(cfg.optim, step, elapsed_s)
    return cfg.objective.fm_reg * 0.5 * (1 + math.cos(math.pi * progress))


def make_objective(cfg: TrainConfig, model: nn.Module, reference: Optional[nn.Module] = None):
    """The objective of ``cfg`` for ``model`` (:mod:`.objectives`)."""
    if cfg.objective.objective == "flow_matching":
        return FlowMatching(model)
    loss = cfg.objective.trajectory_loss
    if reference is None:
        return NTMLikelihood(model, trajectory_loss=loss)
    return FMInitRegularised(model, reference, lambda step, elapsed: fm_reg_weight(
        cfg, step, elapsed), trajectory_loss=loss)


def preflight(model: nn.Module, cfg: TrainConfig, device, *, rows: Optional[int] = None
              ) -> None:
    """One tiny loss evaluation, so bad shapes fail before any work starts; ``rows`` (each
    process's batch size) must give every trained step count of ``model`` a group
    (:func:`~ntm_engine.models.loss.group_sizes`)."""
    counts = getattr(model, "trained_steps", ())
    if rows is not None and len(counts) > 1:
        try:
            group_sizes(rows, counts, getattr(model, "step_shares", None))
        except ValueError as e:
            raise ConfigError(f"--batch-size {cfg.optim.batch_size}: {e}") from e
    n = max(2, len(counts))
    x, y = DataSource(cfg, device=torch.device("cpu")).batch(0, n=n)
    batch = Batch(x.to(device), None if y is None else y.to(device), device_generator(device, 0))
    try:
        with torch.no_grad():
            loss, _ = make_objective(cfg, model).loss(batch)
        if loss.shape != (n,):
            raise ValueError(f"the loss has shape {list(loss.shape)}, expected [{n}]")
    except (ValueError, RuntimeError, TypeError) as e:
        raise ConfigError(f"model and data do not fit together: {e}") from e


def load_init_source(cfg: TrainConfig, log=None) -> Dict[str, Tensor]:
    """The FM weights (EMA, ``predictor.*``) that ``init_from`` names, after checking that it
    is a flow-matching run of the same data and predictor architecture (:class:`ConfigError`
    naming the first differing key otherwise)."""
    where = cfg.objective.init_from
    try:
        ck = ckpt.resolve(where, log=log)
    except ckpt.CheckpointError as e:
        raise ConfigError(f"--init-from {where}: {e}") from e
    src = upgrade(ck.config)
    if src.get("objective") != "flow_matching":
        raise ConfigError(f"--init-from {where}: {ck.path} is an {src.get('objective')!r} run; "
                          "it must be a flow-matching run (ntm train --objective flow_matching)")
    mine = cfg.to_dict()
    diffs = [(k, src[k], mine[k]) for k in ("dataset", "class_conditional") if src[k] != mine[k]]
    diffs += [(f"model.{k}", a, b) for k, a, b in
              architecture_differences(src["model"], mine["model"])]
    if diffs:
        k, a, b = diffs[0]
        raise ConfigError(f"--init-from {where}: {k} differs: the flow-matching run has {a!r}, "
                          f"this run {b!r} (pass the flow-matching run's value; "
                          f"{len(diffs)} key(s) differ: {', '.join(d[0] for d in diffs)})")
    return ck.ema if ck.ema is not None else ck.model


def init_reference(model: nn.Module, cfg: TrainConfig, *, fm_state: Optional[Dict[str, Tensor]],
                   run_dir: Path, device) -> nn.Module:
    """A fresh run (``fm_state`` given): load the FM weights into ``model``'s predictor; a
    resumed one: read the frozen reference from ``run_dir``.  Returns the frozen reference."""
    try:
        if fm_state is not None:
            load_predictor_weights(model, fm_state)
            return frozen_copy(model.predictor).to(device)   # (a sharded model is on the CPU)
        path = Path(run_dir) / REFERENCE_FILE
        if not path.is_file():
            raise ValueError(f"{path} (the frozen flow-matching predictor of this "
                             "--init-from run) is missing")
        ref = frozen_copy(model.predictor)
        ref.load_state_dict(st_load(path.read_bytes()), strict=True)
        return ref.to(device)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"--init-from {cfg.objective.init_from}: {e}") from e


def save_reference(reference: nn.Module, run_dir: Path) -> None:
    """Keep the frozen FM predictor in the run folder (a resume needs nothing outside it)."""
    ckpt.atomic_write_bytes(Path(run_dir) / REFERENCE_FILE, st_save(reference.state_dict()))


ModelFactory = Callable[[TrainConfig], nn.Module]
