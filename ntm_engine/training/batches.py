"""Training batches as a pure function of ``(seed, step)``, and the held-out evaluation set.

Image data (digits, colour patches, folders, arrays, CIFAR-10, data handed in from Python) is
opened once per process (:func:`run_data`) and batched by
:class:`~ntm_engine.data.ImageBatches`; the 2-D toys are sampled fresh.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import torch
from torch import Tensor

from ..data import ImageBatches, ImageData, fingerprint, open_dataset, sample_toy
from .determinism import derive_seed
from .errors import ConfigError, OptionError
from .sections import HANDED_IN, DataConfig

_HANDED: Dict[str, ImageData] = {}


def hand_in(data: ImageData, name: Optional[str] = None) -> str:
    """Make ``data`` (e.g. ``open_dataset(my_torch_dataset)``) trainable in this process as
    dataset ``"python:NAME"`` (``name`` defaults to ``data.name``); returns that name."""
    key = HANDED_IN + (name or data.name)
    _HANDED[key] = data
    return key


@functools.lru_cache(maxsize=4)
def _open(dataset: str, image_size: Optional[int], channels: Optional[int],
          workers: int) -> ImageData:
    return open_dataset(dataset, image_size=image_size, channels=channels, num_workers=workers)


def run_data(data: DataConfig) -> Optional[ImageData]:
    """The :class:`~ntm_engine.data.ImageData` of ``data`` (opened once per process), or None
    for a 2-D toy.  Bad data is a :class:`ConfigError` naming what is wrong."""
    if not data.is_image:
        return None
    if data.dataset.startswith(HANDED_IN):
        if data.dataset not in _HANDED:
            raise ConfigError(f"dataset {data.dataset!r} was handed in from Python by another "
                              "process; hand it in again (training.hand_in) before resuming")
        return _HANDED[data.dataset]
    name = data.dataset
    if name not in ("digits", "colour-patches"):
        name = str(Path(name).expanduser().resolve())
    try:
        return _open(name, data.image_size, data.channels, data.data_workers)
    except ValueError as e:   # DataError
        raise OptionError(f"--dataset {data.dataset}: {e}") from e


class DataSource:
    """Batches of a run config ``cfg`` (anything with ``.data`` and ``.optim`` sections).

    Images: :class:`~ntm_engine.data.ImageBatches` -- epoch ``e`` visits the train split in
    the order ``randperm`` seeded by ``(seed, e)``; batch ``step`` is positions
    ``[step*B, (step+1)*B)`` of the concatenated epochs, dequantised with noise seeded by
    ``(seed, step)``.  Toys: fresh samples seeded by ``(seed, step)``.  Batches are
    ``x [B, *shape]`` and labels ``y [B]`` (or None).  Lazily read images with
    ``data_workers > 0`` come from a ``DataLoader`` stream (restarted when a step other than
    the next one is asked for); the same batches either way.

    ``rows`` (a slice of the global batch; one process's share under torchrun): :meth:`batch`
    gives only those rows, and image data reads and dequantises only them (the indices of the
    whole batch are a function of ``(seed, step)``, so each process knows its own); toys are
    drawn whole and sliced.  Either way the rows equal those of the whole batch.
    """

    def __init__(self, cfg, device=None, *, rows: Optional[slice] = None):
        self.dataset, self.seed = cfg.data.dataset, int(cfg.optim.seed)
        self.batch_size = int(cfg.optim.batch_size)
        self.rows = rows
        self.device = torch.device(device or "cpu")
        self.images = run_data(cfg.data)
        self.batches = None if self.images is None else ImageBatches(
            self.images, batch_size=self.batch_size, seeds=functools.partial(derive_seed,
                                                                            self.seed),
            conditional=bool(cfg.data.class_conditional), device=self.device,
            num_workers=cfg.data.data_workers)
        self._streaming = (self.batches is not None and not self.batches.in_memory
                           and cfg.data.data_workers > 0)
        self._stream: Optional[Iterator] = None
        self._next_step = -1
        self._last: Tuple[int, Any] = (-1, None)

    @property
    def fingerprint(self) -> Optional[str]:
        """The data's digest (:func:`~ntm_engine.data.fingerprint`); None for toys."""
        return None if self.images is None else fingerprint(self.images)

    def generator(self, step: int) -> torch.Generator:
        return torch.Generator().manual_seed(derive_seed(self.seed, step, "data"))

    def batch(self, step: int, n: Optional[int] = None) -> Tuple[Tensor, Optional[Tensor]]:
        """This source's rows of batch ``step`` (``x [b, *shape]``, ``y [b]`` or None); with
        ``n``: the first ``n`` rows of the whole batch instead (checks before a run)."""
        rows = self.rows if n is None else None
        if self._streaming and n is None:
            return self._streamed(step)
        if self.batches is not None:
            return self.batches.batch(step, n, rows=rows)
        x = sample_toy(self.dataset, n or self.batch_size, generator=self.generator(step))
        return (x if rows is None else x[rows]).to(self.device), None

    def _streamed(self, step: int) -> Tuple[Tensor, Optional[Tensor]]:
        if self._last[0] != step:
            if self._stream is None or self._next_step != step:
                self._stream = self.batches.stream(step, rows=self.rows)
            self._last, self._next_step = (step, next(self._stream)), step + 1
        return self._last[1]


def test_data(data: DataConfig) -> Tuple[Tensor, Optional[Tensor]]:
    """The evaluation set: the image data's test split, or 5000 fixed toy samples."""
    images = run_data(data)
    if images is not None:
        x, y = images.tensors("test")
        return x, (y if data.class_conditional else None)
    g = torch.Generator().manual_seed(2**31 - 1)
    return sample_toy(data.dataset, 5000, generator=g), None


test_data.__test__ = False   # (not a pytest test, whatever imports it)


def eval_bins(data: DataConfig) -> int:
    """Levels for bits/dim: the data's (17 for digits, 256 for 8-bit images); toys are
    continuous (bins=2 makes the ``log2(bins/2)`` term vanish, so the number is the
    continuous bits/dim bound)."""
    images = run_data(data)
    return 2 if images is None else images.bins


def sample_labels(data: DataConfig, n: int) -> Optional[Tensor]:
    """Labels ``0..K-1`` cycled over ``n`` samples of a class-conditional run, else None."""
    if not data.class_conditional:
        return None
    return torch.arange(n) % run_data(data).num_classes
