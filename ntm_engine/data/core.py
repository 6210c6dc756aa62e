"""The uniform description of an image data set and its in-memory and lazy splits.

Every image source (digits, colour patches, folders, arrays, CIFAR-10, a user ``Dataset``)
becomes an :class:`ImageData`: a shape ``(C, H, W)``, a number of grey ``bins`` (17 for the
digits, 256 for 8-bit images), a number of classes (0: unlabelled) and ``train`` / ``test``
splits.  A split yields ``(image [C, H, W] float32 in [-1, 1], label)`` items, the image at
the centre of its bin (code ``v`` in ``0..bins-1`` maps to ``(v + 0.5) / bins * 2 - 1``),
ready for :func:`dequantize`; ``label`` is ``-1`` when the set is unlabelled.

Continuous data (an autoencoder's latents, :mod:`.latents`) has ``bins = 0``
(:data:`CONTINUOUS`): its values are used as they are (float32, any range), never
dequantised.

In-memory splits (:class:`ImageSet`) hold integer codes (uint8: 1 byte per value) and give
whole batches by index; lazy splits (:class:`LazyImages`) convert one item at a time and are
read through a ``DataLoader`` (:mod:`ntm_engine.data.batches`).

A data set may carry condition tokens per split (:class:`CondTokens`: one sequence ``[L, C]``
per item, in the split's item order, with a padding mask), e.g. a text encoder's outputs for
each image's caption (:mod:`ntm_engine.data.cond`).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

NO_LABEL = -1
CONTINUOUS = 0  # the bins of continuous data (latents): no quantisation, no dequantisation
SPLIT_SEED = 20260508  # the fixed seed of every held-out test split


class DataError(ValueError):
    """Bad data: the message names the argument or file, what was expected and what came."""


def codes_to_unit(codes: Tensor, bins: int) -> Tensor:
    """Integer codes in ``0..bins-1`` (any shape) -> float32 bin centres in [-1, 1]; for
    continuous data (``bins = 0``) a float32 copy of the values."""
    if bins == CONTINUOUS:
        return codes.to(torch.float32, copy=True)
    return torch.add(codes.float(), 0.5).div_(bins).mul_(2).sub_(1)  # (v + .5) / L * 2 - 1


def dequantize(x: Tensor, bins: int, generator: Optional[torch.Generator] = None, *,
               share: Optional[Tuple[int, int]] = None) -> Tensor:
    """Uniform dequantisation of bin-centred data in [-1, 1] with ``bins`` bins (width
    ``2 / bins``): the same shape, each value uniform within its bin.  ``share = (start,
    total)``: ``x [n, ...]`` is rows ``[start, start + n)`` of a batch of ``total`` rows; the
    noise is drawn for the whole batch and those rows kept, so the result equals the same
    rows of the whole batch's dequantisation (one process's share of a global batch).
    Continuous data (``bins = 0``) comes back as it is (no noise is drawn)."""
    if bins == CONTINUOUS:
        return x
    if share is None:
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    else:
        start, total = share
        if not 0 <= start <= start + x.shape[0] <= total:
            raise DataError(f"share: rows [{start}, {start + x.shape[0]}) must lie in a batch "
                            f"of {total} rows, got share={share} for {x.shape[0]} rows")
        noise = torch.rand((total, *x.shape[1:]), generator=generator, dtype=x.dtype,
                           device=x.device)[start:start + x.shape[0]]
    return x + noise.sub_(0.5).mul_(2.0 / bins)


def check_labels(labels, n: int, *, num_classes: Optional[int] = None,
                 what: str = "labels") -> Tuple[Tensor, int]:
    """Validate class labels for ``n`` images: ``(labels [n] int64, num_classes)``.

    ``labels`` must be 1-D, of an integer dtype, hold ``n`` values in ``0..num_classes-1``
    (``num_classes`` defaults to ``max + 1``).  Errors name ``what``.
    """
    t = torch.as_tensor(labels)
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise DataError(f"{what}: expected integer class labels, got dtype {t.dtype}")
    if t.dim() != 1:
        raise DataError(f"{what}: expected a 1-D array of labels, got shape {tuple(t.shape)}")
    if len(t) != n:
        raise DataError(f"{what}: expected one label per image ({n}), got {len(t)}")
    t = t.long()
    if n and int(t.min()) < 0:
        raise DataError(f"{what}: expected labels >= 0, got {int(t.min())}")
    top = int(t.max()) + 1 if n else 0
    if num_classes is None:
        num_classes = top
    elif top > num_classes:
        raise DataError(f"{what}: expected labels in 0..{num_classes - 1}, got {top - 1}")
    return t, int(num_classes)


def split_indices(n: int, test_fraction: float) -> Tuple[Tensor, Tensor]:
    """The fixed held-out split of ``n`` items: ``(train_idx, test_idx)``, each ascending,
    chosen by a permutation seeded by :data:`SPLIT_SEED`; at least one test item when
    ``test_fraction > 0``."""
    if not 0.0 <= test_fraction < 1.0:
        raise DataError(f"test_fraction: expected a number in [0, 1), got {test_fraction!r}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_test = 0 if test_fraction == 0 else max(1, int(round(n * test_fraction)))
    if n - n_test < 1:
        raise DataError(f"data: expected at least 2 images to hold out a test split, got {n}")
    return perm[n_test:].sort().values, perm[:n_test].sort().values


@dataclass(frozen=True)
class CondTokens:
    """Condition tokens of one split: ``tokens [N, L, C]`` float32, row ``i`` for item ``i``,
    and ``mask [N, L]`` bool (True = a real token; None: all real)."""
    tokens: Tensor
    mask: Optional[Tensor] = None

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def dim(self) -> int:
        """Features per token, ``C``."""
        return int(self.tokens.shape[2])

    def rows(self, idx: Tensor) -> "CondTokens":
        """The tokens of items ``idx`` (``[n]``)."""
        return CondTokens(self.tokens.index_select(0, idx),
                          None if self.mask is None else self.mask.index_select(0, idx))


def check_cond(tokens, mask, n: int, *, what: str = "cond",
               mask_what: str = "cond_mask") -> CondTokens:
    """Validate condition tokens for ``n`` items: ``tokens`` a finite float (or integer) array
    ``[n, L, C]`` with ``L, C >= 1``, ``mask`` None or ``[n, L]`` of bools (or integers 0/1).
    Errors name ``what`` / ``mask_what`` (e.g. the file and key)."""
    t = torch.as_tensor(tokens)
    if t.dtype == torch.bool or t.dtype.is_complex:
        raise DataError(f"{what}: expected float condition tokens, got dtype {t.dtype}")
    if t.dim() != 3:
        raise DataError(f"{what}: expected condition tokens [N, L, C] (3-D), got shape "
                        f"{tuple(t.shape)}")
    if len(t) != n:
        raise DataError(f"{what}: expected one token sequence per image ({n}), got {len(t)}")
    if t.shape[1] < 1 or t.shape[2] < 1:
        raise DataError(f"{what}: expected at least one token of at least one feature, got "
                        f"shape {tuple(t.shape)}")
    t = t.float()
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).any(dim=2).any(dim=1).nonzero()[0])
        raise DataError(f"{what}: expected finite values, got a non-finite one in row {bad}")
    if mask is None:
        return CondTokens(t.contiguous(), None)
    m = torch.as_tensor(mask)
    if m.dtype.is_floating_point or m.dtype.is_complex:
        raise DataError(f"{mask_what}: expected a bool mask (True = a real token), got dtype "
                        f"{m.dtype}")
    if tuple(m.shape) != tuple(t.shape[:2]):
        raise DataError(f"{mask_what}: expected shape {tuple(t.shape[:2])} (the tokens' [N, L]),"
                        f" got {tuple(m.shape)}")
    if m.dtype != torch.bool:
        if n and not bool(((m == 0) | (m == 1)).all()):
            raise DataError(f"{mask_what}: expected 0/1 or bool values, got others")
        m = m != 0
    return CondTokens(t.contiguous(), m.contiguous())


class ImageSet(Dataset):
    """An in-memory split: ``codes [N, C, H, W]`` (uint8 for <= 256 bins; float32 values for
    continuous data, ``bins = 0``) and ``labels [N]`` int64 or ``None``.  Items are ``(image
    [C, H, W] in [-1, 1] (continuous: the values), label or -1)``."""

    def __init__(self, codes: Tensor, labels: Optional[Tensor], bins: int):
        if codes.dim() != 4:
            raise DataError(f"codes: expected [N, C, H, W], got shape {tuple(codes.shape)}")
        if labels is not None and len(labels) != len(codes):
            raise DataError(f"labels: expected {len(codes)} labels, got {len(labels)}")
        self.codes, self.labels, self.bins = codes, labels, int(bins)

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, i: int) -> Tuple[Tensor, int]:
        y = NO_LABEL if self.labels is None else int(self.labels[i])
        return codes_to_unit(self.codes[i], self.bins), y

    def images(self, idx: Optional[Tensor] = None) -> Tensor:
        """Bin-centred images ``[n, C, H, W]`` float32 (all, or rows ``idx``)."""
        codes = self.codes if idx is None else self.codes.index_select(0, idx)
        return codes_to_unit(codes, self.bins)

    def subset(self, idx: Tensor) -> "ImageSet":
        return ImageSet(self.codes[idx], None if self.labels is None else self.labels[idx],
                        self.bins)


class LazyImages(Dataset):
    """A lazy split: ``convert(source[j], j)`` gives ``(codes [C, H, W], label or -1)`` for item
    ``i`` (``j = indices[i]``, or ``i``); items are ``(image [C, H, W] in [-1, 1], label)``.
    For data too large or too slow to hold in memory."""

    def __init__(self, source: Dataset, convert: Callable, bins: int,
                 indices: Optional[Tensor] = None):
        self.source, self.convert, self.bins = source, convert, int(bins)
        self.indices = indices

    def __len__(self) -> int:
        return len(self.source) if self.indices is None else len(self.indices)

    def codes(self, i: int) -> Tuple[Tensor, int]:
        j = i if self.indices is None else int(self.indices[i])
        return self.convert(self.source[j], j)

    def __getitem__(self, i: int) -> Tuple[Tensor, int]:
        c, y = self.codes(i)
        return codes_to_unit(c, self.bins), y


@dataclass(frozen=True)
class ImageData:
    """An image data set: ``shape (C, H, W)``, ``bins`` bins per value on [-1, 1] (0:
    continuous values such as latents, :attr:`continuous`), ``num_classes`` (0: unlabelled),
    ``train`` / ``test`` splits (:class:`ImageSet` or :class:`LazyImages`), the class names
    when known and the condition tokens of each split (:class:`CondTokens`, or None)."""

    name: str
    shape: Tuple[int, int, int]
    bins: int
    num_classes: int
    train: Dataset
    test: Dataset
    classes: Tuple[str, ...] = field(default=())
    train_cond: Optional[CondTokens] = None
    test_cond: Optional[CondTokens] = None

    def __post_init__(self):
        for name in ("train", "test"):
            c = self.split_cond(name)
            if c is not None and len(c) != len(self.split(name)):
                raise DataError(f"{name}_cond: expected one token sequence per {name} image "
                                f"({len(self.split(name))}), got {len(c)}")
        if (self.train_cond is None) != (self.test_cond is None) or (
                self.train_cond is not None and self.train_cond.dim != self.test_cond.dim):
            raise DataError("train_cond/test_cond: expected condition tokens of the same "
                            "size C for both splits or for neither")

    @property
    def cond_dim(self) -> int:
        """Features per condition token, ``C`` (0: no tokens)."""
        return 0 if self.train_cond is None else self.train_cond.dim

    def split_cond(self, name: str) -> Optional[CondTokens]:
        """The condition tokens of split ``"train"`` or ``"test"`` (None: none)."""
        self.split(name)
        return self.train_cond if name == "train" else self.test_cond

    @property
    def continuous(self) -> bool:
        """Continuous values (latents): no bins, no dequantisation, likelihoods in nats/dim."""
        return self.bins == CONTINUOUS

    @property
    def dims(self) -> int:
        """Values per image, ``C * H * W`` (the ``D`` of bits/dim)."""
        c, h, w = self.shape
        return c * h * w

    def summary(self) -> str:
        """One line for logs, e.g. ``"cifar: 3x32x32, 256 bins, 10 classes, 50000 train /
        10000 test"``."""
        labels = f"{self.num_classes} classes" if self.num_classes else "unlabelled"
        bins = "continuous" if self.continuous else f"{self.bins} bins"
        if self.cond_dim:
            labels += f", condition tokens of {self.cond_dim} features"
        return (f"{self.name}: {'x'.join(map(str, self.shape))}, {bins}, {labels}, "
                f"{len(self.train)} train / {len(self.test)} test")

    def split(self, name: str) -> Dataset:
        """The split ``"train"`` or ``"test"``."""
        if name not in ("train", "test"):
            raise DataError(f"split: expected 'train' or 'test', got {name!r}")
        return self.train if name == "train" else self.test

    def tensors(self, split: str = "test", *, batch_size: int = 256,
                num_workers: int = 0) -> Tuple[Tensor, Optional[Tensor]]:
        """A whole split in memory: ``(images [N, C, H, W] in [-1, 1], labels [N] or None)``
        (labels only when ``num_classes > 0``); for evaluation sets."""
        ds = self.split(split)
        if isinstance(ds, ImageSet):
            x, y = ds.images(), ds.labels
        else:
            xs, ys = [], []
            for xb, yb in DataLoader(ds, batch_size=batch_size, num_workers=num_workers):
                xs.append(xb)
                ys.append(yb)
            x = torch.cat(xs) if xs else torch.empty(0, *self.shape)
            y = torch.cat(ys) if ys else torch.empty(0, dtype=torch.long)
        return x, (y if self.num_classes > 0 else None)


