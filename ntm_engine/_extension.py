"""Loads the compiled extension ``ntm_engine._C`` (which registers ``torch.ops.ntm``), or, where
it is not built, registers the same ops made of the reference twins (:mod:`.reference_ops`)
with one warning.  ``NTM_BACKEND=reference`` chooses the reference ops even when the extension
is built; ``NTM_BACKEND=compiled`` makes a missing extension an ImportError."""
from __future__ import annotations

import importlib
import os
import warnings

_BUILD_HINT = (
    "ntm_engine's compiled extension (ntm_engine._C) is not built or failed to load.\n"
    "Build it from the repository root with:\n"
    "    pip install --no-build-isolation -e .        (or: python setup.py build_ext --inplace)\n"
    "FORCE_CUDA=0 gives a CPU-only build; see README.md, 'Install'."
)
BACKENDS = ("compiled", "reference")


class ReferenceBackendWarning(UserWarning):
    """The ops run their pure-PyTorch reference twins (no compiled extension)."""


def load():
    """``ntm_engine._C``, or None when the reference ops were registered instead (module
    docstring)."""
    wanted = os.environ.get("NTM_BACKEND", "").strip().lower()
    if wanted and wanted not in BACKENDS:
        raise ImportError(f"NTM_BACKEND must be one of {', '.join(BACKENDS)} (or unset), got "
                          f"{wanted!r}")
    if wanted != "reference":
        try:
            return importlib.import_module("ntm_engine._C")
        except ImportError as err:
            if wanted == "compiled":
                raise ImportError(f"{_BUILD_HINT}\nOriginal error: {err}") from err
            warnings.warn(f"ntm_engine: the ops run their pure-PyTorch reference twins (slower, "
                          f"CPU and GPU alike). {_BUILD_HINT}\nOriginal error: {err}",
                          ReferenceBackendWarning, stacklevel=3)
    from . import reference_ops

    reference_ops.register()
    return None


_C = load()


def build_info() -> dict:
    """How the installed copy runs its ops.

    Keys: ``backend`` (``"compiled"``: the C++/CUDA kernels; ``"reference"``: the pure-PyTorch
    twins, no extension), ``cuda`` (bool: CUDA kernels compiled), ``cpu_capability`` (the CPU
    kernels in use: ``"default"``, ``"avx2"`` or ``"avx512"``; None without the extension),
    ``cpu_capabilities_compiled`` and ``cpu_capabilities_supported`` (lists, lowest first),
    ``vector_width_float32``.

    >>> import ntm_engine
    >>> ntm_engine.build_info()["backend"] in ("compiled", "reference")
    True
    """
    if _C is None:
        return {"backend": "reference", "cuda": False, "cpu_capability": None,
                "cpu_capabilities_compiled": [], "cpu_capabilities_supported": [],
                "vector_width_float32": 1}
    return {"backend": "compiled", **dict(_C.build_info())}


def set_cpu_capability(name: str) -> None:
    """See :func:`ntm_engine.ops.set_cpu_capability`."""
    if not isinstance(name, str):
        raise TypeError(f"set_cpu_capability: argument 'name' must be a str, got "
                        f"{type(name).__name__}")
    compiled("set_cpu_capability").set_cpu_capability(name)


def compiled(what: str):
    """``ntm_engine._C``, or a RuntimeError naming ``what`` when the reference ops run instead
    (there are no kernels to set or ask)."""
    if _C is None:
        raise RuntimeError(f"{what}: the compiled extension is not loaded (build_info()"
                           "['backend'] is 'reference'); there are no kernels to set or ask")
    return _C
