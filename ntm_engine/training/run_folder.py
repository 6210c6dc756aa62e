"""The run folder: one process at a time (an advisory lock the OS drops even on SIGKILL), the
checks before a run continues in it, and its ``config.json``.

Layout of a run folder (``docs/design.md`` section 4): ``config.json``, ``metrics.jsonl``,
``checkpoints/step_NNNNNNNN/`` (:mod:`ntm_engine.checkpoint`), ``.lock``, and what the run type
adds (sample grids, ``fm_reference.safetensors``, ``denoiser/``).
"""
from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from .. import checkpoint as ckpt
from .errors import ConfigError
from .metrics_log import METRICS_FILE

CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"   # holds the id of the process that owns the folder


def kind_name(kind: Optional[str]) -> str:
    return "an NTM training run" if kind is None else f"a {kind} run"


class RunFolder:
    """Folder ``out`` of a run of ``kind`` (``config["kind"]``; None for training runs)."""

    def __init__(self, out, *, kind: Optional[str], log: Callable[[str], None]):
        self.path = Path(out)
        self.kind = kind
        self.log = log
        self._lock = None

    def acquire(self) -> None:
        """Own the folder (created if missing) and write this process's id into ``.lock``;
        another process holding it is an error naming that process."""
        self.path.mkdir(parents=True, exist_ok=True)
        f = open(self.path / LOCK_FILE, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise ConfigError(f"another training process (pid {holder}) is using {self.path} "
                              "right now; wait for it to end or stop it (SIGTERM checkpoints "
                              "and exits), then --resume")
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._lock = f

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def open(self, cfg: Dict[str, Any], *, resume: bool,
             differences: Callable[[Dict[str, Any], Dict[str, Any]], List[str]],
             restart: bool = False) -> Optional[ckpt.Checkpoint]:
        """Own the folder and return the checkpoint to continue from (None: a fresh start).
        Refuses a folder with checkpoints unless ``resume`` (or ``restart``: its checkpoints
        and metrics are moved aside and the run begins again), one of another kind of run, one
        made with another configuration (``differences(stored, cfg)`` not empty), a damaged
        ``config.json``, and a resume whose checkpoints are all corrupt (they are moved aside:
        the error names them; ``restart`` is the way to begin again)."""
        existing = ckpt.list_checkpoints(self.path)
        if existing and not (resume or restart):
            raise ConfigError(f"{self.path} already holds checkpoints (up to step "
                              f"{existing[-1][0]}); pass --resume to continue that run, "
                              "--restart to begin it again there, or choose another --out "
                              "folder")
        self.acquire()
        if restart:
            self._set_aside()
            return None
        if not (resume and existing):
            return None
        self.check_config_file()
        resumed = ckpt.load_latest(self.path, map_location="cpu", quarantine=True, log=self.log)
        if resumed is None:
            self.release()
            moved = sorted(p.name for p in ckpt.checkpoint_root(self.path).glob("corrupt-*"))
            raise ConfigError(
                f"--resume: no checkpoint in {self.path} is valid; the corrupt ones were moved "
                f"aside to {ckpt.checkpoint_root(self.path)}/{{{', '.join(moved)}}}. Nothing "
                "was trained. Pass --restart to begin this run again from step 0 in this "
                "folder, or choose another --out folder")
        if resumed.config.get("kind") != self.kind:
            raise ConfigError(f"{self.path} holds checkpoints of "
                              f"{kind_name(resumed.config.get('kind'))}, not of "
                              f"{kind_name(self.kind)}; choose another --out folder")
        diffs = differences(resumed.config, cfg)
        if diffs:
            raise ConfigError(f"the checkpoint in {resumed.path} was made with another "
                              "configuration:\n  " + "\n  ".join(diffs))
        return resumed

    def check_config_file(self) -> None:
        """A ``config.json`` that is there must be a JSON object (:class:`ConfigError` naming
        it otherwise); the checkpoints hold the run's configuration, the file mirrors it."""
        path = self.path / CONFIG_FILE
        if not path.exists():
            return
        try:
            got = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            got = e
        if not isinstance(got, dict):
            what = f"unreadable JSON ({got})" if isinstance(got, Exception) else \
                f"a JSON {type(got).__name__}"
            raise ConfigError(f"{path} is damaged: expected the run's configuration (a JSON "
                              f"object), found {what}. The checkpoints hold the "
                              "configuration: delete the file to have it written again")

    def _set_aside(self) -> None:
        """``--restart``: move the checkpoints and metrics of the earlier run to
        ``*-before-restart-<time>`` names (nothing is deleted)."""
        stamp = int(time.time())
        for name in (ckpt.CKPT_DIR, METRICS_FILE):
            old = self.path / name
            if old.exists():
                new = old.with_name(f"{old.stem}-before-restart-{stamp}{old.suffix}")
                os.replace(old, new)
                self.log(f"--restart: moved {old} to {new}")

    def clear_metrics(self) -> None:
        """A fresh start: drop the metrics of an earlier run that left no checkpoint."""
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / METRICS_FILE).unlink(missing_ok=True)

    def write_config(self, cfg: Dict[str, Any]) -> None:
        ckpt.atomic_write_text(self.path / CONFIG_FILE, json.dumps(cfg, indent=1))
