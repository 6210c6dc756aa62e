"""The drift guard of the reversible backward during training (``--reversible-check-every``,
``--reversible-tolerance``, ``--reversible fallback|strict``).

The reversible backward of :class:`~ntm_engine.nn.InvertibleSequential` rebuilds each layer's
input from its output; an ill-conditioned stack (a transporter whose scales grew during a long
run) rebuilds them wrongly and its gradients are then silently wrong.  Every ``every``
iterations (from the first one on) each reversible stack of the model measures, before that
step's backward, how far the inputs its backward would rebuild are from the true ones, on a
slice of the batch (:meth:`~ntm_engine.nn.InvertibleSequential.drift_of`).  The numbers go to
``metrics.jsonl`` (``{"type": "reversible_check", "step", "drift": {stack: value},
"tolerance"}``).  Above the tolerance a stack either switches to stored activations for the
rest of the run, that step included (``fallback``, the default: logged once and recorded as a
``reversible_fallback`` event), or the run stops before the step (``strict``:
:class:`~ntm_engine.nn.ReversibleDriftError`, after a checkpoint of the step reached).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

from torch import nn

from ..nn import InvertibleSequential
from .sections import OptimConfig

# the default tolerance of each --precision: float32 round trips of healthy stacks stay near
# 1e-6 (a stack whose rebuilt inputs drift by 1e-3 has gradients off by ~1e-2 or worse);
# under bf16 autocast the recomputed conditioners carry ~3 significant digits, and healthy
# stacks measure 5e-3 to 5e-2
DEFAULT_TOLERANCE = {"fp32": 1e-3, "bf16": 1e-1}


def reversible_stacks(model: nn.Module) -> List[Tuple[str, InvertibleSequential]]:
    """``(name, stack)`` of the outermost :class:`InvertibleSequential` s of ``model`` that run
    the reversible backward, rebuilding inputs by inversion (a nested stack is walked by the
    outer one's backward; a ``"recompute"`` stack keeps its inputs and cannot drift)."""
    out: List[Tuple[str, InvertibleSequential]] = []
    for name, m in model.named_modules():
        if isinstance(m, InvertibleSequential) and m.reversible is True and \
                not any(name.startswith(f"{outer}.") for outer, _ in out):
            out.append((name or "model", m))
    return out


class DriftGuard:
    """Arms the stacks of ``model`` every ``optim.reversible_check_every`` iterations and
    reports what they measured (``log``: one line per stack that fell back;
    ``write_metrics``: the records)."""

    def __init__(self, model: nn.Module, optim: OptimConfig, *, log: Callable[[str], None],
                 write_metrics: Callable[[Dict[str, Any]], None]):
        self.every = optim.reversible_check_every
        self.tolerance = optim.reversible_tolerance or DEFAULT_TOLERANCE[optim.precision]
        self.action = optim.reversible_guard
        self.log, self.write_metrics = log, write_metrics
        self.stacks = reversible_stacks(model) if self.every else []
        for _, stack in self.stacks:
            stack.set_drift_guard(self.tolerance, self.action, stack.drift_rows)

    def before_step(self, step: int) -> None:
        """Arm the checks of iteration ``step`` (0-based: the step about to be made)."""
        if self.every and step % self.every == 0:
            for _, stack in self.stacks:
                if stack.reversible:
                    stack.drift = None
                    stack.check_drift_next()

    def after_step(self, step: int) -> Optional[Dict[str, Any]]:
        """Record the checks made in the step that ended at ``step`` (1-based, as logged);
        returns the record (None when nothing was measured)."""
        measured = {name: s.drift for name, s in self.stacks if s.drift is not None}
        if not measured:
            return None
        rec = {"type": "reversible_check", "step": step, "drift": measured,
               "tolerance": self.tolerance}
        self.write_metrics(rec)
        for name, stack in self.stacks:
            stack.drift = None
            if stack.fell_back and name in measured:
                self.log(f"warning: step {step}: the reversible backward of {name} drifts by "
                         f"{measured[name]:.3g} (tolerance {self.tolerance:g}); it keeps its "
                         "activations (plain autograd) for the rest of this run. Use "
                         "--reversible strict to stop instead")
                self.write_metrics({"type": "event", "event": "reversible_fallback",
                                    "step": step, "stack": name, "drift": measured[name]})
        return rec
