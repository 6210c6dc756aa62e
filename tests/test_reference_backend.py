"""Without the compiled extension the ops run their reference twins: the same schemas as the
compiled library, the same results, the fake kernels and autograd of ``ntm_engine.ops``, and
one warning at import (a fresh-venv wheel without the extension: tests/test_packaging.py)."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import ntm_engine
from ntm_engine.reference_ops import SCHEMAS

ROOT = Path(__file__).resolve().parents[1]
compiled = pytest.mark.skipif(ntm_engine.build_info()["backend"] != "compiled",
                              reason="needs the compiled extension")


@compiled
@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_the_reference_schemas_are_the_compiled_ones(name):
    assert str(getattr(torch.ops.ntm, name).default._schema) == f"ntm::{SCHEMAS[name]}"


# stands for an install without ntm_engine._C: a meta-path finder that refuses to import it
BLOCK_EXTENSION = textwrap.dedent("""
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name == "ntm_engine._C":
                raise ImportError("blocked for the test")
    sys.meta_path.insert(0, Block())
""")


def python(code: str, **env) -> subprocess.CompletedProcess:
    full = dict(os.environ, PYTHONPATH=str(ROOT), **env)
    prelude = f"BLOCK_EXTENSION = {BLOCK_EXTENSION!r}\n"
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)],
                          capture_output=True, text=True, env=full, cwd=ROOT, timeout=300)


def test_the_reference_backend_computes_and_differentiates_like_the_twins():
    r = python("""
        import warnings
        warnings.simplefilter("error")          # NTM_BACKEND=reference is asked for: no warning
        import torch, ntm_engine
        from ntm_engine import ops, reference
        assert ntm_engine.build_info()["backend"] == "reference", ntm_engine.build_info()
        g = torch.Generator().manual_seed(0)
        x, b, a, gy = torch.randn(4, 3, 2, 5, generator=g, dtype=torch.float64).unbind(0)
        for out, ref in [(ops.affine_coupling(x, b, a, 2.0), reference.affine_coupling(x, b, a, 2.0)),
                         (ops.affine_coupling_inverse(x, b, a, None),
                          reference.affine_coupling_inverse(x, b, a, None)),
                         ((ops.gaussian_nll(x, b, a),), (reference.gaussian_nll(x, b, a),))]:
            assert all(torch.equal(o, r) for o, r in zip(out, ref))
        xb, gx, gb, ga = ops.affine_coupling_backward(x, b, a, gy, None, 2.0)
        assert gb is gy and torch.equal(xb, reference.affine_coupling_backward(x, b, a, gy, None, 2.0)[0])
        inputs = tuple(t.clone().requires_grad_() for t in (x, b, a))
        assert torch.autograd.gradcheck(lambda *t: ops.affine_coupling(*t, clamp=2.0), inputs)
        assert torch.autograd.gradcheck(lambda *t: ops.gaussian_nll(*t), inputs)
        for op, args in [(torch.ops.ntm.affine_coupling, (x, b, a, 2.0)),
                         (torch.ops.ntm.gaussian_nll, (x, b, a)),
                         (torch.ops.ntm.affine_coupling_backward, (x, b, a, gy, None, 2.0))]:
            torch.library.opcheck(op, args)
        try:
            ntm_engine.ops.set_cpu_capability("default")
        except RuntimeError as e:
            assert "reference" in str(e)
        else:
            raise AssertionError("set_cpu_capability must refuse without kernels")
        print("ok")
    """, NTM_BACKEND="reference")
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


def test_a_missing_extension_warns_once_and_the_model_trains():
    """``ntm_engine._C`` made unimportable (:data:`BLOCK_EXTENSION`) stands for an install
    without it: one ReferenceBackendWarning, then an NTM training step runs."""
    r = python("""
        import warnings
        exec(BLOCK_EXTENSION)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import ntm_engine, torch
            from ntm_engine.models import NTM
        names = [type(w.message).__name__ for w in caught if "ntm_engine" in str(w.message)]
        assert names == ["ReferenceBackendWarning"], [str(w.message) for w in caught]
        model = NTM((2,), steps=2, width=16, depth=1, heads=2, transporter_layers=1)
        model(torch.randn(8, 2)).mean().backward()
        print(ntm_engine.build_info()["backend"])
    """)
    assert r.returncode == 0 and r.stdout.strip() == "reference", r.stderr[-3000:]


def test_a_required_extension_that_is_missing_is_an_import_error():
    r = python("""
        exec(BLOCK_EXTENSION)
        import ntm_engine
    """, NTM_BACKEND="compiled")
    assert r.returncode != 0 and "pip install --no-build-isolation -e ." in r.stderr


def test_an_unknown_backend_is_named():
    r = python("import ntm_engine", NTM_BACKEND="cuda")
    assert r.returncode != 0 and "NTM_BACKEND must be one of compiled, reference" in r.stderr
