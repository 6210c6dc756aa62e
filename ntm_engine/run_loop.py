"""What every resumable run of this package shares (NTM training, flow-matching pretraining,
distillation): the run folder and its lock, per-step seeds, the learning-rate schedule, EMA
weights, RNG states, ``metrics.jsonl``, atomic checkpoints (:mod:`ntm_engine.checkpoint`), the
signal-safe loop with its progress bar, budgets (iterations and/or minutes) and the skipping of
non-finite losses.

:class:`RunLoop` is the loop; a run type subclasses it and provides ``train_step`` (one
iteration, returning its record), ``evaluate`` and a few hooks.  Determinism: a run resumed
from the checkpoint of step ``s`` repeats, bit for bit on the same machine and thread count,
what an uninterrupted run does after ``s``, provided ``train_step`` draws everything random
from seeds derived from ``(seed, step)`` (:func:`derive_seed`) -- unless a ``minutes`` budget
shapes the learning rate.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from . import checkpoint as ckpt

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"


class ConfigError(ValueError):
    """A configuration that cannot work; raised before any training work starts."""


class NonFiniteLossError(RuntimeError):
    """Too many consecutive non-finite losses; the run stopped."""


# ----------------------------------------------------------------------------- determinism

def derive_seed(seed: int, step: int, stream: str) -> int:
    """A 63-bit seed from ``(seed, step, stream)`` (independent streams per use)."""
    h = hashlib.blake2b(f"{seed}/{stream}/{step}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def device_generator(device, seed: int) -> torch.Generator:
    return torch.Generator(device=torch.device(device)).manual_seed(seed)


def rng_states(data_generator: Optional[torch.Generator] = None) -> Dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    out = {
        "torch_cpu": torch.get_rng_state(),
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                  int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    if torch.cuda.is_available():
        out["torch_cuda"] = torch.cuda.get_rng_state_all()
    if data_generator is not None:
        out["data_generator"] = data_generator.get_state()
    return out


def set_rng_states(st: Dict[str, Any]) -> None:
    torch.set_rng_state(st["torch_cpu"])
    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = st["numpy"]
    np.random.set_state((npst[0], npst[1].numpy().astype(np.uint32), npst[2], npst[3], npst[4]))
    if "torch_cuda" in st and torch.cuda.is_available():
        states = st["torch_cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


def threading_main() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


# ----------------------------------------------------------------------------- schedule, EMA

def budget_progress(cfg: Dict[str, Any], step: int, elapsed_s: float = 0.0,
                    start: int = 0) -> float:
    """Fraction in [0, 1] of the budget spent at ``step`` (counted from ``start``): iterations
    (``iters``) or training time (``minutes``), whichever is further along."""
    progress = 0.0
    if cfg["iters"] is not None:
        progress = (step - start) / max(1, cfg["iters"] - start)
    if cfg["minutes"] is not None:
        progress = max(progress, elapsed_s / (60.0 * cfg["minutes"]))
    return min(max(progress, 0.0), 1.0)


def learning_rate(cfg: Dict[str, Any], step: int, elapsed_s: float = 0.0) -> float:
    """Linear warm-up over ``warmup`` iterations, then cosine decay to ``min_lr_ratio * lr`` at
    the end of the budget (``iters``, or ``minutes`` of training time, whichever comes first)."""
    lr, warm = cfg["lr"], cfg["warmup"]
    if step < warm:
        return lr * (step + 1) / warm
    lo = lr * cfg["min_lr_ratio"]
    progress = budget_progress(cfg, step, elapsed_s, start=warm)
    return lo + (lr - lo) * 0.5 * (1 + math.cos(math.pi * progress))


class EMA:
    """Exponential moving average of a model's floating-point parameters and buffers;
    ``decay`` ramps up as ``min(decay, (1+n)/(10+n))`` over the first updates."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, num_updates: int) -> None:
        d = min(self.decay, (1 + num_updates) / (10 + num_updates))
        src = model.state_dict()
        avg, new = [], []
        for k, v in self.model.state_dict().items():
            if v.dtype.is_floating_point:
                avg.append(v)
                new.append(src[k])
            else:
                v.copy_(src[k])
        if avg:
            torch._foreach_lerp_(avg, new, 1 - d)


