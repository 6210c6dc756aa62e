"""NTM models: time grid and forward process, transporter, predictor, the NTM.

* :mod:`.schedule` -- shifted time grid (``shift="auto"``), Markov forward process, entropy,
  Gaussian reverse step
* :mod:`.transporter` -- ``f_T`` over flat ``[B*T, D]`` rows: autoregressive blocks, couplings
  or the identity (:func:`build_transporter`)
* :mod:`.tarflow` -- :class:`TarFlow`: a standalone normalizing flow from the autoregressive blocks
* :mod:`.predictor` -- ``f_P``: block-causal Transformer over all levels, with a KV cache
* :mod:`.guidance` -- classifier-free guidance of Gaussian steps
* :mod:`.ntm` -- :class:`NTM`: configuration, modules, forward process; ``forward`` (the
  training loss), ``log_prob``, ``sample``; one or several step counts
* :mod:`.loss` -- the training loss: trajectory losses, step-count groups, the anchored loss
* :mod:`.likelihood` -- exact trajectory log-density, bounds on ``log p(x)``, bits/dim,
  trajectory score and Tweedie posterior mean
* :mod:`.sampler` -- the sampling loop: grid, reverse levels (guided), decoders
  (transporter inverse, learned denoiser, trajectory denoising)
* :mod:`.histogram` -- per-pixel histogram bits/dim
* :mod:`.flow_matching` -- :class:`FlowMatchingModel`: the predictor pretrained as a velocity
  model (Euler sampler), and the NTM initialised from it
* :mod:`.denoiser` -- :class:`Denoiser`: the light ``g(u_{t_0}, t_0, y)`` distilled from an NTM
"""
from .histogram import histogram_bits_per_dim
from .denoiser import Denoiser
from .flow_matching import FlowMatchingModel
from .guidance import guide
from .ntm import NTM
from .predictor import TrajectoryPredictor, block_causal_mask
from .sampler import SAMPLERS
from .loss import TRAJECTORY_LOSSES
from .tarflow import TarFlow
from .transporter import Transporter, build_transporter

__all__ = ["NTM", "Denoiser", "FlowMatchingModel", "Transporter", "TrajectoryPredictor",
           "block_causal_mask", "guide", "TarFlow", "build_transporter", "histogram_bits_per_dim", "SAMPLERS",
           "TRAJECTORY_LOSSES"]
