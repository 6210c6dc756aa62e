"""The config sections every run type shares: data, optimisation and run cadence, as frozen
dataclasses whose construction checks each field (a :class:`ConfigError` names the option, what
it must be and what came), and the helpers that map between them and the flat JSON layout of
``config.json`` (one key per field, sections flattened; see ``docs/design.md`` section 4)."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Type

from ..data import BUILT_IN, TOYS
from .errors import ConfigError, OptionError
from .precision import PRECISIONS

DATASETS = ("digits",) + tuple(sorted(TOYS))
IMAGE_NAMES = tuple(BUILT_IN)            # built-in image sets (no download)
HANDED_IN = "python:"                   # prefix of data handed to the Trainer as an object
REVERSIBLE_GUARDS = ("fallback", "strict")   # --reversible: what the drift guard does


def option(key: str) -> str:
    """The command-line spelling of config key ``key`` (``ckpt_every`` -> ``--ckpt-every``)."""
    return "--" + key.replace("_", "-")


def check(ok: bool, message: str, error: type = ConfigError) -> None:
    if not ok:
        raise error(message)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_number(key: str, value: Any, *, integer: bool = False, optional: bool = False) -> None:
    """``value`` of ``key`` is an int (``integer``) or a real number, or None if ``optional``."""
    if value is None and optional:
        return
    kind = "an integer" if integer else "a number"
    ok = isinstance(value, int) and not isinstance(value, bool) if integer else _is_number(value)
    check(ok, f"{option(key)} must be {kind}{' or null' if optional else ''}, got {value!r}")


def is_path_like(name: str) -> bool:
    """Whether dataset ``name`` names a file or folder (rather than a built-in set)."""
    return "/" in name or "\\" in name or name.lower().endswith((".npy", ".npz")) or \
        Path(name).expanduser().exists()


@dataclass(frozen=True)
class DataConfig:
    """What is trained on: ``dataset`` (a 2-D toy, ``digits``, ``colour-patches``, a folder
    of images, a CIFAR-10 python folder, a ``.npy``/``.npz`` file -- an ``.npz`` with
    ``latents`` is an autoencoder's latents --, or ``python:NAME`` for an
    :class:`~ntm_engine.data.ImageData` handed to the trainer), whether labels condition,
    ``image_size`` / ``channels`` of image data (None: as stored), ``data_workers``
    (``DataLoader`` processes for lazily read data), for latents the ``decoder``
    (``MODULE:FUNCTION`` from latents to images, for sample grids; :mod:`.decoder`; not part
    of the run's identity: a resumed run may change it) and ``cond``, where condition tokens
    come from (None: no tokens; the dataset's own name: the ``.npz`` dataset's ``cond`` key,
    or the tokens of handed-in data; another path: a token file for the dataset's splits,
    :mod:`ntm_engine.data.cond`)."""
    dataset: str = "digits"
    class_conditional: bool = False
    image_size: Optional[int] = None
    channels: Optional[int] = None
    data_workers: int = 0
    decoder: Optional[str] = None
    cond: Optional[str] = None

    def __post_init__(self):
        check(isinstance(self.dataset, str) and (
            self.dataset in DATASETS + IMAGE_NAMES or self.dataset.startswith(HANDED_IN)
            or is_path_like(self.dataset)),
            f"unknown dataset {self.dataset!r}; choose one of "
            f"{', '.join(DATASETS + IMAGE_NAMES)}, or give a folder or .npy/.npz file",
            OptionError)
        check(not self.class_conditional or self.is_image,
              f"--class-conditional needs labelled data (images), not the 2-D toy {self.dataset!r}")
        check(self.cond is None or (isinstance(self.cond, str) and self.cond != ""),
              f"--cond must name the .npz file of the condition tokens, got {self.cond!r}")
        check(self.cond is None or self.is_image,
              f"--cond needs image data with condition tokens, not the 2-D toy {self.dataset!r}")
        for k in ("image_size", "channels"):
            check_number(k, getattr(self, k), integer=True, optional=True)
        check_number("data_workers", self.data_workers, integer=True)
        checks = [
            (self.image_size is None or self.image_size >= 1,
             f"--image-size must be >= 1, got {self.image_size}"),
            (self.channels in (None, 1, 3), f"--channels must be 1 or 3, got {self.channels}"),
            (self.data_workers >= 0, f"--data-workers must be >= 0, got {self.data_workers}"),
            (self.is_image or (self.image_size, self.channels) == (None, None),
             f"--image-size/--channels apply to images, not the 2-D toy {self.dataset!r}"),
            (self.decoder is None or isinstance(self.decoder, str),
             f"--decoder must be MODULE:FUNCTION, got {self.decoder!r}"),
            (self.is_image or self.decoder is None,
             f"--decoder applies to latent data, not the 2-D toy {self.dataset!r}"),
        ]
        for ok, msg in checks:
            check(ok, msg)

    @property
    def is_image(self) -> bool:
        """Images (everything but the 2-D toys)."""
        return self.dataset not in TOYS

    @property
    def conditioned(self) -> bool:
        """Whether the model is conditioned at all: on labels and/or condition tokens."""
        return self.class_conditional or self.cond is not None


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up then cosine decay to ``min_lr_ratio * lr`` at the end of the
    budget (``iters`` and/or ``minutes``), EMA of the weights, gradient clipping, the seed of
    everything random, the tolerated run of non-finite losses, the ``precision`` of the
    training forward (``fp32`` or ``bf16`` autocast, :mod:`.precision`) and
    ``checkpoint_predictor`` (recompute the predictor's blocks in the backward pass instead
    of keeping their activations)."""
    batch_size: int = 128
    lr: float = 3e-3
    min_lr_ratio: float = 0.05
    warmup: int = 100
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    ema_decay: float = 0.998
    ema_warmup: float = 10.0
    grad_clip: Optional[float] = 1.0
    seed: int = 0
    iters: Optional[int] = None
    minutes: Optional[float] = None
    max_nonfinite: int = 20
    precision: str = "fp32"
    checkpoint_predictor: bool = False
    # the drift guard of the reversible backward (:mod:`.drift`): every N iterations (0: never),
    # on a tolerance (None: that of the precision), falling back to stored activations or
    # stopping (strict)
    reversible_check_every: int = 100
    reversible_tolerance: Optional[float] = None
    reversible_guard: str = "fallback"

    def __post_init__(self):
        for k in ("batch_size", "warmup", "seed", "max_nonfinite"):
            check_number(k, getattr(self, k), integer=True)
        check_number("iters", self.iters, integer=True, optional=True)
        check_number("reversible_check_every", self.reversible_check_every, integer=True)
        check_number("reversible_tolerance", self.reversible_tolerance, optional=True)
        for k in ("lr", "min_lr_ratio", "weight_decay", "beta1", "beta2", "ema_decay", "ema_warmup"):
            check_number(k, getattr(self, k))
        for k in ("grad_clip", "minutes"):
            check_number(k, getattr(self, k), optional=True)
        checks = [
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.lr > 0 and math.isfinite(self.lr), f"--lr must be > 0, got {self.lr}"),
            (0 <= self.min_lr_ratio <= 1,
             f"--min-lr-ratio must lie in [0, 1], got {self.min_lr_ratio}"),
            (self.warmup >= 0, f"--warmup must be >= 0, got {self.warmup}"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (0 <= self.ema_decay < 1, f"--ema-decay must lie in [0, 1), got {self.ema_decay}"),
            (1 < self.ema_warmup < math.inf,
             f"--ema-warmup must be a finite number > 1, got {self.ema_warmup}"),
            (self.grad_clip is None or self.grad_clip > 0,
             f"--grad-clip must be > 0, got {self.grad_clip}"),
            (self.iters is not None or self.minutes is not None,
             "give a budget: --iters and/or --minutes"),
            (self.iters is None or self.iters >= 1, f"--iters must be >= 1, got {self.iters}"),
            (self.minutes is None or self.minutes > 0,
             f"--minutes must be > 0, got {self.minutes}"),
            (self.max_nonfinite >= 1, f"--max-nonfinite must be >= 1, got {self.max_nonfinite}"),
            (isinstance(self.checkpoint_predictor, bool),
             f"--checkpoint-predictor must be true or false, got {self.checkpoint_predictor!r}"),
            (self.precision in PRECISIONS,
             f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"),
            (self.reversible_check_every >= 0,
             f"--reversible-check-every must be >= 0, got {self.reversible_check_every}"),
            (self.reversible_tolerance is None or 0 < self.reversible_tolerance < math.inf,
             f"--reversible-tolerance must be a finite number > 0, got "
             f"{self.reversible_tolerance}"),
            (self.reversible_guard in REVERSIBLE_GUARDS, "--reversible must be one of "
             f"{', '.join(REVERSIBLE_GUARDS)}, got {self.reversible_guard!r}"),
        ]
        for ok, msg in checks:
            check(ok, msg)


@dataclass(frozen=True)
class RunConfig:
    """Cadence of the loop, in iterations: log records, evaluations, checkpoints (the newest
    ``keep`` are kept); ``eval_batch``: the evaluation batch size."""
    log_every: int = 25
    eval_every: int = 250
    ckpt_every: int = 250
    keep: int = 2
    eval_batch: int = 512

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            check_number(f.name, v, integer=True)
            check(v >= 1, f"{option(f.name)} must be >= 1, got {v}")


# ----------------------------------------------------------------------------- flat layout

class RunConfigProtocol:
    """What every run's config is (:class:`~.config.TrainConfig`,
    :class:`~.distill_config.DistillConfig`): a frozen dataclass with sections ``data``
    (:class:`DataConfig`), ``optim`` and ``run``, whose flat JSON form ``to_dict()`` /
    ``from_dict(d)`` (validated, older versions upgraded) is what ``config.json`` and the
    checkpoints hold, and whose ``kind`` names the run folder's kind (None: a training run)."""
    data: "DataConfig"
    kind: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        raise NotImplementedError

    @classmethod
    def coerce(cls, cfg):
        """``cfg`` itself, or the config of its flat form."""
        return cfg if isinstance(cfg, cls) else cls.from_dict(cfg)

    def replace(self, **flat):
        """A copy with flat entries replaced (``cfg.replace(seed=1, iters=None)``), validated."""
        return type(self).from_dict({**self.to_dict(), **flat})

    @property
    def dataset(self) -> str:
        return self.data.dataset

    @property
    def conditional(self) -> bool:
        return self.data.class_conditional


def field_names(cls: Type) -> Tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def section_from(cls: Type, flat: Mapping[str, Any]):
    """The ``cls`` section of a flat config dict (keys it does not have keep their defaults)."""
    return cls(**{k: flat[k] for k in field_names(cls) if k in flat})


def flatten(*sections) -> Dict[str, Any]:
    """The flat JSON entries of ``sections`` (dataclass instances)."""
    out: Dict[str, Any] = {}
    for s in sections:
        out.update(dataclasses.asdict(s))
    return out


def reject_unknown(flat: Mapping[str, Any], known: Iterable[str], what: str) -> None:
    unknown = set(flat) - set(known)
    check(not unknown, f"unknown {what} options: {sorted(unknown)}")


def plain(v: Any) -> Any:
    """``v`` as JSON gives it back (tuples become lists), for comparisons."""
    return json.loads(json.dumps(v))


def differences(a: Mapping[str, Any], b: Mapping[str, Any], keys: Iterable[str]) -> List[str]:
    """Readable differences of entries ``keys`` of two flat config dicts (``model``-like dict
    entries are compared key by key)."""
    out = []
    for k in keys:
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            for mk in sorted(set(va) | set(vb)):
                if plain(va.get(mk)) != plain(vb.get(mk)):
                    out.append(f"{k}.{mk}: checkpoint {va.get(mk)!r} vs requested {vb.get(mk)!r}")
        elif plain(va) != plain(vb):
            out.append(f"{k}: checkpoint {va!r} vs requested {vb!r}")
    return out
