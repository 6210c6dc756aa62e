"""ntm_engine.interop: zero-copy exchange with NumPy (CPU) and CuPy (GPU) through DLPack."""
import numpy as np
import pytest
import torch

from ntm_engine import interop, ops
from ntm_engine import reference as R


def test_as_torch_shares_numpy_memory_and_feeds_the_ops():
    rng = np.random.default_rng(0)
    x, shift, logits = (rng.standard_normal((4, 33)).astype(np.float32) for _ in range(3))
    tx = interop.as_torch(x)
    assert isinstance(tx, torch.Tensor) and tx.dtype == torch.float32 and tx.shape == (4, 33)
    assert tx.data_ptr() == x.ctypes.data          # zero-copy
    x[0, 0] = 123.0
    assert tx[0, 0].item() == 123.0                 # same memory
    args = [interop.as_torch(a) for a in (x, shift, logits)]
    y, logdet = ops.affine_coupling(*args, 2.0)
    y_ref, logdet_ref = R.affine_coupling(*(torch.tensor(a) for a in (x, shift, logits)), 2.0)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(logdet, logdet_ref)


def test_as_torch_passes_tensors_through_and_rejects_other_objects():
    t = torch.randn(3)
    assert interop.as_torch(t) is t
    with pytest.raises(TypeError, match="__dlpack__"):
        interop.as_torch([1.0, 2.0])


def test_to_cupy_rejects_cpu_tensors():
    with pytest.raises(ValueError, match="CUDA tensor"):
        interop.to_cupy(torch.zeros(2))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cupy_round_trip_is_zero_copy_and_runs_the_ops():
    cupy = pytest.importorskip("cupy")
    rs = cupy.random.RandomState(seed=1)
    x, shift = (rs.standard_normal((8, 1000), dtype=cupy.float32) for _ in range(2))
    logits = 0.5 * rs.standard_normal((8, 1000), dtype=cupy.float32)
    tx, tshift, tlogits = (interop.as_torch(a) for a in (x, shift, logits))
    assert tx.is_cuda and tx.data_ptr() == x.data.ptr and tx.shape == (8, 1000)
    y, logdet = ops.affine_coupling(tx, tshift, tlogits, 2.0)
    s = 2.0 * cupy.tanh(logits / 2.0)
    cupy.testing.assert_allclose(interop.to_cupy(y), x * cupy.exp(s) + shift, rtol=1e-5, atol=1e-5)
    cupy.testing.assert_allclose(interop.to_cupy(logdet), s.sum(axis=1), rtol=1e-5, atol=1e-4)
    y_cp = interop.to_cupy(y)
    assert y_cp.data.ptr == y.data_ptr() and y_cp.shape == (8, 1000)   # zero-copy back
    y_cp[0, 0] = 7.0
    assert y[0, 0].item() == 7.0
    nll = ops.gaussian_nll(*(interop.as_torch(a) for a in (x, shift, logits)))
    z = (x - shift) * cupy.exp(-logits)
    cupy.testing.assert_allclose(interop.to_cupy(nll), (0.5 * z * z + logits).sum(axis=1),
                                 rtol=1e-5, atol=1e-3)
    grad_leaf = torch.randn(3, device="cuda", requires_grad=True)
    assert interop.to_cupy(grad_leaf).data.ptr == grad_leaf.data_ptr()
