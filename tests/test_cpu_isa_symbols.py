"""No AVX code where a CPU without AVX could run it.

The CPU kernels are compiled once per instruction set (``-mavx2``, ``-mavx512f``, ...) and
chosen at run time.  Inline functions of shared headers (the op checks, ``op_io.h``, ...) are
compiled into every variant's objects as weak symbols, and the linker keeps ONE copy for the
whole library: if it kept an AVX-512 copy, a machine without AVX-512 would die of an illegal
instruction in plain argument checking.  Today the baseline objects come first on the link
line and their copies win; this test fails the day that stops holding: no global or weak
function of the built extension outside the per-capability namespaces (``...::AVX2::``,
``...::AVX512::``) may contain a VEX/EVEX instruction (the baseline build has none)."""
import re
import shutil
import subprocess

import pytest

import ntm_engine
from ntm_engine import _extension

info = ntm_engine.build_info()
pytestmark = pytest.mark.skipif(
    info["backend"] != "compiled" or len(info["cpu_capabilities_compiled"]) < 2
    or shutil.which("objdump") is None or shutil.which("nm") is None,
    reason="needs the compiled extension with several CPU variants, objdump and nm")

CAPABILITY = re.compile(r"\b(AVX2|AVX512)\b")


def _run(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def test_no_shared_function_carries_avx_instructions():
    so = _extension._C.__file__
    exported = set()
    for line in _run("nm", "-C", "--defined-only", so).splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[1] in ("T", "W", "i"):
            exported.add(parts[2])
    leaks, name = {}, None
    for line in _run("objdump", "-d", "--no-show-raw-insn", "-C", so).splitlines():
        head = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if head:
            name = head.group(1)
        elif name and re.search(r"\tv[a-z]", line) and name in exported \
                and not CAPABILITY.search(name):
            leaks[name] = leaks.get(name, 0) + 1
    assert not leaks, ("shared functions compiled with AVX instructions (the linker kept a "
                       f"capability's copy): {sorted(leaks.items())[:10]}")
    assert len(exported) > 100   # the scan did read the library's symbols
