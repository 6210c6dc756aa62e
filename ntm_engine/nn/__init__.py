"""Invertible modules (DESIGN.md section 3 conventions)."""
from .coupling import AffineCoupling
from .sequential import InvertibleSequential

__all__ = ["AffineCoupling", "InvertibleSequential"]
