"""Invertible modules (docs/design.md section 3 conventions).

Every layer maps data to latent in ``forward(x, context=None) -> (y, logdet [B])`` and back in
``inverse(y, context=None) -> (x, logdet [B])`` on flat features ``[B, dim]`` (the
autoregressive blocks on tokens ``[B, L, P]``, :mod:`.patches`), and implements
``reverse_step`` (:mod:`ntm_engine.nn.base`) for the activation-free backward of
:class:`InvertibleSequential`.
"""
from .autoregressive import AutoregressiveFlowBlock, JacobiReport, autoregressive_stack, decode
from .base import InvertibleModule, generic_reverse_step
from .coupling import AffineCoupling
from .linear import InvertibleLinear
from .patches import PatchTokens
from .permutation import Permutation
from .sequential import DRIFT_ACTIONS, InvertibleSequential, ReversibleDriftError

__all__ = ["AffineCoupling", "InvertibleSequential", "Permutation", "InvertibleLinear",
           "InvertibleModule", "generic_reverse_step", "AutoregressiveFlowBlock",
           "JacobiReport", "autoregressive_stack", "decode", "PatchTokens",
           "ReversibleDriftError", "DRIFT_ACTIONS"]
