"""A stack of invertible layers, with an activation-free (reversible) backward.

With ``reversible=True`` and gradients wanted, the whole stack runs as ONE
``torch.autograd.Function`` that keeps only what is not an activation: the stack's output,
the context, and the parameters (saved for their version counters, not copied), plus a few
kilobytes of RNG state per layer that holds dropout.  Its backward walks the layers last to
first; each layer's :meth:`reverse_step` rebuilds its input from its output and returns the
input, context and parameter gradients (see :mod:`ntm_engine.nn.base`).  The Function returns
every gradient exactly once, as outputs of the Function: parameters are inputs of
``Function.apply``, and no ``.backward()`` runs inside the backward, so DDP's gradient hooks
fire once per parameter.  Activation memory is flat in depth (one layer's worth, transiently,
during the backward) where plain autograd keeps every layer's activations.

Caveats: layers must be exactly invertible functions of ``(x, context)``; the rebuilt inputs
drift from the true ones by rounding, and by much more when a layer is ill-conditioned (a
trained transporter whose scales grew: then the gradients are silently wrong).  The drift
guard measures it during training (:meth:`InvertibleSequential.check_drift_next`: on the next
reversible forward, a slice of the batch is run forward and rebuilt by the backward's own
reverse walk and compared with its true inputs); above ``drift_tolerance`` the stack switches
to plain autograd (stored activations) for good (``drift_action="fallback"``) or raises
:class:`ReversibleDriftError` (``"strict"``), both before the step's backward, so no step
uses wrong gradients.  ``check_reconstruction`` (debugging) measures every backward.  Modules with
running statistics (BatchNorm) inside a conditioner would update them twice; no double
backward; a nested ``InvertibleSequential`` with dropout is not supported in reversible mode.
Autocast: the forward's autocast state is re-entered for the recomputations in the backward.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

from .base import (InvertibleModule, ReverseStepResult, _RngSnapshot, accumulation_dtype,
                   generic_reverse_step, has_dropout)

__all__ = ["InvertibleSequential", "BACKWARDS", "ReversibleDriftError", "DRIFT_ACTIONS"]

# ``reversible=``: rebuild inputs by inversion (True), keep inputs and recompute each layer
# ("recompute"), or plain autograd (False)
BACKWARDS = (True, "recompute", False)
DRIFT_ACTIONS = ("fallback", "strict")   # what the drift guard does above its tolerance


class ReversibleDriftError(RuntimeError):
    """The reversible backward's rebuilt inputs drifted beyond the tolerance (strict mode)."""


def _reverse_step(layer: nn.Module, y: Tensor, grad_y: Tensor, grad_logdet: Optional[Tensor],
                  context: Optional[Tensor]) -> ReverseStepResult:
    step = getattr(layer, "reverse_step", None)
    if step is None:
        return generic_reverse_step(layer, y, grad_y, grad_logdet, context)
    return step(y, grad_y, grad_logdet, context)


@contextlib.contextmanager
def _parameters_swapped(layer: nn.Module, replacements: Dict[int, Tensor]) -> Iterator[None]:
    """Temporarily put ``replacements[k]`` in the slot of the ``k``-th of
    ``layer.named_parameters()`` (used when the tensors saved at forward time are not the
    module's current parameters, e.g. under ``torch.func.functional_call``)."""
    if not replacements:
        yield
        return
    undo = []
    try:
        for k, (name, _) in enumerate(list(layer.named_parameters())):
            if k not in replacements:
                continue
            owner_name, _, leaf = name.rpartition(".")
            owner = layer.get_submodule(owner_name) if owner_name else layer
            undo.append((owner, leaf, owner._parameters[leaf]))
            owner._parameters[leaf] = replacements[k]
        yield
    finally:
        for owner, leaf, old in reversed(undo):
            owner._parameters[leaf] = old


@contextlib.contextmanager
def _replaying(snapshot: Optional[_RngSnapshot]) -> Iterator[None]:
    """Run the body from the RNG state ``snapshot`` (a layer's forward-time state), then put
    the current state back; a no-op for None."""
    if snapshot is None:
        yield
        return
    with snapshot.fork():
        snapshot.restore()
        yield


