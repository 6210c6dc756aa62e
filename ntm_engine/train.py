"""The training loop: deterministic data, AdamW with warm-up + cosine decay, EMA, gradient
clipping, non-finite-loss skipping, periodic evaluation and sample grids, and checkpoints that
survive being killed (:mod:`ntm_engine.checkpoint`).  The loop machinery shared with the other
run types lives in :mod:`ntm_engine.run_loop`; this module holds what is NTM-specific.

Determinism: everything random in iteration ``step`` (the batch, its dequantisation noise, the
trajectory noise, ``t_0``, label dropout) is drawn from generators seeded by ``(seed, step)``,
and the global torch RNG is reseeded from ``(seed, step)`` too, so a run resumed from a
checkpoint of step ``s`` repeats, bit for bit on the same machine and thread count, what an
uninterrupted run does after ``s`` (with a time budget ``minutes``, the learning-rate schedule
depends on elapsed time and is not reproducible).  RNG states are saved in checkpoints anyway.

A configuration (:func:`make_config`) is a JSON-able dict; ``config["model"]`` holds the
keyword arguments of :class:`ntm_engine.models.NTM`.

Objectives (``config["objective"]``):

* ``"ntm"`` -- the trajectory NLL of an NTM.  With ``init_from`` (a flow-matching run or
  checkpoint) the NTM starts from that model (DESIGN.md section 1): its predictor gets the FM
  weights (EMA) and the ``"flow_matching"`` parameterization, the transporter starts as the
  identity, and the loss is ``nll + w(step) |mu - mu_FM|^2`` with ``mu_FM`` from a frozen copy
  of the FM predictor (kept in the run folder as ``fm_reference.safetensors``, so a resume
  needs nothing outside it) and ``w`` cosine-decayed from ``fm_reg`` to 0 over the budget
  (:func:`fm_reg_weight`).  The architecture must match the FM run's (checked before any work).
* ``"flow_matching"`` -- pretraining of the predictor backbone as a velocity model
  (:class:`ntm_engine.models.FlowMatchingModel`); evaluated by its test loss and Euler samples.
"""
from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from . import checkpoint as ckpt
from .run_loop import (CONFIG_FILE, EMA, METRICS_FILE, ConfigError, NonFiniteLossError,  # noqa: F401
                       RunLoop, budget_progress, check_model_code, derive_seed, device_generator,
                       learning_rate, model_code_fingerprint, read_metrics, rng_states,
                       set_rng_states, threading_main, truncate_metrics,
                       validate_loop_options)
from .data import DIGITS_LEVELS, DIGITS_SHAPE, TOYS, dequantize, load_digits, sample_toy

DATASETS = ("digits",) + tuple(sorted(TOYS))

# keys of config["model"] that the command line exposes (and their CLI names)
MODEL_OPTIONS = {
    "steps": "--steps-T", "width": "--width", "depth": "--depth", "heads": "--heads",
    "patch_size": "--patch-size", "transporter_layers": "--transporter-layers",
    "transporter_hidden": "--transporter-hidden", "shift": "--shift",
    "t_min_max": "--t-min-max", "label_dropout": "--label-dropout", "clamp": "--clamp",
    "parameterization": "--parameterization",
}

# training defaults (CLI defaults too); the digits defaults are sized for ~10 minutes on 2 cores
TRAIN_DEFAULTS: Dict[str, Any] = dict(
    batch_size=128, lr=3e-3, min_lr_ratio=0.05, warmup=100, weight_decay=0.01,
    beta1=0.9, beta2=0.99, ema_decay=0.998, grad_clip=1.0, seed=0, iters=None, minutes=None,
    log_every=25, eval_every=250, ckpt_every=250, keep=2, max_nonfinite=20,
    eval_samples=100, eval_batch=512, objective="ntm", init_from=None, fm_reg=2.5,
)
# keys that define the run: a resumed run must agree on these
IDENTITY_KEYS = ("dataset", "class_conditional", "model", "batch_size", "seed", "objective",
                 "init_from", "fm_reg")
