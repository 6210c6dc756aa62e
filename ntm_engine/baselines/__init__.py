"""Few-step baselines: a velocity model driven by diffusers' flow-matching schedulers, and the
comparison of samplers by quality against steps and time.

* :mod:`.schedulers` -- :func:`sample_with_scheduler` (needs ``diffusers``)
* :mod:`.gaussian` -- the exact velocity of Gaussian data (the convention check)
* :mod:`.compare` -- :func:`compare_samplers`; :mod:`.report` -- its table and plot
"""
from .compare import STEPS, compare_samplers, digits_quality, samplers_for
from .gaussian import gaussian_velocity, moment_errors
from .schedulers import SCHEDULERS, fm_velocity, make_scheduler, sample_with_scheduler

__all__ = ["STEPS", "compare_samplers", "digits_quality", "samplers_for", "gaussian_velocity",
           "moment_errors", "SCHEDULERS", "fm_velocity", "make_scheduler",
           "sample_with_scheduler"]
