"""Self-distillation of a trained NTM into a light denoiser (``docs/design.md`` section 1,
"Trajectory denoising and self-distillation").

The frozen teacher (an NTM, EMA weights) draws forward trajectories of real training data on
its grid with a fixed ``t_0 = t_d > 0``; the regression target is its Tweedie posterior mean
``E[x | X]``, the input the transporter's output at level 0 (:class:`~.objectives.
DistillationTarget`).  Class-conditional teachers: labels are replaced by the null class with
probability ``label_dropout``, so the denoiser also serves unconditional sampling.  The
targets cost about 20 denoiser updates, so each batch of targets serves ``updates_per_batch``
updates.  The loop, seeds, checkpoints and resume are those of training (:mod:`.loop`).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..condition import labels_of
from ..data import DIGITS_BINS, dequantize
from ..models import Denoiser
from .batches import DataSource, test_data
from .determinism import derive_seed, device_generator
from .distill_config import KIND, DistillConfig, distill_differences
from .errors import ConfigError
from .loop import Loop
from .objectives import Batch, DistillationTarget, DistillBatch
from .optim import EMA, adamw, guarded_update, learning_rate, set_lr
from .run_folder import RunFolder
from .session import RunSession, SessionViews, default_device, stderr_log


def _check_teacher(teacher: nn.Module, cfg: DistillConfig) -> None:
    m = cfg.teacher_model
    if (tuple(teacher.data_shape) != tuple(m["data_shape"])
            or teacher.num_classes != int(m.get("num_classes", 0))):
        raise ConfigError(f"the teacher model (data_shape {list(teacher.data_shape)}, "
                          f"num_classes {teacher.num_classes}) is not the one of the config "
                          f"(data_shape {list(m['data_shape'])}, num_classes "
                          f"{m.get('num_classes', 0)})")


class Distiller(SessionViews):
    """One distillation run of ``cfg`` (a :class:`DistillConfig` or its dict form) in folder
    ``out`` from the frozen ``teacher`` (an NTM; put in eval mode, parameters frozen).

    ``resume=True`` continues from the newest valid checkpoint in ``out`` (none valid: a
    :class:`ConfigError`); ``restart=True`` begins again in a folder that holds a run;
    ``fault_nonfinite_steps`` (1-based, as logged): steps whose loss is forced to NaN.
    """

    def __init__(self, cfg, out, teacher: nn.Module, *, resume: bool = False, device=None,
                 progress: bool = True, log: Optional[Callable[[str], None]] = None,
                 fault_nonfinite_steps=(), restart: bool = False):
        self.cfg = DistillConfig.coerce(cfg)
        self.log = log or stderr_log
        self.device = default_device(device)
        self.fault_steps = {int(s) for s in fault_nonfinite_steps}
        _check_teacher(teacher, self.cfg)
        self.folder = RunFolder(out, kind=KIND, log=self.log)
        try:
            self.session = self._build(teacher, resume, restart)
        except BaseException:
            self.folder.release()
            raise
        self.loop = Loop(self, self.session, optim=self.cfg.optim, cadence=self.cfg.run,
                         desc="distill", progress=progress, log=self.log)

    def _build(self, teacher: nn.Module, resume: bool, restart: bool) -> RunSession:
        cfg = self.cfg
        resumed = self.folder.open(cfg.to_dict(), resume=resume, differences=distill_differences,
                                   restart=restart)
        if cfg.t_min > cfg.teacher_model["t_min_max"]:
            self.log(f"warning: t_d = {cfg.t_min} is above the teacher's t_min_max = "
                     f"{cfg.teacher_model['t_min_max']}: the teacher never trained there")
        torch.manual_seed(derive_seed(cfg.optim.seed, 0, "init"))
        self.teacher = teacher.to(self.device).eval().requires_grad_(False)
        self.model = Denoiser(**{**cfg.denoiser, "t_min": cfg.t_min}).to(self.device).train()
        self.objective = DistillationTarget(self.teacher, self.model, t_min=cfg.t_min,
                                            label_dropout=cfg.label_dropout)
        self.ema = EMA.of(self.model, cfg.optim)
        self.data = DataSource(cfg, device=self.device)
        self._eval_set: Optional[List[Tuple[DistillBatch, Tensor]]] = None
        session = RunSession(self.folder, cfg.to_dict(), self.model, self.ema,
                             adamw(self.model, cfg.optim), self.data, keep=cfg.run.keep)
        session.begin(resumed)
        return session

    def run(self, stop_after: Optional[int] = None) -> Dict[str, Any]:
        """Distil until the budget is spent (or ``stop_after`` iterations, or a signal)."""
        summary = self.loop.run(stop_after)
        self.close()
        return summary

    def _generator(self, seed: int) -> torch.Generator:
        return device_generator(self.device, seed)

    # ------------------------------------------------------------------ steps
    def train_step(self) -> Dict[str, Any]:
        """One iteration (``step`` -> ``step + 1``): one batch of targets, ``K`` updates."""
        cfg, st = self.cfg, self.state
        step, seed = st.step, cfg.optim.seed
        torch.manual_seed(derive_seed(seed, step, "global"))
        x, y = self.data.batch(step)
        batch = self.objective.targets(Batch(x, y, self._generator(derive_seed(seed, step,
                                                                               "model")), step))
        lr = learning_rate(cfg.optim, step, st.elapsed_s)
        set_lr(self.session.optimizer, lr)
        K = cfg.updates_per_batch
        fresh_loss, gnorm, finite = float("nan"), float("nan"), True
        for j in range(K):   # the targets cost ~20 denoiser updates: each batch serves K
            loss, _ = self.objective.loss(batch)
            if j == 0:
                if step + 1 in self.fault_steps:
                    loss = loss * float("nan")
                fresh_loss = float(loss.detach())   # before any update on this batch
            finite, gnorm = guarded_update(loss, self.model, self.session.optimizer, self.ema,
                                           grad_clip=cfg.optim.grad_clip,
                                           ema_updates=step * K + j)
            if not finite:
                break
        st.count(finite)
        st.step = step + 1
        return {"step": st.step, "lr": lr, "loss": fresh_loss, "grad_norm": gnorm,
                "finite": finite}

    # ------------------------------------------------------------------ evaluation
    def eval_set(self) -> List[Tuple[DistillBatch, Tensor]]:
        """Fixed held-out batches ``(DistillBatch, clean x)``: the test split (digits:
        dequantised with a fixed seed; toys: fixed samples), at most ``eval_n`` items, labels
        kept (no dropout), ``x`` in the teacher's space (normalised latents; the targets'
        space).  Targets are computed once."""
        if self._eval_set is None:
            cfg, n, B = self.cfg, self.cfg.eval_n, self.cfg.run.eval_batch
            x, y = test_data(cfg.data)
            x, y = x[:n], (None if y is None else y[:n])
            g = torch.Generator().manual_seed(derive_seed(cfg.optim.seed, 0, "eval_data"))
            if cfg.dataset == "digits":
                x = dequantize(x, DIGITS_BINS, generator=g)
            gm = self._generator(derive_seed(cfg.optim.seed, 0, "eval_model"))
            self._eval_set = []
            for i in range(0, len(x), B):
                xb = x[i:i + B].to(self.device)
                yb = None if y is None else y[i:i + B].to(self.device)
                held_out = DistillationTarget(self.teacher, self.model, t_min=cfg.t_min)
                self._eval_set.append((held_out.targets(Batch(xb, yb, gm)),
                                       self.teacher.norm.to_model(xb)))
        return self._eval_set

    @torch.no_grad()
    def evaluate(self) -> Dict[str, Any]:
        """Held-out mean squared errors (per element) of the EMA denoiser: ``test_mse`` vs the
        teacher's targets, ``test_mse_transporter`` of the transporter inverse ``x_{t_0}`` (no
        denoising) vs the targets; ``test_mse_data`` of the denoiser and
        ``test_mse_data_teacher`` of the targets vs the clean data."""
        sums = dict(test_mse=0.0, test_mse_transporter=0.0, test_mse_data=0.0,
                    test_mse_data_teacher=0.0)
        n = 0
        for b, x in self.eval_set():
            pred = self.ema.model(b.u, b.t0, labels_of(b.y))
            sums["test_mse"] += float((pred - b.target).pow(2).sum())
            sums["test_mse_transporter"] += float((b.x_t0 - b.target).pow(2).sum())
            sums["test_mse_data"] += float((pred - x).pow(2).sum())
            sums["test_mse_data_teacher"] += float((b.target - x).pow(2).sum())
            n += b.target.numel()
        rec = {"type": "eval", "step": self.step,
               **{k: v / max(n, 1) for k, v in sums.items()}, "test_elements": n}
        self.state.last_eval = {k: v for k, v in rec.items() if isinstance(v, (int, float))}
        self.session.write_metrics(rec)
        return rec

    def eval_summary(self, rec: Dict[str, Any]) -> str:
        return (f"test mse {rec['test_mse']:.4g} (transporter inverse "
                f"{rec['test_mse_transporter']:.4g})")

    def log_extras(self, rec: Dict[str, Any], mean_loss: float
                   ) -> Tuple[Dict[str, Any], Dict[str, str]]:
        post = {}
        if "test_mse" in self.last_eval:
            post["test_mse"] = f"{self.last_eval['test_mse']:.3g}"
        return {}, post


