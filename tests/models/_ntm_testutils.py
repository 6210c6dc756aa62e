"""Shared helpers for the NTM model tests."""
import torch

from ntm_engine.models import NTM


def perturb(model: torch.nn.Module, std: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """Add N(0, std^2) noise to every parameter, so zero-initialised layers are not trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return model


def small_ntm(data_shape=(1, 4, 4), steps=3, num_classes=3, seed=0, std=0.1, **kw):
    """A tiny float64 NTM with random (non-identity) transporter and predictor head."""
    torch.manual_seed(seed)
    cfg = dict(width=32, depth=2, heads=2, transporter_layers=2, transporter_hidden=16,
               context_dim=16)
    cfg.update(kw)
    model = NTM(data_shape, steps=steps, num_classes=num_classes, **cfg).double()
    return perturb(model, std, seed).eval()
