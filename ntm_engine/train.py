"""The training loop: deterministic data, AdamW with warm-up + cosine decay, EMA, gradient
clipping, non-finite-loss skipping, periodic evaluation and sample grids, and checkpoints that
survive being killed (:mod:`ntm_engine.checkpoint`).

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

import copy
import hashlib
import json
import math
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from . import checkpoint as ckpt
from .data import DIGITS_LEVELS, DIGITS_SHAPE, TOYS, dequantize, load_digits, sample_toy

DATASETS = ("digits",) + tuple(sorted(TOYS))
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"

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


class ConfigError(ValueError):
    """A configuration that cannot work; raised before any training work starts."""


class NonFiniteLossError(RuntimeError):
    """Too many consecutive non-finite losses; the run stopped."""


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
        (cfg["batch_size"] >= 1, f"--batch-size must be >= 1, got {cfg['batch_size']}"),
        (cfg["lr"] > 0 and math.isfinite(cfg["lr"]), f"--lr must be > 0, got {cfg['lr']}"),
        (0 <= cfg["min_lr_ratio"] <= 1, "--min-lr-ratio must lie in [0, 1]"),
        (cfg["warmup"] >= 0, f"--warmup must be >= 0, got {cfg['warmup']}"),
        (cfg["weight_decay"] >= 0, "--weight-decay must be >= 0"),
        (0 <= cfg["ema_decay"] < 1, f"--ema-decay must lie in [0, 1), got {cfg['ema_decay']}"),
        (cfg["grad_clip"] is None or cfg["grad_clip"] > 0, "--grad-clip must be > 0"),
        (cfg["iters"] is not None or cfg["minutes"] is not None,
         "give a budget: --iters and/or --minutes"),
        (cfg["iters"] is None or cfg["iters"] >= 1, f"--iters must be >= 1, got {cfg['iters']}"),
        (cfg["minutes"] is None or cfg["minutes"] > 0, f"--minutes must be > 0, got {cfg['minutes']}"),
        (all(cfg[k] >= 1 for k in ("log_every", "eval_every", "ckpt_every", "keep",
                                   "max_nonfinite", "eval_batch")),
         "--log-every, --eval-every, --ckpt-every, --keep, --max-nonfinite must be >= 1"),
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
    if len(shape) == 3:
        p = m.get("patch_size")
        if p is not None and (p < 1 or shape[1] % p or shape[2] % p):
            raise ConfigError(f"--patch-size {p} must divide the image size {shape[1]}x{shape[2]}")


def model_code_fingerprint() -> str:
    """sha256 of the model's source (``ntm_engine/models``, ``ntm_engine/nn``): a checkpoint
    loaded by other model code may not compute the same function."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for sub in ("models", "nn"):
        for f in sorted((root / sub).glob("*.py")):
            h.update(f"{sub}/{f.name}".encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def check_model_code(state: Dict[str, Any], where, log) -> None:
    """Warn if ``state`` (a checkpoint's) was written by different model code."""
    saved = state.get("model_code_sha256")
    if saved and saved != model_code_fingerprint():
        log(f"warning: {where} was written by different model code (ntm_engine/models or "
            "ntm_engine/nn changed since); it loads, but may not compute the same function")


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
                                   _device_generator(device, 0))["loss"]
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


# ----------------------------------------------------------------------------- determinism

