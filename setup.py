"""Builds ntm_engine._C from csrc/ with torch.utils.cpp_extension (ninja).

CUDA is compiled when FORCE_CUDA=1, or when torch is a CUDA build and nvcc is found (CUDA_HOME,
the PATH); FORCE_CUDA=0 forces a CPU-only build.  A GPU is never needed to build.
TORCH_CUDA_ARCH_LIST picks the GPU architectures (default here: "9.0", the H200).
NTM_CPU_CAPABILITIES=default,avx2,avx512 picks the CPU kernel variants compiled (all three on
x86-64); the extension chooses among them at run time (NTM_CPU_CAPABILITY overrides).
NTM_BUILD_EXTENSION=0 builds no extension at all: a pure-Python package whose ops run their
reference twins (ntm_engine/reference_ops.py).
"""
import glob
import os
import platform
import shutil
from concurrent.futures import ThreadPoolExecutor

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


# CPU capabilities the kernels in csrc/cpu/kernels/ are compiled for, each into its own
# namespace ntm::cpu::<NAME>; csrc/cpu/dispatch.cpp picks one at run time from cpuid (like
# ATen's CPU_CAPABILITY).  The flag sets must match dispatch.cpp's cpu_supports().
CPU_CAPABILITY_FLAGS = {
    "default": [],
    "avx2": ["-mavx2", "-mfma", "-mf16c"],
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c"],
}


def _cpu_capabilities() -> list:
    """NTM_CPU_CAPABILITIES=default,avx2,avx512 (the default on x86-64; 'default' elsewhere)."""
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    wanted = os.environ.get("NTM_CPU_CAPABILITIES", "default,avx2,avx512" if x86 else "default")
    names = [n.strip().lower() for n in wanted.split(",") if n.strip()]
    bad = [n for n in names if n not in CPU_CAPABILITY_FLAGS]
    if bad or "default" not in names:
        raise SystemExit("NTM_CPU_CAPABILITIES must be a comma-separated subset of "
                         f"{list(CPU_CAPABILITY_FLAGS)} including 'default', got {wanted!r}")
    return names


def _capability_flags(name: str) -> list:
    return CPU_CAPABILITY_FLAGS[name] + [f"-DCPU_CAPABILITY={name.upper()}",
                                         f"-DCPU_CAPABILITY_{name.upper()}"]


class BuildExtension(cpp_extension.BuildExtension):
    """Compiles csrc/cpu/kernels/*.cpp once per CPU capability (own flags, own object folder,
    one ninja build each, all of them at the same time) and links the objects into the
    extension."""

    def build_extension(self, ext):
        cxx = ext.extra_compile_args["cxx"] if isinstance(ext.extra_compile_args, dict) \
            else ext.extra_compile_args
        kernels = sorted(glob.glob("csrc/cpu/kernels/*.cpp"))

        def compile_capability(name):
            return self.compiler.compile(
                kernels, output_dir=os.path.join(self.build_temp, f"cpu_{name}"),
                macros=ext.define_macros, include_dirs=ext.include_dirs,
                extra_postargs={"cxx": cxx + _capability_flags(name), "nvcc": []})

        capabilities = _cpu_capabilities()
        with ThreadPoolExecutor(max_workers=len(capabilities)) as pool:
            for objects in pool.map(compile_capability, capabilities):
                ext.extra_objects += objects
        super().build_extension(ext)


def _extension():
    sources = ["csrc/ops.cpp", "csrc/python_module.cpp", "csrc/cpu/dispatch.cpp"]
    cxx = ["-O3", "-std=c++20", "-fvisibility=hidden"] + [
        f"-DNTM_CPU_HAVE_{name.upper()}" for name in _cpu_capabilities() if name != "default"]
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
_BUILD_EXTENSION = os.environ.get("NTM_BUILD_EXTENSION", "1").strip() not in ("0", "false", "False")
setup(
    ext_modules=[_extension()] if _BUILD_EXTENSION else [],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
