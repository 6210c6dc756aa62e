"""Training batches as a pure function of ``(seed, step)``, and the held-out evaluation set.

Image data (digits, colour patches, folders, arrays, CIFAR-10, data handed in from Python) is
opened once per process (:func:`run_data`) and batched by
:class:`~ntm_engine.data.ImageBatches`; the 2-D toys are sampled fresh.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple, Union

import torch
from torch import Tensor

from ..condition import Condition
from ..data import ImageBatches, ImageData, fingerprint, open_dataset, sample_toy
from ..data.cond import attach_cond
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


@functools.lru_cache(maxsize=4)
def _open_with_cond(dataset: str, image_size: Optional[int], channels: Optional[int],
                    workers: int, cond: str) -> ImageData:
    return attach_cond(_open(dataset, image_size, channels, workers), cond)


def _resolved(name: str) -> str:
    return name if name in ("digits", "colour-patches") or name.startswith(HANDED_IN) \
        else str(Path(name).expanduser().resolve())


def run_data(data: DataConfig) -> Optional[ImageData]:
    """The :class:`~ntm_engine.data.ImageData` of ``data`` (opened once per process), or None
    for a 2-D toy; with ``data.cond`` it carries the condition tokens (the dataset's own, or
    those of the token file).  Bad data is a :class:`ConfigError` naming what is wrong."""
    if not data.is_image:
        return None
    name = _resolved(data.dataset)
    own = data.cond is not None and _resolved(data.cond) == name
    if data.dataset.startswith(HANDED_IN):
        if data.dataset not in _HANDED:
            raise ConfigError(f"dataset {data.dataset!r} was handed in from Python by another "
                              "process; hand it in again (training.hand_in) before resuming")
        images = _HANDED[data.dataset]
        if data.cond is not None and not own:
            raise OptionError(f"--cond {data.cond}: data handed in from Python carries its own "
                              f"condition tokens (ImageData.train_cond/test_cond); cond must "
                              f"be the dataset's name {data.dataset!r}")
    else:
        opened = (name, data.image_size, data.channels, data.data_workers)
        try:
            images = _open(*opened)
        except ValueError as e:   # DataError
            raise OptionError(f"--dataset {data.dataset}: {e}") from e
        if data.cond is not None and not own:
            try:
                images = _open_with_cond(*opened, _resolved(data.cond))
            except ValueError as e:
                raise OptionError(f"--cond {data.cond}: {e}") from e
    if own and not images.cond_dim:
        raise OptionError(f"--cond: dataset {data.dataset!r} carries no condition tokens "
                          f"(an .npz file's 'cond' key); give the token file as --cond FILE")
    return images


class DataSource:
    """Batches of a run config ``cfg`` (anything with ``.data`` and ``.optim`` sections).

    Images: :class:`~ntm_engine.data.ImageBatches` -- epoch ``e`` visits the train split in
    the order ``randperm`` seeded by ``(seed, e)``; batch ``step`` is positions
    ``[step*B, (step+1)*B)`` of the concatenated epochs, dequantised with noise seeded by
    ``(seed, step)``.  Toys: fresh samples seeded by ``(seed, step)``.  Batches are
    ``x [B, *shape]`` and labels ``y [B]`` (or None).  Lazily read images with
    ``data_workers > 0`` come from a ``DataLoader`` stream (restarted when a step other than
    the next one is asked for); the same batches either way.  With condition tokens
    (``cfg.data.cond``) ``y`` is a :class:`~ntm_engine.condition.Condition` of the same rows
    (labels of a class-conditional run, the items' tokens and padding mask).

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
            num_workers=cfg.data.data_workers, cond=cfg.data.cond is not None)
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


def test_data(data: DataConfig) -> Tuple[Tensor, Union[None, Tensor, Condition]]:
    """The evaluation set: the image data's test split (with the labels of a class-conditional
    run; with condition tokens a :class:`~ntm_engine.condition.Condition` of labels and
    tokens), or 5000 fixed toy samples."""
    images = run_data(data)
    if images is not None:
        x, y = images.tensors("test")
        y = y if data.class_conditional else None
        if data.cond is not None:
            c = images.test_cond
            y = Condition(y, c.tokens, c.mask)
        return x, y
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


def sample_conditions(data: DataConfig, n: int
                      ) -> Tuple[Union[None, Tensor, Condition], Optional[Tensor]]:
    """``(condition, classes)`` of ``n`` samples for a run's evaluation: the condition to
    sample with (None, labels ``[n]`` or a :class:`~ntm_engine.condition.Condition`) and the
    class ``[n]`` each sample should show (None when unknown).  Labels only: classes
    ``0..K-1`` cycled (:func:`sample_labels`).  Condition tokens: those of test items; where
    the data has classes, sample ``i`` is of class ``i % K`` and takes the tokens of the
    ``(i // K)``-th test item of that class (cycled; classes without test items are skipped),
    so each class is sampled with its own conditions as labels would be; else the test items
    cycled."""
    if data.cond is None:
        y = sample_labels(data, n)
        return y, y
    images = run_data(data)
    tokens = images.test_cond
    _, test_y = images.tensors("test")
    if images.num_classes > 0 and test_y is not None and len(test_y):
        items = [(k, (test_y == k).nonzero().view(-1)) for k in range(images.num_classes)]
        items = [(k, ids) for k, ids in items if len(ids)]
        picks = [(items[i % len(items)], i // len(items)) for i in range(n)]
        classes = torch.tensor([k for (k, _), _ in picks], dtype=torch.long)
        idx = torch.tensor([int(ids[j % len(ids)]) for (_, ids), j in picks], dtype=torch.long)
    else:
        classes, idx = None, torch.arange(n) % len(tokens)
    c = tokens.rows(idx)
    labels = None if not data.class_conditional else test_y[idx]
    return Condition(labels, c.tokens, c.mask), classes