def _saved_param_swaps(layer: nn.Module, slots: Sequence[Optional[int]],
                       saved_params: Sequence[Tensor]) -> Dict[int, Tensor]:
    """``{k: saved tensor}`` for each of ``layer.parameters()`` whose tensor saved at forward
    time (``saved_params[slots[k]]``) is not the module's current parameter."""
    return {k: saved_params[slot] for k, (slot, p) in enumerate(zip(slots, layer.parameters()))
            if slot is not None and saved_params[slot] is not p}


def _reverse_walk(layers: Sequence[nn.Module], y: Tensor, grad_y: Tensor,
                  grad_logdet: Optional[Tensor], context: Optional[Tensor], *,
                  rng: Optional[Sequence[Optional[_RngSnapshot]]] = None,
                  swaps: Optional[Sequence[Dict[int, Tensor]]] = None
                  ) -> Iterator[Tuple[int, Tensor, Tensor, Optional[Tensor],
                                      Tuple[Optional[Tensor], ...]]]:
    """Walk ``layers`` last to first from the output ``y``, yielding per layer
    ``(i, x_i, grad_x_i, grad_context_i, param_grads_i)`` (its rebuilt input and the
    gradients of :meth:`InvertibleModule.reverse_step`).  ``rng[i]``: replay that RNG state
    for layer ``i``; ``swaps[i]``: parameters to swap in for layer ``i``."""
    h, g = y, grad_y
    for i in range(len(layers) - 1, -1, -1):
        with _parameters_swapped(layers[i], swaps[i] if swaps else {}), \
                _replaying(rng[i] if rng else None):
            x, gx, gc, pg = _reverse_step(layers[i], h, g, grad_logdet, context)
        yield i, x, gx, gc, tuple(pg)
        h, g = x, gx


def _accumulate(total: List[Optional[Tensor]], slots: Sequence[Optional[int]],
                grads: Sequence[Optional[Tensor]]) -> None:
    """``total[slots[k]] += grads[k]`` (None = nothing, in either place)."""
    for slot, gp in zip(slots, grads):
        if slot is not None and gp is not None:
            total[slot] = gp if total[slot] is None else total[slot] + gp


def _add(a: Optional[Tensor], b: Optional[Tensor]) -> Optional[Tensor]:
    return a if b is None else b if a is None else a + b


def _max_abs_diff(a: Tensor, b: Tensor) -> float:
    acc = accumulation_dtype(a.dtype)
    diff = (a.to(acc) - b.to(acc)).abs()
    return float(diff.max()) if diff.numel() else 0.0


def _walk_backward(layers: Sequence[nn.Module], y: Tensor, grad_y: Tensor,
                   grad_logdet: Optional[Tensor], context: Optional[Tensor], *,
                   param_slots: Sequence[Sequence[Optional[int]]], n_params: int,
                   rng: Optional[Sequence[Optional[_RngSnapshot]]] = None,
                   swaps: Optional[Sequence[Dict[int, Tensor]]] = None,
                   true_inputs: Optional[Sequence[Tensor]] = None):
    """The whole reverse walk: ``(x, grad_x, grad_context, grads, errors)`` with ``grads`` a
    list of ``n_params`` gradients (layer ``i``'s parameter ``k`` summed into
    ``grads[param_slots[i][k]]``), ``grad_context`` summed over layers (or None) and
    ``errors[i]`` = max |rebuilt input - true input| of layer ``i`` when ``true_inputs`` is
    given (zeros otherwise)."""
    grads: List[Optional[Tensor]] = [None] * n_params
    errors: List[float] = [0.0] * len(layers)
    x, gx, grad_ctx = y, grad_y, None
    for i, x, gx, gc, pg in _reverse_walk(layers, y, grad_y, grad_logdet, context, rng=rng,
                                          swaps=swaps):
        grad_ctx = _add(grad_ctx, gc)
        _accumulate(grads, param_slots[i], pg)
        if true_inputs is not None:
            errors[i] = _max_abs_diff(x, true_inputs[i])
    return x, gx, grad_ctx, grads, errors


