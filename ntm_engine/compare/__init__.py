"""The NTM compared with few-step baselines: a velocity model driven by diffusers'
flow-matching schedulers, and samplers rated by quality against steps and time.

* :mod:`.schedulers` -- :func:`sample_with_scheduler` (needs ``diffusers``)
* :mod:`.gaussian` -- the exact velocity of Gaussian data (the convention check)
* :mod:`.samplers` -- :func:`compare_samplers`; :mod:`.report` -- its table and plot
* :mod:`.quality` -- how samples are rated (the metrics of ``ntm eval``)
* :mod:`.train_runs` -- ``ntm compare --train``: the three runs, trained or resumed
* :mod:`.names` -- diffusers-free names; the command itself is :mod:`ntm_engine.cli.compare`

The names below are imported on first use (PEP 562), so that ``ntm`` builds its parser
without importing diffusers.
"""
import importlib

_HOMES = {
    "STEPS": "names", "SCHEDULER_NAMES": "names",
    "compare_samplers": "samplers", "samplers_for": "samplers",
    "digits_quality": "quality", "rating_for": "quality", "held_out_examples": "quality",
    "gaussian_velocity": "gaussian", "moment_errors": "gaussian",
    "SCHEDULERS": "schedulers", "fm_velocity": "schedulers", "make_scheduler": "schedulers",
    "sample_with_scheduler": "schedulers",
}

__all__ = sorted(_HOMES)


def __getattr__(name):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
