"""What a run carries from step to step and into its checkpoints: the counters
(:class:`RunState`) and the trained parts (:class:`RunSession`: model, EMA, optimiser, data
source, config), saved and restored as one."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from .. import checkpoint as ckpt
from ..logs import log
from .determinism import check_model_code, model_code_fingerprint, rng_states, set_rng_states
from .errors import ConfigError
from .metrics_log import append_metrics, truncate_metrics
from .optim import EMA
from .run_folder import RunFolder


def default_device(device=None) -> torch.device:
    """``device``, or CUDA when available, else the CPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def stderr_log(msg: str) -> None:
    """The default ``log`` of runs: the ``ntm_engine`` logger (:mod:`ntm_engine.logs`)."""
    log(msg)


@dataclass
class RunState:
    """Counters of a run: iterations done, training seconds (across resumes), skipped
    iterations, the current run of non-finite ones, and the last evaluation's numbers."""
    step: int = 0
    elapsed_s: float = 0.0
    skipped: int = 0
    nonfinite_run: int = 0
    last_eval: Dict[str, Any] = field(default_factory=dict)

    def count(self, finite: bool) -> None:
        """Book one iteration as made (``finite``) or skipped."""
        if finite:
            self.nonfinite_run = 0
        else:
            self.skipped += 1
            self.nonfinite_run += 1

    def to_state(self) -> Dict[str, Any]:
        return {"elapsed_s": self.elapsed_s, "skipped_steps": self.skipped,
                "nonfinite_run": self.nonfinite_run, "last_eval": self.last_eval}

    @classmethod
    def from_state(cls, st: Dict[str, Any]) -> "RunState":
        return cls(step=int(st["step"]), elapsed_s=float(st.get("elapsed_s", 0.0)),
                   skipped=int(st.get("skipped_steps", 0)),
                   nonfinite_run=int(st.get("nonfinite_run", 0)),
                   last_eval=dict(st.get("last_eval", {})))


class ProcessStates:
    """Checkpoint state of a model this process holds whole (one process, or ``--parallel
    ddp``): ``state_dict`` and ``load_state_dict``.  :class:`~.fsdp.FullStates` is the
    sharded counterpart (same methods, same dicts)."""

    collective = False   # whether every process must take part in getting the state

    def model_state(self, model: nn.Module) -> Dict[str, torch.Tensor]:
        return model.state_dict()

    def load_model(self, model: nn.Module, state: Dict[str, torch.Tensor]) -> None:
        model.load_state_dict(state, strict=True)

    def optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer
                        ) -> Dict[str, Any]:
        return optimizer.state_dict()

    def load_optimizer(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                       state: Dict[str, Any]) -> None:
        optimizer.load_state_dict(state)


