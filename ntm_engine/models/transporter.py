"""The transporter ``f_T(x; t)``: one interface, three kinds (:func:`build_transporter`).

* ``"autoregressive"`` (the paper's): TarFlow blocks over the patch tokens of the predictor
  (:class:`~ntm_engine.nn.AutoregressiveFlowBlock`, scan direction alternating per block).
* ``"coupling"``: a shallow stack of MLP affine couplings over the flat row.
* ``"none"``: the identity, log-det 0 (the heteroscedastic-Gaussian ablation).

Every kind: ``forward(x [R, D], t [R], y=None, *, steps=None) -> (u [R, D], logdet [R])``
and ``inverse(u, t, y=None, *, steps=None) -> (x, logdet of the inverse [R])``.  The context
is the time only by default (label-free: guidance then combines two predictions in one space,
docs/design.md section 1); ``label_conditioned=True`` adds a class embedding (the behaviour of
older models, whose checkpoints need it), ``step_conditioned=True`` an embedding of the step
count ``steps [R]`` (for a model trained at several step counts).  A new transporter is the
identity (zero-initialised output layers).  The caller never applies it at ``t = 1``.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..nn import AffineCoupling, InvertibleSequential, PatchTokens, autoregressive_stack
from ..reference import accumulation_dtype
from .embedding import ClassEmbedding, TimeEmbedding
from .predictor import default_patch_size

__all__ = ["TRANSPORTER_KINDS", "build_transporter", "AutoregressiveTransporter",
           "CouplingTransporter", "IdentityTransporter", "Transporter", "alternating_masks"]

TRANSPORTER_KINDS = ("autoregressive", "coupling", "none")


def alternating_masks(data_shape: Sequence[int]) -> List[Tensor]:
    """The cycle of coupling masks (bool ``[D]``, True = kept) for flat data of ``data_shape``.

    Images ``[C, H, W]``: checkerboard, its complement, top half, bottom half.  Vectors
    ``[D]``: first half, second half, even, odd (only the halves for ``D < 4``).  Each mask is
    followed by its complement, so every feature is transformed in every pair of layers.
    """
    D = math.prod(data_shape)
    if len(data_shape) == 3:
        C, H, W = data_shape
        c, h, w = torch.meshgrid(torch.arange(C), torch.arange(H), torch.arange(W),
                                 indexing="ij")
        checker = ((c + h + w) % 2 == 0).flatten()
        half = (h < H // 2).flatten() if H > 1 else (w < W // 2).flatten()
        cands = [checker, half]
    else:
        idx = torch.arange(D)
        cands = [idx < D // 2]
        if D >= 4:
            cands.append(idx % 2 == 0)
    masks = []
    for m in cands:
        if m.any() and not m.all():
            masks += [m, ~m]
    return masks


class IdentityTransporter(nn.Module):
    """``u = x``, log-det 0; the time, labels and step counts are ignored."""

    kind = "none"

    def __init__(self, data_shape: Sequence[int]):
        super().__init__()
        self.dim = math.prod(data_shape)

    def forward(self, x: Tensor, t: Tensor, y: Optional[Tensor] = None, *,
                steps: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``x [R, D] -> (x, zeros [R])``."""
        return x, x.new_zeros(x.shape[0], dtype=accumulation_dtype(x.dtype))

    def inverse(self, u: Tensor, t: Tensor, y: Optional[Tensor] = None, *,
                steps: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``u [R, D] -> (u, zeros [R])``."""
        return self.forward(u, t)


class _ConditionedTransporter(nn.Module):
    """Shared by the learned kinds: the context and the row checks.  Subclasses set
    ``self.flow`` (an :class:`InvertibleSequential`) and may override :meth:`_to_flow` /
    :meth:`_from_flow` (the layout the flow works on)."""

    kind = ""

    def __init__(self, data_shape: Sequence[int], *, num_classes: int, context_dim: int,
                 label_conditioned: bool, step_conditioned: bool):
        super().__init__()
        self.data_shape = tuple(int(s) for s in data_shape)
        self.dim = math.prod(self.data_shape)
        self.num_classes = num_classes
        self.time = TimeEmbedding(context_dim)
        self.label = None
        if label_conditioned and num_classes > 0:
            self.label = ClassEmbedding(num_classes, context_dim)
        self.step_count = None
        if step_conditioned:   # zero-initialised: adding it leaves a trained model unchanged
            self.step_count = TimeEmbedding(context_dim)
            nn.init.zeros_(self.step_count.mlp[-1].weight)
            nn.init.zeros_(self.step_count.mlp[-1].bias)

    @property
    def label_conditioned(self) -> bool:
        return self.label is not None

    def context(self, t: Tensor, y: Optional[Tensor] = None,
                steps: Optional[Tensor] = None) -> Tensor:
        """``[R, context_dim]`` from times ``t [R]``, labels ``y [R]`` (used only when
        label-conditioned; None = the null label) and step counts ``steps [R]`` (required
        when step-conditioned, refused otherwise)."""
        ctx = self.time(t)
        if self.label is not None:
            ctx = ctx + self.label(y, t.shape[0])
        if self.step_count is None:
            if steps is not None:
                raise ValueError(f"{type(self).__name__}: argument 'steps' given, but the "
                                 "transporter was built without step_conditioned=True")
        else:
            if steps is None or tuple(steps.shape) != tuple(t.shape):
                got = None if steps is None else list(steps.shape)
                raise ValueError(f"{type(self).__name__}: argument 'steps' must be a tensor "
                                 f"of shape {list(t.shape)} (step counts), got {got}")
            ctx = ctx + self.step_count(1.0 / steps.to(t.dtype))
        return ctx

    def _check_rows(self, name: str, x: Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{type(self).__name__}: argument '{name}' must have shape "
                             f"[R, {self.dim}], got {list(x.shape)}")

    def _to_flow(self, x: Tensor) -> Tensor:
        return x

    def _from_flow(self, x: Tensor) -> Tensor:
        return x

    def forward(self, x: Tensor, t: Tensor, y: Optional[Tensor] = None, *,
                steps: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``x [R, D] -> (u [R, D], logdet [R])``."""
        self._check_rows("x", x)
        u, logdet = self.flow(self._to_flow(x), self.context(t, y, steps))
        return self._from_flow(u), logdet

    def inverse(self, u: Tensor, t: Tensor, y: Optional[Tensor] = None, *,
                steps: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``u [R, D] -> (x [R, D], logdet of the inverse [R])`` (the autoregressive kind
        decodes token by token with a KV cache)."""
        self._check_rows("u", u)
        x, logdet = self.flow.inverse(self._to_flow(u), self.context(t, y, steps))
        return self._from_flow(x), logdet


class CouplingTransporter(_ConditionedTransporter):
    """``layers`` MLP affine couplings (``hidden`` units, masks of :func:`alternating_masks`)
    over flat rows; ``D >= 2``."""

    kind = "coupling"

    def __init__(self, data_shape: Sequence[int], layers: int = 4, hidden: int = 128,
                 num_classes: int = 0, clamp: Optional[float] = 2.0, context_dim: int = 64,
                 reversible: bool = True, *, label_conditioned: bool = False,
                 step_conditioned: bool = False):
        super().__init__(data_shape, num_classes=num_classes, context_dim=context_dim,
                         label_conditioned=label_conditioned, step_conditioned=step_conditioned)
        masks = alternating_masks(self.data_shape)
        couplings = [AffineCoupling(self.dim, context_dim=context_dim, hidden=hidden, depth=2,
                                    mask=masks[i % len(masks)], clamp=clamp)
                     for i in range(layers)]
        self.flow = InvertibleSequential(*couplings, reversible=reversible)


Transporter = CouplingTransporter  # the name of the coupling kind before the factory existed


class AutoregressiveTransporter(_ConditionedTransporter):
    """``blocks`` autoregressive blocks (Transformer of ``depth`` layers, ``width`` features,
    ``heads`` heads) over the predictor's patch tokens (``patch_size`` None: the predictor's
    :func:`~.predictor.default_patch_size`)."""

    kind = "autoregressive"

    def __init__(self, data_shape: Sequence[int], *, blocks: int = 4, width: int = 128,
                 depth: int = 2, heads: int = 4, patch_size: Optional[int] = None,
                 num_classes: int = 0, clamp: Optional[float] = 2.0, context_dim: int = 64,
                 reversible: bool = True, label_conditioned: bool = False,
                 step_conditioned: bool = False):
        super().__init__(data_shape, num_classes=num_classes, context_dim=context_dim,
                         label_conditioned=label_conditioned, step_conditioned=step_conditioned)
        self.patches = PatchTokens(self.data_shape,
                                   patch_size or default_patch_size(self.data_shape))
        self.flow = autoregressive_stack(self.patches.tokens, self.patches.patch_dim, blocks,
                                         context_dim=context_dim, width=width, depth=depth,
                                         heads=heads, clamp=clamp, reversible=reversible)

    def _to_flow(self, x: Tensor) -> Tensor:
        return self.patches.patchify(x)

    def _from_flow(self, x: Tensor) -> Tensor:
        return self.patches.unpatchify(x)


def build_transporter(kind: str, data_shape: Sequence[int], *, layers: int = 4,
                      hidden: int = 128, num_classes: int = 0, clamp: Optional[float] = 2.0,
                      context_dim: int = 64, reversible: bool = True,
                      label_conditioned: bool = False, step_conditioned: bool = False,
                      patch_size: Optional[int] = None, depth: int = 2, heads: int = 4
                      ) -> nn.Module:
    """The transporter of ``kind`` (:data:`TRANSPORTER_KINDS`) for data of ``data_shape``.

    ``layers``: couplings or autoregressive blocks (0: the identity); ``hidden``: coupling MLP
    units or the blocks' Transformer width; ``depth``/``heads``/``patch_size``: the blocks'
    Transformer layers, heads and patches (autoregressive only).  The coupling kind needs
    ``D >= 2`` (the identity otherwise, as before the factory).
    """
    if kind not in TRANSPORTER_KINDS:
        raise ValueError(f"build_transporter: kind must be one of {TRANSPORTER_KINDS}, "
                         f"got {kind!r}")
    common = dict(num_classes=num_classes, clamp=clamp, context_dim=context_dim,
                  reversible=reversible, label_conditioned=label_conditioned,
                  step_conditioned=step_conditioned)
    if kind == "none" or layers == 0 or (kind == "coupling" and math.prod(data_shape) < 2):
        return IdentityTransporter(data_shape)
    if kind == "coupling":
        return CouplingTransporter(data_shape, layers, hidden, **common)
    return AutoregressiveTransporter(data_shape, blocks=layers, width=hidden, depth=depth,
                                     heads=heads, patch_size=patch_size, **common)
