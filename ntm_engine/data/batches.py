"""Training batches of an :class:`ImageData` split as a pure function of ``(seeds, step)``.

Epoch ``e`` visits the split in the order ``randperm(N)`` seeded by ``seeds(e, "epoch")``;
batch ``step`` is positions ``[step * B, step * B + n)`` of the concatenated epochs,
dequantised (``bins`` bins) with noise seeded by ``seeds(step, "data")``.  So a run resumed
at any step sees the same batches, whichever path reads them, and one process of several can
read only its rows of a batch (``rows``; the same values as those rows of the whole batch):

- in memory (:class:`~ntm_engine.data.core.ImageSet`): :meth:`ImageBatches.batch` gathers rows
  of the code tensor directly (the fast path for small sets);
- lazy (any other split, e.g. a user ``Dataset``): :meth:`ImageBatches.stream` reads through a
  ``DataLoader`` with ``num_workers`` worker processes, which also dequantise, and pinned
  memory when the device is a GPU.  :meth:`ImageBatches.batch` still works (in-process).

With condition tokens (``cond=True``) the labels' place holds a
:class:`~ntm_engine.condition.Condition` of the same rows: the labels (``conditional``) and
the tokens and mask of those items, gathered in this process by the same indices.
"""
from __future__ import annotations

import itertools
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from ..condition import Condition
from .core import DataError, ImageData, ImageSet, dequantize

Batch = Tuple[Tensor, Union[None, Tensor, Condition]]


class _Noisy(Dataset):
    """Item ``(i, noise_seed, share)`` -> ``(image, label, noise_seed, share)``."""

    def __init__(self, ds: Dataset):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key):
        x, y = self.ds[key[0]]
        return x, y, key[1], key[2]


class _Collate:
    """Stacks one batch (or one share of it) and dequantises it with the generator of its
    noise seed (:func:`~.core.dequantize`, ``share``)."""

    def __init__(self, bins: int):
        self.bins = bins

    def __call__(self, items) -> Tuple[Tensor, Tensor]:
        x = torch.stack([it[0] for it in items])
        y = torch.tensor([it[1] for it in items], dtype=torch.long)
        g = torch.Generator().manual_seed(items[0][2])
        return dequantize(x, self.bins, generator=g, share=items[0][3]), y


class _Steps(Sampler):
    """Batches ``[(index, noise_seed, share), ...]`` of steps ``start, start + 1, ...``
    (endless; only ``rows`` of each when given)."""

    def __init__(self, batches: "ImageBatches", start: int, rows: Optional[slice]):
        self.batches, self.start, self.rows = batches, start, rows

    def __iter__(self):
        step = self.start
        while True:
            seed = self.batches.noise_seed(step)
            idx, share = self.batches.share(step, self.rows)
            yield [(i, seed, share) for i in idx.tolist()]
            step += 1