# ----------------------------------------------------------------------------- options

def _opt(key: str) -> str:
    return "--" + key.replace("_", "-")


def validate_loop_options(cfg: Dict[str, Any], counts: Tuple[str, ...] = (
        "log_every", "eval_every", "ckpt_every", "keep", "max_nonfinite", "eval_batch")) -> None:
    """The options every run loop has (batch, optimiser, EMA, budget, and the ``counts`` that
    must be >= 1): a :class:`ConfigError` naming the first bad one and its value."""
    checks = [
        (cfg["batch_size"] >= 1, f"--batch-size must be >= 1, got {cfg['batch_size']}"),
        (cfg["lr"] > 0 and math.isfinite(cfg["lr"]), f"--lr must be > 0, got {cfg['lr']}"),
        (0 <= cfg["min_lr_ratio"] <= 1,
         f"--min-lr-ratio must lie in [0, 1], got {cfg['min_lr_ratio']}"),
        (cfg["warmup"] >= 0, f"--warmup must be >= 0, got {cfg['warmup']}"),
        (cfg["weight_decay"] >= 0, f"--weight-decay must be >= 0, got {cfg['weight_decay']}"),
        (0 <= cfg["ema_decay"] < 1, f"--ema-decay must lie in [0, 1), got {cfg['ema_decay']}"),
        (cfg["grad_clip"] is None or cfg["grad_clip"] > 0,
         f"--grad-clip must be > 0, got {cfg['grad_clip']}"),
        (cfg["iters"] is not None or cfg["minutes"] is not None,
         "give a budget: --iters and/or --minutes"),
        (cfg["iters"] is None or cfg["iters"] >= 1, f"--iters must be >= 1, got {cfg['iters']}"),
        (cfg["minutes"] is None or cfg["minutes"] > 0,
         f"--minutes must be > 0, got {cfg['minutes']}"),
    ] + [(cfg[k] >= 1, f"{_opt(k)} must be >= 1, got {cfg[k]}") for k in counts]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)


# ----------------------------------------------------------------------------- model code