@dataclass
class RunSession:
    """The parts of one run that checkpoints hold.  ``data`` must have ``generator(step)``
    (:class:`~.batches.DataSource`); ``config`` is the flat JSON form.  ``writer``: whether
    this process writes the folder (False on ranks other than 0 of a multi-process run:
    they restore checkpoints but write nothing).  ``states``: how the model, EMA and
    optimiser states are got and loaded (:class:`ProcessStates`, or gathered from and
    scattered to shards by every rank, :class:`~.fsdp.FullStates`)."""
    folder: RunFolder
    config: Dict[str, Any]
    model: nn.Module
    ema: EMA
    optimizer: torch.optim.Optimizer
    data: Any
    keep: int
    state: RunState = field(default_factory=RunState)
    saved_step: Optional[int] = None
    saved_path: Optional[Path] = None
    code_sha: str = field(default_factory=model_code_fingerprint)
    writer: bool = True
    states: Any = field(default_factory=ProcessStates)
    sinks: List[Callable[[Dict[str, Any]], None]] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return self.folder.path

    def begin(self, resumed: Optional[ckpt.Checkpoint], *,
              on_fresh_start: Callable[[], None] = lambda: None) -> None:
        """Restore ``resumed``, or clear the folder for a fresh start (then
        ``on_fresh_start()``); write the config."""
        if resumed is not None:
            self.restore(resumed)
        elif self.writer:
            self.folder.clear_metrics()
            on_fresh_start()
        if self.writer:
            self.folder.write_config(self.config)

    def restore(self, ck: ckpt.Checkpoint) -> None:
        io = self.states
        try:
            io.load_model(self.model, ck.model)
            if ck.ema is not None:
                io.load_model(self.ema.model, ck.ema)
            io.load_optimizer(self.model, self.optimizer, ck.state["optimizer"])
        except (RuntimeError, ValueError, KeyError, IndexError) as e:
            raise ConfigError(f"checkpoint {ck.path} does not fit this model: {e}") from e
        check_model_code(ck.state, ck.path, self.folder.log)
        self._check_data(ck)
        self.state = RunState.from_state(ck.state)
        if "rng" in ck.state:
            set_rng_states(ck.state["rng"])
        if self.writer:
            truncate_metrics(self.out, self.state.step, log=self.folder.log)
        self.saved_step, self.saved_path = self.state.step, ck.path
        self.folder.log(f"resumed from {ck.path} at step {self.state.step}")

    def _check_data(self, ck: ckpt.Checkpoint) -> None:
        """Warn when the data changed since the checkpoint (runs before fingerprints: quiet)."""
        stored, now = ck.state.get("data_fingerprint"), getattr(self.data, "fingerprint", None)
        if stored is not None and now is not None and stored != now:
            self.folder.log(f"warning: the data of {self.config.get('dataset')!r} changed since "
                            f"{ck.path} was written (fingerprint {stored} -> {now}); resuming "
                            "on the data as it is now")

    def save(self) -> Path:
        """Checkpoint the run at its current step (and record it in the metrics); a process
        that does not write returns the last checkpoint's path."""
        step = self.state.step
        io = self.states
        if not (self.writer or io.collective):
            self.saved_step = step
            return self.saved_path
        model, ema = io.model_state(self.model), io.model_state(self.ema.model)
        optimizer = io.optimizer_state(self.model, self.optimizer)
        if not self.writer:
            self.saved_step = step
            return self.saved_path
        state = {"config": self.config, "optimizer": optimizer,
                 **self.state.to_state(), "rng": rng_states(self.data.generator(step)),
                 "torch_version": str(torch.__version__), "model_code_sha256": self.code_sha,
                 "data_fingerprint": getattr(self.data, "fingerprint", None)}
        path = ckpt.save_checkpoint(self.out, step, model, ema, state, keep=self.keep)
        self.saved_step, self.saved_path = step, path
        self.write_metrics({"type": "checkpoint", "step": step, "path": str(path)}, sync=True)
        return path

    def write_metrics(self, rec: Dict[str, Any], *, sync: bool = False) -> None:
        """Append ``rec`` to ``metrics.jsonl`` and hand it to every sink of :attr:`sinks`
        (e.g. TensorBoard); the writing process only."""
        if self.writer:
            append_metrics(self.out, rec, sync=sync)
            for sink in self.sinks:
                sink(rec)


class SessionViews:
    """Read access to a run's counters for the objects that own a ``session`` and a
    ``folder`` (the trainer, the distiller); no behaviour of the loop lives here."""
    session: RunSession
    folder: RunFolder

    @property
    def state(self) -> RunState:
        return self.session.state

    @property
    def step(self) -> int:
        return self.session.state.step

    @property
    def skipped(self) -> int:
        return self.session.state.skipped

    @property
    def nonfinite_run(self) -> int:
        return self.session.state.nonfinite_run

    @property
    def last_eval(self) -> Dict[str, Any]:
        return self.session.state.last_eval

    @property
    def out(self) -> Path:
        return self.folder.path

    def close(self) -> None:
        """Close the metrics sinks that can be closed and release the run folder (done at the
        end of ``run``)."""
        for sink in getattr(self.session, "sinks", ()):
            close = getattr(sink, "close", None)
            if close is not None:
                close()
        self.folder.release()
