"""The resumable loop, assembled from small parts: stop signals (:class:`StopSignals`), the
progress bar and log window (:class:`TrainLog`), the budget, the non-finite guard, and the
evaluation / checkpoint cadence; the run's parts live in a :class:`~.session.RunSession`.

The loop drives a *task* (:class:`Task`: the trainer, the distiller) that makes one iteration
and one evaluation; everything around them is here, in this order per iteration: step, log
(every ``log_every``), evaluate (every ``eval_every``), checkpoint (every ``ckpt_every``).
SIGTERM/SIGINT finish the iteration, checkpoint and end the run.
"""
from __future__ import annotations

import json
import signal
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Protocol, Tuple

from tqdm import tqdm

from .. import checkpoint as ckpt
from ..nn import ReversibleDriftError
from .errors import NonFiniteLossError
from .sections import OptimConfig, RunConfig
from .session import RunSession


class Task(Protocol):
    def train_step(self) -> Dict[str, Any]:
        """One iteration (state.step -> state.step + 1); a record with ``step``, ``lr``,
        ``loss``, ``grad_norm``, ``finite`` and optionally ``terms`` (named loss terms,
        averaged into the log)."""

    def evaluate(self) -> Dict[str, Any]:
        """Held-out evaluation; sets ``state.last_eval`` and writes a metrics record."""

    def eval_summary(self, rec: Dict[str, Any]) -> str:
        """One line for an evaluation record (empty: nothing to say)."""

    def log_extras(self, rec: Dict[str, Any], mean_loss: float
                   ) -> Tuple[Dict[str, Any], Dict[str, str]]:
        """Extra entries of a ``train`` log record and of the progress bar's postfix."""


class StopSignals:
    """While entered (in the main thread), SIGTERM and SIGINT are recorded instead of raised."""

    def __init__(self):
        self.received: List[int] = []
        self._old: Dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, lambda s, f: self.received.append(s))
        return self

    def __exit__(self, *exc) -> None:
        for sig, h in self._old.items():
            signal.signal(sig, h)


class TrainLog:
    """The progress bar and the ``train`` records: mean loss and terms over the finite steps
    since the last record, iterations per second and, when the task's records carry
    ``images`` (examples per iteration, all processes together), images per second."""

    def __init__(self, session: RunSession, *, total: Optional[int], desc: str, show: bool):
        self.session = session
        self.bar = tqdm(total=total, initial=session.state.step, disable=not show,
                        dynamic_ncols=True, desc=desc, unit="it", file=sys.stderr,
                        mininterval=0.5)
        self.window: List[Dict[str, float]] = []
        self.tick, self.tick_step = time.time(), session.state.step

    def add(self, rec: Dict[str, Any]) -> None:
        if rec["finite"]:
            self.window.append({"loss": rec["loss"], **rec.get("terms", {})})
        self.bar.update(1)

    def flush(self, rec: Dict[str, Any], task: Task) -> None:
        st = self.session.state
        now = time.time()
        its = (st.step - self.tick_step) / max(now - self.tick, 1e-9)
        self.tick, self.tick_step = now, st.step
        w = self.window
        means = {k: sum(r[k] for r in w) / len(w) for k in w[0]} if w else {}
        mean_loss = means.pop("loss", float("nan"))
        lrec = {"type": "train", "step": st.step, "loss": mean_loss, "lr": rec["lr"],
                "grad_norm": rec["grad_norm"], "it_s": its, "elapsed_s": round(st.elapsed_s, 3),
                "skipped": st.skipped, **means}
        extra_rec, extra_post = task.log_extras(rec, mean_loss)
        lrec.update(extra_rec)
        if "images" in rec:
            lrec["img_s"] = its * rec["images"]
        self.session.write_metrics(lrec)
        post = {"loss": f"{mean_loss:.4g}", **extra_post, "lr": f"{rec['lr']:.2e}",
                "it/s": f"{its:.2f}"}
        if "images" in rec:
            post["img/s"] = f"{lrec['img_s']:.0f}"
        self.bar.set_postfix(post, refresh=False)
        self.window = []

    def close(self) -> None:
        self.bar.close()


def budget_spent(opt: OptimConfig, step: int, elapsed_s: float) -> Optional[str]:
    """``"iters"`` or ``"minutes"`` once that budget is spent, else None."""
    if opt.iters is not None and step >= opt.iters:
        return "iters"
    if opt.minutes is not None and elapsed_s >= 60.0 * opt.minutes:
        return "minutes"
    return None