def model_code_fingerprint() -> str:
    """sha256 of the model's source (``ntm_engine/models``, ``ntm_engine/nn``): a checkpoint
    loaded by other model code may not compute the same function."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for sub in ("models", "nn"):
        for f in sorted((root / sub).glob("*.py")):
            h.update(f"{sub}/{f.name}".encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def check_model_code(state: Dict[str, Any], where, log) -> None:
    """Warn if ``state`` (a checkpoint's) was written by different model code."""
    saved = state.get("model_code_sha256")
    if saved and saved != model_code_fingerprint():
        log(f"warning: {where} was written by different model code (ntm_engine/models or "
            "ntm_engine/nn changed since); it loads, but may not compute the same function")


# ----------------------------------------------------------------------------- metrics file

def read_metrics(run_dir) -> List[Dict[str, Any]]:
    """The records of ``metrics.jsonl`` (a torn last line, from a kill, is skipped)."""
    path = Path(run_dir) / METRICS_FILE
    out = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def truncate_metrics(run_dir, step: int) -> None:
    """Drop records written after ``step`` (by a run that was killed before checkpointing
    them), so a resumed run's curve continues without duplicates."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return
    keep = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]
    ckpt.atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))


# ----------------------------------------------------------------------------- the loop

def _kind_name(kind: Optional[str]) -> str:
    return "an NTM training run" if kind is None else f"a {kind} run"


class RunLoop:
    """One resumable run in folder ``out``.

    A subclass sets :attr:`kind` (``config["kind"]`` of its runs; None for NTM training runs)
    and :attr:`desc` (the progress bar's label), builds ``self.model``, ``self.ema``,
    ``self.opt`` and ``self.data`` (a :class:`~ntm_engine.train.DataSource`) between
    :meth:`_open_run_folder` and :meth:`_begin`, and implements :meth:`train_step`,
    :meth:`evaluate` and :meth:`config_differences`.  ``fault_nonfinite_steps``: steps
    (1-based, as logged) whose loss the subclass forces to NaN (tests of the non-finite
    handling); ``throttle_s``: a sleep per iteration (tests of kills).
    """

    kind: Optional[str] = None
    desc = "train"

    def __init__(self, out, *, device=None, progress: bool = True,
                 log: Optional[Callable[[str], None]] = None, fault_nonfinite_steps=(),
                 throttle_s: float = 0.0):
        self.out = Path(out)
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.progress = progress
        self.fault_steps = set(int(s) for s in fault_nonfinite_steps)
        self.throttle_s = throttle_s
        self._lock = None

    # -------------------------------------------------------------- hooks
    def config_differences(self, stored: Dict[str, Any], requested: Dict[str, Any]) -> List[str]:
        """Readable differences of the run-defining entries (a resume must agree on them)."""
        raise NotImplementedError

    def train_step(self) -> Dict[str, Any]:
        """One iteration (``self.step`` -> ``self.step + 1``); returns a record with ``step``,
        ``lr``, ``loss``, ``grad_norm``, ``finite`` and optionally ``terms`` (named loss
        terms, averaged into the log) and ``fm_reg_weight``-like extras."""
        raise NotImplementedError

    def evaluate(self) -> Dict[str, Any]:
        """Held-out evaluation; must set ``self.last_eval`` and write a metrics record."""
        raise NotImplementedError

    def eval_summary(self, rec: Dict[str, Any]) -> str:
        """One line for an evaluation record (progress bar and log)."""
        return ", ".join(f"{k} {v:.4g}" for k, v in rec.items()
                         if k.startswith("test_") and isinstance(v, float))

    def _log_extras(self, rec: Dict[str, Any], mean_loss: float
                    ) -> Tuple[Dict[str, Any], Dict[str, str]]:
        """Extra entries of a ``train`` log record and of the progress bar's postfix."""
        return {}, {}

    def _on_fresh_start(self) -> None:
        """Called once when a run starts from scratch (after the folder is cleared)."""

    def _on_end(self) -> None:
        """Called after the final checkpoint and summary (figures, ...)."""

    # -------------------------------------------------------------- the run folder
    def _acquire_lock(self) -> None:
        """One process per run folder: an advisory lock, released by the OS even on SIGKILL."""
        import fcntl

        self.out.mkdir(parents=True, exist_ok=True)
        f = open(self.out / ".lock", "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise ConfigError(f"another training process is using {self.out} right now")
        self._lock = f

    def close(self) -> None:
        """Release the run folder (done at the end of :meth:`run`)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _open_run_folder(self, cfg: Dict[str, Any], resume: bool) -> Optional[ckpt.Checkpoint]:
        """Own ``out`` and return the checkpoint to continue from (None: a fresh start).
        Refuses a folder with checkpoints unless ``resume``, one of another kind of run, and
        one made with another configuration."""
        existing = ckpt.list_checkpoints(self.out)
        if existing and not resume:
            raise ConfigError(f"{self.out} already holds checkpoints (up to step "
                              f"{existing[-1][0]}); pass --resume to continue that run, or "
                              "choose another --out folder")
        self._acquire_lock()
        if not (resume and existing):
            return None
        resumed = ckpt.load_latest(self.out, map_location="cpu", quarantine=True, log=self.log)
        if resumed is None:
            self.log(f"no valid checkpoint left in {self.out}; starting from scratch")
            return None
        if resumed.config.get("kind") != self.kind:
            raise ConfigError(f"{self.out} holds checkpoints of "
                              f"{_kind_name(resumed.config.get('kind'))}, not of "
                              f"{_kind_name(self.kind)}; choose another --out folder")
        diffs = self.config_differences(resumed.config, cfg)
        if diffs:
            raise ConfigError(f"the checkpoint in {resumed.path} was made with another "
                              "configuration:\n  " + "\n  ".join(diffs))
        return resumed

    def _begin(self, cfg: Dict[str, Any], resumed: Optional[ckpt.Checkpoint]) -> None:
        """Set the counters, then restore ``resumed`` or clear the folder for a fresh start;
        writes the config."""
        self.cfg = cfg
        self.step, self.elapsed_s, self.skipped, self.nonfinite_run = 0, 0.0, 0, 0
        self.last_eval: Dict[str, Any] = {}
        self.resumed_from: Optional[str] = None
        self._code_sha = model_code_fingerprint()
        self._saved_step: Optional[int] = None
        self._saved_path: Optional[Path] = None
        if resumed is not None:
            self._restore(resumed)
        else:
            self.out.mkdir(parents=True, exist_ok=True)
            if (self.out / METRICS_FILE).exists():
                (self.out / METRICS_FILE).unlink()
            self._on_fresh_start()
        ckpt.atomic_write_text(self.out / CONFIG_FILE, json.dumps(cfg, indent=1))

    # -------------------------------------------------------------- state
    def _restore(self, ck: ckpt.Checkpoint) -> None:
        try:
            self.model.load_state_dict(ck.model, strict=True)
            if ck.ema is not None:
                self.ema.model.load_state_dict(ck.ema, strict=True)
            self.opt.load_state_dict(ck.state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise ConfigError(f"checkpoint {ck.path} does not fit this model: {e}") from e
        st = ck.state
        check_model_code(st, ck.path, self.log)
        self.step = int(st["step"])
        self.elapsed_s = float(st.get("elapsed_s", 0.0))
        self.skipped = int(st.get("skipped_steps", 0))
        self.nonfinite_run = int(st.get("nonfinite_run", 0))
        self.last_eval = dict(st.get("last_eval", {}))
        if "rng" in st:
            set_rng_states(st["rng"])
        truncate_metrics(self.out, self.step)
        self._saved_step, self._saved_path = self.step, ck.path
        self.log(f"resumed from {ck.path} at step {self.step}")
        self.resumed_from = str(ck.path)

    def save(self) -> Path:
        state = {
            "config": self.cfg, "optimizer": self.opt.state_dict(), "elapsed_s": self.elapsed_s,
            "skipped_steps": self.skipped, "nonfinite_run": self.nonfinite_run,
            "rng": rng_states(self.data.generator(self.step)), "last_eval": self.last_eval,
            "torch_version": str(torch.__version__), "model_code_sha256": self._code_sha,
        }
        path = ckpt.save_checkpoint(self.out, self.step, self.model.state_dict(),
                                    self.ema.model.state_dict(), state, keep=self.cfg["keep"])
        self._saved_step, self._saved_path = self.step, path
        self._write_metrics({"type": "checkpoint", "step": self.step, "path": str(path)},
                            sync=True)
        return path

    def _write_metrics(self, rec: Dict[str, Any], sync: bool = False) -> None:
        with open(self.out / METRICS_FILE, "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            if sync:
                os.fsync(f.fileno())

    def _budget_spent(self) -> Optional[str]:
        """``"iters"`` or ``"minutes"`` once that budget is spent, else None."""
        cfg = self.cfg
        if cfg["iters"] is not None and self.step >= cfg["iters"]:
            return "iters"
        if cfg["minutes"] is not None and self.elapsed_s >= 60.0 * cfg["minutes"]:
            return "minutes"
        return None

    # -------------------------------------------------------------- the loop
    def run(self, stop_after: Optional[int] = None) -> Dict[str, Any]:
        """Iterate until the budget is spent (or ``stop_after`` iterations of this call, or
        SIGTERM/SIGINT, which finish the step and checkpoint); evaluate and checkpoint
        periodically and at the end.  Returns the summary record."""
        from tqdm import tqdm

        cfg = self.cfg
        start_step, t_start, elapsed0 = self.step, time.time(), self.elapsed_s
        self._write_metrics({"type": "event", "event": "resume" if start_step else "start",
                             "step": self.step, "time": time.time()})
        stop_signal: List[int] = []
        old_handlers = {}
        if threading_main():
            for sig in (signal.SIGTERM, signal.SIGINT):
                old_handlers[sig] = signal.signal(sig, lambda s, f: stop_signal.append(s))
        bar = tqdm(total=cfg["iters"], initial=self.step, disable=not self.progress,
                   dynamic_ncols=True, desc=self.desc, unit="it", file=sys.stderr,
                   mininterval=0.5)
        window: List[Dict[str, float]] = []   # loss and its terms of the finite steps
        tick, tick_step = time.time(), self.step
        try:
            while True:
                spent = self._budget_spent()
                if spent or stop_signal or (stop_after is not None
                                            and self.step - start_step >= stop_after):
                    stopped = (f"budget ({spent})" if spent else
                               f"signal {stop_signal[0]}" if stop_signal else "stop_after")
                    break
                rec = self.train_step()
                if self.throttle_s:
                    time.sleep(self.throttle_s)
                self.elapsed_s = elapsed0 + (time.time() - t_start)
                if rec["finite"]:
                    window.append({"loss": rec["loss"], **rec.get("terms", {})})
                else:
                    self._nonfinite(rec)
                bar.update(1)
                if self.step % cfg["log_every"] == 0 or self.step == cfg["iters"]:
                    now = time.time()
                    its = (self.step - tick_step) / max(now - tick, 1e-9)
                    tick, tick_step = now, self.step
                    self._log_train(rec, window, its, bar)
                    window = []
                if self.step % cfg["eval_every"] == 0:
                    bar.write(f"step {self.step}: {self.eval_summary(self.evaluate())}")
                if self.step % cfg["ckpt_every"] == 0:
                    self.save()
        except BaseException:
            self.close()
            raise
        finally:
            bar.close()
            for sig, h in old_handlers.items():
                signal.signal(sig, h)
        if stopped.startswith("budget") and self.last_eval.get("step") != self.step:
            self.log(f"step {self.step}: {self.eval_summary(self.evaluate())}")
        path = self.save() if self._saved_step != self.step else self._saved_path
        summary = {"type": "event", "event": "end", "reason": stopped, "step": self.step,
                   "elapsed_s": round(self.elapsed_s, 3), "skipped": self.skipped,
                   "checkpoint": str(path), **{k: v for k, v in self.last_eval.items()
                                               if k.startswith("test_")}}
        self._write_metrics(summary, sync=True)
        self._on_end()
        self.close()
        if stopped.startswith("signal"):
            self.log(f"stopped by {stopped} at step {self.step}; checkpoint {path} written")
        return summary

    def _log_train(self, rec: Dict[str, Any], window: List[Dict[str, float]], its: float,
                   bar) -> None:
        means = {k: sum(w[k] for w in window) / len(window) for k in window[0]} if window else {}
        mean_loss = means.pop("loss", float("nan"))
        lrec = {"type": "train", "step": self.step, "loss": mean_loss, "lr": rec["lr"],
                "grad_norm": rec["grad_norm"], "it_s": its,
                "elapsed_s": round(self.elapsed_s, 3), "skipped": self.skipped, **means}
        post = {"loss": f"{mean_loss:.4g}"}
        extra_rec, extra_post = self._log_extras(rec, mean_loss)
        lrec.update(extra_rec)
        post.update(extra_post)
        self._write_metrics(lrec)
        post.update({"lr": f"{rec['lr']:.2e}", "it/s": f"{its:.2f}"})
        bar.set_postfix(post, refresh=False)

    def _nonfinite(self, rec: Dict[str, Any]) -> None:
        self.log(f"step {rec['step']}: non-finite loss or gradient ({rec['loss']}); step "
                 f"skipped ({self.nonfinite_run} in a row, {self.skipped} in total)")
        self._write_metrics({"type": "nonfinite", "step": self.step, "loss": str(rec["loss"]),
                             "run": self.nonfinite_run, "skipped_total": self.skipped})
        if self.nonfinite_run >= self.cfg["max_nonfinite"]:
            good = ckpt.list_checkpoints(self.out)
            where = (f"the last good checkpoint is {good[-1][1]}" if good else
                     "no checkpoint had been written yet")
            self._write_metrics({"type": "event", "event": "nonfinite_stop", "step": self.step},
                                sync=True)
            raise NonFiniteLossError(
                f"stopping: {self.nonfinite_run} consecutive non-finite losses (max_nonfinite "
                f"{self.cfg['max_nonfinite']}) at step {self.step}; {where}. Lower --lr or "
                "raise --warmup/--grad-clip.")


def run_command(loop: RunLoop, command: str) -> int:
    """Run ``loop`` for a command-line ``command`` (e.g. ``"ntm train"``): print the summary
    record as JSON; exit status 128 + N when stopped by signal N, 0 otherwise; too many
    non-finite losses become a SystemExit with the message."""
    try:
        summary = loop.run()
    except NonFiniteLossError as e:
        raise SystemExit(f"{command}: {e}")
    print(json.dumps(summary))
    if summary["reason"].startswith("signal"):
        return 128 + int(summary["reason"].split()[1])
    return 0
