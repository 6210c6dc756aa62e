"""What nvcc makes of the row-map kernels for sm_90, checked without a GPU (needs nvcc; the SASS
checks need cuobjdump, which CUDA and triton's wheel ship).

tests/cpp/row_map_sm90.cu instantiates the 20 kernels the extension dispatches to (5 ops x
double, float, half, bfloat16); ``nvcc -cubin -Xptxas -v`` compiles them in seconds, and:

* no kernel spills or has a stack frame (local memory);
* registers a thread: at most 64 for the float/half/bfloat16 kernels (4 blocks of 256 threads,
  32 of an SM's 64 warps, resident), 80 for the coupling backward (8 tensors; 3 blocks), 128
  for double (2 blocks) -- the __launch_bounds__ in csrc/cuda/device_exec.cuh;
* the vector paths use 128-bit accesses: one LDG.E.128 per input and one STG.E.128 per output
  of every kernel.

When the extension was built with CUDA, its sm_90 code gets the same SASS checks, and
``cuobjdump -res-usage`` must show no local memory.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess

import pytest
from torch.utils import cpp_extension

import ntm_engine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# op name in the kernel's mangled name -> (inputs, outputs, most registers for float/half/bf16)
OPS = {"CouplingMapOpI.Lb0": (3, 1, 64), "CouplingMapOpI.Lb1": (3, 1, 64),
       "CouplingBackwardOp": (4, 4, 80), "NllOpI": (3, 0, 64), "NllBackwardOp": (3, 3, 64)}
DOUBLE_REGISTERS = 128


def _tool(name):
    candidates = [shutil.which(name)]
    for home in (os.environ.get("CUDA_HOME"), cpp_extension.CUDA_HOME, "/usr/local/cuda"):
        if home:
            candidates.append(os.path.join(home, "bin", name))
    try:
        import triton
        candidates.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia",
                                       "bin", name))
    except ImportError:
        pass
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


NVCC, CUOBJDUMP = _tool("nvcc"), _tool("cuobjdump")


def _op(kernel):
    found = [op for op in OPS if re.search(op, kernel)]
    assert len(found) == 1, f"{kernel}: not one of {list(OPS)}"
    return found[0]


def _is_double(kernel):
    return re.search(r"row_map_kernelId", kernel) is not None


@pytest.fixture(scope="module")
def cubin(tmp_path_factory):
    if NVCC is None:
        pytest.skip("needs nvcc")
    out = tmp_path_factory.mktemp("sm90") / "row_map.cubin"
    cmd = [NVCC, "-cubin", "-arch=sm_90", "-O3", "-std=c++17", "--expt-relaxed-constexpr",
           "-Xptxas", "-v", f"-I{ROOT}/csrc/include", *[f"-I{p}" for p in
                                                       cpp_extension.include_paths()[:1]],
           os.path.join(ROOT, "tests", "cpp", "row_map_sm90.cu"), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout + proc.stderr


def ptxas_report(log):
    """kernel -> (stack bytes, spill store bytes, spill load bytes, registers)."""
    pattern = (r"Compiling entry function '(\S+)' for 'sm_90'.*?(\d+) bytes stack frame, "
               r"(\d+) bytes spill stores, (\d+) bytes spill loads.*?Used (\d+) registers")
    return {m[1]: tuple(int(v) for v in m.groups()[1:])
            for m in re.finditer(pattern, log, re.S)}


def sass_by_kernel(binary):
    if CUOBJDUMP is None:
        pytest.skip("needs cuobjdump")
    proc = subprocess.run([CUOBJDUMP, "-sass", str(binary)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    parts = re.split(r"\n\s*Function : (\S+)\n", proc.stdout)
    return {name: body for name, body in zip(parts[1::2], parts[2::2])
            if "row_map_kernel" in name}


def check_vector_accesses(kernels):
    assert len(kernels) == 20, sorted(kernels)
    for kernel, sass in kernels.items():
        ins, outs, _ = OPS[_op(kernel)]
        loads, stores = len(re.findall(r"LDG\.E\.128", sass)), len(re.findall(r"STG\.E\.128", sass))
        assert loads >= ins and stores >= outs, (
            f"{kernel}: {loads} LDG.E.128 for {ins} inputs, {stores} STG.E.128 for {outs} outputs")


def test_every_kernel_is_compiled(cubin):
    assert len(ptxas_report(cubin[1])) == 20, cubin[1][-2000:]


def test_no_spills_and_registers_within_the_occupancy_bounds(cubin):
    for kernel, (stack, spill_st, spill_ld, regs) in ptxas_report(cubin[1]).items():
        assert (stack, spill_st, spill_ld) == (0, 0, 0), (
            f"{kernel}: stack {stack} B, spill stores {spill_st} B, spill loads {spill_ld} B")
        bound = DOUBLE_REGISTERS if _is_double(kernel) else OPS[_op(kernel)][2]
        assert regs <= bound, f"{kernel}: {regs} registers > {bound}"


def test_vector_paths_use_128_bit_accesses(cubin):
    check_vector_accesses(sass_by_kernel(cubin[0]))


def _built_cuda_extension():
    if not ntm_engine.build_info()["cuda"]:
        pytest.skip("the extension was built without CUDA")
    return glob.glob(os.path.join(os.path.dirname(ntm_engine.__file__), "_C*.so"))[0]


def test_the_built_extension_has_the_same_code(cubin):
    so = _built_cuda_extension()
    kernels = sass_by_kernel(so)
    assert set(kernels) == set(ptxas_report(cubin[1])), "the extension's kernels differ"
    check_vector_accesses(kernels)
    usage = subprocess.run([CUOBJDUMP, "-res-usage", so], capture_output=True, text=True,
                           timeout=300).stdout
    for name, line in re.findall(r"Function (\S*row_map_kernel\S*):\n\s*(.*)", usage):
        assert "STACK:0 " in line and "LOCAL:0 " in line, f"{name}: {line}"