class Loop:
    """Runs ``task`` over ``session`` until the budget of ``optim`` is spent, with the cadence
    of ``cadence``.  ``throttle_s``: a sleep per iteration (tests of kills).  ``agree(
    elapsed_s, stop) -> (elapsed_s, stop)``: what the processes of a multi-process run agree on
    before every iteration (the training clock, whether to stop; :mod:`.distributed`)."""

    def __init__(self, task: Task, session: RunSession, *, optim: OptimConfig,
                 cadence: RunConfig, desc: str, progress: bool = True,
                 log: Callable[[str], None], throttle_s: float = 0.0,
                 agree: Callable[[float, bool], Tuple[float, bool]] = lambda e, s: (e, s)):
        self.task, self.session, self.agree = task, session, agree
        self.optim, self.cadence = optim, cadence
        self.desc, self.progress, self.log, self.throttle_s = desc, progress, log, throttle_s

    def run(self, stop_after: Optional[int] = None) -> Dict[str, Any]:
        """Iterate until the budget is spent (or ``stop_after`` iterations of this call, or a
        stop signal); evaluate and checkpoint periodically and at the end.  Returns the
        summary record (also written to the metrics)."""
        st, s = self.session.state, self.session
        start_step = st.step
        s.write_metrics({"type": "event", "event": "resume" if start_step else "start",
                         "step": st.step, "time": time.time()})
        log = TrainLog(s, total=self.optim.iters, desc=self.desc, show=self.progress)
        try:
            with StopSignals() as signals:
                stopped = self._iterate(log, signals, start_step, stop_after)
        except ReversibleDriftError as e:
            raise self._drift_stop(e) from e
        except BaseException:
            s.folder.release()
            raise
        finally:
            log.close()
        return self._finish(stopped)

    def _iterate(self, log: TrainLog, signals: StopSignals, start_step: int,
                 stop_after: Optional[int]) -> str:
        st, c = self.session.state, self.cadence
        t_start, elapsed0 = time.time(), st.elapsed_s
        while True:
            st.elapsed_s, stop = self.agree(st.elapsed_s, bool(signals.received))
            spent = budget_spent(self.optim, st.step, st.elapsed_s)
            if spent:
                return f"budget ({spent})"
            if stop:   # (here or in another process of the run)
                return f"signal {signals.received[0] if signals.received else int(signal.SIGTERM)}"
            if stop_after is not None and st.step - start_step >= stop_after:
                return "stop_after"
            rec = self.task.train_step()
            if self.throttle_s:
                time.sleep(self.throttle_s)
            st.elapsed_s = elapsed0 + (time.time() - t_start)
            log.add(rec)
            if not rec["finite"]:
                self._nonfinite(rec)
            if st.step % c.log_every == 0 or st.step == self.optim.iters:
                log.flush(rec, self.task)
            if st.step % c.eval_every == 0:
                line = self.task.eval_summary(self.task.evaluate())
                if line:
                    log.bar.write(f"step {st.step}: {line}")
            if st.step % c.ckpt_every == 0:
                self.session.save()

    def _finish(self, stopped: str) -> Dict[str, Any]:
        s, st = self.session, self.session.state
        if stopped.startswith("budget") and st.last_eval.get("step") != st.step:
            self.log(f"step {st.step}: {self.task.eval_summary(self.task.evaluate())}")
        path = s.save() if s.saved_step != st.step else s.saved_path
        summary = {"type": "event", "event": "end", "reason": stopped, "step": st.step,
                   "elapsed_s": round(st.elapsed_s, 3), "skipped": st.skipped,
                   "checkpoint": str(path), **{k: v for k, v in st.last_eval.items()
                                               if k.startswith("test_")}}
        s.write_metrics(summary, sync=True)
        if stopped.startswith("signal"):
            self.log(f"stopped by {stopped} at step {st.step}; checkpoint {path} written")
        return summary

    def _drift_stop(self, e: ReversibleDriftError) -> ReversibleDriftError:
        """``--reversible strict`` ended the run before the step's backward: checkpoint the
        step reached (unless the checkpoint is a collective another process may not join),
        record it, release the folder; returns the error to raise."""
        s, st = self.session, self.session.state
        try:
            path = s.saved_path if s.saved_step == st.step or s.states.collective else s.save()
            s.write_metrics({"type": "event", "event": "reversible_drift_stop", "step": st.step,
                             "checkpoint": str(path)}, sync=True)
        finally:
            s.folder.release()
        return ReversibleDriftError(
            f"stopping at step {st.step} (--reversible strict): {e}; the last checkpoint is "
            f"{path}. Resume with --reversible fallback to keep activations instead, or lower "
            "--lr")

    def _nonfinite(self, rec: Dict[str, Any]) -> None:
        st, s = self.session.state, self.session
        self.log(f"step {rec['step']}: non-finite loss or gradient ({rec['loss']}); step "
                 f"skipped ({st.nonfinite_run} in a row, {st.skipped} in total)")
        s.write_metrics({"type": "nonfinite", "step": st.step, "loss": str(rec["loss"]),
                         "run": st.nonfinite_run, "skipped_total": st.skipped})
        if st.nonfinite_run < self.optim.max_nonfinite:
            return
        good = ckpt.list_checkpoints(s.out)
        where = (f"the last good checkpoint is {good[-1][1]}" if good else
                 "no checkpoint had been written yet")
        s.write_metrics({"type": "event", "event": "nonfinite_stop", "step": st.step}, sync=True)
        raise NonFiniteLossError(
            f"stopping: {st.nonfinite_run} consecutive non-finite losses (max_nonfinite "
            f"{self.optim.max_nonfinite}) at step {st.step}; {where}. Lower --lr or "
            "raise --warmup/--grad-clip.")


def run_command(run: Callable[[], Dict[str, Any]], command: str) -> int:
    """Run a loop (``run()`` returns its summary) for a command-line ``command`` (e.g.
    ``"ntm train"``): print the summary as JSON; exit status 128 + N when stopped by signal N,
    0 otherwise; too many non-finite losses become a SystemExit with the message."""
    try:
        summary = run()
    except (NonFiniteLossError, ReversibleDriftError) as e:
        raise SystemExit(f"{command}: {e}")
    print(json.dumps(summary))
    if summary["reason"].startswith("signal"):
        return 128 + int(summary["reason"].split()[1])
    return 0
