"""Loads the compiled extension ``ntm_engine._C`` (which registers ``torch.ops.ntm``)."""
from __future__ import annotations

import importlib

_BUILD_HINT = (
    "ntm_engine's compiled extension (ntm_engine._C) is not built or failed to load.\n"
    "Build it from the repository root with:\n"
    "    pip install --no-build-isolation -e .        (or: python setup.py build_ext --inplace)\n"
    "FORCE_CUDA=0 gives a CPU-only build; see README.md, 'Install'."
)


def load():
    """Import and return ``ntm_engine._C``; raise ImportError with build instructions if absent."""
    try:
        return importlib.import_module("ntm_engine._C")
    except ImportError as err:
        raise ImportError(f"{_BUILD_HINT}\nOriginal error: {err}") from err


_C = load()


def build_info() -> dict:
    """How the extension was compiled and which CPU kernels run.

    Keys: ``cuda`` (bool: CUDA kernels compiled), ``cpu_capability`` (the CPU kernels in use:
    ``"default"``, ``"avx2"`` or ``"avx512"``), ``cpu_capabilities_compiled`` and
    ``cpu_capabilities_supported`` (lists, lowest first), ``vector_width_float32``.
    """
    return dict(_C.build_info())


def set_cpu_capability(name: str) -> None:
    """See :func:`ntm_engine.ops.set_cpu_capability`."""
    if not isinstance(name, str):
        raise TypeError(f"set_cpu_capability: argument 'name' must be a str, got "
                        f"{type(name).__name__}")
    _C.set_cpu_capability(name)