def derive_seed(seed: int, step: int, stream: str) -> int:
    """A 63-bit seed from ``(seed, step, stream)`` (independent streams per use)."""
    h = hashlib.blake2b(f"{seed}/{stream}/{step}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def _device_generator(device, seed: int) -> torch.Generator:
    device = torch.device(device)
    return torch.Generator(device=device).manual_seed(seed)


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


# ----------------------------------------------------------------------------- schedule, EMA

def budget_progress(cfg: Dict[str, Any], step: int, elapsed_s: float = 0.0,
                    start: int = 0) -> float:
    """How much of the budget is spent, in ``[0, 1]``: ``(step - start) / (iters - start)``,
    or the fraction of ``minutes`` elapsed, whichever is larger."""
    progress = 0.0
    if cfg["iters"] is not None:
        progress = (step - start) / max(1, cfg["iters"] - start)
    if cfg["minutes"] is not None:
        progress = max(progress, elapsed_s / (60.0 * cfg["minutes"]))
    return min(max(progress, 0.0), 1.0)


def learning_rate(cfg: Dict[str, Any], step: int, elapsed_s: float = 0.0) -> float:
    """Linear warm-up over ``warmup`` iterations, then cosine decay to ``min_lr_ratio * lr`` at
    the end of the budget (``iters``, or ``minutes`` of training time, whichever comes first)."""
    lr, warm = cfg["lr"], cfg["warmup"]
    if step < warm:
        return lr * (step + 1) / warm
    lo = lr * cfg["min_lr_ratio"]
    progress = budget_progress(cfg, step, elapsed_s, start=warm)
    return lo + (lr - lo) * 0.5 * (1 + math.cos(math.pi * progress))


def fm_reg_weight(cfg: Dict[str, Any], step: int, elapsed_s: float = 0.0) -> float:
    """Weight of ``|mu - mu_FM|^2`` in iteration ``step`` (0-based) of an ``init_from`` run:
    ``fm_reg`` cosine-decayed to 0 over the budget (``fm_reg`` at step 0, 0 at the end)."""
    return cfg["fm_reg"] * 0.5 * (1 + math.cos(math.pi * budget_progress(cfg, step, elapsed_s)))


class EMA:
    """Exponential moving average of a model's floating-point parameters and buffers;
    ``decay`` ramps up as ``min(decay, (1+n)/(10+n))`` over the first updates."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, num_updates: int) -> None:
        d = min(self.decay, (1 + num_updates) / (10 + num_updates))
        src = model.state_dict()
        for k, v in self.model.state_dict().items():
            if v.dtype.is_floating_point:
                v.lerp_(src[k], 1 - d)
            else:
                v.copy_(src[k])


# ----------------------------------------------------------------------------- RNG states

def rng_states(data_generator: Optional[torch.Generator] = None) -> Dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    out = {
        "torch_cpu": torch.get_rng_state(),
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                  int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    if torch.cuda.is_available():
        out["torch_cuda"] = torch.cuda.get_rng_state_all()
    if data_generator is not None:
        out["data_generator"] = data_generator.get_state()
    return out


def set_rng_states(st: Dict[str, Any]) -> None:
    torch.set_rng_state(st["torch_cpu"])
    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = st["numpy"]
    np.random.set_state((npst[0], npst[1].numpy().astype(np.uint32), npst[2], npst[3], npst[4]))
    if "torch_cuda" in st and torch.cuda.is_available():
        states = st["torch_cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


# ----------------------------------------------------------------------------- metrics file

def read_metrics(run_dir) -> List[Dict[str, Any]]:
    """The records of ``metrics.jsonl`` (a torn last line, from a kill, is skipped)."""
    path = Path(run_dir) / METRICS_FILE
    out = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def truncate_metrics(run_dir, step: int) -> None:
    """Drop records written after ``step`` (by a run that was killed before checkpointing
    them), so a resumed run's curve continues without duplicates."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return
    keep = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]
    ckpt.atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))


# ----------------------------------------------------------------------------- trainer