def _record_forward(layers: Sequence[nn.Module], x: Tensor, context: Optional[Tensor], *,
                    keep_inputs: bool):
    """Run ``layers`` on ``x``: ``(y, logdet, rng, inputs)`` with ``rng[i]`` the RNG state
    before layer ``i`` when it has dropout (else None) and ``inputs`` every layer's input
    (detached; None unless ``keep_inputs``)."""
    rng: List[Optional[_RngSnapshot]] = []
    inputs: Optional[List[Tensor]] = [] if keep_inputs else None
    h, logdet = x, None
    for layer in layers:
        rng.append(_RngSnapshot(h.device) if has_dropout(layer) else None)
        if inputs is not None:
            inputs.append(h.detach())
        h, ld = layer(h, context)
        logdet = ld if logdet is None else logdet + ld
    return h, logdet, rng, inputs


def _autocast_state(device_type: str) -> Optional[Tuple[str, torch.dtype]]:
    """``(device_type, dtype)`` when autocast is on for ``device_type``, else None."""
    if not torch.is_autocast_enabled(device_type):
        return None
    return device_type, torch.get_autocast_dtype(device_type)


def _autocast_like(state: Optional[Tuple[str, torch.dtype]]):
    """Re-enter the forward's autocast state in the backward (recomputations must match)."""
    if state is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=state[0], dtype=state[1])


class _ReversibleStack(torch.autograd.Function):
    """``(x, context, stack, *params) -> (y, logdet)``; saves ``y``, ``context``, ``params``."""

    @staticmethod
    def forward(ctx, x: Tensor, context: Optional[Tensor], stack: "InvertibleSequential",
                *params: Tensor) -> Tuple[Tensor, Tensor]:
        layers = list(stack.layers)
        slot_of = {id(p): k for k, p in enumerate(params)}
        h, logdet, rng, true_inputs = _record_forward(layers, x, context,
                                                      keep_inputs=stack.check_reconstruction)
        ctx.stack = stack
        ctx.autocast = _autocast_state(x.device.type)
        ctx.rng = rng if any(s is not None for s in rng) else None
        ctx.true_inputs = true_inputs
        ctx.param_slots = [[slot_of.get(id(p)) for p in layer.parameters()] for layer in layers]
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(h, context, *params)
        return h, logdet

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Optional[Tensor], grad_logdet: Optional[Tensor]):
        y, context, *params = ctx.saved_tensors
        if grad_y is None:
            grad_y = torch.zeros_like(y)
        ctx_in = None
        if context is not None:
            ctx_in = context.detach()
            if ctx.needs_input_grad[1]:
                ctx_in.requires_grad_()
        stack = ctx.stack
        layers = list(stack.layers)
        swaps = [_saved_param_swaps(layer, slots, params)
                 for layer, slots in zip(layers, ctx.param_slots)]
        with _autocast_like(ctx.autocast):
            x, grad_x, grad_ctx, grads, errors = _walk_backward(
                layers, y.detach(), grad_y, grad_logdet, ctx_in, param_slots=ctx.param_slots,
                n_params=len(params), rng=ctx.rng, swaps=swaps, true_inputs=ctx.true_inputs)
        if ctx.true_inputs is not None:
            stack.reconstruction_error = errors
        if grad_ctx is not None and not ctx.needs_input_grad[1]:
            grad_ctx = None
        return (grad_x if ctx.needs_input_grad[0] else None, grad_ctx, None, *grads)