def pixel_mean_std(data: ImageData, *, max_items: int = 10_000) -> Tuple[float, float]:
    """Mean and standard deviation of the bin-centred values of the train split (exact from
    a histogram of the codes in memory; over the first ``max_items`` items of a lazy split),
    e.g. for a model's ``data_mean`` / ``data_std``.  Not for continuous data (latents:
    :func:`~.latents.channel_mean_std`)."""
    if data.continuous:
        raise DataError(f"data {data.name!r}: continuous values have no bins; take "
                        "per-channel statistics (channel_mean_std)")
    ds = data.train
    if isinstance(ds, ImageSet):
        counts = torch.bincount(ds.codes.flatten().long(), minlength=data.bins).double()
    else:
        n = min(len(ds), max_items)
        counts = torch.zeros(data.bins, dtype=torch.float64)
        for x, _ in DataLoader(Subset(ds, range(n)), batch_size=256):
            v = torch.round((x.double() + 1) / 2 * data.bins - 0.5).long()
            counts += torch.bincount(v.flatten(), minlength=data.bins).double()
    values = codes_to_unit(torch.arange(data.bins), data.bins).double()
    p = counts / counts.sum()
    mean = float((p * values).sum())
    return mean, float((p * (values - mean) ** 2).sum().sqrt())