class Trainer:
    """One training run in folder ``out``.

    ``resume=True`` continues from the newest valid checkpoint (a corrupt newer one is
    refused, reported and moved aside); ``model_factory(cfg)`` replaces :func:`build_model`
    (tests); ``fault_nonfinite_steps``: steps (1-based, as logged) whose loss is forced to NaN (tests of the
    non-finite handling); ``throttle_s``: a sleep per iteration (tests of kills).
    """

    def __init__(self, cfg: Dict[str, Any], out, *, resume: bool = False, device=None,
                 progress: bool = True, log: Callable[[str], None] = None,
                 model_factory: Optional[Callable[[Dict[str, Any]], nn.Module]] = None,
                 plots: bool = True, fault_nonfinite_steps=(), throttle_s: float = 0.0):
        self.out = Path(out)
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.progress, self.plots = progress, plots
        self.fault_steps = set(int(s) for s in fault_nonfinite_steps)
        self.throttle_s = throttle_s
        self.model_factory = model_factory or build_model

        self._lock = None
        try:
            self._init(cfg, resume)
        except BaseException:
            self.close()
            raise

    def _acquire_lock(self) -> None:
        """One trainer per run folder: an advisory lock, released by the OS even on SIGKILL."""
        import fcntl

        self.out.mkdir(parents=True, exist_ok=True)
        f = open(self.out / ".lock", "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise ConfigError(f"another training process is using {self.out} right now")
        self._lock = f

    def close(self) -> None:
        """Release the run folder (done at the end of :meth:`run`)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

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
        if existing and not resume:
            raise ConfigError(f"{self.out} already holds checkpoints (up to step "
                              f"{existing[-1][0]}); pass --resume to continue that run, or "
                              "choose another --out folder")
        # 2. own the run folder, then find the checkpoint to continue from
        self._acquire_lock()
        resumed = None
        if resume and existing:
            resumed = ckpt.load_latest(self.out, map_location="cpu", quarantine=True,
                                       log=self.log)
            if resumed is None:
                self.log(f"no valid checkpoint left in {self.out}; starting from scratch")
        if resumed is not None:
            diffs = config_differences(resumed.config, cfg)
            if diffs:
                raise ConfigError("the checkpoint in {} was made with another configuration:\n  "
                                  .format(resumed.path) + "\n  ".join(diffs))
        elif cfg["init_from"] is not None and fm_state is None:  # no valid checkpoint left
            fm_state = load_init_source(cfg, log=self.log)
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
        self.step = 0
        self.elapsed_s = 0.0
        self.skipped = 0
        self.nonfinite_run = 0
        self.last_eval: Dict[str, Any] = {}
        self.resumed_from: Optional[str] = None
        self._saved_step: Optional[int] = None
        self._code_sha = model_code_fingerprint()
        self._saved_path: Optional[Path] = None
        if resumed is not None:
            self._restore(resumed)
        else:
            self.out.mkdir(parents=True, exist_ok=True)
            if (self.out / METRICS_FILE).exists():
                (self.out / METRICS_FILE).unlink()
            if self.reference is not None:
                from safetensors.torch import save as st_save
                ckpt.atomic_write_bytes(self.out / REFERENCE_FILE,
                                        st_save(self.reference.state_dict()))
        ckpt.atomic_write_text(self.out / CONFIG_FILE, json.dumps(cfg, indent=1))

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

    # -------------------------------------------------------------- state
    def _restore(self, ck: ckpt.Checkpoint) -> None:
        try:
            self.model.load_state_dict(ck.model, strict=True)
            if ck.ema is not None:
                self.ema.model.load_state_dict(ck.ema, strict=True)
            self.opt.load_state_dict(ck.state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise ConfigError(f"checkpoint {ck.path} does not fit this model: {e}") from e
        st = ck.state
        check_model_code(st, ck.path, self.log)
        self.step = int(st["step"])
        self.elapsed_s = float(st.get("elapsed_s", 0.0))
        self.skipped = int(st.get("skipped_steps", 0))
        self.nonfinite_run = int(st.get("nonfinite_run", 0))
        self.last_eval = dict(st.get("last_eval", {}))
        if "rng" in st:
            set_rng_states(st["rng"])
        truncate_metrics(self.out, self.step)
        self._saved_step, self._saved_path = self.step, ck.path
        self.log(f"resumed from {ck.path} at step {self.step}")
        self.resumed_from = str(ck.path)

    def save(self) -> Path:
        state = {
            "config": self.cfg, "optimizer": self.opt.state_dict(), "elapsed_s": self.elapsed_s,
            "skipped_steps": self.skipped, "nonfinite_run": self.nonfinite_run,
            "rng": rng_states(self.data.generator(self.step)), "last_eval": self.last_eval,
            "torch_version": str(torch.__version__), "model_code_sha256": self._code_sha,
        }
        path = ckpt.save_checkpoint(self.out, self.step, self.model.state_dict(),
                                    self.ema.model.state_dict(), state, keep=self.cfg["keep"])
        self._saved_step, self._saved_path = self.step, path
        self._write_metrics({"type": "checkpoint", "step": self.step, "path": str(path)},
                            sync=True)
        return path

    def _write_metrics(self, rec: Dict[str, Any], sync: bool = False) -> None:
        with open(self.out / METRICS_FILE, "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            if sync:
                os.fsync(f.fileno())

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
        g = _device_generator(self.device, 12345)
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

    # -------------------------------------------------------------- loop
    def _budget_spent(self) -> Optional[str]:
        """``"iters"`` or ``"minutes"`` once that budget is spent, else None."""
        cfg = self.cfg
        if cfg["iters"] is not None and self.step >= cfg["iters"]:
            return "iters"
        if cfg["minutes"] is not None and self.elapsed_s >= 60.0 * cfg["minutes"]:
            return "minutes"
        return None

    def train_step(self) -> Dict[str, Any]:
        """One iteration (``self.step`` -> ``self.step + 1``); returns its record."""
        cfg, step = self.cfg, self.step
        torch.manual_seed(derive_seed(cfg["seed"], step, "global"))
        x, y = self.data.batch(step)
        g = _device_generator(self.device, derive_seed(cfg["seed"], step, "model"))
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

    def run(self, stop_after: Optional[int] = None) -> Dict[str, Any]:
        """Train until the budget is spent (or ``stop_after`` iterations of this call);
        evaluate and checkpoint periodically and at the end.  Returns a summary."""
        from tqdm import tqdm

        cfg = self.cfg
        D = math.prod(cfg["model"]["data_shape"])
        start_step, t_start = self.step, time.time()
        elapsed0 = self.elapsed_s
        self._write_metrics({"type": "event", "event": "resume" if start_step else "start",
                             "step": self.step, "time": time.time()})
        stop_signal = []

        def on_signal(signum, frame):
            stop_signal.append(signum)

        old_handlers = {}
        if threading_main():
            for sig in (signal.SIGTERM, signal.SIGINT):
                old_handlers[sig] = signal.signal(sig, on_signal)
        bar = tqdm(total=cfg["iters"], initial=self.step, disable=not self.progress,
                   dynamic_ncols=True, desc=f"train {cfg['dataset']}", unit="it",
                   file=sys.stderr, mininterval=0.5)
        window: List[Dict[str, float]] = []   # loss and its terms of the finite steps
        tick, tick_step = time.time(), self.step
        stopped = None
        try:
            while True:
                spent = self._budget_spent()
                if spent:
                    stopped = f"budget ({spent})"
                    break
                if stop_after is not None and self.step - start_step >= stop_after:
                    stopped = "stop_after"
                    break
                if stop_signal:
                    stopped = f"signal {stop_signal[0]}"
                    break
                rec = self.train_step()
                if self.throttle_s:
                    time.sleep(self.throttle_s)
                self.elapsed_s = elapsed0 + (time.time() - t_start)
                if rec["finite"]:
                    window.append({"loss": rec["loss"], **rec["terms"]})
                else:
                    self.log(f"step {rec['step']}: non-finite loss or gradient ({rec['loss']}); "
                             f"step skipped ({self.nonfinite_run} in a row, "
                             f"{self.skipped} in total)")
                    self._write_metrics({"type": "nonfinite", "step": self.step,
                                         "loss": str(rec["loss"]), "run": self.nonfinite_run,
                                         "skipped_total": self.skipped})
                    if self.nonfinite_run >= cfg["max_nonfinite"]:
                        good = ckpt.list_checkpoints(self.out)
                        where = (f"the last good checkpoint is {good[-1][1]}" if good else
                                 "no checkpoint had been written yet")
                        msg = (f"stopping: {self.nonfinite_run} consecutive non-finite losses "
                               f"(--max-nonfinite {cfg['max_nonfinite']}) at step {self.step}; "
                               f"{where}. Lower --lr or raise --warmup/--grad-clip.")
                        self._write_metrics({"type": "event", "event": "nonfinite_stop",
                                             "step": self.step}, sync=True)
                        raise NonFiniteLossError(msg)
                bar.update(1)
                if self.step % cfg["log_every"] == 0 or self.step == cfg["iters"]:
                    now = time.time()
                    its = (self.step - tick_step) / max(now - tick, 1e-9)
                    tick, tick_step = now, self.step
                    means = {k: sum(w[k] for w in window) / len(window) for k in window[0]} \
                        if window else {}
                    window = []
                    mean_loss = means.pop("loss", float("nan"))
                    lrec = {"type": "train", "step": self.step, "loss": mean_loss,
                            "loss_per_dim": mean_loss / D, "lr": rec["lr"],
                            "grad_norm": rec["grad_norm"], "it_s": its,
                            "elapsed_s": round(self.elapsed_s, 3), "skipped": self.skipped}
                    lrec.update(means)
                    post = {"loss": f"{mean_loss:.4g}"}
                    if "fm_reg_weight" in rec:
                        lrec["fm_reg_weight"] = rec["fm_reg_weight"]
                    if cfg["objective"] == "ntm":
                        lrec["train_bpd"] = self._train_bpd()
                        post["bpd"] = f"{lrec['train_bpd']:.3f}"
                    self._write_metrics(lrec)
                    post.update({"lr": f"{rec['lr']:.2e}", "it/s": f"{its:.2f}"})
                    if "test_bpd" in self.last_eval:
                        post["test_bpd"] = f"{self.last_eval['test_bpd']:.3f}"
                    bar.set_postfix(post, refresh=False)
                if self.step % cfg["eval_every"] == 0:
                    ev = self.evaluate()
                    bar.write(f"step {self.step}: {eval_summary(ev)}")
                if self.step % cfg["ckpt_every"] == 0:
                    self.save()
        except BaseException:
            self.close()
            raise
        finally:
            bar.close()
            for sig, h in old_handlers.items():
                signal.signal(sig, h)
        if stopped.startswith("budget") and (self.last_eval.get("step") != self.step):
            ev = self.evaluate()
            self.log(f"step {self.step}: {eval_summary(ev)}")
        path = self.save() if self._saved_step != self.step else self._saved_path
        summary = {"type": "event", "event": "end", "reason": stopped, "step": self.step,
                   "elapsed_s": round(self.elapsed_s, 3), "skipped": self.skipped,
                   "checkpoint": str(path), **{k: v for k, v in self.last_eval.items()
                                               if k.startswith("test_")}}
        self._write_metrics(summary, sync=True)
        if self.plots:
            try:
                from . import plots
                plots.plot_metrics(read_metrics(self.out), self.out / "curves.png")
            except Exception as e:  # a figure must never lose a run
                self.log(f"could not draw curves.png: {e}")
        self.close()
        if stopped.startswith("signal"):
            self.log(f"stopped by {stopped} at step {self.step}; checkpoint {path} written")
        return summary

    @torch.no_grad()
    def _train_bpd(self) -> float:
        """bits/dim (t_0 = 0 bound) of the current model on this step's batch (cheap proxy)."""
        x, y = self.data.batch(self.step)
        self.model.eval()
        try:
            g = _device_generator(self.device, derive_seed(self.cfg["seed"], self.step, "bpd"))
            return float(self.model.bits_per_dim(x, y, levels=eval_levels(self.cfg),
                                                 generator=g).mean())
        finally:
            self.model.train()


def eval_summary(rec: Dict[str, Any]) -> str:
    """One line for an evaluation record: test bits/dim, or the test loss of an FM model."""
    if "test_bpd" in rec:
        return f"test bits/dim {rec['test_bpd']:.4f}"
    return f"test flow-matching loss {rec['test_fm_loss']:.4f}"


def threading_main() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()
