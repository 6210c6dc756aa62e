"""The training run (NTM likelihood, flow-matching pretraining, an NTM started from a
flow-matching run): :class:`Trainer` builds the parts -- model, objective, EMA, AdamW, data --
and hands them to the resumable :class:`~.loop.Loop`.

Determinism: everything random in iteration ``step`` (the batch, its dequantisation noise, the
trajectory noise, ``t_0``, label dropout) is drawn from generators seeded by ``(seed, step)``,
and the global torch RNG is reseeded from ``(seed, step)`` too, so a run resumed from the
checkpoint of step ``s`` repeats, bit for bit on the same machine and thread count, what an
uninterrupted run does after ``s`` (unless a ``minutes`` budget shapes the learning rate).
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from .. import checkpoint as ckpt
from .. import plots
from .batches import DataSource, eval_bins
from .config import TrainConfig, config_differences
from .determinism import derive_seed, device_generator, seed_everything
from .distributed import World, init_world
from .drift import DriftGuard
from .errors import ConfigError
from .decoder import run_decoder
from .evaluation import (eval_summary, evaluate_test, grid_samples, likelihood_key,
                         save_sample_grid)
from .factory import (ModelFactory, build_model, init_reference, load_init_source,
                      make_objective, preflight, save_reference)
from .fsdp import FullStates, check_sharding, shard_model
from .loop import Loop
from .metrics_log import read_metrics
from .objectives import Batch, NTMLikelihood
from .optim import EMA, adamw, guarded_update, learning_rate, set_lr
from .precision import autocast
from .run_folder import RunFolder
from .session import ProcessStates, RunSession, SessionViews, default_device, stderr_log


def set_checkpointing(model: nn.Module, on: bool) -> None:
    """Activation checkpointing of the predictor's blocks (when the model has a predictor)."""
    predictor = getattr(model, "predictor", None)
    if predictor is not None and hasattr(predictor, "checkpoint_blocks"):
        predictor.checkpoint_blocks = bool(on)


def check_grad_accum(parts: int, rows: int) -> int:
    """``parts`` if it can cut ``rows`` per-process samples into passes (ConfigError naming
    --grad-accum otherwise)."""
    if isinstance(parts, bool) or not isinstance(parts, int) or not 1 <= parts <= rows:
        raise ConfigError(f"--grad-accum must be an integer from 1 to the per-process batch "
                          f"({rows}), got {parts!r}")
    return parts


def _quiet(msg: str) -> None:
    """The log of ranks other than 0."""


