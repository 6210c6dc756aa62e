"""Fault-tolerant training checkpoints.

A checkpoint is a folder ``<run>/checkpoints/step_<NNNNNNNN>/`` holding

* ``model.safetensors`` -- the trained weights,
* ``ema.safetensors``   -- the exponential moving average of the weights,
* ``state.pt``          -- optimizer state, RNG states, step counter, config (``torch.save``),
* ``manifest.json``     -- sha256 and size of each file above; written **last**.

A checkpoint is assembled in a hidden temporary folder (every file flushed and fsynced, the
manifest last), which is then renamed into place and the parent folder fsynced, so a run
killed at any moment leaves either a complete checkpoint or none.  On load the manifest's
checksums are verified; a truncated or corrupt checkpoint raises :class:`CheckpointError`
with a message naming the bad file, and :func:`load_latest` falls back to the previous one.
The newest ``keep`` checkpoints (default 2) are kept.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

FORMAT = "ntm_engine-checkpoint"
VERSION = 1
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
STATE_FILE = "state.pt"
MANIFEST_FILE = "manifest.json"
CKPT_DIR = "checkpoints"
_STEP_RE = re.compile(r"^step_(\d{8,})$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt or does not fit the model."""


@dataclass
class Checkpoint:
    path: Path
    step: int
    model: Dict[str, torch.Tensor]
    ema: Optional[Dict[str, torch.Tensor]]
    state: Dict[str, Any]

    @property
    def config(self) -> Dict[str, Any]:
        return self.state["config"]


# ----------------------------------------------------------------------------- file helpers

def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file, flush+fsync, ``os.replace``, fsync dir."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        _write_synced(tmp, data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tensors_for_saving(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies (safetensors refuses shared or non-contiguous storage)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}


# ----------------------------------------------------------------------------- saving

def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def checkpoint_root(run_dir) -> Path:
    return Path(run_dir) / CKPT_DIR


def save_checkpoint(run_dir, step: int, model_state: Dict[str, torch.Tensor],
                    ema_state: Optional[Dict[str, torch.Tensor]], state: Dict[str, Any],
                    keep: int = 2) -> Path:
    """Write the checkpoint of ``step`` atomically and prune all but the newest ``keep``.

    ``state`` (optimizer state, RNG states, config, ...) must be loadable with
    ``torch.load(weights_only=True)``: tensors, numbers, strings, lists and dicts.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):  # leftovers of a run killed while saving
        shutil.rmtree(stale, ignore_errors=True)
    name = step_dir_name(step)
    files = {MODEL_FILE: st_save(tensors_for_saving(model_state))}
    if ema_state is not None:
        files[EMA_FILE] = st_save(tensors_for_saving(ema_state))
    buf = io.BytesIO()
    torch.save(dict(state, step=step), buf)
    files[STATE_FILE] = buf.getvalue()
    try:  # what cannot be loaded back safely must fail now, not at resume time
        torch.load(io.BytesIO(files[STATE_FILE]), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"checkpoint state is not loadable with weights_only=True: {e}") from e
    tmp = root / f".tmp-{name}-{os.getpid()}"
    tmp.mkdir()
    manifest = {"format": FORMAT, "version": VERSION, "step": step, "time": time.time(),
                "files": {}}
    for fname, data in files.items():
        _write_synced(tmp / fname, data)
        manifest["files"][fname] = {"sha256": _sha256(data), "bytes": len(data)}
    _write_synced(tmp / MANIFEST_FILE, json.dumps(manifest, indent=1).encode())
    _fsync_dir(tmp)
    final = root / name
    if final.exists():  # e.g. re-saving a step after falling back past a corrupt checkpoint
        trash = root / f".tmp-trash-{name}-{os.getpid()}"
        os.replace(final, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(tmp, final)
    _fsync_dir(root)
    _prune(root, keep)
    return final


def _prune(root: Path, keep: int) -> None:
    steps = list_checkpoints(root.parent)
    for _, path in steps[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------- loading

def list_checkpoints(run_dir) -> List[Tuple[int, Path]]:
    """``(step, path)`` of every checkpoint folder of the run, oldest first (unverified)."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out)