OBJECTIVES = ("ntm", "flow_matching")
# model keys added after configs were first stored, with the value that reproduces old runs
LEGACY_MODEL_DEFAULTS = {"parameterization": "gaussian"}
REFERENCE_FILE = "fm_reference.safetensors"   # the frozen FM predictor of an --init-from run


# ----------------------------------------------------------------------------- config

def default_model_config(dataset: str, class_conditional: bool = False) -> Dict[str, Any]:
    from .models import NTM

    import inspect

    # every constructor default, so a stored config is complete and survives new defaults
    cfg = {k: p.default for k, p in inspect.signature(NTM.__init__).parameters.items()
           if p.default is not inspect.Parameter.empty}
    if dataset == "digits":
        cfg.update(NTM.digits_config(conditional=class_conditional))
    else:
        cfg.update(NTM.toy_config())
    cfg["data_shape"] = list(cfg["data_shape"])
    return cfg


def make_config(dataset: str = "digits", class_conditional: bool = False,
                model: Optional[Dict[str, Any]] = None, **train) -> Dict[str, Any]:
    """A full, validated run configuration (unknown training keys are rejected)."""
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if class_conditional and dataset != "digits":
        raise ConfigError(f"--class-conditional needs labelled data (digits), not {dataset!r}")
    unknown = set(train) - set(TRAIN_DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown training options: {sorted(unknown)}")
    m = default_model_config(dataset, class_conditional)
    for k, v in (model or {}).items():
        if v is not None:
            m[k] = list(v) if k == "data_shape" else v
    cfg = dict(TRAIN_DEFAULTS)
    cfg.update({k: v for k, v in train.items() if v is not None})
    cfg.update(dataset=dataset, class_conditional=bool(class_conditional), model=m)
    if (cfg["objective"] == "flow_matching" or cfg["init_from"] is not None) and \
            (model or {}).get("parameterization") is None:
        m["parameterization"] = "flow_matching"
    validate_config(cfg)
    return cfg


def upgrade_config(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Fill in (in place) the keys a config stored by older code lacks, with the values that
    reproduce what that code did; returns ``cfg``."""
    for k, v in TRAIN_DEFAULTS.items():
        cfg.setdefault(k, v)
    if isinstance(cfg.get("model"), dict):
        for k, v in LEGACY_MODEL_DEFAULTS.items():
            cfg["model"].setdefault(k, v)
    return cfg


def validate_config(cfg: Dict[str, Any]) -> None:
    """Raise :class:`ConfigError` for a configuration that cannot work (missing keys of
    older configs are filled in first, :func:`upgrade_config`)."""
    upgrade_config(cfg)
    m = cfg["model"]
    shape = tuple(DIGITS_SHAPE) if cfg["dataset"] == "digits" else (2,)
    if tuple(m["data_shape"]) != shape:
        raise ConfigError(f"model data_shape {list(m['data_shape'])} does not match dataset "
                          f"{cfg['dataset']!r} of shape {list(shape)}")
    want_classes = 10 if cfg["class_conditional"] else 0
    if m.get("num_classes", 0) != want_classes:
        raise ConfigError(f"model num_classes {m.get('num_classes')} but class_conditional="
                          f"{cfg['class_conditional']}")
    checks = [
        (int(m["steps"]) >= 1, f"--steps-T (number of trajectory steps T) must be >= 1, got {m['steps']}"),
        (m["width"] >= 1 and m["depth"] >= 1 and m["heads"] >= 1,
         "--width, --depth and --heads must be >= 1"),
        (m["width"] % m["heads"] == 0,
         f"--width ({m['width']}) must be divisible by --heads ({m['heads']})"),
        (m["transporter_layers"] >= 0 and m["transporter_hidden"] >= 1,
         "--transporter-layers must be >= 0 and --transporter-hidden >= 1"),
        (m["shift"] > 0, f"--shift must be > 0, got {m['shift']}"),
        (m["clamp"] is None or m["clamp"] > 0, f"--clamp must be > 0, got {m['clamp']}"),
        (cfg["eval_samples"] >= 0, "--eval-samples must be >= 0"),
        (cfg["objective"] in OBJECTIVES,
         f"--objective must be one of {', '.join(OBJECTIVES)}, got {cfg['objective']!r}"),
        (cfg["init_from"] is None or cfg["objective"] == "ntm",
         "--init-from starts an NTM from a flow-matching run; it needs --objective ntm"),
        ((cfg["init_from"] is None and cfg["objective"] == "ntm")
         or m.get("parameterization") == "flow_matching",
         f"--init-from and --objective flow_matching need the flow_matching parameterization, "
         f"got --parameterization {m.get('parameterization')}"),
        (isinstance(cfg["fm_reg"], (int, float)) and 0 <= cfg["fm_reg"] < math.inf,
         f"--fm-reg must be a finite number >= 0, got {cfg['fm_reg']}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    validate_loop_options(cfg)
    if len(shape) == 3:
        p = m.get("patch_size")
        if p is not None and (p < 1 or shape[1] % p or shape[2] % p):
            raise ConfigError(f"--patch-size {p} must divide the image size {shape[1]}x{shape[2]}")


def build_model(cfg: Dict[str, Any]) -> nn.Module:
    """The model of ``cfg``: the NTM of ``cfg["model"]``, or for the ``flow_matching``
    objective the :class:`~ntm_engine.models.FlowMatchingModel` of the same settings;
    constructor errors become :class:`ConfigError`."""
    from .models import NTM, FlowMatchingModel

    upgrade_config(cfg)
    m = dict(cfg["model"])
    try:
        if cfg["objective"] == "flow_matching":
            return FlowMatchingModel.from_ntm_config(m)
        return NTM(**m)
    except (ValueError, TypeError, AssertionError, RuntimeError) as e:
        raise ConfigError(f"invalid model configuration: {e}") from e


def training_losses(model: nn.Module, cfg: Dict[str, Any], x: Tensor, y: Optional[Tensor],
                    generator: torch.Generator, reference: Optional[nn.Module] = None,
                    reg_weight: float = 0.0) -> Dict[str, Tensor]:
    """Per-sample terms ``[B]`` of the objective: ``"loss"`` (what is minimised) and its
    parts -- ``"nll"`` (NTM), ``"fm_reg"`` (``|mu - mu_FM|^2``, when a ``reference`` FM
    predictor is given; ``loss = nll + reg_weight * fm_reg``), or ``"fm_loss"``."""
    from .models.flow_matching import anchored_trajectory_nll

    if cfg["objective"] == "flow_matching":
        fm = model.loss(x, y, generator=generator)
        return {"loss": fm, "fm_loss": fm}
    if reference is None:
        nll = model.trajectory_nll(x, y, generator=generator)
        return {"loss": nll, "nll": nll}
    nll, reg = anchored_trajectory_nll(model, reference, x, y, generator)
    return {"loss": nll + reg_weight * reg, "nll": nll, "fm_reg": reg}


def preflight(model: nn.Module, cfg: Dict[str, Any], device) -> None:
    """One tiny loss evaluation, so bad shapes fail before any work starts."""
    data = DataSource(cfg, device=torch.device("cpu"))
    x, y = data.batch(0, n=2)
    try:
        with torch.no_grad():
            loss = training_losses(model, cfg, x.to(device), None if y is None else y.to(device),
                                   device_generator(device, 0))["loss"]
        if loss.shape != (2,):
            raise ValueError(f"the loss has shape {list(loss.shape)}, expected [2]")
    except (ValueError, RuntimeError, TypeError) as e:
        raise ConfigError(f"model and data do not fit together: {e}") from e


def load_init_source(cfg: Dict[str, Any], log=None) -> Dict[str, Tensor]:
    """The FM weights (EMA, ``predictor.*``) that ``cfg["init_from"]`` names, after checking
    that it is a flow-matching run of the same data and predictor architecture
    (:class:`ConfigError` naming the first differing key otherwise)."""
    from .models.flow_matching import architecture_differences

    where = cfg["init_from"]
    try:
        ck = ckpt.resolve(where, log=log)
    except ckpt.CheckpointError as e:
        raise ConfigError(f"--init-from {where}: {e}") from e
    src = upgrade_config(json.loads(json.dumps(ck.config)))
    if src["objective"] != "flow_matching":
        raise ConfigError(f"--init-from {where}: {ck.path} is an {src['objective']!r} run; "
                          "it must be a flow-matching run (ntm train --objective flow_matching)")
    diffs = [(k, src[k], cfg[k]) for k in ("dataset", "class_conditional") if src[k] != cfg[k]]
    diffs += [(f"model.{k}", a, b) for k, a, b in
              architecture_differences(src["model"], cfg["model"])]
    if diffs:
        k, a, b = diffs[0]
        raise ConfigError(f"--init-from {where}: {k} differs: the flow-matching run has {a!r}, "
                          f"this run {b!r} (pass the flow-matching run's value; "
                          f"{len(diffs)} key(s) differ: {', '.join(d[0] for d in diffs)})")
    return ck.ema if ck.ema is not None else ck.model


def config_differences(a: Dict[str, Any], b: Dict[str, Any], keys=IDENTITY_KEYS) -> List[str]:
    """Human-readable differences of the run-defining entries of two configs (keys that an
    older stored config lacks count as their legacy defaults, :func:`upgrade_config`)."""
    a, b = (upgrade_config(json.loads(json.dumps(c))) for c in (a, b))
    out = []
    for k in keys:
        va, vb = a.get(k), b.get(k)
        if k == "model" and isinstance(va, dict) and isinstance(vb, dict):
            for mk in sorted(set(va) | set(vb)):
                if _norm(va.get(mk)) != _norm(vb.get(mk)):
                    out.append(f"model.{mk}: checkpoint {va.get(mk)!r} vs requested {vb.get(mk)!r}")
        elif _norm(va) != _norm(vb):
            out.append(f"{k}: checkpoint {va!r} vs requested {vb!r}")
    return out


def _norm(v):
    return json.loads(json.dumps(v))


class DataSource:
    """Training batches as a pure function of ``(seed, step)``.

    Digits: epoch ``e`` visits the train split in the order ``randperm`` seeded by
    ``(seed, e)``; batch ``step`` is positions ``[step*B, (step+1)*B)`` of the concatenated
    epochs, dequantised with noise seeded by ``(seed, step)``.  Toys: fresh samples seeded by
    ``(seed, step)``.
    """

    def __init__(self, cfg: Dict[str, Any], device=None):
        self.dataset, self.seed = cfg["dataset"], int(cfg["seed"])
        self.batch_size = int(cfg["batch_size"])
        self.conditional = bool(cfg["class_conditional"])
        self.device = torch.device(device or "cpu")
        if self.dataset == "digits":
            self.x, self.y = load_digits("train")
        self._perm_cache: Dict[int, Tensor] = {}

    def _perm(self, epoch: int) -> Tensor:
        if epoch not in self._perm_cache:
            if len(self._perm_cache) > 4:
                self._perm_cache.clear()
            g = torch.Generator().manual_seed(derive_seed(self.seed, epoch, "epoch"))
            self._perm_cache[epoch] = torch.randperm(len(self.x), generator=g)
        return self._perm_cache[epoch]

    def generator(self, step: int) -> torch.Generator:
        return torch.Generator().manual_seed(derive_seed(self.seed, step, "data"))

    def batch(self, step: int, n: Optional[int] = None) -> Tuple[Tensor, Optional[Tensor]]:
        n = n or self.batch_size
        g = self.generator(step)
        if self.dataset != "digits":
            return sample_toy(self.dataset, n, generator=g).to(self.device), None
        idx = self._gather(step * self.batch_size, n)
        x = dequantize(self.x[idx], DIGITS_LEVELS, generator=g).to(self.device)
        y = self.y[idx].to(self.device) if self.conditional else None
        return x, y

    def _gather(self, start: int, n: int) -> Tensor:
        N = len(self.x)
        parts, p = [], start
        while p < start + n:
            e, off = divmod(p, N)
            take = min(N - off, start + n - p)
            parts.append(self._perm(e)[off:off + take])
            p += take
        return torch.cat(parts)


def test_data(cfg: Dict[str, Any]) -> Tuple[Tensor, Optional[Tensor]]:
    """The evaluation set: the digits test split, or 5000 fixed toy samples."""
    if cfg["dataset"] == "digits":
        x, y = load_digits("test")
        return x, (y if cfg["class_conditional"] else None)
    g = torch.Generator().manual_seed(2**31 - 1)
    return sample_toy(cfg["dataset"], 5000, generator=g), None


def eval_levels(cfg: Dict[str, Any]) -> int:
    """Grey levels for bits/dim: 17 for digits; toys are continuous (levels=2 makes the
    ``log2(levels/2)`` term vanish, so the number is the continuous bits/dim bound)."""
    return DIGITS_LEVELS if cfg["dataset"] == "digits" else 2


def evaluate_bpd(model, cfg: Dict[str, Any], device, seed: int = 0) -> Dict[str, float]:
    """Test bits/dim of an NTM (:func:`~ntm_engine.metrics.dataset_bits_per_dim`)."""
    from .metrics import dataset_bits_per_dim

    return _evaluate(dataset_bits_per_dim, model, cfg, device, seed)


def evaluate_test(model, cfg: Dict[str, Any], device, seed: int = 0) -> Dict[str, float]:
    """The test metrics of the objective: bits/dim (``bpd``, ``bpd_sem``, ``n``) of an NTM,
    the loss (``fm_loss``, ``fm_loss_sem``, ``n``) of a flow-matching model."""
    from .metrics import dataset_fm_loss

    if upgrade_config(cfg)["objective"] == "flow_matching":
        return _evaluate(dataset_fm_loss, model, cfg, device, seed)
    return evaluate_bpd(model, cfg, device, seed)


def _evaluate(metric, model, cfg, device, seed):
    x, y = test_data(cfg)
    was = model.training
    model.eval()
    try:
        return metric(model, x, y, levels=eval_levels(cfg), batch_size=cfg["eval_batch"],
                      seed=seed, dequantize_data=cfg["dataset"] == "digits", device=device)
    finally:
        model.train(was)


def default_sample_steps(cfg: Dict[str, Any]) -> int:
    """Sampling steps when none are asked for: the trained T of an NTM, the Euler steps of a
    flow-matching model."""
    from .models.flow_matching import EULER_STEPS

    return EULER_STEPS if upgrade_config(cfg)["objective"] == "flow_matching" \
        else cfg["model"]["steps"]


def sample_labels(cfg: Dict[str, Any], n: int) -> Optional[Tensor]:
    return torch.arange(n) % 10 if cfg["class_conditional"] else None


# ----------------------------------------------------------------------------- schedule

def fm_reg_weight(cfg: Dict[str, Any], step: int, elapsed_s: float = 0.0) -> float:
    """Weight of ``|mu - mu_FM|^2`` in iteration ``step`` (0-based) of an ``init_from`` run:
    ``fm_reg`` cosine-decayed to 0 over the budget (``fm_reg`` at step 0, 0 at the end)."""
    return cfg["fm_reg"] * 0.5 * (1 + math.cos(math.pi * budget_progress(cfg, step, elapsed_s)))


# ----------------------------------------------------------------------------- trainer

class Trainer(RunLoop):
    """One training run in folder ``out`` (the loop itself: :class:`~.run_loop.RunLoop`).

    ``resume=True`` continues from the newest valid checkpoint (a corrupt newer one is
    refused, reported and moved aside); ``model_factory(cfg)`` replaces :func:`build_model`
    (tests); ``fault_nonfinite_steps``: steps (1-based, as logged) whose loss is forced to NaN
    (tests of the non-finite handling); ``throttle_s``: a sleep per iteration (tests of kills).
    """

    def __init__(self, cfg: Dict[str, Any], out, *, resume: bool = False, device=None,
                 progress: bool = True, log: Callable[[str], None] = None,
                 model_factory: Optional[Callable[[Dict[str, Any]], nn.Module]] = None,
                 plots: bool = True, fault_nonfinite_steps=(), throttle_s: float = 0.0):
        super().__init__(out, device=device, progress=progress, log=log,
                         fault_nonfinite_steps=fault_nonfinite_steps, throttle_s=throttle_s)
        self.plots = plots
        self.model_factory = model_factory or build_model
        self.desc = f"train {cfg.get('dataset', '')}".strip()
        try:
            self._init(cfg, resume)
        except BaseException:
            self.close()
            raise

    def _init(self, cfg: Dict[str, Any], resume: bool) -> None:
        # 1. configuration errors, before anything is written
        validate_config(cfg)
        existing = ckpt.list_checkpoints(self.out)
        fm_state = None
        if cfg["init_from"] is not None and not (resume and existing):
            fm_state = load_init_source(cfg, log=self.log)
        model_check = self.model_factory(cfg)
        preflight(model_check, cfg, "cpu")
        del model_check
        # 2. own the run folder, then find the checkpoint to continue from
        resumed = self._open_run_folder(cfg, resume)
        if resumed is None and cfg["init_from"] is not None and fm_state is None:
            fm_state = load_init_source(cfg, log=self.log)   # no valid checkpoint was left
        self.cfg = cfg
        init_seed = derive_seed(cfg["seed"], 0, "init")
        torch.manual_seed(init_seed)  # the initial weights are a function of the seed
        random.seed(init_seed)
        np.random.seed(init_seed % 2**32)
        self.model = self.model_factory(cfg).to(self.device)
        if self.device.type != "cpu":
            preflight(self.model, cfg, self.device)
        self.model.train()
        self.reference: Optional[nn.Module] = None   # the frozen FM predictor (init_from)
        if cfg["init_from"] is not None:
            self.reference = self._init_from_flow_matching(fm_state)
        self.ema = EMA(self.model, cfg["ema_decay"])
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg["lr"],
                                     betas=(cfg["beta1"], cfg["beta2"]),
                                     weight_decay=cfg["weight_decay"])
        self.data = DataSource(cfg, device=self.device)
        self._begin(cfg, resumed)

    def config_differences(self, stored: Dict[str, Any], requested: Dict[str, Any]) -> List[str]:
        return config_differences(stored, requested)

    def _on_fresh_start(self) -> None:
        if self.reference is not None:
            from safetensors.torch import save as st_save
            ckpt.atomic_write_bytes(self.out / REFERENCE_FILE,
                                    st_save(self.reference.state_dict()))

    def _init_from_flow_matching(self, fm_state: Optional[Dict[str, Tensor]]) -> nn.Module:
        """A fresh run (``fm_state`` given): load the FM weights into the predictor; a resumed
        one: read the frozen reference from the run folder.  Returns the frozen reference."""
        from safetensors.torch import load as st_load

        from .models.flow_matching import frozen_copy, load_predictor_weights

        try:
            if fm_state is not None:
                load_predictor_weights(self.model, fm_state)
                return frozen_copy(self.model.predictor)
            path = self.out / REFERENCE_FILE
            if not path.is_file():
                raise ValueError(f"{path} (the frozen flow-matching predictor of this "
                                 "--init-from run) is missing")
            ref = frozen_copy(self.model.predictor)
            ref.load_state_dict(st_load(path.read_bytes()), strict=True)
            return ref.to(self.device)
        except (RuntimeError, ValueError) as e:
            raise ConfigError(f"--init-from {self.cfg['init_from']}: {e}") from e

    # -------------------------------------------------------------- evaluation
    def evaluate(self) -> Dict[str, Any]:
        t0 = time.time()
        rec: Dict[str, Any] = {"type": "eval", "step": self.step}
        rec.update({f"test_{k}": v for k, v in evaluate_test(self.ema.model, self.cfg,
                                                             self.device).items()})
        if self.plots and self.cfg["eval_samples"] > 0:
            rec["samples_png"] = str(self.sample_grid())
        rec["eval_s"] = round(time.time() - t0, 3)
        self.last_eval = {k: v for k, v in rec.items() if isinstance(v, (int, float))}
        self._write_metrics(rec)
        return rec

    def sample_grid(self) -> Path:
        from . import plots

        cfg = self.cfg
        n = cfg["eval_samples"] if cfg["dataset"] == "digits" else max(cfg["eval_samples"], 1000)
        y = sample_labels(cfg, n)
        g = device_generator(self.device, 12345)
        s = self.ema.model.sample(n, y=None if y is None else y.to(self.device), generator=g)
        folder = self.out / "samples"
        folder.mkdir(exist_ok=True)
        path = folder / f"step_{self.step:08d}.png"
        title = f"{cfg['dataset']} step {self.step}"
        if cfg["dataset"] == "digits":
            plots.save_digit_grid(s.cpu(), path, nrow=10, title=None)
        else:
            plots.save_toy_scatter(s.cpu(), path, reference=test_data(cfg)[0][:n], title=title)
        ckpt.atomic_write_bytes(self.out / "samples.png", path.read_bytes())
        return path

    def train_step(self) -> Dict[str, Any]:
        """One iteration (``self.step`` -> ``self.step + 1``); returns its record."""
        cfg, step = self.cfg, self.step
        torch.manual_seed(derive_seed(cfg["seed"], step, "global"))
        x, y = self.data.batch(step)
        g = device_generator(self.device, derive_seed(cfg["seed"], step, "model"))
        lr = learning_rate(cfg, step, self.elapsed_s)
        for group in self.opt.param_groups:
            group["lr"] = lr
        rec = {"step": step + 1, "lr": lr}
        reg_weight = 0.0
        if self.reference is not None:
            reg_weight = rec["fm_reg_weight"] = fm_reg_weight(cfg, step, self.elapsed_s)
        terms = training_losses(self.model, cfg, x, y, g, self.reference, reg_weight)
        loss = terms.pop("loss").mean()
        if step + 1 in self.fault_steps:  # (numbered like the log: the step being made)
            loss = loss * float("nan")
        finite = bool(torch.isfinite(loss))
        gnorm = float("nan")
        if finite:
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            params = [p for p in self.model.parameters() if p.grad is not None]
            clip = cfg["grad_clip"] if cfg["grad_clip"] is not None else float("inf")
            gnorm = float(torch.nn.utils.clip_grad_norm_(params, clip))
            finite = math.isfinite(gnorm)
        if finite:
            self.opt.step()
            self.ema.update(self.model, step)
            self.nonfinite_run = 0
        else:
            self.opt.zero_grad(set_to_none=True)
            self.skipped += 1
            self.nonfinite_run += 1
        self.step = step + 1
        rec.update(loss=float(loss.detach()), grad_norm=gnorm, finite=finite)
        rec["terms"] = {k: float(v.detach().mean()) for k, v in terms.items()}
        return rec

    def eval_summary(self, rec: Dict[str, Any]) -> str:
        return eval_summary(rec)

    def _log_extras(self, rec: Dict[str, Any], mean_loss: float
                    ) -> Tuple[Dict[str, Any], Dict[str, str]]:
        extra: Dict[str, Any] = {"loss_per_dim": mean_loss / math.prod(
            self.cfg["model"]["data_shape"])}
        post: Dict[str, str] = {}
        if "fm_reg_weight" in rec:
            extra["fm_reg_weight"] = rec["fm_reg_weight"]
        if self.cfg["objective"] == "ntm":
            extra["train_bpd"] = self._train_bpd()
            post["bpd"] = f"{extra['train_bpd']:.3f}"
        if "test_bpd" in self.last_eval:
            post["test_bpd"] = f"{self.last_eval['test_bpd']:.3f}"
        return extra, post

    def _on_end(self) -> None:
        if self.plots:
            try:
                from . import plots
                plots.plot_metrics(read_metrics(self.out), self.out / "curves.png")
            except Exception as e:  # a figure must never lose a run
                self.log(f"could not draw curves.png: {e}")

    @torch.no_grad()
    def _train_bpd(self) -> float:
        """bits/dim (t_0 = 0 bound) of the current model on this step's batch (cheap proxy)."""
        x, y = self.data.batch(self.step)
        self.model.eval()
        try:
            g = device_generator(self.device, derive_seed(self.cfg["seed"], self.step, "bpd"))
            return float(self.model.bits_per_dim(x, y, levels=eval_levels(self.cfg),
                                                 generator=g).mean())
        finally:
            self.model.train()


def eval_summary(rec: Dict[str, Any]) -> str:
    """One line for an evaluation record: test bits/dim, or the test loss of an FM model."""
    if "test_bpd" in rec:
        return f"test bits/dim {rec['test_bpd']:.4f}"
    return f"test flow-matching loss {rec['test_fm_loss']:.4f}"
