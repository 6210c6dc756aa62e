"""No AVX code where a CPU without AVX could run it.

The CPU kernels are compiled once per instruction set (``-mavx2``, ``-mavx512f``, ...) and
chosen at run time.  Inline functions of shared headers (the op checks, ``op_io.h``, ...) are
compiled into every variant's objects as weak symbols, and the linker keeps ONE copy for the
whole library: if it kept an AVX-512 copy, a machine without AVX-512 would die of an illegal
instruction in plain argument checking.  Today the baseline objects come first on the link
line and their copies win; this test fails the day that stops holding: no function of the
built extension outside the per-capability namespaces (``...::AVX2::``, ``...::AVX512::``)
may contain a VEX/EVEX instruction (the baseline build has none)."""
import re
import shutil
import subprocess

import pytest

import ntm_engine
from ntm_engine import _extension

info = ntm_engine.build_info()
pytestmark = pytest.mark.skipif(
    info["backend"] != "compiled" or len(info["cpu_capabilities_compiled"]) < 2
    or shutil.which("objdump") is None,
    reason="needs the compiled extension with several CPU variants and objdump")

CAPABILITY = re.compile(r"\b(AVX2|AVX512)\b")


def _run(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def test_no_shared_function_carries_avx_instructions():
    """Every function of the linked library (one copy each, whatever its binding) that is
    not in a capability namespace must be baseline code; compiler clones (``[clone ...]``)
    are private to the object that made them and are left out."""
    so = _extension._C.__file__
    leaks, name, functions = {}, None, 0
    for line in _run("objdump", "-d", "--no-show-raw-insn", "-C", so).splitlines():
        head = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if head:
            name, functions = head.group(1), functions + 1
        elif name and re.search(r"\tv[a-z]", line) and not CAPABILITY.search(name) \
                and "[clone " not in name:
            leaks[name] = leaks.get(name, 0) + 1
    assert not leaks, ("functions outside the per-ISA namespaces compiled with AVX "
                       f"instructions (the linker kept a capability's copy): "
                       f"{sorted(leaks.items())[:10]}")
    assert functions > 100   # the scan did read the library's code