def fingerprint(data: ImageData) -> str:
    """A short hex digest of the data: every code and label of in-memory splits, or the
    sizes and shape for a lazy split (whose items are not read).  Store it with a run to
    notice when a resumed run's folder or file has changed."""
    h = hashlib.blake2b(digest_size=8)
    h.update(repr((data.shape, data.bins, data.num_classes, data.classes)).encode())
    for ds in (data.train, data.test):
        h.update(repr(len(ds)).encode())
        if isinstance(ds, ImageSet):
            h.update(ds.codes.contiguous().numpy().tobytes())
            if ds.labels is not None:
                h.update(ds.labels.contiguous().numpy().tobytes())
    for c in (data.train_cond, data.test_cond):   # (no bytes at all for data without tokens)
        if c is not None:
            h.update(c.tokens.numpy().tobytes())
            if c.mask is not None:
                h.update(c.mask.numpy().tobytes())
    return h.hexdigest()


def in_memory_data(name: str, codes: Tensor, labels: Optional[Tensor], *, bins: int = 256,
                   num_classes: int = 0, test_fraction: float,
                   classes: Tuple[str, ...] = (),
                   test: Optional[Tuple[Tensor, Optional[Tensor]]] = None,
                   cond: Optional[CondTokens] = None,
                   test_cond: Optional[CondTokens] = None) -> ImageData:
    """An :class:`ImageData` from codes ``[N, C, H, W]``: the given ``test`` split, or the
    fixed held-out split of ``test_fraction`` (:func:`split_indices`).  ``cond``: condition
    tokens of the ``N`` items (split with them), ``test_cond`` those of a given ``test``."""
    full = ImageSet(codes, labels if num_classes > 0 else None, bins)
    if test is None:
        tr, te = split_indices(len(full), test_fraction)
        train_set, test_set = full.subset(tr), full.subset(te)
        if cond is not None:
            cond, test_cond = cond.rows(tr), cond.rows(te)
    else:
        train_set = full
        test_set = ImageSet(test[0], test[1] if num_classes > 0 else None, bins)
    return ImageData(name=name, shape=tuple(codes.shape[1:]), bins=bins,
                     num_classes=num_classes, train=train_set, test=test_set,
                     classes=tuple(classes), train_cond=cond, test_cond=test_cond)