class Trainer(SessionViews):
    """One training run of ``cfg`` (a :class:`TrainConfig` or its dict form) in folder ``out``.

    ``resume=True`` continues from the newest valid checkpoint (a corrupt newer one is
    refused, reported and moved aside; none valid is a :class:`ConfigError`);
    ``restart=True`` begins the run again in a folder that holds one (its checkpoints and
    metrics moved aside); ``model_factory(cfg)`` replaces :func:`build_model`
    (tests); ``fault_nonfinite_steps``: steps (1-based, as logged) whose loss is forced to NaN
    (tests of the non-finite handling); ``throttle_s``: a sleep per iteration (tests of kills);
    ``fault_raise_at=(rank, step)``: that rank raises in that step (tests of failing ranks).

    Under ``torchrun`` (or with ``world`` given) the run is data-parallel
    (:mod:`.distributed`): each process reads and trains on its rows of the global batch,
    rank 0 alone writes the folder, logs and draws.  ``parallel``: ``"ddp"`` (every process
    holds the whole model; gradients all-reduced) or ``"fsdp"`` (model, gradients, optimiser
    state and EMA sharded, :mod:`.fsdp`; needs torchrun, even for one process).  It is not
    part of the config: a run resumes with either.  Nor is ``grad_accum``: each process's rows
    run in that many passes whose gradients are summed before the update (memory of one pass
    of ``B / grad_accum`` samples; for the NTM objectives the same update as one pass, since
    every random number is drawn for the whole batch first).  ``metrics_sinks``: callables
    that receive every record written to ``metrics.jsonl`` (e.g.
    :class:`~.tensorboard.TensorBoardSink`; closed at the end when they have ``close``).
    """

    def __init__(self, cfg, out, *, resume: bool = False, device=None, progress: bool = True,
                 log: Optional[Callable[[str], None]] = None,
                 model_factory: Optional[ModelFactory] = None, plots: bool = True,
                 fault_nonfinite_steps=(), throttle_s: float = 0.0,
                 world: Optional[World] = None, parallel: str = "ddp", restart: bool = False,
                 fault_raise_at: Optional[Tuple[int, int]] = None, grad_accum: int = 1,
                 metrics_sinks: Sequence[Callable[[Dict[str, Any]], None]] = ()):
        self.cfg = TrainConfig.coerce(cfg)
        check_sharding(self.cfg, parallel)
        if world is None:
            world, device = init_world(device, parallel)
        self.world, self.parallel, self.sharded = world, parallel, parallel == "fsdp"
        self.rows = world.rows(self.cfg.optim.batch_size)   # (checked before any work)
        self.grad_accum = check_grad_accum(grad_accum, self.rows.stop - self.rows.start)
        self.log = (log or stderr_log) if world.is_main else _quiet
        self.device = default_device(device)
        # sample grids: drawn by every rank of a sharded model (its collectives need them
        # all), by rank 0 alone otherwise; written (and curves drawn) by rank 0
        self.draws = plots and (world.is_main or self.sharded)
        self.plots = plots and world.is_main
        self.fault_steps = {int(s) for s in fault_nonfinite_steps}
        self.fault_raise_at = tuple(fault_raise_at) if fault_raise_at else None
        self.folder = RunFolder(out, kind=None, log=self.log)
        try:
            self.session = self._build(model_factory or build_model, resume, restart)
        except BaseException:
            self.folder.release()
            raise
        self.session.sinks.extend(metrics_sinks)
        self.guard = DriftGuard(self.model, self.cfg.optim, log=self.log,
                                write_metrics=self.session.write_metrics)
        self.loop = Loop(self, self.session, optim=self.cfg.optim, cadence=self.cfg.run,
                         desc=f"train {self.cfg.dataset}", progress=progress and world.is_main,
                         log=self.log, throttle_s=throttle_s, agree=world.agree)

    # ------------------------------------------------------------------ assembly
    def _build(self, factory: ModelFactory, resume: bool, restart: bool) -> RunSession:
        cfg = self.cfg
        init_from = cfg.objective.init_from
        # configuration errors first, before anything is written
        fm_state = None
        if init_from is not None and not (resume and ckpt.list_checkpoints(self.folder.path)):
            fm_state = load_init_source(cfg, log=self.log)
        preflight(factory(cfg), cfg, "cpu", rows=self.rows.stop - self.rows.start)
        # the grids' decoder of a latent run (its --decoder: the spec given now), tried on two
        # training latents (rank 0 draws)
        self.decoder = (run_decoder(cfg, cfg.data.decoder, check=True) if self.world.is_main
                        else None)
        resumed = self._open_folder(resume, restart)
        if resumed is None and init_from is not None and fm_state is None:
            fm_state = load_init_source(cfg, log=self.log)   # no valid checkpoint was left
        seed_everything(derive_seed(cfg.optim.seed, 0, "init"))   # initial weights from the seed
        # (a sharded model stays on the CPU until FSDP moves its shards: the device never
        # holds it whole)
        self.model = factory(cfg) if self.sharded else factory(cfg).to(self.device)
        set_checkpointing(self.model, cfg.optim.checkpoint_predictor)
        self.model.train()
        self.reference: Optional[nn.Module] = None   # the frozen FM predictor (init_from)
        if init_from is not None:
            self.reference = init_reference(self.model, cfg, fm_state=fm_state,
                                            run_dir=self.folder.path, device=self.device)
        self.objective = make_objective(cfg, self.model, self.reference)
        if self.sharded:   # the EMA model is sharded like the model (AdamW comes after)
            self.ema = EMA.of(self.model, cfg.optim)
            for m in (self.model, self.ema.model):
                shard_model(m, self.device)
                FullStates().copy_from_rank0(m)
        else:
            self.world.broadcast_module(self.model)
            self.ema = EMA.of(self.model, cfg.optim)
        self.ddp = self._wrap_ddp()
        if self.device.type != "cpu":
            preflight(self.model, cfg, self.device)
        self.data = DataSource(cfg, device=self.device,
                               rows=self.rows if self.world.enabled else None)
        session = RunSession(self.folder, cfg.to_dict(), self.model, self.ema,
                             adamw(self.model, cfg.optim), self.data, keep=cfg.run.keep,
                             writer=self.world.is_main,
                             states=FullStates() if self.sharded else ProcessStates())
        session.begin(resumed, on_fresh_start=self._on_fresh_start)
        return session

    def _wrap_ddp(self) -> Optional[DistributedDataParallel]:
        """Several processes, replicated model, NTM likelihood: the objective's forward runs
        through ``DistributedDataParallel`` (gradients all-reduced in buckets while the backward
        runs).  The other objectives, and ``grad_accum > 1``, keep the one all-reduce after the
        backward (:meth:`~.distributed.World.average_gradients`)."""
        if not self.world.enabled or self.sharded or not isinstance(self.objective,
                                                                     NTMLikelihood):
            return None
        ids = [self.device.index] if self.device.type == "cuda" else None
        ddp = DistributedDataParallel(self.model, device_ids=ids, broadcast_buffers=False)
        self.objective.forward = ddp
        return ddp

    def _open_folder(self, resume: bool, restart: bool) -> Optional[ckpt.Checkpoint]:
        """Rank 0 owns the folder and picks the checkpoint to continue from; the other ranks
        then read the same one."""
        resumed = None
        if self.world.is_main:
            resumed = self.folder.open(self.cfg.to_dict(), resume=resume,
                                       differences=config_differences, restart=restart)
        self.world.barrier()
        if not self.world.is_main and resume and not restart:
            resumed = ckpt.load_latest(self.folder.path, map_location="cpu", log=_quiet)
        return resumed

    def _on_fresh_start(self) -> None:
        if self.reference is not None:
            save_reference(self.reference, self.folder.path)

    # ------------------------------------------------------------------ the run
    def run(self, stop_after: Optional[int] = None) -> Dict[str, Any]:
        """Train until the budget is spent (or ``stop_after`` iterations, or SIGTERM/SIGINT);
        returns the summary record.  Draws ``curves.png`` at the end.  In a multi-process run,
        a rank that fails says so on stderr, naming itself, before the error propagates (its
        peers' collectives then fail too, and torchrun ends them all)."""
        try:
            summary = self.loop.run(stop_after)
        except Exception as e:
            if self.world.enabled:
                stderr_log(f"ntm train: rank {self.world.rank} of {self.world.size} failed at "
                           f"step {self.step}: {type(e).__name__}: {e}")
            raise
        if self.plots:
            try:
                plots.plot_metrics(read_metrics(self.out), self.out / "curves.png")
            except Exception as e:  # a figure must never lose a run
                self.log(f"could not draw curves.png: {e}")
        self.close()
        # every rank past its last collective before any tears the process group down: a
        # peer that exits while another still draws or writes can abort gloo's teardown
        self.world.barrier()
        return summary

    def train_step(self) -> Dict[str, Any]:
        """One iteration (``step`` -> ``step + 1``); returns its record."""
        cfg, st = self.cfg, self.state
        step = st.step
        torch.manual_seed(derive_seed(cfg.optim.seed, step, "global"))
        x, y = self.data.batch(step)   # this rank's rows of the global batch
        g = device_generator(self.device, derive_seed(cfg.optim.seed, step,
                                                      self.world.noise_stream()))
        lr = learning_rate(cfg.optim, step, st.elapsed_s)
        set_lr(self.session.optimizer, lr)
        batch = Batch(x, y, g, step, st.elapsed_s)
        self.guard.before_step(step)
        try:
            if self.grad_accum == 1:
                with autocast(cfg.optim.precision, self.device):
                    per_sample, metrics = self.objective.loss(batch)
                loss = per_sample.float().mean()
            else:
                loss, metrics = self._accumulated(batch)
        finally:   # (recorded also when --reversible strict raised: the loop then stops)
            self.guard.after_step(step + 1)
        if self.fault_raise_at == (self.world.rank, step + 1):
            raise RuntimeError(f"fault injected at step {step + 1} (--fault-raise-at)")
        if step + 1 in self.fault_steps:  # (numbered like the log: the step being made)
            loss = loss * float("nan")
        global_loss = self.world.mean(loss)
        loss_finite = bool(torch.isfinite(global_loss))
        through_ddp = self.ddp is not None and self.grad_accum == 1
        finite, gnorm = guarded_update(loss, self.model, self.session.optimizer, self.ema,
                                       grad_clip=cfg.optim.grad_clip, ema_updates=step,
                                       loss_finite=loss_finite,
                                       sync_grads=None if self.sharded or through_ddp else
                                       self.world.average_gradients,
                                       backward_done=self.grad_accum > 1)
        st.count(finite)
        st.step = step + 1
        rec = {"step": step + 1, "lr": lr, "loss": float(global_loss), "grad_norm": gnorm,
               "finite": finite, "images": cfg.optim.batch_size}
        rec.update({k: v for k, v in metrics.items() if not torch.is_tensor(v)})
        rec["terms"] = {k: float(v.detach().mean()) for k, v in metrics.items()
                        if torch.is_tensor(v)}
        return rec

    def _accumulated(self, batch: Batch) -> Tuple[Tensor, Dict[str, Any]]:
        """``(mean loss, metrics)`` of ``batch`` run in :attr:`grad_accum` passes, each one's
        backward done at once (so one pass's activations are alive at a time); the gradients
        are left summed in the parameters."""
        self.session.optimizer.zero_grad(set_to_none=True)
        parts = self.objective.loss_parts(batch, self.grad_accum)
        n, total, pieces = batch.x.shape[0], None, []
        while True:
            with autocast(self.cfg.optim.precision, self.device):
                item = next(parts, None)
            if item is None:
                break
            per_sample, metrics = item
            part = per_sample.float().sum() / n
            part.backward()
            total = part.detach() if total is None else total + part.detach()
            pieces.append({k: v.detach() if torch.is_tensor(v) else v
                           for k, v in metrics.items()})
        merged = {k: torch.cat([p[k] for p in pieces]) if torch.is_tensor(pieces[0][k])
                  else pieces[-1][k] for k in pieces[0]}
        return total, merged

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> Dict[str, Any]:
        t0 = time.time()
        rec: Dict[str, Any] = {"type": "eval", "step": self.step}
        if not (self.world.is_main or self.sharded):   # rank 0 evaluates for the run; every
            return rec                                 # rank runs a sharded model (same numbers)
        model = self.ema.model
        rec.update({f"test_{k}": v for k, v in evaluate_test(model, self.cfg,
                                                             self.device).items()})
        if self.draws and self.cfg.eval_samples > 0:
            samples = grid_samples(model, self.cfg, device=self.device)
            if self.world.is_main:
                rec["samples_png"] = str(save_sample_grid(model, self.cfg, device=self.device,
                                                          run_dir=self.out, step=self.step,
                                                          samples=samples,
                                                          decoder=self.decoder))
        rec["eval_s"] = round(time.time() - t0, 3)
        self.state.last_eval = {k: v for k, v in rec.items() if isinstance(v, (int, float))}
        self.session.write_metrics(rec)
        return rec

    def eval_summary(self, rec: Dict[str, Any]) -> str:
        return eval_summary(rec) if self.world.is_main else ""

    def log_extras(self, rec: Dict[str, Any], mean_loss: float
                   ) -> Tuple[Dict[str, Any], Dict[str, str]]:
        ntm = self.cfg.objective.objective == "ntm"
        train_bpd = self._train_bpd() if ntm else None   # (every rank: a collective)
        if not self.world.is_main:
            return {}, {}
        extra: Dict[str, Any] = {"loss_per_dim": mean_loss / math.prod(
            self.cfg.model["data_shape"])}
        post: Dict[str, str] = {}
        if "fm_reg_weight" in rec:
            extra["fm_reg_weight"] = rec["fm_reg_weight"]
        key = likelihood_key(self.cfg)   # bpd, or nats_per_dim of latents
        shown = "nats/dim" if key == "nats_per_dim" else key
        if ntm:
            extra[f"train_{key}"] = train_bpd
            post[shown] = f"{train_bpd:.3f}"
        if f"test_{key}" in self.last_eval:
            post[f"test_{shown}"] = f"{self.last_eval[f'test_{key}']:.3f}"
        return extra, post

    @torch.no_grad()
    def _train_bpd(self) -> float:
        """bits/dim (t_0 = 0 bound; latents: nats/dim) of the current model on this step's
        batch (cheap proxy; several processes: each on its rows, averaged)."""
        x, y = self.data.batch(self.step)
        self.model.eval()
        try:
            g = device_generator(self.device, derive_seed(self.cfg.optim.seed, self.step,
                                                          self.world.noise_stream("bpd")))
            if self.cfg.latent:
                bpd = self.model.nats_per_dim(x, y, generator=g).mean()
            else:
                bpd = self.model.bits_per_dim(x, y, bins=eval_bins(self.cfg.data),
                                              generator=g).mean()
            return float(self.world.mean(bpd))
        finally:
            self.model.train()