class InvertibleSequential(InvertibleModule):
    """Composes invertible layers ``f = f_n o ... o f_1`` on ``[B, dim]``.

    Each layer has ``forward(x, context) -> (y, logdet)`` and ``inverse(y, context) ->
    (x, logdet)`` and, ideally, ``reverse_step`` (:mod:`ntm_engine.nn.base`; a generic one is
    used otherwise).  The context ``[B, context_dim]`` (or None) goes to every layer.
    Log-dets are summed per sample (``[B]``, accumulation dtype).

    * ``reversible=True`` (default): when gradients are wanted, the activation-free backward
      (module docstring); otherwise the layers just run.  Under ``torch.compile`` the stack
      is one activation checkpoint instead (:meth:`_recomputed`; ``check_reconstruction`` has
      nothing to measure there).
    * ``reversible="recompute"``: each layer's input is kept (one ``[B, dim]`` tensor per
      layer) and the layer's forward re-run in one parallel pass during the backward, then
      autograd through it (the fused coupling backward inside): for layers whose inverse is
      sequential (the autoregressive blocks, whose inverse decodes token by token) this costs
      one extra parallel forward instead of a decode, for ``len(self) - 1`` stored inputs.
    * ``reversible=False``: plain autograd through the layers (the reference).
    * ``check_reconstruction=True`` (debugging; keeps every layer's input alive, so no memory
      saving): after each reversible backward, ``reconstruction_error[i]`` is the max abs
      difference between layer ``i``'s rebuilt input and its true input.
    * The drift guard (training, cheap): after :meth:`check_drift_next`, the next reversible
      forward first measures the drift on its first ``drift_rows`` rows (:meth:`drift_of`;
      the result in ``drift``) and, when it exceeds ``drift_tolerance`` (or is not finite),
      acts by ``drift_action``: ``"fallback"`` sets ``reversible = False`` and
      ``fell_back = True`` (this forward already keeps its activations), ``"strict"`` raises
      :class:`ReversibleDriftError`.
    """

    def __init__(self, *layers: nn.Module, reversible: Union[bool, str] = True,
                 check_reconstruction: bool = False, drift_tolerance: float = 1e-3,
                 drift_action: str = "fallback", drift_rows: int = 4):
        super().__init__()
        if reversible not in BACKWARDS:
            raise ValueError(f"InvertibleSequential: reversible must be one of {BACKWARDS}, got "
                             f"{reversible!r}")
        self.layers = nn.ModuleList(layers)
        self.reversible = reversible
        self.check_reconstruction = check_reconstruction
        self.reconstruction_error: Optional[List[float]] = None
        self.set_drift_guard(drift_tolerance, drift_action, drift_rows)
        self.drift: Optional[float] = None
        self.fell_back = False
        self._check_next = False

    # ------------------------------------------------------------------ the drift guard
    def set_drift_guard(self, tolerance: float, action: str = "fallback", rows: int = 4) -> None:
        """Tolerance (of :meth:`drift_of`), action (:data:`DRIFT_ACTIONS`) and batch rows of
        the drift guard."""
        if not (isinstance(tolerance, (int, float)) and tolerance > 0):
            raise ValueError(f"drift tolerance must be a number > 0, got {tolerance!r}")
        if action not in DRIFT_ACTIONS:
            raise ValueError(f"drift action must be one of {', '.join(DRIFT_ACTIONS)}, "
                             f"got {action!r}")
        if not (isinstance(rows, int) and rows >= 1):
            raise ValueError(f"drift rows must be an integer >= 1, got {rows!r}")
        self.drift_tolerance, self.drift_action, self.drift_rows = float(tolerance), action, rows

    def check_drift_next(self) -> None:
        """Measure the drift at the next reversible forward (and act on it)."""
        self._check_next = True

    def drift_of(self, x: Tensor, context: Optional[Tensor] = None) -> float:
        """The drift of the reversible backward on ``(x, context)``: the largest over layers of
        max |rebuilt input - true input| / max(1, max |true input|), the inputs rebuilt from
        the stack's output by the backward's own reverse walk (same code, same autocast state
        as the caller's; the layers' affine inversions keep float32 tensors in float32).  Leaves
        the RNG and every gradient as they were."""
        layers = list(self.layers)
        index = {id(p): k for k, p in enumerate(self.parameters())}
        slots = [[index.get(id(p)) for p in layer.parameters()] for layer in layers]
        x = x.detach()
        context = None if context is None else context.detach()
        with _RngSnapshot(x.device).fork():
            with torch.no_grad():
                y, _, rng, inputs = _record_forward(layers, x, context, keep_inputs=True)
            *_, errors = _walk_backward(layers, y, torch.zeros_like(y), None, context,
                                        param_slots=slots, n_params=len(index), rng=rng,
                                        true_inputs=inputs)
        scales = [max(1.0, float(t.detach().abs().max())) if t.numel() else 1.0 for t in inputs]
        return max((e / s for e, s in zip(errors, scales)), default=0.0)

    def _guard(self, x: Tensor, context: Optional[Tensor]) -> None:
        """The armed drift check of this forward (see the class docstring)."""
        self._check_next = False
        rows = min(self.drift_rows, x.shape[0])
        self.drift = self.drift_of(x[:rows], None if context is None else context[:rows])
        if self.drift <= self.drift_tolerance:
            return
        what = (f"the reversible backward's rebuilt inputs drift by {self.drift:.3g} "
                f"(relative, on {rows} rows; tolerance {self.drift_tolerance:g})")
        if self.drift_action == "strict":
            raise ReversibleDriftError(f"{what}: its gradients would be wrong")
        self.reversible, self.fell_back = False, True

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[nn.Module]:
        return iter(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def _grad_params(self) -> List[Tensor]:
        return [p for p in self.parameters() if p.requires_grad]

    def _run(self, x: Tensor, context: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        logdet = None
        for layer in self.layers:
            x, ld = layer(x, context)
            logdet = ld if logdet is None else logdet + ld
        if logdet is None:
            logdet = torch.zeros(x.shape[0], dtype=accumulation_dtype(x.dtype), device=x.device)
        return x, logdet

    def _recomputed(self, x: Tensor, context: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """The reversible mode under ``torch.compile``: the layers run as one non-reentrant
        activation checkpoint (kept: the stack's input, the context and the parameters; the
        backward re-runs the forward, then plain autograd).  Same maths as the reversible
        Function, same memory class (flat in depth), and traceable: the Function's backward
        calls ``torch.autograd.grad``, which dynamo cannot trace, so it is skipped here."""
        return checkpoint(self._run, x, context, use_reentrant=False)

    def _layerwise_recomputed(self, x: Tensor, context: Optional[Tensor]
                              ) -> Tuple[Tensor, Tensor]:
        """The ``"recompute"`` backward: one non-reentrant activation checkpoint per layer
        (kept: each layer's input; the backward re-runs that layer's forward, then plain
        autograd; dropout replays its RNG state)."""
        logdet = None
        for layer in self.layers:
            x, ld = checkpoint(layer, x, context, use_reentrant=False)
            logdet = ld if logdet is None else logdet + ld
        return x, logdet

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Data to latent: ``x [B, dim] -> (z [B, dim], logdet [B])``."""
        if self.reversible and len(self.layers) and torch.is_grad_enabled():
            if self.reversible == "recompute":
                return self._layerwise_recomputed(x, context)
            if torch.compiler.is_compiling():
                return self._recomputed(x, context)
            params = self._grad_params()
            if params or x.requires_grad or (context is not None and context.requires_grad):
                if self._check_next:
                    self._guard(x, context)
                if self.reversible:   # (the guard may have switched it off)
                    return _ReversibleStack.apply(x, context, self, *params)
        return self._run(x, context)

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Latent to data: ``z [B, dim] -> (x [B, dim], logdet of the inverse [B])`` (plain
        autograd; the inverse is the sampling direction)."""
        logdet = None
        for layer in reversed(self.layers):
            z, ld = layer.inverse(z, context)
            logdet = ld if logdet is None else logdet + ld
        if logdet is None:
            logdet = torch.zeros(z.shape[0], dtype=accumulation_dtype(z.dtype), device=z.device)
        return z, logdet

    def reverse_step(self, y: Tensor, grad_y: Tensor, grad_logdet: Optional[Tensor] = None,
                     context: Optional[Tensor] = None) -> ReverseStepResult:
        """The stack as one layer of an outer stack: walks its own layers last to first.
        ``param_grads`` is aligned with ``tuple(self.parameters())``."""
        if has_dropout(self):
            raise RuntimeError("InvertibleSequential.reverse_step: a nested stack with dropout "
                               "cannot replay its RNG; put its layers in the outer stack")
        layers = list(self.layers)
        index = {id(p): k for k, p in enumerate(self.parameters())}
        slots = [[index[id(p)] for p in layer.parameters()] for layer in layers]
        x, gx, gc, grads, _ = _walk_backward(layers, y, grad_y, grad_logdet, context,
                                             param_slots=slots, n_params=len(index))
        return x, gx, gc, tuple(grads)