class ImageBatches:
    """Seeded training batches ``(x [B, C, H, W] dequantised, y)`` of one split, ``y`` labels
    ``[B]``, None, or with ``cond`` a :class:`~ntm_engine.condition.Condition`.

    ``seeds(index, stream) -> int`` derives independent seeds (the trainer passes
    ``lambda i, s: derive_seed(cfg_seed, i, s)``); ``conditional`` returns labels (the data
    must have classes); ``cond`` returns the items' condition tokens (the data must have
    them).  ``num_workers`` / ``pin_memory`` (default: on for CUDA devices)
    apply to :meth:`stream` on a lazy split.
    """

    def __init__(self, data: ImageData, *, batch_size: int, seeds: Callable[[int, str], int],
                 split: str = "train", conditional: bool = False, device=None,
                 num_workers: int = 0, pin_memory: Optional[bool] = None, cond: bool = False):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f"batch_size: expected a positive integer, got {batch_size!r}")
        if conditional and data.num_classes == 0:
            raise DataError(f"conditional: data {data.name!r} has no class labels")
        self.ds = data.split(split)
        self.cond = data.split_cond(split) if cond else None
        if cond and self.cond is None:
            raise DataError(f"cond: data {data.name!r} has no condition tokens")
        if len(self.ds) == 0:
            raise DataError(f"split: {data.name!r} has no {split!r} images")
        self.bins, self.batch_size, self.seeds = data.bins, batch_size, seeds
        self.conditional = conditional
        self.device = torch.device(device or "cpu")
        self.num_workers = num_workers
        self.pin_memory = self.device.type == "cuda" if pin_memory is None else pin_memory
        self._perm_cache: Dict[int, Tensor] = {}

    @property
    def in_memory(self) -> bool:
        return isinstance(self.ds, ImageSet)

    def permutation(self, epoch: int) -> Tensor:
        """The visiting order of epoch ``epoch``: ``[N]``."""
        if epoch not in self._perm_cache:
            if len(self._perm_cache) > 4:
                self._perm_cache.clear()
            g = torch.Generator().manual_seed(self.seeds(epoch, "epoch"))
            self._perm_cache[epoch] = torch.randperm(len(self.ds), generator=g)
        return self._perm_cache[epoch]

    def indices(self, step: int, n: Optional[int] = None) -> Tensor:
        """Rows of batch ``step``: ``[n]`` (default ``batch_size``)."""
        N, start = len(self.ds), step * self.batch_size
        end = start + (n or self.batch_size)
        parts: List[Tensor] = []
        p = start
        while p < end:
            e, off = divmod(p, N)
            take = min(N - off, end - p)
            parts.append(self.permutation(e)[off:off + take])
            p += take
        return torch.cat(parts)

    def noise_seed(self, step: int) -> int:
        return self.seeds(step, "data")

    def generator(self, step: int) -> torch.Generator:
        """The dequantisation generator of batch ``step``."""
        return torch.Generator().manual_seed(self.noise_seed(step))

    def share(self, step: int, rows: Optional[slice] = None, n: Optional[int] = None
              ) -> Tuple[Tensor, Optional[Tuple[int, int]]]:
        """``(indices, share)`` of ``rows`` (a slice, None: all) of batch ``step`` (of ``n``
        rows, default ``batch_size``): their indices into the split, and ``(start, total)``
        for :func:`~.core.dequantize` (None for the whole batch)."""
        idx = self.indices(step, n)
        if rows is None:
            return idx, None
        start, stop, stride = rows.indices(len(idx))
        if stride != 1 or (rows.start is not None and rows.start != start) or \
                (rows.stop is not None and rows.stop != stop):
            raise DataError(f"rows: expected a slice of consecutive rows within the batch of "
                            f"{len(idx)}, got {rows}")
        return idx[start:stop], (start, len(idx))

    def batch(self, step: int, n: Optional[int] = None, *, rows: Optional[slice] = None
              ) -> Batch:
        """Batch ``step`` (first ``n`` rows when given), read in this process; ``rows``: only
        those rows of it are read and dequantised (equal to ``batch(step, n)`` sliced)."""
        idx, share = self.share(step, rows, n)
        if self.in_memory:
            x, y = self.ds.images(idx), self.ds.labels
            y = None if y is None else y.index_select(0, idx)
        else:
            items = [self.ds[i] for i in idx.tolist()]
            x = torch.stack([it[0] for it in items])
            y = torch.tensor([it[1] for it in items], dtype=torch.long)
        x = dequantize(x, self.bins, generator=self.generator(step), share=share)
        return self._place(x, y, idx)

    def stream(self, start: int = 0, *, rows: Optional[slice] = None) -> Iterator[Batch]:
        """Batches ``start, start + 1, ...`` (endless; only ``rows`` of each when given);
        equal to :meth:`batch` of each step."""
        if self.in_memory or self.num_workers == 0:
            yield from (self.batch(step, rows=rows) for step in itertools.count(start))
            return
        loader = DataLoader(_Noisy(self.ds), batch_sampler=_Steps(self, start, rows),
                            collate_fn=_Collate(self.bins), num_workers=self.num_workers,
                            pin_memory=self.pin_memory)
        for step, (x, y) in zip(itertools.count(start), loader):
            yield self._place(x, y, None if self.cond is None else self.share(step, rows)[0])

    def _place(self, x: Tensor, y: Optional[Tensor], idx: Optional[Tensor]) -> Batch:
        """The batch on the device: ``x``, and the labels (``conditional``) or, with ``cond``,
        the :class:`~ntm_engine.condition.Condition` of the items ``idx``."""
        nb = self.pin_memory and self.device.type == "cuda"
        x = x.to(self.device, non_blocking=nb)
        y = y.to(self.device, non_blocking=nb) if self.conditional and y is not None else None
        if self.cond is None:
            return x, y
        c = self.cond.rows(idx)
        return x, Condition(y, c.tokens, c.mask).to(self.device, non_blocking=nb)
