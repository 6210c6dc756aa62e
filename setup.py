"""Builds ntm_engine._C from csrc/ with torch.utils.cpp_extension (ninja).

CUDA is compiled when FORCE_CUDA=1, or when torch is a CUDA build and nvcc is found (CUDA_HOME,
the PATH); FORCE_CUDA=0 forces a CPU-only build.  A GPU is never needed to build.
TORCH_CUDA_ARCH_LIST picks the GPU architectures (default here: "9.0", the H200).
NTM_CPU_ARCH=avx2|default picks the CPU SIMD level (default: avx2 if this CPU has it).
"""
import glob
import os
import shutil

from setuptools import setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _cuda_wanted() -> bool:
    force = os.environ.get("FORCE_CUDA")
    if force is not None:
        return force.strip() not in ("", "0", "false", "False")
    import torch

    if torch.version.cuda is None:
        return False
    return cpp_extension.CUDA_HOME is not None or shutil.which("nvcc") is not None


def _cpu_has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags and " f16c" in flags


def _cpu_flags() -> list:
    arch = os.environ.get("NTM_CPU_ARCH", "avx2" if _cpu_has_avx2() else "default")
    if arch == "avx2":
        return ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"]
    if arch == "default":
        return []
    raise SystemExit(f"NTM_CPU_ARCH must be 'avx2' or 'default', got {arch!r}")


def _extension():
    sources = ["csrc/ops.cpp", "csrc/python_module.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    cxx = ["-O3", "-std=c++20", "-fvisibility=hidden"] + _cpu_flags()
    include_dirs = [os.path.join(ROOT, "csrc"), os.path.join(ROOT, "csrc", "include")]
    if _cuda_wanted():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        nvcc = ["-O3", "-lineinfo", "--expt-relaxed-constexpr", "-DNTM_WITH_CUDA"]
        return cpp_extension.CUDAExtension(
            "ntm_engine._C", sources, include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx + ["-DNTM_WITH_CUDA"], "nvcc": nvcc})
    return cpp_extension.CppExtension(
        "ntm_engine._C", sources, include_dirs=include_dirs, extra_compile_args={"cxx": cxx})


# Metadata, dependencies, the version and the `ntm` entry point live in pyproject.toml.
setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
