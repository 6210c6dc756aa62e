"""Fully sharded training (``--parallel fsdp``): FSDP2 (``torch.distributed.fsdp.fully_shard``)
over the processes of a ``torchrun`` launch, for models that do not fit one device.

What is sharded (:func:`shard_model`; each unit's parameters are cut along their first dim
over the ranks, all-gathered for the unit's own forward and backward and freed after it):

* every predictor block (``predictor.blocks[i]``), one unit each;
* the rest of the predictor (embeddings, conditioning, head), one unit;
* the transporter as ONE unit: its reversible backward (:mod:`ntm_engine.nn.sequential`)
  runs the whole stack inside one autograd Function that takes the stack's parameters as
  inputs and re-runs the layers in its backward, so the parameters must be the gathered ones
  from the Function's forward to the end of its backward -- which the transporter's own
  pre-forward and pre-backward hooks guarantee (the gradients it returns are then
  reduce-scattered like any other; ``tests/test_scale_fsdp.py`` checks them against one
  process in float64).  Its layers are not units of their own: their hooks would fire
  inside the Function, outside autograd, and the backward's re-run of a layer would meet its
  sharded parameters (tried: "got mixed torch.Tensor and DTensor");
* the root (the NTM or flow-matching model), which then holds no parameter itself (FSDP
  takes the first unit to run as its tree's root, so the root's methods must run first).

Training calls the root's ``forward`` (the per-sample loss).  Evaluation and sampling call
other public methods of the root (``log_prob``, ``sample``, ...): every public method its class
defines (:func:`root_methods`) is registered with ``register_fsdp_forward_method`` so that it
gathers and frees like ``forward``, as are the submodule methods in :data:`UNIT_METHODS`.  Every rank
must call each unit equally often (its collectives pair up across ranks): evaluation and
sampling run on every rank, and a model of several step counts makes one pass per trained
``T`` on every rank (its step groups have sizes fixed by the per-rank batch,
:mod:`~ntm_engine.models.loss`, never empty).  The ranks build the model on the CPU from the seed; rank 0's
weights are then copied into every shard (:meth:`FullStates.copy_from_rank0`).  Gradients
are reduce-scattered (averaged) by FSDP during the backward; clipping uses the global norm
(``clip_grad_norm_`` on the sharded gradients); AdamW keeps sharded state.

The EMA (:class:`~.optim.EMA`) is a second model sharded the same way, updated by a lerp of
the local shards.  Checkpoints hold what a single process writes (full float32 state dicts
of model and EMA, the optimiser state keyed by parameter index): :class:`FullStates`
gathers them with ``torch.distributed.checkpoint.state_dict`` and shards them again on
resume, so a run continues with or without FSDP.
"""
from __future__ import annotations

import warnings
from itertools import chain
from typing import Any, Dict, List

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict,
                                                     set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

from .distributed import check_parallel
from .errors import ConfigError

# methods of the sharded submodules called from outside them (besides forward)
UNIT_METHODS = {"predictor": ("step", "head_outputs"), "transporter": ("inverse",)}

_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)   # full, on rank 0
_SCATTER = StateDictOptions(full_state_dict=True)   # every rank passes the full dict
_FROM_RANK0 = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)


def check_sharding(cfg, parallel: str) -> None:
    """``parallel`` is known (:func:`~.distributed.check_parallel`).  Every run can be
    sharded: with several step counts each rank runs one pass per trained ``T`` (static step
    groups), so the ranks' calls to the sharded units match."""
    check_parallel(parallel)


