"""ntm_engine: Normalizing Trajectory Models on fused C++/CUDA normalizing-flow kernels.

* :mod:`ntm_engine.ops` -- fused ops (``torch.ops.ntm``), with :mod:`ntm_engine.reference` twins
* :mod:`ntm_engine.nn` -- invertible modules with an activation-free (reversible) backward
* :mod:`ntm_engine.models` -- schedule, transporter, predictor, the NTM, the denoiser
"""
from . import ops, reference
from ._extension import build_info

__version__ = "0.1.0"
__all__ = ["ops", "reference", "build_info", "__version__"]