def verify_checkpoint(path) -> Dict[str, Any]:
    """Check the manifest and the sha256 of every file; return the manifest or raise."""
    path = Path(path)
    mpath = path / MANIFEST_FILE
    if not mpath.is_file():
        raise CheckpointError(f"checkpoint {path} is incomplete: {MANIFEST_FILE} is missing "
                              "(the run was probably killed while saving it)")
    try:
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
        if manifest.get("format") != FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}")
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} has an unreadable {MANIFEST_FILE}: {e}") from e
    for required in (MODEL_FILE, STATE_FILE):
        if required not in files:
            raise CheckpointError(f"checkpoint {path}: manifest lists no {required}")
    for fname, meta in files.items():
        fpath = path / fname
        if not fpath.is_file():
            raise CheckpointError(f"checkpoint {path} is corrupt: {fname} is missing")
        data = fpath.read_bytes()
        if len(data) != meta["bytes"]:
            raise CheckpointError(f"checkpoint {path} is corrupt: {fname} has {len(data)} bytes, "
                                  f"the manifest says {meta['bytes']} (truncated?)")
        if _sha256(data) != meta["sha256"]:
            raise CheckpointError(f"checkpoint {path} is corrupt: sha256 of {fname} does not "
                                  "match the manifest")
    return manifest


def load_checkpoint(path, map_location="cpu") -> Checkpoint:
    """Verify and load one checkpoint folder (or a file inside it)."""
    path = Path(path)
    if path.is_file():
        path = path.parent
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint at {path}")
    manifest = verify_checkpoint(path)
    try:
        model = st_load((path / MODEL_FILE).read_bytes())
        ema = st_load((path / EMA_FILE).read_bytes()) if EMA_FILE in manifest["files"] else None
        state = torch.load(path / STATE_FILE, map_location=map_location, weights_only=True)
    except Exception as e:  # checksums matched but the content does not parse
        raise CheckpointError(f"checkpoint {path} could not be read: {e}") from e
    if "config" not in state or "step" not in state:
        raise CheckpointError(f"checkpoint {path}: {STATE_FILE} lacks 'config' or 'step'")
    return Checkpoint(path=path, step=int(state["step"]), model=model, ema=ema, state=state)


def load_latest(run_dir, map_location="cpu", quarantine: bool = False,
                log=None) -> Optional[Checkpoint]:
    """The newest checkpoint of the run that verifies, or ``None`` if the run has none.

    Corrupt or incomplete ones are reported (``log``, default ``warnings.warn``) and skipped;
    with ``quarantine=True`` they are renamed to ``corrupt-step_...`` so they are never
    picked up again (used when resuming training, which will write past them).
    """
    log = log or (lambda msg: warnings.warn(msg, stacklevel=2))
    for step, path in reversed(list_checkpoints(run_dir)):
        try:
            return load_checkpoint(path, map_location=map_location)
        except CheckpointError as e:
            log(f"refusing {e}; falling back to the previous checkpoint")
            if quarantine:
                dest = path.with_name(f"corrupt-{path.name}-{int(time.time())}")
                os.replace(path, dest)
                _fsync_dir(path.parent)
    return None


def resolve(path, map_location="cpu", log=None) -> Checkpoint:
    """Load from a run folder, its ``checkpoints`` folder, a checkpoint folder or a file in it."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"no such checkpoint or run folder: {p}")
    if p.is_file():
        return load_checkpoint(p.parent, map_location)
    if (p / MANIFEST_FILE).exists() or _STEP_RE.match(p.name):
        return load_checkpoint(p, map_location)
    run_dir = p.parent if p.name == CKPT_DIR else p
    ck = load_latest(run_dir, map_location=map_location, log=log)
    if ck is None:
        raise CheckpointError(f"no valid checkpoint under {run_dir}")
    return ck
