"""The NTM's defaults and the data sets' preset configurations (a mixin of
:class:`~ntm_engine.models.NTM`: ``NTM.defaults()``, ``NTM.digits_config()``,
``NTM.for_digits(...)``, ...), each chosen by measurement where its docstring says so."""
from __future__ import annotations

import inspect
import math
from typing import Any, Dict, List, Optional, Sequence, Type, TypeVar

Model = TypeVar("Model", bound="NTMPresets")   # the class the presets are mixed into (an NTM)

__all__ = ["NTMPresets"]


class NTMPresets:
    """Class-level configuration of an NTM: the constructor's defaults and per-data presets
    (``cls`` is the model class: :meth:`for_digits` and :meth:`for_toy` build one)."""

    @classmethod
    def defaults(cls) -> Dict[str, Any]:
        """The constructor's keyword defaults: the one home of the model's defaults (the
        datasets' configs below override some; the command line's help reads them here)."""
        return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}

    @staticmethod
    def image_step_counts(data_shape: Sequence[int]) -> List[int]:
        """The step counts the image configs train on (one model samples at each):
        ``[2, 4, 8]`` for up to 256 values per image (the 8x8 digits), ``[4, 8]`` above.
        Above 256 values, at 20 minutes of 2 cores on the 16x16 colour patches, the 4-step
        sample's Frechet distance tracks the compute spent on ``T = 4`` (about its -0.3 power)
        and gains nothing from the other counts, while ``T = 8`` learns mostly from ``T = 4``:
        ``4, 8`` drawn ``8 : 1`` scores 1.41x UniPC-50 at 4 steps and 1.01x at 8, against
        1.90x and 1.03x for ``4, 8, 16`` drawn ``8 : 2 : 1`` and 1.40x (at 4 steps only) for
        ``T = 4`` alone (``bench/results/2026-12-05-colour-patches-two-step-counts.md``)."""
        return [2, 4, 8] if math.prod(data_shape) <= 256 else [4, 8]

    @staticmethod
    def image_step_shares(data_shape: Sequence[int]) -> Optional[List[float]]:
        """How often the image configs' training draws each of :meth:`image_step_counts`:
        equal (None) up to 256 values per image; above, ``8, 1`` for ``T = 4, 8`` (8/9 of the
        samples at the 4 steps few-step sampling uses).  Chosen by measurement on the 16x16
        colour patches at 20 minutes of 2 cores per run: each larger share of ``T = 4``
        brought the 4-step sample closer (``bench/results/2026-12-05-colour-patches-step-shares.md``,
        ``...-shares-and-transporter-kind.md``, ``...-two-step-counts.md``); with ``8, 1`` the
        8-step sample is as good as with ``8, 2, 1`` over ``4, 8, 16``."""
        return None if math.prod(data_shape) <= 256 else [8.0, 1.0]

    @staticmethod
    def image_transporter_size(data_shape: Sequence[int]) -> Dict[str, int]:
        """The coupling transporter's size for images: the digits' 4 couplings of 128 units up
        to 256 values per image, 8 couplings of 512 units above.  Chosen by measurement on
        the 16x16 colour patches at 20 minutes of 2 cores per run
        (``bench/results/2026-12-05-colour-patches-transporter-size.md``): 8 x 512 costs 1.3x
        the iteration of 4 x 128 (the predictor dominates) and, at equal wall-clock, scores
        0.46 bits/dim better and a 14-18% lower Frechet distance to training patches at 4, 8
        and 16 steps."""
        if math.prod(data_shape) <= 256:
            return dict(transporter_layers=4, transporter_hidden=128)
        return dict(transporter_layers=8, transporter_hidden=512)

    @staticmethod
    def digits_config(conditional: bool = True) -> Dict[str, Any]:
        """Default keyword arguments for the 8x8 digits (``[1, 8, 8]``, 17 bins in [-1, 1]):
        trained on 2, 4 and 8 steps on the unshifted grid, patch 4 (4 tokens per level, 16 per
        sample), width 128, depth 4, a label-free coupling transporter of 4 layers.  Chosen by
        measurement at the main job's budget (``bench/results/2026-12-05-digits-defaults.md``):
        the coupling transporter beats the autoregressive one at equal wall-clock, and the
        paper's ``shift="auto"`` (1.58 for 4 tokens, a rule made for 256-4096) costs 0.09-0.13
        bits/dim against ``shift = 1``; other images keep ``"auto"``."""
        return dict(data_shape=(1, 8, 8), steps=NTMPresets.image_step_counts((1, 8, 8)), shift=1.0,
                    num_classes=10 if conditional else 0, width=128, depth=4, heads=4,
                    patch_size=4, transporter_layers=4, transporter_hidden=128,
                    data_mean=-0.37, data_std=0.71)

    @staticmethod
    def toy_config() -> Dict[str, Any]:
        """Default keyword arguments for 2-D toy data (one token per level; grid shifted
        towards the data, ``shift = 0.5``: t = 0, .14, .33, .6, 1)."""
        return dict(data_shape=(2,), steps=4, num_classes=0, width=128, depth=3, heads=4,
                    patch_size=2, transporter_layers=4, transporter_hidden=64, shift=0.5,
                    data_mean=0.0, data_std=1.5)

    @classmethod
    def for_digits(cls: Type[Model], conditional: bool = True, **overrides) -> Model:
        """An NTM with :meth:`digits_config` (keyword ``overrides`` replace entries)."""
        return cls(**{**cls.digits_config(conditional), **overrides})

    @classmethod
    def for_toy(cls: Type[Model], **overrides) -> Model:
        """An NTM with :meth:`toy_config` (keyword ``overrides`` replace entries)."""
        return cls(**{**cls.toy_config(), **overrides})
