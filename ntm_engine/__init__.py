"""ntm_engine: Normalizing Trajectory Models on fused C++/CUDA normalizing-flow kernels.

* :mod:`ntm_engine.ops` -- fused ops (``torch.ops.ntm``), with :mod:`ntm_engine.reference` twins
* :mod:`ntm_engine.nn` -- invertible modules with an activation-free (reversible) backward
* :mod:`ntm_engine.models` -- schedule, transporter, predictor, the NTM, the denoiser
* :mod:`ntm_engine.training` -- typed configs, the resumable loop, trainer, distiller;
  :func:`load_run` loads a trained run (``.model``, ``.config``, ``.checkpoint``)
* :mod:`ntm_engine.cli` -- the ``ntm`` command line

The package map and the path of one training step: ``docs/design.md`` section 4.
"""
from . import ops, reference
from ._extension import build_info
from ._version import __version__
from .training import load_run

__all__ = ["ops", "reference", "build_info", "load_run", "__version__"]
