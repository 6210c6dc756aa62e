"""``--decoder MODULE:FUNCTION``: the user's function from latents to images, which draws the
sample grids of a latent run (and gives ``ntm eval`` images to compare).

The spec: ``MODULE`` is a dotted module name, imported with the current directory first on
``sys.path`` (as ``python -m`` has it; an installed package works from anywhere), or the path
of a ``.py`` file (stored absolute in the run's config, so later commands find it from any
folder); ``FUNCTION`` is a (dotted) attribute of it.  The function takes latents ``z [B, C,
H, W]`` (a float32 CPU tensor, in the data's own scale: what the ``.npz`` holds) and returns
images ``[B, c, h, w]`` with ``c`` 1 or 3 and values in [0, 1] (a tensor or a NumPy array),
e.g. for diffusers' ``AutoencoderKL``: ``(vae.decode(z / 0.18215).sample + 1) / 2``.  It runs
without gradients, in batches.  ``ntm train`` stores the spec; ``ntm sample``/``ntm eval``
reuse it unless given another ``--decoder``.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

from .batches import run_data
from .errors import ConfigError, OptionError

OPTION = "--decoder"
RANGE_SLACK = 0.5   # the first check allows values in [-0.5, 1.5] (decoders overshoot a bit)


def _parts(spec: str):
    module, sep, attr = spec.rpartition(":") if isinstance(spec, str) else ("", "", "")
    names = attr.split(".")
    if not (sep and module and all(n.isidentifier() for n in names)):
        raise OptionError(f"{OPTION} must be MODULE:FUNCTION (a module name or a .py file, a "
                          f"colon, the function's name), got {spec!r}")
    return module, names


def decoder_spec(spec: Optional[str]) -> Optional[str]:
    """``spec`` as a run stores it: checked for the ``MODULE:FUNCTION`` form (an
    :class:`OptionError` naming ``--decoder``), a ``.py`` path made absolute."""
    if spec is None:
        return None
    module, names = _parts(spec)
    if module.endswith(".py"):
        module = str(Path(module).expanduser().resolve())
    return f"{module}:{'.'.join(names)}"


@contextlib.contextmanager
def _cwd_first():
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield cwd
    finally:
        if added:
            sys.path.remove(cwd)


def _import(module: str, spec: str, where: str):
    if module.endswith(".py"):
        path = Path(module)
        if not path.is_file():
            raise ConfigError(f"{where} {spec}: no such Python file {str(path)!r}")
        name = "ntm_decoder_" + hashlib.sha256(str(path).encode()).hexdigest()[:16]
        loader = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(loader)
        try:
            loader.loader.exec_module(mod)
        except Exception as e:
            raise ConfigError(f"{where} {spec}: importing {path} failed: "
                              f"{type(e).__name__}: {e}") from e
        return mod
    with _cwd_first() as cwd:
        try:
            return importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and (module == e.name or module.startswith(e.name + ".")):
                raise ConfigError(f"{where} {spec}: no module named {module!r} (searched the "
                                  f"current folder {cwd} and sys.path; run from the folder "
                                  f"that holds it, or give the path of its .py file)") from e
            raise ConfigError(f"{where} {spec}: importing {module} failed: {e}") from e
        except Exception as e:
            raise ConfigError(f"{where} {spec}: importing {module} failed: "
                              f"{type(e).__name__}: {e}") from e


class Decoder:
    """The function of a ``--decoder`` spec (module docstring), called through
    :meth:`__call__`, which checks what it returns."""

    def __init__(self, spec: str, fn: Callable, where: str = OPTION):
        self.spec, self.fn, self.where = spec, fn, where

    def _fail(self, what: str) -> ConfigError:
        return ConfigError(f"{self.where} {self.spec}: {what}")

    @torch.no_grad()
    def __call__(self, z: Tensor, *, batch_size: int = 256) -> Tensor:
        """Images ``[B, c, h, w]`` float32 (values as the function gave them, expected in
        [0, 1]) of latents ``z [B, C, H, W]``, decoded in batches of ``batch_size``."""
        out = []
        for zb in z.detach().to("cpu", torch.float32).split(batch_size):
            try:
                img = self.fn(zb.clone())
            except Exception as e:
                raise self._fail(f"calling it on latents of shape {list(zb.shape)} failed: "
                                 f"{type(e).__name__}: {e}") from e
            out.append(self._checked(img, zb))
        if len({tuple(o.shape[1:]) for o in out}) > 1:
            raise self._fail(f"expected images of one shape for every batch, got "
                             f"{sorted({tuple(o.shape[1:]) for o in out})}")
        return torch.cat(out)

    def _checked(self, img, zb: Tensor) -> Tensor:
        if isinstance(img, np.ndarray):
            img = torch.from_numpy(img)
        if not torch.is_tensor(img):
            raise self._fail(f"expected images [B, 1 or 3, h, w] (a tensor or array), got "
                             f"{type(img).__name__}")
        if img.dim() != 4 or img.shape[0] != zb.shape[0] or img.shape[1] not in (1, 3):
            raise self._fail(f"expected images [B, 1 or 3, h, w] with B = {zb.shape[0]} for "
                             f"latents {list(zb.shape)}, got shape {list(img.shape)}")
        if not img.dtype.is_floating_point:
            raise self._fail(f"expected float images in [0, 1], got dtype {img.dtype}")
        return img.detach().to("cpu", torch.float32)

    def check(self, z: Tensor) -> Tensor:
        """Decode ``z`` (a few real latents) and check the values lie in [0, 1] (within
        :data:`RANGE_SLACK`): the check before a run uses a decoder.  Returns the images."""
        img = self(z)
        lo, hi = float(img.min()), float(img.max())
        if not (lo >= -RANGE_SLACK and hi <= 1 + RANGE_SLACK):   # (also NaN)
            raise self._fail(f"expected images in [0, 1], got values in [{lo:.4g}, {hi:.4g}] "
                             f"from {len(z)} training latents (map [-1, 1] to [0, 1] with "
                             f"(x + 1) / 2)")
        return img


def load_decoder(spec: str, *, where: str = OPTION) -> Decoder:
    """The :class:`Decoder` of ``spec`` (import errors, a missing attribute or one that is not
    callable are :class:`ConfigError` naming ``where`` and the spec)."""
    module, names = _parts(spec)
    obj = _import(module, spec, where)
    for i, n in enumerate(names):
        if not hasattr(obj, n):
            raise ConfigError(f"{where} {spec}: {module} has no attribute "
                              f"{'.'.join(names[:i + 1])!r}")
        obj = getattr(obj, n)
    if not callable(obj):
        raise ConfigError(f"{where} {spec}: {'.'.join(names)} is not callable (a "
                          f"{type(obj).__name__})")
    return Decoder(spec, obj, where)


def run_decoder(cfg, override: Optional[str] = None, *, check: bool = False
                ) -> Optional[Decoder]:
    """The decoder of a command on the run of config ``cfg`` (a
    :class:`~.config.TrainConfig`): ``override`` (the command's ``--decoder``), else the one
    the run stored (errors then say so), else None.  Only latent runs take one.  ``check``:
    decode two training latents and check the images (:meth:`Decoder.check`; needs the
    data), as ``ntm train`` does before it starts."""
    spec = decoder_spec(override) if override is not None else cfg.data.decoder
    if spec is None:
        return None
    where = OPTION if override is not None else f"{OPTION} (stored in the run's config)"
    if not cfg.latent:
        raise ConfigError(f"{where} {spec}: a decoder turns latents into images; the data of "
                          f"this run ({cfg.dataset}) are not latents (an .npz with a "
                          f"'latents' array)")
    decoder = load_decoder(spec, where=where)
    if check:
        train = run_data(cfg.data).train
        decoder.check(train.images(torch.arange(min(2, len(train)))))
    return decoder