def _has_parameters(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def root_methods(model: nn.Module) -> List[str]:
    """The public methods that ``model``'s own classes define (those of :class:`nn.Module`
    excluded), e.g. an NTM's ``log_prob``, ``sample``, ``predict_levels``."""
    names = set()
    for cls in type(model).__mro__:
        if cls is nn.Module or not issubclass(cls, nn.Module):
            continue
        names.update(n for n, v in vars(cls).items()
                     if not n.startswith("_") and n != "forward" and callable(v)
                     and not isinstance(v, (staticmethod, classmethod, type)))
    return sorted(names)


def _register(module: nn.Module, names) -> None:
    for name in names:
        if callable(getattr(module, name, None)):
            register_fsdp_forward_method(module, name)


def shard_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Apply FSDP2 to ``model`` in place (units as in the module docstring) over all ranks
    of the default process group on ``device``'s type; returns ``model``."""
    if not dist.is_initialized():
        raise ConfigError("--parallel fsdp needs a process group (launch with torchrun)")
    # FSDP warns once per unit that returns a view (the blocks' keys and values, slices of
    # the predictor's output): nothing here modifies a unit's output in place
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor",
                            category=UserWarning)
    mesh = init_device_mesh(torch.device(device).type, (dist.get_world_size(),))
    predictor = getattr(model, "predictor", None)
    if predictor is not None:
        for block in getattr(predictor, "blocks", ()):
            fully_shard(block, mesh=mesh)
    for name, methods in UNIT_METHODS.items():
        unit = getattr(model, name, None)
        if unit is not None and _has_parameters(unit):
            fully_shard(unit, mesh=mesh)
            _register(unit, methods)
    fully_shard(model, mesh=mesh)
    _register(model, root_methods(model))
    return model


def _parameter_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> List[str]:
    """The names of ``optimizer``'s parameters in its own order (the order of the integer
    keys of ``optimizer.state_dict()``)."""
    name_of = {p: n for n, p in model.named_parameters()}
    return [name_of[p] for p in chain.from_iterable(g["params"] for g in optimizer.param_groups)]


def optimizer_state_by_index(named: Dict[str, Any]) -> Dict[str, Any]:
    """A full optimiser state dict keyed by parameter name (``get_optimizer_state_dict``)
    in the form ``optimizer.state_dict()`` has in one process (integer keys, in the order of
    the param groups)."""
    names = list(chain.from_iterable(g["params"] for g in named["param_groups"]))
    index = {n: i for i, n in enumerate(names)}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in named["param_groups"]]
    return {"state": {index[n]: s for n, s in named["state"].items()}, "param_groups": groups}


def optimizer_state_by_name(indexed: Dict[str, Any], names: List[str]) -> Dict[str, Any]:
    """The inverse of :func:`optimizer_state_by_index` for an optimiser whose parameters are
    named ``names`` (in its order); entries in parameter order (the same on every rank)."""
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in indexed["param_groups"]]
    ordered = sorted(indexed["state"].items(), key=lambda item: int(item[0]))  # (as above)
    return {"state": {names[int(i)]: s for i, s in ordered}, "param_groups": groups}


class FullStates:
    """Checkpoint state of a sharded model: the full state dicts a single process would write
    (gathered: every rank must call; rank 0 gets them, the others empty dicts), and the
    same loaded back into the shards (every rank passes the whole dict)."""

    collective = True

    def model_state(self, model: nn.Module) -> Dict[str, torch.Tensor]:
        return get_model_state_dict(model, options=_GATHER)

    def load_model(self, model: nn.Module, state: Dict[str, torch.Tensor]) -> None:
        # every rank scatters the entries in the order of the dict it is given, and
        # safetensors hands them out in an order of its own per process: sort them
        set_model_state_dict(model, dict(sorted(state.items())), options=_SCATTER)

    def optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer
                        ) -> Dict[str, Any]:
        if not optimizer.state:   # no step made yet (the same on every rank): nothing to gather
            return optimizer.state_dict()
        named = get_optimizer_state_dict(model, optimizer, options=_GATHER)
        return optimizer_state_by_index(named) if named else {}

    def copy_from_rank0(self, model: nn.Module) -> None:
        """Rank 0's weights in every rank's shards (the ranks build the same model from the
        seed, on the CPU; this makes sure, as the replicated path's broadcast does)."""
        set_model_state_dict(model, self.model_state(model), options=_FROM_RANK0)

    def load_optimizer(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                       state: Dict[str, Any]) -> None:
        if not state["state"]:
            optimizer.load_state_dict(state)
            return
        named = optimizer_state_by_name(state, _parameter_names(model, optimizer))
        set_optimizer_state_dict(model, optimizer, named, options=_SCATTER)
